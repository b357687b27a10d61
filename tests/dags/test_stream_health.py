"""`stream_health` on a real Airflow: `dag.test()` of the DAG file against a temporary data root.

Airflow reads its configuration and opens its metadata database when it is first imported, so
each run happens in its own process: `python dags/stream_health.py`, whose `__main__` block calls
`dag.test()`, with AIRFLOW_HOME (migrated once per session) and STREAMOPS_DATA_ROOT pointing at
test folders.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from spark_jobs.layout import CheckpointLayout
from spark_jobs.lease import LeaseHolder, process_started
from spark_jobs.status import StreamStatus, write_status
from streamops import registry
from streamops.notifiers import StreamAlertNotifier
from streamops.supervision import dagrun_state
from tests.conftest import ROOT
from tests.dags.conftest import HealthRuns, airflow_env, health_runs, run_state

DAG_FILE = ROOT / "dags" / "stream_health.py"


def run_health_dag(
    airflow_home: Path, data_root: Path, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """One run of the DAG through `dag.test()`, as `python dags/stream_health.py` does it."""
    return subprocess.run(
        [sys.executable, str(DAG_FILE)],
        env=airflow_env(airflow_home, data_root, **extra_env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def register(data_root: Path, stream: str, desired: registry.Desired = "running") -> str:
    """Record a stream as its operator does when it starts it; return its checkpoint."""
    base = data_root / "streams" / stream
    (base / "input").mkdir(parents=True)
    record = registry.StreamRecord(
        stream=stream,
        job="word_count",
        checkpoint=str(base / "checkpoint"),
        sink=str(base / "sink"),
        input=str(base / "input"),
        trigger_interval="1 second",
        desired=desired,
        dag_id="word_count_stream",
        run_id="manual__2026-01-05T12:00:00+00:00",
    )
    registry.save(record, str(data_root))
    return record.checkpoint


def running_status(checkpoint: str, pid: int) -> StreamStatus:
    """What a job's listener writes while its query runs, now."""
    return StreamStatus(
        job="word_count",
        checkpoint=checkpoint,
        sink=checkpoint.replace("checkpoint", "sink"),
        state="running",
        pid=pid,
        host=socket.gethostname(),
        trigger_interval="1 second",
    )


@pytest.fixture
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


class Webhook(BaseHTTPRequestHandler):
    """A local Alertmanager-style receiver: keeps each body; answers 503 while `down`."""

    bodies: ClassVar[list[dict[str, Any]]] = []
    down = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(503 if Webhook.down else 200)
        self.end_headers()
        if not Webhook.down:
            Webhook.bodies.append(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    """The `streamops_webhook` connection of a receiver running in this test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Webhook.bodies, Webhook.down = [], False
    yield json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{server.server_port}"})
    server.shutdown()
    server.server_close()


@pytest.mark.airflow
def test_a_dead_driver_is_one_incident_notified_once_and_resolved_once(
    airflow_home: Path, tmp_path: Path, dead_pid: int, webhook: str
) -> None:
    # Given a stream that should run, whose status says 'running' but whose driver is gone,
    # a stopped stream that must not be checked, and a webhook receiver that is down at first
    checkpoint = register(tmp_path, "word_count")
    write_status(running_status(checkpoint, dead_pid))
    stopped = register(tmp_path, "old_counts", desired="stopped")
    write_status(running_status(stopped, dead_pid))
    env = airflow_env(airflow_home, tmp_path, AIRFLOW_CONN_STREAMOPS_WEBHOOK=webhook)
    Webhook.down = True
    with health_runs(env) as health:
        checked_three_times(tmp_path, checkpoint, dead_pid, health)


def checked_three_times(tmp_path: Path, checkpoint: str, dead_pid: int, health: HealthRuns) -> None:
    # When the health DAG runs
    state, output = health.run()
    # Then its check fails, naming the stream, the signal and the dead pid
    assert state == "failed", output[-3000:]
    assert "checking 1 streams: ['word_count']; not expected to run: ['old_counts']" in output
    expected = (
        f"stream word_count: not_running (desired running, but its driver (pid {dead_pid} on "
        f"{socket.gethostname()}) is gone"
    )
    assert expected in output
    # And one incident opened, recorded once, its webhook delivery to be retried
    assert "could not notify webhook of firing not_running: retried at the next check" in output
    alerts = tmp_path / "_streamops" / "alerts.jsonl"
    (alert,) = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert (alert["kind"], alert["stream"], alert["signal"]) == (
        "firing",
        "word_count",
        "not_running",
    )
    assert alert["message"].startswith(expected)

    # When the webhook is back and the health DAG runs again, the driver still gone
    Webhook.down = False
    assert health.run()[0] == "failed"
    # Then nothing new was notified, but the webhook got the firing notification it missed
    assert len(alerts.read_text().splitlines()) == 1
    assert [b["status"] for b in Webhook.bodies] == ["firing"]

    # When the driver is back and the health DAG runs
    write_status(running_status(checkpoint, os.getpid()))
    state, output = health.run()
    assert state == "success", output[-3000:]
    # Then one resolved notification went out, everywhere, with the incident's dedup key
    kinds = [json.loads(line)["kind"] for line in alerts.read_text().splitlines()]
    assert kinds == ["firing", "resolved"]
    assert [b["status"] for b in Webhook.bodies] == ["firing", "resolved"]
    assert Webhook.bodies[0]["groupKey"] == Webhook.bodies[1]["groupKey"]
    incident = json.loads(
        (tmp_path / "_streamops/incidents/word_count~not_running.json").read_text()
    )
    assert (incident["state"], incident["checks"]) == ("resolved", 2)


@pytest.mark.airflow
def test_a_healthy_stream_passes_its_check(airflow_home: Path, tmp_path: Path) -> None:
    # Given a stream whose driver is alive (this test's process) and has just reported
    checkpoint = register(tmp_path, "word_count")
    write_status(running_status(checkpoint, os.getpid()))
    # When the health DAG runs
    result = run_health_dag(airflow_home, tmp_path)
    # Then the run succeeds and nothing was alerted
    assert run_state(result) == "success", (result.stdout + result.stderr)[-3000:]
    assert "checking 1 streams: ['word_count']" in result.stdout + result.stderr
    assert not (tmp_path / "_streamops" / "alerts.jsonl").exists()


def load_dag_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("STREAMOPS_HEALTH_SCHEDULE", "*/5 * * * *")
    spec = importlib.util.spec_from_file_location("stream_health_under_test", DAG_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dag_is_wired_for_incidents(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = load_dag_module(monkeypatch).dag
    assert dag.dag_id == "stream_health"
    assert dag.schedule == "*/5 * * * *"  # STREAMOPS_HEALTH_SCHEDULE, read at parse time
    assert (dag.catchup, dag.max_active_runs) == (False, 1)
    assert set(dag.tags) == {"streaming", "monitoring"}
    assert dag.doc_md is not None
    assert "STREAMOPS_HEALTH_BACKLOG_FILES" in dag.doc_md
    for task_id in ("list_streams", "check_stream", "stop_orphan_drivers"):
        task = dag.get_task(task_id)
        assert (task.owner, task.retries) == ("data-platform", 0)
        callbacks = task.on_failure_callback or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        # A failed check notifies through its incident, not once per failed task
        expected = [] if task_id == "check_stream" else [StreamAlertNotifier]
        assert [type(cb) for cb in callbacks] == expected, task_id
    assert dag.get_task("check_stream").upstream_task_ids == {"list_streams"}


def test_parsing_the_dag_imports_no_spark_pandas_or_expectations() -> None:
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(sorted(m for m in ('pyspark', 'pandas', 'great_expectations') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(DAG_FILE)],
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.airflow
def test_a_driver_whose_stream_run_is_gone_is_stopped_once(
    airflow_home: Path, tmp_path: Path
) -> None:
    # Given a live process holding a stream's lease for a stream DAG run that does not exist
    # (deleted), and one started by hand, which is not Airflow's to stop
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    by_hand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        for stream, proc, owner in (
            ("word_count", orphan, "word_count_stream/manual__2026-01-05T12:00:00+00:00"),
            ("mine", by_hand, "me@laptop (command line)"),
        ):
            checkpoint = register(tmp_path, stream)
            holder = LeaseHolder(
                stream=stream,
                owner=owner,
                host=socket.gethostname(),
                pid=proc.pid,
                pid_started=process_started(proc.pid),
                token=stream,
                since=time.time(),
                renewed=time.time(),
            )
            CheckpointLayout.of(checkpoint).lease_file.write_text_atomic(
                json.dumps(holder.__dict__)
            )
        # When the health DAG runs
        result = run_health_dag(airflow_home, tmp_path)
        output = result.stdout + result.stderr
        # Then the orphan was asked to stop (stop request and SIGTERM), and said so
        assert orphan.wait(30) == -signal.SIGTERM
        assert "stream word_count: its driver (stream word_count, pid " in output, output[-3000:]
        assert "(started by word_count_stream/manual__2026-01-05T12:00:00+00:00)" in output
        assert "has no active run of its DAG: asked it to stop at the next batch boundary" in output
        stop_request = tmp_path / "streams/word_count/checkpoint/_streamops/stop-request"
        assert stop_request.exists()
        # And the driver started by hand runs on
        assert by_hand.poll() is None
    finally:
        for proc in (orphan, by_hand):
            proc.kill()
            proc.wait()


def test_a_dagrun_state_is_read_as_a_plain_string() -> None:
    from airflow.sdk.api.datamodels._generated import DagRunState

    class FakeTI:
        def get_dagrun_state(self, dag_id: str, run_id: str) -> DagRunState:
            if run_id == "gone":
                raise RuntimeError("API_SERVER_ERROR: {'status_code': 404, 'reason': 'not_found'}")
            if run_id == "broken":
                raise RuntimeError("API_SERVER_ERROR: {'status_code': 500}")
            return DagRunState.RUNNING

    assert dagrun_state(FakeTI(), "d", "r") == "running"
    assert dagrun_state(FakeTI(), "d", "gone") is None
    with pytest.raises(RuntimeError):
        dagrun_state(FakeTI(), "d", "broken")
