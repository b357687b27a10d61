"""Driver log rotation: the stream trigger keeps a running driver's log under its size limit.

A real process stands in for the driver: like the operator's spark-submit, it has the log as its
stdout, opened in append mode, in a session of its own, and writes numbered lines while the real
trigger copies them into the task log and rotates the file under it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamops.registry import DRIVER_LOG_KEEP, driver_log_limit
from streamops.triggers import StreamDriverTrigger, read_new_lines

WRITER = """
import sys, time
for i in range(int(sys.argv[1])):
    print(f"{i:08d} " + "x" * 90, flush=True)
    time.sleep(0.001)
"""
LINES = 3_000  # about 300 KB over 3-4 s
LIMIT = 20_000  # bytes


def test_the_limit_is_100_mb_by_default_and_0_turns_rotation_off() -> None:
    assert driver_log_limit({}) == 100 * 1024 * 1024
    assert driver_log_limit({"STREAMOPS_DRIVER_LOG_MAX_MB": "0"}) == 0
    assert driver_log_limit({"STREAMOPS_DRIVER_LOG_MAX_MB": " 0.5 "}) == 512 * 1024
    for bad in ("-1", "lots", "nan", "inf"):
        with pytest.raises(ValueError, match=f"STREAMOPS_DRIVER_LOG_MAX_MB='{bad}'"):
            driver_log_limit({"STREAMOPS_DRIVER_LOG_MAX_MB": bad})


def test_a_rotated_log_is_read_again_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "driver.log"
    log.write_text("one\ntwo\n")
    # A trigger rebuilt after a triggerer restart holds the offset it had before the rotation.
    assert read_new_lines(str(log), 5_000) == (["one", "two"], 8)
    assert read_new_lines(str(log), 4) == (["two"], 8)


def test_a_rotated_copy_is_read_to_its_last_byte(tmp_path: Path) -> None:
    copy = tmp_path / "driver.log.1"
    copy.write_text("one\ntwo")
    assert read_new_lines(str(copy), 0) == (["one"], 4)
    # Nothing will finish the copy's last line: its newline went to the emptied log.
    assert read_new_lines(str(copy), 4, last=True) == (["two"], 7)
    assert read_new_lines(str(copy), 7, last=True) == ([], 7)
    # A read stops after 1 MiB: where it stopped is not the copy's end, and no line is cut there.
    line = b"y" * 99 + b"\n"
    copy.write_bytes(line * 11_000 + b"tail")
    lines, offset = read_new_lines(str(copy), 0, last=True)
    assert set(lines) == {"y" * 99}
    assert offset == len(lines) * 100 < 1 << 20


def test_a_line_split_by_a_rotation_reaches_the_task_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "driver.log"
    trigger = StreamDriverTrigger(
        stream="wc", checkpoint=str(tmp_path), token="t", driver_log=str(log), log_max_bytes=10
    )
    trigger._log = logging.getLogger("driver-log-test")
    caplog.set_level(logging.INFO, logger="driver-log-test")
    with log.open("ab", buffering=0) as driver:
        driver.write(b"first line\nsplit")  # the text of a line, then a rotation
        trigger._copy_log()
        driver.write(b"\nnext\n")  # its newline, in the emptied log
        trigger._copy_log()
    assert Path(f"{log}.1").read_bytes() == b"first line\nsplit"
    copied = [r.getMessage() for r in caplog.records if r.getMessage().startswith("driver:")]
    assert copied == ["driver: first line", "driver: split", "driver: ", "driver: next"]


def test_a_running_driver_log_is_rotated_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "driver.log"
    trigger = StreamDriverTrigger(
        stream="wc",
        checkpoint=str(tmp_path / "checkpoint"),
        token="t",
        driver_log=str(log),
        log_max_bytes=LIMIT,
    )
    assert StreamDriverTrigger(**trigger.serialize()[1]).log_max_bytes == LIMIT
    trigger._log = logging.getLogger("driver-log-test")  # what the task log would receive
    caplog.set_level(logging.INFO, logger="driver-log-test")
    with log.open("ab") as out:
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(LINES)],
            # Unbuffered, print writes a line's text and its newline apart, as a driver run
            # with PYTHONUNBUFFERED does: a rotation can fall between the two.
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while writer.poll() is None:
            trigger._copy_log()
            time.sleep(0.05)
        assert writer.returncode == 0
    finally:
        if writer.poll() is None:
            os.killpg(writer.pid, 9)
            writer.wait()
    trigger._copy_log()
    trigger._copy_log()

    copied = [int(m.group(1)) for m in re.finditer(r"driver: (\d{8}) x", caplog.text, re.MULTILINE)]
    rotations = caplog.text.count("its lines so far are in")
    assert rotations >= LINES * 96 // LIMIT // 2, caplog.text[-2_000:]
    # Every copy kept, the oldest dropped; none has a hole of NUL bytes, which a driver that
    # wrote at its old offset into the emptied file would leave.
    assert [n for n in range(1, 6) if Path(f"{log}.{n}").exists()] == list(
        range(1, DRIVER_LOG_KEEP + 1)
    )
    copies = [Path(f"{log}.{n}") for n in range(1, DRIVER_LOG_KEEP + 1)]
    for path in [log, *copies]:
        assert b"\0" not in path.read_bytes(), path
    # A log is rotated at the first poll that finds it at its limit, and only then.
    assert log.stat().st_size < LIMIT
    assert all(path.stat().st_size >= LIMIT for path in copies)
    # The task log has every line once, in order, up to the last, and every line still in a
    # file; only the lines written in the instant between a copy and its truncation are in
    # neither.
    in_files = set()
    for path in [log, *copies]:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            # Each line whole, but for a line split by a rotation: its text ends a copy, and
            # its newline starts the next file as an empty line. On a failure, say where.
            if number == 0 and not line:
                continue
            around = lines[max(0, number - 1) : number + 2]
            size = path.stat().st_size
            assert re.fullmatch(r"\d{8} x{90}", line), (
                f"{path.name} ({size} B), line {number} of {len(lines)}: {around}"
            )
            in_files.add(int(line.split()[0]))
    assert copied == sorted(set(copied))
    assert copied[-1] == LINES - 1
    assert in_files <= set(copied)
    assert len(copied) >= 0.9 * LINES, f"{LINES - len(copied)} lines lost in {rotations} rotations"
