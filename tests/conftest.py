"""Shared fixtures: one local SparkSession per test process, helpers to feed and read streams.

The suite runs in parallel (`make test`: pytest-xdist, `--dist loadgroup`). Each worker is its
own process with its own SparkSession, AIRFLOW_HOME and temporary folders; tests that share
something more (a module-scoped fixture that starts processes) carry an `xdist_group` mark and
run on one worker. So do the tests that each run a whole Airflow deployment beside their
streams (`AIRFLOW_STACK`): two of them at once would take both cores for minutes, and every
timing bound of their neighbours with them. Nothing in a test listens on a fixed port:
`free_port()`.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

# The live on-call checks are shared by several tests: their asserts explain themselves too.
pytest.register_assert_rewrite("tests.streamops.oncall_live")

ROOT = Path(__file__).resolve().parents[1]

# A pytest-xdist worker runs under execnet, whose `__main__` has neither `__spec__` nor
# `__file__`. `pyspark.sql.connect` (imported by Great Expectations) takes that for a doctest
# run without Spark Connect's extras and exits the process (`check_dependencies`): name it.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"

# py4j logs at INFO while the interpreter shuts down, after pytest has closed its log streams.
logging.getLogger("py4j").setLevel(logging.WARNING)

# Every JVM the tests start (their SparkSessions, the jobs, spark-submit) lives for seconds to
# minutes on small inputs, where the JIT's optimizing compiler costs more CPU than it saves:
# with the C1 compiler alone, four job runs side by side took 36 s instead of 58 s here. The
# jobs' results do not depend on it; benchmarks outside the tests keep the JVM's default.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1")

# Tests that import Airflow in-process must not create or read ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="streamops-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

#: The mark of the tests that start all of Airflow's components and streams under them.
AIRFLOW_STACK = pytest.mark.xdist_group("airflow_stack")
#: The mark of the tests that use the S3 server (`s3_server`): one server per worker, and one
#: worker for them all.
S3_SERVER = pytest.mark.xdist_group("s3_server")

# The tests that wait longest on real processes start first, so that the quick ones fill the
# workers' gaps at the end instead of a long test starting last (`--no-loadscope-reorder` keeps
# this order). Within each rank the order is pytest's own.
START_FIRST = ("slow", "airflow", "integration", "spark")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the run: slow tests first, then Airflow, integration and Spark tests, then the rest.

    Every worker collects the same order (the sort is stable and depends on marks alone), as
    pytest-xdist requires."""

    def rank(item: pytest.Item) -> int:
        for position, marker in enumerate(START_FIRST):
            if item.get_closest_marker(marker) is not None:
                return position
        return len(START_FIRST)

    items.sort(key=rank)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """A folder that `build` fills once per test run, shared by every worker of the run.

    Under pytest-xdist each worker has its own base temporary folder inside the run's; the
    first worker to ask builds `name` there under a lock, and the others wait for it and read
    the same folder. A build that failed is tried again by the next one to ask."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / name
    with (base / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder / ".built"
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


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


def load_script(name: str) -> ModuleType:
    """`scripts/<name>.py` as a module (the folder is not a package)."""

    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class S3:
    """The tests' S3 server: the settings a client needs, a bucket, and a prefix of one test's
    own in it."""

    env: dict[str, str]
    bucket: str
    prefix: str = ""

    def uri(self, *parts: str) -> str:
        """`s3a://<bucket>/<prefix>/<parts>`, as a job's argument."""
        return "s3a://" + "/".join([self.bucket, *filter(None, [self.prefix]), *parts])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """An S3-compatible server (`scripts/s3.py`) on a free port, one per worker for the tests
    marked `S3_SERVER`; stopped by its pid at the end."""
    script = load_script("s3")
    folder = tmp_path_factory.mktemp("s3-server")
    env = script.start(folder, free_port(), "streamops-tests")
    try:
        yield S3(env, "streamops-tests")
    finally:
        assert script.stop(folder), "the S3 server was not running at the end"


@pytest.fixture
def s3(s3_server: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3:
    """The S3 server's settings in this process's environment, and a prefix of this test's."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return S3(s3_server.env, s3_server.bucket, prefix=tmp_path.name)


def job_command(job: str, *argv: str) -> list[str]:
    """The command line that runs a job as its own process, as a user would."""
    return [sys.executable, "-m", f"spark_jobs.{job}", *argv]


def load_kafka_script() -> ModuleType:
    """`scripts/kafka.py`, the local broker (`scripts` is a namespace package of the repository)."""
    from scripts import kafka

    return kafka


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A single-node Apache Kafka broker on a free port, shared by the tests of a worker that
    use it (they are in the `kafka_broker` xdist group); stopped by its pid at the end."""
    kafka = load_kafka_script()
    folder = tmp_path_factory.mktemp("kafka-broker")
    bootstrap = kafka.start(folder, free_port())
    try:
        yield bootstrap
    finally:
        assert kafka.stop(folder), "the broker was not running at the end"
        assert not kafka.is_running(kafka.BrokerFolder(folder))
