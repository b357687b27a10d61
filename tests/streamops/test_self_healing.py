"""Self-healing of a hung driver: the stream trigger kills a live driver that makes no progress,
and its incident says it was restarted. A real process holds the lease here (the driver's
stand-in: it renews the lease and never writes a status), watched by the real trigger."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spark_jobs.layout import CheckpointLayout
from spark_jobs.lease import read_lease
from spark_jobs.status import StreamStatus, write_status
from streamops import triggers
from streamops.health import Breach
from streamops.incidents import AlertSettings, IncidentStore, update
from streamops.supervision import stall_restart_seconds
from streamops.triggers import StreamDriverTrigger
from tests.conftest import ROOT

HOLDER = """
import sys, time
from spark_jobs.layout import CheckpointLayout
from spark_jobs.lease import Lease
lease = Lease(CheckpointLayout.of(sys.argv[1]).lease_file, "wc", "word_count_stream/run")
lease.acquire()
lease.start_renewing(lambda holder: None)
print("holding", flush=True)
time.sleep(600)
"""


def test_the_default_is_three_stall_limits_and_0_turns_it_off() -> None:
    assert stall_restart_seconds("1 second", {}) == 180  # 3 x the 60 s floor
    assert stall_restart_seconds("30 seconds", {}) == 900  # 3 x 10 intervals
    assert stall_restart_seconds("1 second", {"STREAMOPS_STALL_RESTART_SECONDS": "0"}) == 0
    with pytest.raises(ValueError, match="STREAMOPS_STALL_RESTART_SECONDS='-1'"):
        stall_restart_seconds("1 second", {"STREAMOPS_STALL_RESTART_SECONDS": "-1"})


def first_event(trigger: StreamDriverTrigger, timeout: float) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(run(), timeout))


@pytest.mark.parametrize("stall_restart", [0.0, 3.0])
def test_a_live_driver_without_progress_is_killed_only_with_self_healing_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stall_restart: float
) -> None:
    monkeypatch.setattr(triggers, "MIN_DEFERRAL_SECONDS", 0.0)
    checkpoint = str(tmp_path / "checkpoint")
    holder_process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, checkpoint],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder_process.stdout is not None
        assert holder_process.stdout.readline().strip() == "holding"
        holder = read_lease(CheckpointLayout.of(checkpoint).lease_file)
        assert holder is not None
        # Its last status is a minute old: no batch, no idle heartbeat since
        old = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        write_status(
            StreamStatus(
                job="word_count",
                checkpoint=checkpoint,
                sink=str(tmp_path / "sink"),
                state="running",
                pid=holder.pid,
                updated_at=old,
            )
        )
        trigger = StreamDriverTrigger(
            stream="wc",
            checkpoint=checkpoint,
            token=holder.token,
            driver_log=str(tmp_path / "driver.log"),
            poll_interval=0.2,
            stall_restart_seconds=stall_restart,
        )
        if stall_restart == 0:
            # Then, with self-healing off, the trigger keeps watching the live driver
            with pytest.raises(TimeoutError):
                first_event(trigger, timeout=5)
            assert holder_process.poll() is None
            return
        # Then the trigger kills it and says why, for the task to restart it
        event = first_event(trigger, timeout=30)
        assert holder_process.wait(10) == -signal.SIGKILL
        assert event["hung"].startswith(f"the driver (pid {holder.pid}) made no progress for ")
        assert "restarted from its checkpoint" in event["hung"]
    finally:
        if holder_process.poll() is None:
            os.killpg(holder_process.pid, signal.SIGKILL)
            holder_process.wait()


def test_an_incident_open_when_the_driver_was_restarted_says_so(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []

    def send(event: dict[str, Any], channels: list[str] | None) -> list[str]:
        sent.append(event)
        return []

    store = IncidentStore(str(tmp_path))
    t0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    stalled = Breach("wc", "stalled", "200 s", "stream wc: stalled")
    restart = ("2026-11-30T03:03:00Z", "the driver (pid 7) made no progress for 181 s")
    update("wc", [stalled], t0, send, AlertSettings(), store, log=print)
    update("wc", [], t0 + timedelta(minutes=5), send, AlertSettings(), store, restart=restart)
    assert [e["kind"] for e in sent] == ["firing", "resolved"]
    assert sent[0]["note"] is None
    assert sent[1]["note"] == (
        "its driver was restarted at 2026-11-30T03:03:00+00:00: the driver (pid 7) made no "
        "progress for 181 s"
    )
    # A restart from before the incident is not its business
    update("wc", [stalled], t0 + timedelta(hours=1), send, AlertSettings(), store, restart=restart)
    assert sent[-1]["note"] is None
