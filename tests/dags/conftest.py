"""A real Airflow for DAG tests: its own AIRFLOW_HOME and SQLite database, migrated once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AIRFLOW_HOME with a migrated SQLite metadata database."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = airflow_env(home, tmp_path_factory.mktemp("unused-data"))
    subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True
    )
    return home


def airflow_env(home: Path, data_root: Path, **extra: str) -> dict[str, str]:
    """The environment the embedded stack gives Airflow, pointed at test folders."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
            "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "STREAMOPS_DATA_ROOT": str(data_root),
            **extra,
        }
    )
    return env


def dags_test(
    dag_id: str, conf: dict[str, object], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`airflow dags test` of one DAG run with `conf` as its Params."""
    return subprocess.run(
        [str(BIN / "airflow"), "dags", "test", dag_id, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_state(result: subprocess.CompletedProcess[str]) -> str:
    """The final state of the DAG run `airflow dags test` reported."""
    for line in reversed(result.stdout.splitlines() + result.stderr.splitlines()):
        if "DagRun Finished" in line and "state=" in line:
            return line.split("state=")[1].split(",")[0]
    raise AssertionError("no DagRun Finished line:\n" + (result.stdout + result.stderr)[-3000:])


@contextmanager
def running_stream(
    dag_id: str,
    checkpoint: Path,
    env: dict[str, str],
    until: str = "batch",
    timeout: float = 240,
    *,
    conf: dict[str, object] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """A stream DAG run under `airflow dags test` in the background (its Params `conf`), yielded
    once its job is running (`until="running"`) or has finished a batch (`until="batch"`);
    killed on exit if it is still there."""
    from spark_jobs.status import read_status

    params = json.dumps(conf or {"shuffle_partitions": 2})
    stream = subprocess.Popen(
        [str(BIN / "airflow"), "dags", "test", dag_id, "-c", params],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, which a test may kill as a whole
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            status = read_status(str(checkpoint))
            ready = status is not None and (
                status.last_batch is not None if until == "batch" else status.state == "running"
            )
            if ready:
                break
            assert stream.poll() is None, stream.stdout.read() if stream.stdout else ""
            assert time.monotonic() < deadline, f"the stream never reached {until!r}"
            time.sleep(1)
        yield stream
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()


HEALTH_RUNNER = """
import runpy, sys, time
dag = runpy.run_path(sys.argv[1], run_name="stream_health_under_test")["dag"]
for line in sys.stdin:
    run = dag.test()
    print(f"HEALTH-RUN-END state={run.state if run else None}", flush=True)
    time.sleep(1)  # each run its own logical date (to the second)
"""


class HealthRuns:
    """Runs of the `stream_health` DAG through `dag.test()`, one after another in one Python
    process: Airflow is imported and the DAG serialized once (about 10 s), and each further run
    takes about half a second. Each `run()` returns the run's state and its output."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HEALTH_RUNNER, str(ROOT / "dags" / "stream_health.py")],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self) -> tuple[str, str]:
        """One run of the DAG now: its final state and what it printed."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        lines = []
        for line in self.process.stdout:
            if line.startswith("HEALTH-RUN-END state="):
                return line.strip().split("=", 1)[1], "".join(lines)
            lines.append(line)
        raise AssertionError("the stream_health runner ended:\n" + "".join(lines)[-3000:])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def health_runs(env: dict[str, str]) -> Iterator[HealthRuns]:
    """`HealthRuns` in `env`, ended on exit."""
    runs = HealthRuns(env)
    try:
        yield runs
    finally:
        runs.close()
