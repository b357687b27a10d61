"""Ctrl+C in a terminal stops a job the seed's way: the batch finishes, one line, exit 0.

A shell delivers Ctrl+C as SIGINT to the terminal's foreground process group: the job's Python
driver and the JVM it launched. Each job runs here in a process group of its own, which gets
SIGINT the same way (`os.killpg`). A second Ctrl+C stops at once, still without a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from spark_jobs.status import read_status
from tests.conftest import drop_file, job_command, read_sink

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def start_job(tmp_path: Path, job: str) -> subprocess.Popen[str]:
    argv = [
        "--input", str(tmp_path / "in"),
        "--sink", str(tmp_path / "sink"),
        "--checkpoint", str(tmp_path / "ck"),
        "--shuffle-partitions", "2",
        "--console",
    ]  # fmt: skip
    return subprocess.Popen(
        job_command(job, *argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, like a shell's foreground job
    )


def wait_for_first_batch(tmp_path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = read_status(str(tmp_path / "ck"))
        if status is not None and status.last_batch is not None:
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.5)
    raise AssertionError("no micro-batch within 120 s")


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"the job did not end within 90 s of Ctrl+C:\n{output}") from None
    return proc.returncode, output


@pytest.mark.parametrize("job", ["word_count", "running_total"])
def test_ctrl_c_finishes_the_batch_and_exits_0_and_a_second_one_stops_at_once(
    tmp_path: Path, job: str
) -> None:
    # Given a job counting a file, as the seed's terminal workflow runs it
    drop_file(tmp_path / "in", "a.txt", "hello spark\nhello world\n")
    proc = start_job(tmp_path, job)
    try:
        wait_for_first_batch(tmp_path, proc)
        # When Ctrl+C is pressed once
        os.killpg(proc.pid, signal.SIGINT)
        code, output = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Then it exits 0 after saying so, with no traceback, its batch in the sink
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "KeyboardInterrupt" not in output, output
    assert "received SIGINT: stopping after the running micro-batch" in output, output
    assert f"{job} stopped after sink batch 0" in output, output
    value = "count" if job == "word_count" else "total"
    rows = read_sink(tmp_path / "sink")
    assert sorted(zip(rows["word"], rows[value], strict=True)) == [
        ("hello", 2),
        ("spark", 1),
        ("world", 1),
    ]

    # When it is started again, and Ctrl+C is pressed twice
    drop_file(tmp_path / "in", "b.txt", "hello again\n")
    first = read_status(str(tmp_path / "ck"))
    assert first is not None
    proc = start_job(tmp_path, job)
    try:
        deadline = time.monotonic() + 120
        while (status := read_status(str(tmp_path / "ck"))) is None or (
            status.started_at == first.started_at or status.state != "running"
        ):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the job did not start within 120 s"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        code, output = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Then it stops at once with one line and a non-zero code, still with no traceback
    assert code == 128 + signal.SIGINT, output
    assert "Traceback" not in output, output
    assert "KeyboardInterrupt" not in output, output
    assert f"{job}: SIGINT again: stopping now" in output, output
