"""One stream, one query: a lock beside the checkpoint that dead owners cannot keep forever.

Spark itself refuses a second query on a checkpoint only inside one SparkSession. Two drivers
(a retry, a double trigger, a scheduler restart that re-queues a running task) would both write
the same checkpoint and corrupt it. The lock file names its owner and is refreshed by a heartbeat;
it is stale, and taken over, when the heartbeat is older than `ttl_seconds`, or when the owner ran
on this host and its process is gone.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from pyarrow import fs as pafs

from spark_jobs.storage import Location

DEFAULT_TTL_SECONDS = 120.0
HEARTBEAT_SECONDS = 20.0


class StreamLocked(Exception):
    """Another live owner runs the query on this checkpoint."""

    def __init__(self, holder: LockHolder, lock_file: Location) -> None:
        super().__init__(
            f"already running as {holder.owner} (pid {holder.pid} on {holder.host}, last heartbeat "
            f"{time.time() - holder.heartbeat:.0f} s ago; lock {lock_file}). Stop that run first "
            "(stream_control, action stop), or wait for it to end."
        )
        self.holder = holder


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as written in the lock file."""

    owner: str
    host: str
    pid: int
    token: str
    heartbeat: float

    def is_stale(self, ttl_seconds: float, now: float | None = None) -> bool:
        """Whether the holder is gone: no heartbeat for `ttl_seconds`, or a dead local process."""
        if (now or time.time()) - self.heartbeat > ttl_seconds:
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False


class StreamLock:
    """The lock of one checkpoint, held by one owner (e.g. a task instance)."""

    def __init__(
        self, lock_file: Location, owner: str, ttl_seconds: float = DEFAULT_TTL_SECONDS
    ) -> None:
        self.lock_file = lock_file
        self.owner = owner
        self.ttl_seconds = ttl_seconds
        self.token = uuid.uuid4().hex
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _holder(self) -> LockHolder:
        return LockHolder(self.owner, socket.gethostname(), os.getpid(), self.token, time.time())

    def read(self) -> LockHolder | None:
        """The current holder, or None when nobody holds the lock."""
        try:
            return LockHolder(**json.loads(self.lock_file.read_text()))
        except (FileNotFoundError, OSError, ValueError, TypeError):
            return None if not self.lock_file.exists() else LockHolder("unreadable", "?", -1, "", 0)

    def _create_exclusive(self) -> bool:
        data = json.dumps(asdict(self._holder())).encode()
        if isinstance(self.lock_file.filesystem, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(self.lock_file.path), exist_ok=True)
            try:
                fd = os.open(self.lock_file.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        # Object stores have no exclusive create: write, wait, and check that we won.
        if self.lock_file.exists():
            return False
        self.lock_file.write_bytes_atomic(data)
        time.sleep(1.0)
        holder = self.read()
        return holder is not None and holder.token == self.token

    def acquire(self) -> None:
        """Take the lock, taking over a stale one. Raises `StreamLocked` if a live owner has it."""
        for _ in range(3):
            if self._create_exclusive():
                self._start_heartbeat()
                return
            holder = self.read()
            if holder is None:
                continue
            if not holder.is_stale(self.ttl_seconds):
                raise StreamLocked(holder, self.lock_file)
            # Move the stale lock aside: of two processes taking over, only one move succeeds.
            aside = Location(self.lock_file.filesystem, f"{self.lock_file.path}.stale-{self.token}")
            try:
                self.lock_file.filesystem.move(self.lock_file.path, aside.path)
                self.lock_file.filesystem.delete_file(aside.path)
            except (FileNotFoundError, OSError):
                continue
        holder = self.read()
        raise StreamLocked(holder or LockHolder("unknown", "?", -1, "", 0), self.lock_file)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop_heartbeat.wait(HEARTBEAT_SECONDS):
                holder = self.read()
                if holder is None or holder.token != self.token:
                    return  # taken over: never overwrite another owner's lock
                self.lock_file.write_text_atomic(json.dumps(asdict(self._holder())))

        self._heartbeat = threading.Thread(target=beat, name="stream-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        """Give the lock up, if we still hold it."""
        self._stop_heartbeat.set()
        holder = self.read()
        if holder is not None and holder.token == self.token:
            self.lock_file.filesystem.delete_file(self.lock_file.path)
