"""Running total: each word's cumulative count over every batch so far, kept as streaming state.

The Structured Streaming form of the seed's `updateStateByKey` running totals. The totals live in
Spark's state store (RocksDB by default) inside the checkpoint, so they survive restarts. Each
micro-batch writes one row per word whose total changed in it: `batch_id, batch_time, word, total`.
A word's current total is its row with the largest `batch_id`.

Run it with `python -m spark_jobs.running_total --help` or through `spark-submit`.
"""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_jobs import cli
from spark_jobs.runner import JobSpec, run
from spark_jobs.session import STATE_STORE_PROVIDERS
from spark_jobs.sinks import RUNNING_TOTAL_SCHEMA
from spark_jobs.tokenizer import tokenize


def running_totals(words: DataFrame) -> DataFrame:
    """`word, total`: a stateful count per word, emitted for the words each batch changes."""
    return words.groupBy("word").agg(F.count(F.lit(1)).alias("total"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = cli.common_parser("running_total", __doc__.splitlines()[0])
    parser.add_argument(
        "--state-store",
        choices=sorted(STATE_STORE_PROVIDERS),
        default="rocksdb",
        help="state store provider (default rocksdb); fixed when a checkpoint is first started",
    )
    args = parser.parse_args(argv)
    cli.check_common(parser, args)
    return args


def spec_for(args: argparse.Namespace) -> JobSpec:
    """The job as configured by `args`."""
    return JobSpec(
        name="running_total",
        schema=RUNNING_TOTAL_SCHEMA,
        value_column="total",
        output_mode="update",
        build_stream=lambda lines, a: running_totals(tokenize(lines, a.normalize)),
        batch_result=lambda batch: batch,
        spark_conf={
            "spark.sql.streaming.stateStore.providerClass": STATE_STORE_PROVIDERS[args.state_store]
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m spark_jobs.running_total` and of `spark-submit`."""
    args = parse_args(argv)
    return run(spec_for(args), args)


if __name__ == "__main__":
    sys.exit(main())
