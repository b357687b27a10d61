"""One stream, one query: the checkpoint lease refuses live holders and takes over gone ones."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from spark_jobs.lease import Lease, LeaseHeld, LeaseHolder, process_started, read_lease
from spark_jobs.storage import Location
from tests.conftest import job_command


def lease_at(tmp_path: Path, owner: str, stream: str = "word_count", ttl: float = 60) -> Lease:
    return Lease(
        Location.of(str(tmp_path / "ck/_streamops/lease.json")), stream, owner, ttl_seconds=ttl
    )


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def write_holder(lease: Lease, holder: LeaseHolder) -> None:
    lease.lease_file.write_text_atomic(json.dumps(holder.__dict__))


def holder_of(**changes: object) -> LeaseHolder:
    now = time.time()
    base = LeaseHolder(
        stream="word_count",
        owner="old",
        host=socket.gethostname(),
        pid=os.getpid(),
        pid_started=process_started(os.getpid()),
        token="t",
        since=now - 100,
        renewed=now,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_live_holder_keeps_the_lease_and_is_named(tmp_path: Path) -> None:
    first = lease_at(tmp_path, "word_count_stream/run-1")
    first.acquire()
    with pytest.raises(LeaseHeld) as held:
        lease_at(tmp_path, "word_count_stream/run-2").acquire()
    message = str(held.value)
    assert f"stream word_count, pid {os.getpid()} on {socket.gethostname()}" in message
    assert "started by word_count_stream/run-1" in message
    assert "since 20" in message
    assert "last renewed 0 s ago" in message
    first.release()
    lease_at(tmp_path, "word_count_stream/run-2").acquire()


def test_a_lease_whose_process_died_is_taken_over(tmp_path: Path) -> None:
    lease = lease_at(tmp_path, "new")
    write_holder(lease, holder_of(pid=dead_pid(), pid_started=time.time() - 5))
    lease.acquire()
    assert lease.read() is not None
    assert lease.read().owner == "new"  # type: ignore[union-attr]


def test_a_reused_pid_does_not_keep_a_dead_holders_lease(tmp_path: Path) -> None:
    # Given a lease naming a live pid, but a process that started at another time (pid reuse)
    lease = lease_at(tmp_path, "new")
    write_holder(lease, holder_of(pid_started=process_started(os.getpid()) - 3600))
    # Then the holder counts as gone, and the lease is taken over
    assert read_lease(lease.lease_file).process_alive() is False  # type: ignore[union-attr]
    lease.acquire()
    assert lease.read().owner == "new"  # type: ignore[union-attr]


def test_a_zombie_holder_counts_as_gone(tmp_path: Path) -> None:
    # A child that exited and that nobody reaped yet: the pid exists, the driver does not.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert process_started(child.pid) is None
    finally:
        child.wait()


def test_a_lease_not_renewed_is_taken_over_even_from_another_host(tmp_path: Path) -> None:
    lease = lease_at(tmp_path, "new")
    write_holder(lease, holder_of(host="other-host", pid=1, renewed=time.time() - 3600))
    lease.acquire()
    assert lease.read().owner == "new"  # type: ignore[union-attr]


def test_a_fresh_lease_on_another_host_is_respected(tmp_path: Path) -> None:
    lease = lease_at(tmp_path, "new")
    write_holder(lease, holder_of(host="other-host", pid=1))
    with pytest.raises(LeaseHeld, match="pid 1 on other-host"):
        lease.acquire()


def test_an_unreadable_lease_is_taken_over(tmp_path: Path) -> None:
    lease = lease_at(tmp_path, "new")
    lease.lease_file.write_text_atomic("{half a lea")
    lease.acquire()
    assert lease.read().owner == "new"  # type: ignore[union-attr]


def test_release_never_removes_another_holders_lease(tmp_path: Path) -> None:
    mine = lease_at(tmp_path, "mine")
    mine.acquire()
    theirs = holder_of(host="other-host", pid=1, token="theirs")
    write_holder(mine, theirs)
    mine.release()
    assert mine.read() == theirs


def test_renewal_moves_the_renewal_time_and_a_takeover_is_reported(tmp_path: Path) -> None:
    # Given a held lease renewed every ttl/6 = 0.1 s
    lease = lease_at(tmp_path, "mine", ttl=0.6)
    lease.acquire()
    first = lease.read()
    lost: list[LeaseHolder | None] = []
    happened = threading.Event()
    lease.start_renewing(lambda holder: (lost.append(holder), happened.set()))
    time.sleep(0.35)
    renewed = lease.read()
    assert first is not None
    assert renewed is not None
    assert renewed.renewed > first.renewed
    assert renewed.since == first.since
    # When another process takes the lease over
    write_holder(lease, holder_of(token="thief", owner="thief"))
    # Then the renewer stops writing and reports the new holder
    assert happened.wait(2)
    assert lost[0] is not None
    assert lost[0].owner == "thief"
    lease.release()
    assert lease.read().owner == "thief"  # type: ignore[union-attr]


def test_a_job_started_by_hand_on_a_leased_checkpoint_exits_2_naming_the_holder(
    tmp_path: Path,
) -> None:
    # Given a live driver (this process) holding the checkpoint's lease
    (tmp_path / "in").mkdir()
    checkpoint = tmp_path / "ck"
    holder = Lease(
        Location.of(str(checkpoint / "_streamops" / "lease.json")),
        "word_count",
        "word_count_stream/manual__2026-11-30",
    )
    holder.acquire()
    try:
        # When a second driver is started by hand on the same checkpoint
        done = subprocess.run(
            job_command(
                "word_count",
                *("--input", str(tmp_path / "in"), "--sink", str(tmp_path / "sink")),
                *("--checkpoint", str(checkpoint)),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        holder.release()
    # Then it exits 2 with one line naming the holder, before touching the checkpoint or sink
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"word_count: error: --checkpoint {checkpoint}: checkpoint is ")
    assert f"leased by stream word_count, pid {os.getpid()} on {socket.gethostname()}" in lines[0]
    assert "(started by word_count_stream/manual__2026-11-30), since 20" in lines[0]
    assert "last renewed" in lines[0]
    assert not (tmp_path / "sink").exists()


def test_the_lease_names_the_spec_version_and_newer_fields_are_ignored(tmp_path: Path) -> None:
    lease_file = Location.of(str(tmp_path / "lease.json"))
    lease = Lease(lease_file, "wc", "me", spec_version="0123456789ab")
    lease.acquire()
    try:
        holder = read_lease(lease_file)
        assert holder is not None
        assert holder.spec_version == "0123456789ab"
        # A lease written by a newer version, with a field this one does not know: still held.
        data = json.loads(lease_file.read_text())
        lease_file.write_text_atomic(json.dumps({**data, "added_later": 1}))
        holder = read_lease(lease_file)
        assert holder is not None
        assert holder.token == lease.token
        assert not holder.is_gone()
    finally:
        lease.release()


def test_two_takeovers_of_one_gone_lease_leave_one_holder(tmp_path: Path) -> None:
    # Given a lease whose holder is gone, and two drivers taking it over, the second of which
    # reads it as gone just before the first has taken it over
    first, second = lease_at(tmp_path, "first"), lease_at(tmp_path, "second")
    write_holder(first, holder_of(host="other-host", pid=1, renewed=time.time() - 3600))
    read = second.read

    def read_then_first_takes_over() -> LeaseHolder | None:
        holder = read()
        if holder is not None and holder.token == "t":
            first.acquire()
        return holder

    second.read = read_then_first_takes_over  # type: ignore[method-assign]
    # Then the second is refused naming the first, whose lease stays in place
    with pytest.raises(LeaseHeld, match="started by first"):
        second.acquire()
    assert first.read().token == first.token  # type: ignore[union-attr]
    assert first.renew()
