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
from collections.abc import Callable

import pyarrow.parquet as pq
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_jobs import cli
from spark_jobs.checkpoints import BASE_TOTALS_FILE
from spark_jobs.layout import STREAMOPS_DIR, CheckpointLayout
from spark_jobs.runner import JobSpec, run
from spark_jobs.session import STATE_STORE_PROVIDERS
from spark_jobs.sinks import RUNNING_TOTAL_SCHEMA
from spark_jobs.tokenizer import tokenize


def running_totals(words: DataFrame) -> DataFrame:
    """`word, total`: a stateful count per word, emitted for the words each batch changes."""
    return words.groupBy("word").agg(F.count(F.lit(1)).alias("total"))


def add_base_totals(checkpoint: str) -> Callable[[DataFrame], DataFrame]:
    """The batch result with each word's total from earlier checkpoint generations added.

    Rotation (`checkpoints.rotate`) starts a new checkpoint with empty state and leaves the
    totals reached so far in `_streamops/base_totals.parquet`; without that file this is the
    identity.
    """
    base_file = CheckpointLayout.of(checkpoint).root.child(STREAMOPS_DIR, BASE_TOTALS_FILE)
    loaded: dict[str, DataFrame | None] = {}

    def result(batch: DataFrame) -> DataFrame:
        if "base" not in loaded:
            # Read once per run, through the same filesystem layer as the rest of the lifecycle.
            # (Not spark.read + cache: a long-lived session would keep serving an older
            # generation's file from its cache.)
            loaded["base"] = None
            if base_file.exists():
                table = pq.read_table(base_file.path, filesystem=base_file.filesystem)
                loaded["base"] = F.broadcast(batch.sparkSession.createDataFrame(table))
        base = loaded["base"]
        if base is None:
            return batch
        return batch.join(base, "word", "left").select(
            "word", (F.col("total") + F.coalesce(F.col("base_total"), F.lit(0))).alias("total")
        )

    return result


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
        batch_result=add_base_totals(args.checkpoint),
        spark_conf={
            "spark.sql.streaming.stateStore.providerClass": STATE_STORE_PROVIDERS[args.state_store],
            # RocksDB then commits a small changelog per batch instead of uploading a snapshot of
            # every partition: the per-batch commit was most of running_total's overhead.
            "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m spark_jobs.running_total` and of `spark-submit`."""
    args = parse_args(argv)
    return run(spec_for(args), args)


if __name__ == "__main__":
    sys.exit(main())
