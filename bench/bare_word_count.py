"""The bare, seed-style streaming word count: the Spark reference of `bench/throughput.py`.

Text file source -> `split(value, " ")` + `explode` -> `groupBy(word).count()` -> the `noop`
sink in update mode, with `trigger(availableNow=True)`. It has none of the jobs' guarantees (no
sink, no tokenizer rules, no status, no generation checks), so it is what Spark itself costs for
this query shape. The aggregation is stateful (update mode) and uses Spark's default state store
unless `--state-store-provider` names another one.

`--parquet DIR` makes it the query a user would write instead of the jobs: the same query writing
its results as Parquet into DIR with `foreachBatch` and `df.write.parquet` (append), which is
not exactly-once (a replayed batch is appended twice). With `--per-batch` the count runs inside
`foreachBatch`, per micro-batch and without state, as word_count counts; without it, the
stateful running counts of each batch are written, as running_total writes them.

For diagnosis, `--tokenizer jobs` swaps `split(value, " ")` for the jobs' tokenizer
(`spark_jobs.tokenizer.tokenize`, needs the repository on `PYTHONPATH`) and keeps everything else.

It takes the same source and query settings as the jobs so that the benchmark compares like with
like: `--max-files-per-trigger` and `--shuffle-partitions`, and its own `--checkpoint`, whose
offsets and commits logs the benchmark reads to time the batches. `--trigger-interval` runs it as
a live stream (a micro-batch every INTERVAL until SIGTERM) instead of `availableNow`, for the
rate sweep of `bench/report.py`.

    python bench/bare_word_count.py --input DIR --checkpoint DIR \
        --max-files-per-trigger 2 --shuffle-partitions 8 [--progress FILE]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import DataStreamWriter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="bare_word_count", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, metavar="DIR", help="folder of text files")
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder")
    parser.add_argument(
        "--max-files-per-trigger", type=int, metavar="N", help="default: every new file"
    )
    parser.add_argument("--shuffle-partitions", type=int, required=True, metavar="N")
    parser.add_argument(
        "--state-store-provider",
        metavar="CLASS",
        help="spark.sql.streaming.stateStore.providerClass (default: Spark's default)",
    )
    parser.add_argument(
        "--tokenizer",
        choices=("split", "jobs"),
        default="split",
        help="split: the seed's split(value, ' ') (default); jobs: spark_jobs.tokenizer",
    )
    parser.add_argument(
        "--parquet",
        metavar="DIR",
        help="write the counts as Parquet into DIR with foreachBatch + df.write.parquet "
        "(default: the noop sink)",
    )
    parser.add_argument(
        "--per-batch",
        action="store_true",
        help="with --parquet: count each micro-batch inside foreachBatch, without state",
    )
    parser.add_argument(
        "--trigger-interval",
        metavar="INTERVAL",
        help="run as a live stream with this processing-time trigger until SIGTERM "
        "(default: availableNow, process what is there and exit)",
    )
    parser.add_argument(
        "--progress",
        metavar="FILE",
        help="write the query's progress reports (batch id, rows, duration) here as JSON",
    )
    return parser.parse_args(argv)


def naive_writer(words: DataFrame, args: argparse.Namespace) -> DataStreamWriter:
    """The query writing Parquet the way the seed's reader would: `foreachBatch` and
    `df.write.parquet`, appending."""
    path = args.parquet

    def write(batch: DataFrame, _batch_id: int) -> None:
        counts = batch.groupBy("word").count() if args.per_batch else batch
        counts.write.mode("append").parquet(path)

    if args.per_batch:
        return words.writeStream.foreachBatch(write)
    return words.groupBy("word").count().writeStream.outputMode("update").foreachBatch(write)


def main(argv: list[str] | None = None) -> int:
    """Run the query until everything available now is processed."""
    args = parse_args(argv)
    spark = (
        SparkSession.builder.appName("streamops-bench-bare")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    spark.conf.set("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
    if args.state_store_provider:
        spark.conf.set("spark.sql.streaming.stateStore.providerClass", args.state_store_provider)
    try:
        reader = spark.readStream.format("text")
        if args.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", args.max_files_per_trigger)
        lines = reader.load(args.input)
        if args.tokenizer == "jobs":
            from spark_jobs.tokenizer import tokenize

            words = tokenize(lines)
        else:
            words = lines.select(F.explode(F.split(lines.value, " ")).alias("word"))
        writer = (
            naive_writer(words, args)
            if args.parquet
            else (words.groupBy("word").count().writeStream.format("noop").outputMode("update"))
        )
        writer = writer.option("checkpointLocation", args.checkpoint)
        if args.trigger_interval:
            query = writer.trigger(processingTime=args.trigger_interval).start()
            while not query.awaitTermination(0.2):
                if stop.is_set():
                    query.stop()
        else:
            query = writer.trigger(availableNow=True).start()
            query.awaitTermination()
        if args.progress:
            reports = [json.loads(p.json) for p in query.recentProgress]
            batches = [
                {
                    "batch_id": int(r["batchId"]),
                    "input_rows": int(r.get("numInputRows", 0)),
                    "duration_ms": int(r.get("batchDuration", 0)),
                    "phases_ms": {k: int(v) for k, v in (r.get("durationMs") or {}).items()},
                }
                for r in reports
            ]
            with open(args.progress, "w", encoding="utf-8") as out:
                json.dump(batches, out, indent=2)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
