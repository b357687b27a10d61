"""`scripts/s3.py`: a real S3-compatible server, started on a free port and stopped by its pid."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, free_port, load_script

SCRIPT = [sys.executable, str(ROOT / "scripts" / "s3.py")]


def process_state(pid: int) -> str | None:
    """A process's state letter (`Z`: exited, its parent has not reaped it yet), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_start_prints_the_three_settings_and_stop_ends_the_server(tmp_path: Path) -> None:
    import boto3

    # Given a server started on a free port with a bucket
    port = free_port()
    started = time.monotonic()
    done = subprocess.run(
        [*SCRIPT, "start", "--port", str(port), "--dir", str(tmp_path), "--bucket", "demo-bucket"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.monotonic() - started
    script = load_script("s3")
    folder = script.ServerFolder(tmp_path.resolve())
    try:
        assert done.returncode == 0, done.stderr
        # Then it printed exactly the three settings a client needs, and answers with them
        settings = dict(line.split("=", 1) for line in done.stdout.splitlines())
        assert list(settings) == ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        assert settings["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=settings["AWS_ENDPOINT_URL"],
            aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["demo-bucket"]
        # And the secret lives in a file of its owner's alone, not on the server's command line
        assert (tmp_path / "s3.json").stat().st_mode & 0o077 == 0
        pid = folder.pid()
        assert pid is not None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert settings["AWS_SECRET_ACCESS_KEY"].encode() not in cmdline
        # And a second start on the same folder is refused, naming the running one
        again = subprocess.run(
            [*SCRIPT, "start", "--dir", str(tmp_path), "--bucket", "demo-bucket"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 1
        assert f"a server of {tmp_path.resolve()} runs already (pid {pid})" in again.stderr
    finally:
        stopped = subprocess.run(
            [*SCRIPT, "stop", "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    # And stop ended its process group
    assert stopped.returncode == 0, stopped.stderr
    assert not script.is_running(folder)
    assert process_state(pid) in (None, "Z"), "the server's process still runs"
    assert took < 30, f"start took {took:.1f} s"


def test_a_bad_bucket_name_is_refused_before_anything_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [*SCRIPT, "start", "--port", "1", "--dir", str(tmp_path), "--bucket", "B"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("s3: error: --bucket 'B': a bucket name has 3 to 63")
    assert not list(tmp_path.iterdir())


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*SCRIPT, "start", "--port", str(port), "--dir", str(tmp_path), "--bucket", "bkt"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    assert f"s3: error: --port {port}: another process listens on 127.0.0.1:{port}" in done.stderr
    assert not load_script("s3").is_running(load_script("s3").ServerFolder(tmp_path.resolve()))
