"""A frozen driver (SIGSTOP to its process group) under real Airflow: the stream DAG run under
`airflow dags test` (its trigger runs in that process), `stream_health` runs through `dag.test()`
(one process, run after run: `HealthRuns`), and a webhook receiver runs in the test.

- Self-healing off: frozen for 6 health checks, then resumed (SIGCONT). One incident: exactly
  one firing and one resolved notification, in the alerts file and at the webhook, lasting from
  the first failed check to the first passing one.
- Self-healing on: frozen; the stream's trigger kills the driver, the task restarts it from the
  checkpoint, the stream commits batches again (its sink exact), and the incident's resolved
  notification says the driver was restarted.

Each case is a test of its own, on its own data root, so that a parallel run takes them side by
side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from spark_jobs.layout import CheckpointLayout
from spark_jobs.lease import LeaseHolder, read_lease
from spark_jobs.status import read_status
from tests.conftest import drop_file
from tests.dags.conftest import HealthRuns, airflow_env, health_runs, running_stream
from tests.dags.test_stream_health import Webhook, webhook

__all__ = ["webhook"]  # a fixture, used by name

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow]

HEALTH = {
    # A stream without progress for 20 s is stalled (default: 60 s, or 10 trigger intervals; an
    # idle stream reports every 10 s)
    "STREAMOPS_HEALTH_STALL_FLOOR_SECONDS": "20",
    # The lease outlives the freeze: what restarts the driver is the stall, not the lease's TTL
    "STREAMOPS_LEASE_TTL_SECONDS": "900",
}


def lease_of(checkpoint: Path) -> LeaseHolder | None:
    return read_lease(CheckpointLayout.of(str(checkpoint)).lease_file)


@contextmanager
def frozen(holder: LeaseHolder) -> Iterator[None]:
    """The driver's process group (spark-submit's JVM and the job's Python) stopped."""
    group = os.getpgid(holder.pid)
    assert group != os.getpgid(0)
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        # Resumed (or, if it was killed meanwhile, nothing left to resume)
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGCONT)


def notifications(root: Path) -> list[tuple[str, str]]:
    alerts = root / "_streamops" / "alerts.jsonl"
    if not alerts.exists():
        return []
    return [
        (line["kind"], line["signal"])
        for line in map(json.loads, alerts.read_text().splitlines())
        if "kind" in line
    ]


def wait_until(check: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()  # type: ignore[operator]
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s: {what}"
        time.sleep(1)


def stop(checkpoint: Path, stream: subprocess.Popen[str]) -> str:
    """Ask the stream to stop at a batch boundary; its `airflow dags test` output."""
    CheckpointLayout.of(str(checkpoint)).stop_request.write_text_atomic("stop\n")
    output, _ = stream.communicate(timeout=240)
    return output


def health_env(airflow_home: Path, root: Path, webhook: str) -> dict[str, str]:
    """`stream_health`'s environment: the tight thresholds above, alerts to `webhook`."""
    return airflow_env(airflow_home, root, **HEALTH, AIRFLOW_CONN_STREAMOPS_WEBHOOK=webhook)


def test_a_frozen_driver_is_one_incident_and_resumes_with_self_healing_off(
    airflow_home: Path, tmp_path: Path, webhook: str
) -> None:
    drop_file(tmp_path / "streams/word_count/input", "1.txt", "hello spark\n")
    with health_runs(health_env(airflow_home, tmp_path, webhook)) as health:
        frozen_driver_without_self_healing(airflow_home, tmp_path, health)


def test_a_frozen_driver_is_restarted_with_self_healing_on(
    airflow_home: Path, tmp_path: Path, webhook: str
) -> None:
    drop_file(tmp_path / "streams/word_count/input", "1.txt", "hello spark\n")
    with health_runs(health_env(airflow_home, tmp_path, webhook)) as health:
        frozen_driver_with_self_healing(airflow_home, tmp_path, health)


def frozen_driver_without_self_healing(
    airflow_home: Path, tmp_path: Path, health: HealthRuns
) -> None:
    checkpoint = tmp_path / "streams/word_count/checkpoint"
    # Given a running stream with self-healing off
    env = airflow_env(airflow_home, tmp_path, **HEALTH, STREAMOPS_STALL_RESTART_SECONDS="0")
    with running_stream("word_count_stream", checkpoint, env) as stream:
        holder = lease_of(checkpoint)
        assert holder is not None
        assert health.run()[0] == "success"
        # When its driver is frozen for 6 health checks
        with frozen(holder):
            frozen_at = time.time()
            time.sleep(25)
            states = [health.run()[0]]
            first_check_done = time.time()
            states += [health.run()[0] for _ in range(5)]
            assert states == ["failed"] * 6
            resumed_at = time.time()
        # Then, once resumed, it is neither killed nor restarted: it reports again
        wait_until(
            lambda: (
                (s := read_status(str(checkpoint))) is not None
                and datetime.fromisoformat(s.updated_at).timestamp() > resumed_at
            ),
            60,
            "a status written after SIGCONT",
        )
        assert health.run()[0] == "success"
        resolved_by = time.time()
        still = lease_of(checkpoint)
        assert still is not None
        assert still.pid == holder.pid
        output = stop(checkpoint, stream)
    assert run_state_of(output) == "success", output[-3000:]
    # And on-call got one incident: one firing, one resolved notification, at the webhook too
    assert notifications(tmp_path) == [("firing", "stalled"), ("resolved", "stalled")]
    assert [b["status"] for b in Webhook.bodies] == ["firing", "resolved"]
    assert len({b["groupKey"] for b in Webhook.bodies}) == 1
    resolved = json.loads((tmp_path / "_streamops/alerts.jsonl").read_text().splitlines()[-1])
    opened = datetime.fromisoformat(resolved["opened_at"]).timestamp()
    ended = datetime.fromisoformat(resolved["resolved_at"]).timestamp()
    # ... lasting from the first check that saw the stall to the first that saw it report
    assert frozen_at + 20 <= opened <= first_check_done
    assert resumed_at <= ended <= resolved_by
    assert resolved["duration_seconds"] == round(ended - opened)


def frozen_driver_with_self_healing(airflow_home: Path, tmp_path: Path, health: HealthRuns) -> None:
    checkpoint = tmp_path / "streams/word_count/checkpoint"
    source = tmp_path / "streams/word_count/input"
    # Given a running stream with self-healing on (a driver without progress for 60 s is hung)
    env = airflow_env(airflow_home, tmp_path, **HEALTH, STREAMOPS_STALL_RESTART_SECONDS="60")
    with running_stream("word_count_stream", checkpoint, env, until="running") as stream:
        holder = wait_until(lambda: lease_of(checkpoint), 60, "the new driver")
        assert isinstance(holder, LeaseHolder)
        # When its driver is frozen, and stream_health checks it meanwhile
        with frozen(holder):
            time.sleep(25)
            assert health.run()[0] == "failed"
            # Then its trigger kills it, and the task starts a new driver from the checkpoint
            restarted = wait_until(
                lambda: (h := lease_of(checkpoint)) is not None and h.pid != holder.pid and h,
                240,
                "a new driver after the hung one",
            )
        assert isinstance(restarted, LeaseHolder)
        assert not Path(f"/proc/{holder.pid}").exists() or _zombie(holder.pid)
        # And the stream commits batches again, exactly
        drop_file(source, "2.txt", "hello again\n")
        wait_until(
            lambda: (
                (tmp_path / "streams/word_count/sink").exists()
                and sink_counts(tmp_path) == {"hello": 2, "spark": 1, "again": 1}
            ),
            120,
            f"the new file in the sink (has {sink_counts(tmp_path)})",
        )
        # And the next check resolves the incident, saying the driver was restarted
        state, output = health.run()
        assert state == "success", output[-3000:]
        output = stop(checkpoint, stream)
    assert "made no progress for" in output, output[-3000:]
    assert run_state_of(output) == "success", output[-3000:]
    assert notifications(tmp_path) == [("firing", "stalled"), ("resolved", "stalled")]
    resolved = json.loads((tmp_path / "_streamops/alerts.jsonl").read_text().splitlines()[-1])
    assert resolved["note"].startswith("its driver was restarted at ")
    assert "made no progress for" in resolved["note"]
    assert [b["status"] for b in Webhook.bodies] == ["firing", "resolved"]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def sink_counts(root: Path) -> dict[str, int]:
    sink = root / "streams/word_count/sink"
    if not any(sink.glob("part-*.parquet")):
        return {}
    frame = pd.read_parquet(sink)
    return {str(k): int(v) for k, v in frame.groupby("word")["count"].sum().items()}


def run_state_of(output: str) -> str:
    for line in reversed(output.splitlines()):
        if "DagRun Finished" in line and "state=" in line:
            return line.split("state=")[1].split(",")[0]
    return "unknown"
