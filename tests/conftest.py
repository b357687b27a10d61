"""Shared fixtures: one local SparkSession for the whole run, helpers to feed and read streams."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

# The live on-call checks are shared by several tests: their asserts explain themselves too.
pytest.register_assert_rewrite("tests.streamops.oncall_live")

ROOT = Path(__file__).resolve().parents[1]

# py4j logs at INFO while the interpreter shuts down, after pytest has closed its log streams.
logging.getLogger("py4j").setLevel(logging.WARNING)

# Tests that import Airflow in-process must not create or read ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="streamops-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One local SparkSession shared by every test that needs Spark."""
    from spark_jobs.session import build_session

    os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--master local[2] pyspark-shell")
    session = build_session("streamops-tests")
    session.conf.set("spark.sql.shuffle.partitions", "2")
    yield session
    session.stop()


def drop_file(folder: Path, name: str, content: str | bytes, mtime: float | None = None) -> Path:
    """Put a finished file into a watched folder the way writers must: write hidden, then rename."""
    folder.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    hidden = folder / f".{name}.tmp"
    hidden.write_bytes(data)
    if mtime is not None:
        os.utime(hidden, (mtime, mtime))
    final = folder / name
    hidden.rename(final)
    return final


def read_sink(path: Path) -> pd.DataFrame:
    """A sink as a reader that follows the reader contract reads it, sorted for comparison."""
    from spark_jobs.sinks import read_sink as read_rows

    if not path.exists() or not any(path.glob("*.parquet")):
        import pandas as pd

        return pd.DataFrame()
    frame = read_rows(str(path)).to_pandas()
    return frame.sort_values([c for c in ("batch_id", "word") if c in frame]).reset_index(drop=True)


def run_available_now(spark: SparkSession, job: ModuleType, argv: list[str]) -> None:
    """Run a job module's query in the shared session until it has processed all input."""
    from spark_jobs import runner

    args = job.parse_args([*argv, "--available-now"])
    started = runner.start(spark, job.spec_for(args), args)
    from spark_jobs.status import read_status

    try:
        started.query.awaitTermination()
    finally:
        started.query.stop()
        # Let the listener record the termination (delivered asynchronously, late on a busy
        # machine) before it is removed.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = read_status(args.checkpoint)
            if status is not None and status.state not in ("starting", "running"):
                break
            time.sleep(0.1)
        spark.streams.removeListener(started.listener)


def job_command(job: str, *argv: str) -> list[str]:
    """The command line that runs a job as its own process, as a user would."""
    return [sys.executable, "-m", f"spark_jobs.{job}", *argv]
