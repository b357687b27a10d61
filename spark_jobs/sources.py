"""The streaming sources: every one yields lines of text in a `value` column."""

from __future__ import annotations

import argparse
import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs import jars
from spark_jobs.cli import kafka_client_options
from spark_jobs.layout import CheckpointLayout

RATE_VOCABULARY = 1000
# Set by spark-submit for the Python driver it starts: the JVM is running already.
SPARK_SUBMIT_GATEWAY_ENV = "PYSPARK_GATEWAY_PORT"


def read_lines(spark: SparkSession, args: argparse.Namespace) -> DataFrame:
    """A streaming DataFrame with one string column, `value`, for the source in `args`.

    - file: each new file in `--input` (Spark remembers which files it has read in the
      checkpoint, so a restart neither skips nor re-reads a file). Lines split at `\\n`, `\\r\\n` or
      `\\r`; files and folders whose names start with `.` or `_` are ignored until renamed.
    - socket: lines from a TCP server (`nc -lk 9999`). Not replayable: lines sent while the job
      is down are lost, so use it for trying things out, not for exactly-once results.
    - rate: `--rows-per-second` generated words `w0` ... `w999`, for load tests.
    - kafka: the value of each record of `--kafka-topic` (or the topics matching
      `--kafka-topic-pattern`), read with Spark's own `kafka` source, which keeps the offsets
      of every batch in the checkpoint: a restart neither skips nor re-reads a record. Keys and
      headers are ignored. A null value (a tombstone) is no line; an empty value is an empty
      line. The value's bytes become the line as they are, as a file's bytes do for the file
      source: bytes that are not valid UTF-8 are read as U+FFFD by the tokenizer, a separator.
    """
    if args.source == "file":
        reader = spark.readStream.format("text")
        if args.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", args.max_files_per_trigger)
        return reader.load(args.input)
    if args.source == "socket":
        return (
            spark.readStream.format("socket")
            .option("host", args.host)
            .option("port", args.port)
            .load()
        )
    if args.source == "rate":
        rate = spark.readStream.format("rate").option("rowsPerSecond", args.rows_per_second).load()
        word = F.concat(F.lit("w"), (F.col("value") % RATE_VOCABULARY).cast("string"))
        return rate.select(word.alias("value"))
    if args.source == "kafka":
        return read_kafka(spark, args)
    raise ValueError(f"unknown source {args.source!r}")


def read_kafka(spark: SparkSession, args: argparse.Namespace) -> DataFrame:
    """The kafka source of `read_lines`: one `value` line per record with a non-null value."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.kafka_bootstrap_servers)
        # Only read when a new checkpoint starts; a checkpoint resumes from its own offsets.
        .option("startingOffsets", starting_offsets(args))
    )
    if args.kafka_topic:
        reader = reader.option("subscribe", ",".join(args.kafka_topic))
    else:
        reader = reader.option("subscribePattern", args.kafka_topic_pattern)
    if args.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", args.max_offsets_per_trigger)
    if args.kafka_accept_data_loss:
        reader = reader.option("failOnDataLoss", "false")
    for key, value in kafka_client_options(args.kafka_option).items():
        reader = reader.option(key, value)
    # A binary-to-string cast keeps the bytes as they are, as the text source does for a file's
    # lines (UTF8String of the raw bytes): the tokenizer's regex then decodes malformed
    # sequences to U+FFFD, a separator (tokenizer.words_of), so both sources count alike.
    records = reader.load()
    return records.where(F.col("value").isNotNull()).select(
        F.col("value").cast("string").alias("value")
    )


def starting_offsets(args: argparse.Namespace) -> str:
    """Where a new checkpoint's Kafka source starts: the position a rotation carried over
    (`CheckpointLayout.starting_offsets_file`), otherwise `--kafka-starting-offsets`."""
    carried = CheckpointLayout.of(args.checkpoint).starting_offsets_file
    if carried.exists():
        return carried.read_text().strip()
    return str(args.kafka_starting_offsets)


def job_paths(args: argparse.Namespace) -> list[str | None]:
    """The paths a job reads and writes: its checkpoint, sink and (file source) input."""
    return [args.checkpoint, args.sink, getattr(args, "input", None)]


def jars_for(args: argparse.Namespace) -> list[str]:
    """Local paths of the jars the job in `args` needs beyond pyspark's own (the Kafka source's,
    S3A's for paths on S3), for the JVM that `python -m spark_jobs.<job>` launches. A driver
    started by spark-submit (the stream DAGs', with the jars in its `--jars`) finds its JVM
    running: none.

    Raises `jars.JarUnavailable` naming the artifact when one cannot be had.
    """
    if os.environ.get(SPARK_SUBMIT_GATEWAY_ENV):
        return []
    return jars.for_source(args.source, job_paths(args))
