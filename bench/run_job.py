"""Run one of the jobs with Spark settings laid over the job's own: the benchmarks' variants.

    python bench/run_job.py running_total \
        --conf spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled=false \
        -- --input DIR --sink DIR --checkpoint DIR --available-now

Everything after `--` is the job's own command line. Each `--conf KEY=VALUE` replaces the
job's setting of KEY (or adds it), so a benchmark can compare a default with its alternative
(for instance RocksDB with and without changelog checkpointing) through the job's real code path.
Settings that the job does not set itself can also go through `PYSPARK_SUBMIT_ARGS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spark_jobs import running_total, word_count
from spark_jobs.runner import run

JOBS = {"word_count": word_count, "running_total": running_total}


def setting(text: str) -> tuple[str, str]:
    """argparse type: `KEY=VALUE`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    """Parse the overrides, then run the job with them."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="run_job", description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--conf", type=setting, action="append", default=[], metavar="KEY=VALUE")
    ours = parser.parse_args(argv[:split])
    module = JOBS[ours.job]
    args = module.parse_args(argv[split + 1 :])
    spec = module.spec_for(args)
    spec = dataclasses.replace(spec, spark_conf={**spec.spark_conf, **dict(ours.conf)})
    return run(spec, args)


if __name__ == "__main__":
    sys.exit(main())
