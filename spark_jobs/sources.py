"""The streaming sources: every one yields lines of text in a `value` column."""

from __future__ import annotations

import argparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

RATE_VOCABULARY = 1000


def read_lines(spark: SparkSession, args: argparse.Namespace) -> DataFrame:
    """A streaming DataFrame with one string column, `value`, for the source in `args`.

    - file: each new file in `--input` (Spark remembers which files it has read in the
      checkpoint, so a restart neither skips nor re-reads a file). Lines split at `\\n`, `\\r\\n` or
      `\\r`; files and folders whose names start with `.` or `_` are ignored until renamed.
    - socket: lines from a TCP server (`nc -lk 9999`). Not replayable: lines sent while the job
      is down are lost, so use it for trying things out, not for exactly-once results.
    - rate: `--rows-per-second` generated words `w0` ... `w999`, for load tests.
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
    raise ValueError(f"unknown source {args.source!r}")
