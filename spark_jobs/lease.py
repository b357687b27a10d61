"""One stream, one query: the lease a driver holds on its checkpoint while its query runs.

Spark refuses a second query on a checkpoint only inside one SparkSession. Two drivers (a retry,
a double trigger, a hand-started job beside a supervised one) would both write the checkpoint and
corrupt it. So the driver itself takes `<checkpoint>/_streamops/lease.json` before its query
starts, renews it six times per TTL while it lives and gives it back when it exits. Whatever
started the driver (Airflow, `python -m spark_jobs.word_count`, spark-submit by hand), a second
driver on the same checkpoint is refused.

A holder that is gone is taken over:
- it ran on this host and its process is gone: the pid is dead, a zombie, or now belongs to a
  process that started at another time (pids are reused, e.g. by a restarted container);
- or it has not renewed for `DEFAULT_TTL_SECONDS` (a driver on another host, or a frozen one).

A driver that finds its lease taken over (it froze for longer than the TTL and another driver
started) must stop at once: `Lease.start_renewing` calls its `on_lost` callback.

Where the lease lives decides how it is written:
- on a local (or mounted) filesystem it is created with `O_EXCL`;
- on S3 every change is a conditional write (`storage.ConditionalObject`): the lease is created
  only if absent (`If-None-Match: *`), renewed and taken over only if its ETag is still the one
  read (`If-Match`), and given back only if it is still ours. Of any number of racers one wins,
  whatever their timing;
- a store without conditional writes (one that ignores them, or a filesystem this layer has none
  for) is refused: `LeaseUnsupported` names it and the setting
  (`STREAMOPS_LEASE_ALLOW_UNCONDITIONAL=1`) that knowingly allows the old scheme there (write,
  wait a second, re-read, keep the lease if it still holds our token: a writer delayed past that
  second can still overwrite a lease another driver kept).

The control plane reads the same file: the stream task adopts the live driver of its own run,
`checkpoint_rotation` takes the lease while it rewrites a checkpoint, the Streams page and the CLI
show the holder. Only the standard library, psutil and `storage` are imported, so DAG files and
the api-server may import this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pyarrow import fs as pafs

from spark_jobs.storage import ConditionalObject, ConditionalWritesUnavailable, Location

#: A lease not renewed for this long is taken over. Six renewals: a driver survives a GC pause or
#: a slow object store of up to a minute without losing its lease.
DEFAULT_TTL_SECONDS = float(os.environ.get("STREAMOPS_LEASE_TTL_SECONDS", "60"))
#: Set to 1 to allow leases on a store without conditional writes (the timed scheme, see above).
ALLOW_UNCONDITIONAL_ENV = "STREAMOPS_LEASE_ALLOW_UNCONDITIONAL"


def process_started(pid: int) -> float | None:
    """When process `pid` of this host started (epoch seconds), or None if it is gone.

    A zombie (exited, not yet reaped by its parent) counts as gone.
    """
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, but not ours to inspect


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, as written in the lease file."""

    stream: str
    #: Who started the holder: `<dag_id>/<run_id>` for a stream DAG run, a description otherwise.
    owner: str
    host: str
    pid: int
    #: The holder process's start time (epoch s): tells a live holder from a reused pid.
    pid_started: float | None
    token: str
    since: float
    renewed: float
    #: The version of the stream's spec the holder runs (`registry.SpecVersion`), if it was given.
    spec_version: str | None = None

    def is_local(self) -> bool:
        """Whether the holder runs on this host."""
        return self.host == socket.gethostname()

    def process_alive(self) -> bool | None:
        """Whether the holder's process still runs; None when it runs on another host."""
        if not self.is_local():
            return None
        started = process_started(self.pid)
        if started is None:
            return False
        if started < 0 or self.pid_started is None:
            return True
        # psutil's start times are rounded to clock ticks: allow a second either way.
        return abs(started - self.pid_started) < 1.0

    def is_gone(self, ttl_seconds: float = DEFAULT_TTL_SECONDS, now: float | None = None) -> bool:
        """Whether the holder may be taken over: its process is gone, or it stopped renewing."""
        if (now or time.time()) - self.renewed > ttl_seconds:
            return True
        return self.process_alive() is False

    def describe(self, now: float | None = None) -> str:
        """One line naming the holder: stream, host, pid, owner, since when, last renewal."""
        age = (now or time.time()) - self.renewed
        return (
            f"stream {self.stream}, pid {self.pid} on {self.host} (started by {self.owner}), "
            f"since {_iso(self.since)}, last renewed {age:.0f} s ago"
        )


class LeaseHeld(Exception):
    """Another live holder runs the query on this checkpoint."""

    def __init__(self, holder: LeaseHolder, lease_file: Location) -> None:
        super().__init__(
            f"checkpoint is leased by {holder.describe()} (lease {lease_file}). Stop that driver "
            f"first (stream_control, or SIGTERM to pid {holder.pid}); a lease not renewed for "
            f"{DEFAULT_TTL_SECONDS:.0f} s is taken over."
        )
        self.holder = holder


_HOLDER_FIELDS = frozenset(LeaseHolder.__dataclass_fields__)


class LeaseUnsupported(Exception):
    """The lease's store has no conditional writes, and the timed scheme was not allowed."""

    def __init__(self, lease_file: Location, why: str) -> None:
        super().__init__(
            f"the lease {lease_file} cannot be held safely: {why}. Two drivers could then both "
            "hold it and write the checkpoint (or the sink) at once. Put the checkpoint on a "
            "store with conditional writes (a local or shared filesystem, or S3 / an "
            f"S3-compatible server that honours If-None-Match and If-Match), or set "
            f"{ALLOW_UNCONDITIONAL_ENV}=1 to use the timed scheme (write, wait 1 s, re-read) "
            "knowing that a writer delayed past that second can take a lease that is held"
        )


def _parse(data: bytes) -> LeaseHolder:
    try:
        fields = json.loads(data)
        return LeaseHolder(**{k: v for k, v in fields.items() if k in _HOLDER_FIELDS})
    except (ValueError, TypeError):
        return UNREADABLE


UNREADABLE = LeaseHolder("?", "unreadable lease file", "?", -1, None, "", 0.0, 0.0)


def read_lease(lease_file: Location) -> LeaseHolder | None:
    """The current holder of a lease file, or None when nobody holds it.

    A file that cannot be parsed is returned as `UNREADABLE` (renewed at epoch 0, so it is taken
    over): a half-written lease must never block a stream forever.
    """
    try:
        data = json.loads(lease_file.read_text())
        # Fields of a newer version are ignored: its holder is alive all the same.
        return LeaseHolder(**{k: v for k, v in data.items() if k in _HOLDER_FIELDS})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return UNREADABLE if lease_file.exists() else None


class Lease:
    """The lease of one checkpoint, taken by one process for one stream."""

    def __init__(
        self,
        lease_file: Location,
        stream: str,
        owner: str,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        spec_version: str | None = None,
    ) -> None:
        self.lease_file = lease_file
        self.stream = stream
        self.owner = owner
        self.ttl_seconds = ttl_seconds
        self.spec_version = spec_version
        self.token = uuid.uuid4().hex
        self.since = time.time()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        # On S3: the lease object and the ETag of our last write (None until we hold it).
        self._object: ConditionalObject | None = None
        self._etag: str | None = None
        self._mode: str | None = None  # "local", "conditional" or "timed", found at `acquire`
        # A renewal and the release never overlap: the release must name the last ETag.
        self._writing = threading.Lock()
        #: The gone holder whose lease `acquire` took over (None: it was free).
        self.taken_over_from: LeaseHolder | None = None

    def _choose_mode(self) -> str:
        if self._mode is not None:
            return self._mode
        try:
            self._object = self.lease_file.conditional()
            why = None
            if self._object is not None and not self._object.honours_conditions():
                why = (
                    f"the S3 store at {self._object.client.meta.endpoint_url} (bucket "
                    f"{self._object.bucket}) ignores conditional writes (If-None-Match, If-Match)"
                )
        except ConditionalWritesUnavailable as err:
            why = str(err)
        if why is None:
            self._mode = "local" if self._object is None else "conditional"
        elif os.environ.get(ALLOW_UNCONDITIONAL_ENV) == "1":
            self._mode, self._object = "timed", None
        else:
            raise LeaseUnsupported(self.lease_file, why)
        return self._mode

    def _data(self) -> bytes:
        return json.dumps(asdict(self._holder())).encode()

    def _holder(self) -> LeaseHolder:
        pid = os.getpid()
        return LeaseHolder(
            stream=self.stream,
            owner=self.owner,
            host=socket.gethostname(),
            pid=pid,
            pid_started=process_started(pid),
            token=self.token,
            since=self.since,
            renewed=time.time(),
            spec_version=self.spec_version,
        )

    def read(self) -> LeaseHolder | None:
        """The current holder, or None when nobody holds the lease."""
        return read_lease(self.lease_file)

    def _create_exclusive(self) -> bool:
        data = json.dumps(asdict(self._holder())).encode()
        if isinstance(self.lease_file.filesystem, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(self.lease_file.path), exist_ok=True)
            try:
                fd = os.open(self.lease_file.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        # Object stores have no exclusive create: write, wait, and check that we won.
        if self.lease_file.exists():
            return False
        self.lease_file.write_bytes_atomic(data)
        time.sleep(1.0)
        holder = self.read()
        return holder is not None and holder.token == self.token

    def _acquire_conditional(self, lease: ConditionalObject) -> None:
        unreadable: str | None = None  # the ETag of an object last read as no lease
        for _ in range(5):
            if (etag := lease.create(self._data())) is not None:
                self._etag = etag
                return
            current = lease.read()
            if current is None:
                continue  # given back in between: create it again
            holder = _parse(current.data)
            if holder is UNREADABLE and unreadable != current.etag:
                # An S3 object is never half-written, but a server may answer a read with part
                # of an object being written: read it again before taking it for garbage.
                unreadable = current.etag
                continue
            if not holder.is_gone(self.ttl_seconds):
                raise LeaseHeld(holder, self.lease_file)
            # Of the racers that read the same gone holder, one replaces it; the rest read anew
            # and find the winner live.
            if (etag := lease.replace(self._data(), current.etag)) is not None:
                self._etag = etag
                self.taken_over_from = holder
                return
        raise LeaseHeld(self.read() or UNREADABLE, self.lease_file)

    def acquire(self) -> None:
        """Take the lease, taking over one whose holder is gone.

        Raises `LeaseHeld` if a live holder has it, `LeaseUnsupported` if its store cannot hold
        a lease safely.
        """
        if self._choose_mode() == "conditional":
            assert self._object is not None
            self._acquire_conditional(self._object)
            return
        for _ in range(3):
            if self._create_exclusive():
                return
            holder = self.read()
            if holder is None:
                continue
            if not holder.is_gone(self.ttl_seconds):
                raise LeaseHeld(holder, self.lease_file)
            if isinstance(self.lease_file.filesystem, pafs.LocalFileSystem):
                self._remove_if_still(holder)
                continue
            # Move the dead holder's lease aside: of two processes taking over, one move wins.
            aside = Location(
                self.lease_file.filesystem, f"{self.lease_file.path}.gone-{self.token}"
            )
            try:
                self.lease_file.filesystem.move(self.lease_file.path, aside.path)
                self.lease_file.filesystem.delete_file(aside.path)
            except (FileNotFoundError, OSError):
                continue
        raise LeaseHeld(self.read() or UNREADABLE, self.lease_file)

    @contextlib.contextmanager
    def _local_lock(self) -> Iterator[None]:
        """Hold `<lease>.lock` (an exclusive `flock`, local and NFS filesystems): takeovers and
        renewals happen one at a time, each on the lease it has just read."""
        os.makedirs(os.path.dirname(self.lease_file.path), exist_ok=True)
        with open(f"{self.lease_file.path}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_if_still(self, gone: LeaseHolder) -> None:
        # Another driver may have taken the lease over since it was read as gone: remove it only
        # if it is still the one read, under the lock that the others' takeovers and renewals
        # take too. A new lease is then created with O_EXCL, so of two takers one wins.
        with self._local_lock():
            now = read_lease(self.lease_file)
            if now is not None and now.token == gone.token and now.renewed == gone.renewed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lease_file.path)

    def renew(self) -> bool:
        """Write a fresh renewal time. False (and nothing written) when the lease was taken over."""
        if self._mode == "conditional" and self._object is not None:
            with self._writing:
                if self._etag is None or self._stop.is_set():
                    return self._etag is not None
                etag = self._object.replace(self._data(), self._etag)
                if etag is None:
                    return False
                self._etag = etag
                return True
        if isinstance(self.lease_file.filesystem, pafs.LocalFileSystem):
            # Under the takeovers' lock: none removes the lease between this read and write.
            with self._local_lock():
                holder = read_lease(self.lease_file)
                if holder is None or holder.token != self.token:
                    return False
                self.lease_file.write_text_atomic(json.dumps(asdict(self._holder())))
                return True
        holder = self.read()
        if holder is None or holder.token != self.token:
            return False
        self.lease_file.write_text_atomic(json.dumps(asdict(self._holder())))
        return True

    def start_renewing(self, on_lost: Callable[[LeaseHolder | None], None]) -> None:
        """Renew in a background thread every `ttl_seconds / 6`; call `on_lost` if taken over."""
        interval = self.ttl_seconds / 6

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    kept = self.renew()
                except OSError:
                    continue  # a storage hiccup: the next renewal tries again within the TTL
                if not kept:
                    on_lost(self.read())
                    return

        self._renewer = threading.Thread(target=loop, name="stream-lease-renewer", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Give the lease back, if we still hold it."""
        self._stop.set()
        if self._mode == "conditional" and self._object is not None:
            with self._writing:
                if self._etag is not None:
                    self._object.delete(self._etag)
                    self._etag = None
            return
        holder = self.read()
        if holder is not None and holder.token == self.token:
            self.lease_file.filesystem.delete_file(self.lease_file.path)
