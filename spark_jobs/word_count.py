"""Word count: how often each word occurs in each micro-batch, or in sliding windows.

The Structured Streaming form of the seed's socket word count (`reduceByKey` per 1-second
batch). Each micro-batch writes one row per word to the sink:
`batch_id, batch_time, word, count`.

With `--window 30s --slide 10s` it counts words over sliding windows of processing time, like the
seed's `window(windowLength, slideInterval)`, and writes
`batch_id, batch_time, window_start, window_end, word, count`, one row per word and window. A
window's row is written once, complete, in the first micro-batch after the window has ended (the
watermark is the batch time itself), so a window is emitted only once new input arrives after it.

Run it with `python -m spark_jobs.word_count --help` or through `spark-submit`.
"""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_jobs import cli
from spark_jobs.runner import JobSpec, run
from spark_jobs.sinks import WINDOWED_WORD_COUNT_SCHEMA, WORD_COUNT_SCHEMA
from spark_jobs.tokenizer import tokenize


def count_words(words: DataFrame) -> DataFrame:
    """`word, count` for a DataFrame of word occurrences (one micro-batch)."""
    return words.groupBy("word").agg(F.count(F.lit(1)).alias("count"))


def windowed_counts(words: DataFrame, window: str, slide: str) -> DataFrame:
    """`window_start, window_end, word, count` over sliding windows of `event_time`."""
    return (
        words.withWatermark("event_time", "0 seconds")
        .groupBy(F.window("event_time", window, slide), "word")
        .agg(F.count(F.lit(1)).alias("count"))
        .select(
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            "word",
            "count",
        )
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = cli.common_parser("word_count", __doc__.splitlines()[0])
    windowing = parser.add_argument_group("sliding windows")
    windowing.add_argument(
        "--window", type=cli.interval, metavar="INTERVAL", help="window length, e.g. '30 seconds'"
    )
    windowing.add_argument(
        "--slide",
        type=cli.interval,
        metavar="INTERVAL",
        help="how often a window starts, e.g. '10 seconds' (default: --window, no overlap)",
    )
    args = parser.parse_args(argv)
    cli.check_common(parser, args)
    if args.slide and not args.window:
        parser.error("argument --slide: needs --window")
    if args.window:
        args.slide = args.slide or args.window
        if cli.interval_ms(args.slide) > cli.interval_ms(args.window):
            parser.error(
                f"argument --slide: {args.slide!r} is longer than --window {args.window!r}; "
                "windows would leave gaps"
            )
    return args


def spec_for(args: argparse.Namespace) -> JobSpec:
    """The job as configured by `args`."""
    if args.window:
        return JobSpec(
            name="word_count",
            schema=WINDOWED_WORD_COUNT_SCHEMA,
            value_column="count",
            output_mode="append",
            build_stream=lambda lines, a: windowed_counts(
                tokenize(lines.withColumn("event_time", F.current_timestamp()), a.normalize),
                a.window,
                a.slide,
            ),
            batch_result=lambda batch: batch,
        )
    return JobSpec(
        name="word_count",
        schema=WORD_COUNT_SCHEMA,
        value_column="count",
        output_mode="append",
        # The lines, not their words, go into foreachBatch, which hands each micro-batch over
        # as rows already computed: a line holds about ten words, and the tokenizer then runs
        # with the count in one code-generated stage instead of feeding it across that boundary.
        build_stream=lambda lines, a: lines,
        batch_result=lambda batch: count_words(tokenize(batch, args.normalize)),
        # The count runs as a batch query inside foreachBatch, where adaptive execution splits
        # it into stages and re-plans between them: with one shuffle partition per core there is
        # nothing for it to coalesce or re-balance, and the per-batch cost it adds was a third of
        # `addBatch.result` (bench/throughput.py, docs/performance.md, "Where batch time goes").
        spark_conf={"spark.sql.adaptive.enabled": "false"},
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m spark_jobs.word_count` and of `spark-submit`."""
    args = parse_args(argv)
    return run(spec_for(args), args)


if __name__ == "__main__":
    sys.exit(main())
