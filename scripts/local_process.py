"""A local server that a script starts detached, leading its own process group, and knows by the
pid file it writes in the server's folder: the Kafka broker (`kafka.py`) and the S3 server
(`s3.py`). Only a process whose command line still holds the server's own arguments counts as
that server, so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PidFile:
    """The pid file of a server, and the command-line arguments that tell its process."""

    path: Path
    #: Arguments the server's command line holds (its main class, its config file, ...).
    markers: tuple[str, ...]

    def pid(self) -> int | None:
        """The pid in the file, if there is one."""
        try:
            return int(self.path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def write(self, pid: int) -> None:
        """Record the pid of the server just started."""
        self.path.write_text(f"{pid}\n")

    def runs(self) -> bool:
        """Whether the file names a live process of this server (not a reused pid, no zombie)."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return all(marker.encode() in cmdline for marker in self.markers) and state != "Z"

    def stop(self, now: bool = False, grace_seconds: float = 30.0) -> bool:
        """End the server's process group: SIGTERM, then SIGKILL after `grace_seconds` (at once
        with `now`). False if it was not running. The pid file is removed either way."""
        pid = self.pid()
        if pid is None or not self.runs():
            self.path.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGKILL if now else signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while self.runs():
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                deadline = time.monotonic() + grace_seconds
            time.sleep(0.1)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        self.path.unlink(missing_ok=True)
        return True
