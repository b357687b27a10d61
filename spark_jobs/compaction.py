"""Sink maintenance: compaction, truncation and retention of a sink's Parquet files.

A stream writes one file per micro-batch: 86,400 a day at the default 1-second trigger. Every
reader pays for listing and opening them (`docs/sinks.md` has the figures). Compaction merges
*committed* batches into range files, `part-<first>-<last>.parquet`, of up to a target size:

1. It takes the sink's maintenance lease (`layout.SinkLayout.maintenance_lease`), so that it
   never runs beside another compaction, a restore or a rotation of the same sink.
2. It reads the last committed batch from the stream's checkpoint and never touches a newer
   batch: only those can be replayed (a checkpoint restore truncates the sink first, under the
   same lease).
3. It walks the live files (`layout.live_files`) in batch order and streams consecutive small
   ones into a new file, written under a hidden name. Then it commits (`_commit`): the file is
   renamed into place, and the files it merged are moved to `_superseded/` right after, with
   nothing in between. From the rename on, a reader following the contract reads the new file
   and skips the merged ones; from the last move on, so does a reader of the folder itself. A
   read through `layout.SinkLayout.reader` (`sinks.read_sink`, the quality checks) that listed
   the merged files before still finds them, in `_superseded/<time>/`.
4. Files superseded for longer than the grace period (default one hour) are deleted from
   `_superseded/`, as Delta Lake's VACUUM deletes files no snapshot needs: a read must end within
   the grace period.

The commit window, between the rename and the last move, is the only time a plain reader of the
folder can be wrong: a read that overlaps it may list the new file beside files it merged, and
count their batches twice, or list files that are gone when it opens them, and fail. The other
order (moves first) would make readers of the contract miss those batches for the window
instead. Each commit's window is in `CompactionResult.commit_windows`; docs/sinks.md has the
figures.

Retention (off by default; `CompactionPolicy.retention_seconds`) runs first, in the same run: the
oldest live files whose newest batch is older than the age limit expire in one step, by a
tombstone (`layout.tombstone_name`), are moved to `_superseded/` right after it, and are deleted
after the same grace period. The newest file never expires, so batch ids go on after a long
stop. A compacted file spans at most `span_seconds` of batch time (default a day), so data
outlives the limit by at most that.

A kill at any point leaves either the old files alone, or the new file beside some of the files
it supersedes: a reader of the contract sees every batch exactly once in both cases, and the next
run moves what is left to `_superseded/` first and goes on.

Only pyarrow and the standard library are imported: the Airflow workers run this code.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from spark_jobs.layout import (
    CheckpointLayout,
    SinkFile,
    SinkLayout,
    SinkLayoutError,
    expired_before,
    list_sink_files,
    live_files,
    sink_file_name,
    superseded_files,
)
from spark_jobs.lease import Lease, LeaseHeld
from spark_jobs.storage import Location

log = logging.getLogger(__name__)

TARGET_MB_ENV = "STREAMOPS_COMPACT_TARGET_MB"
GRACE_ENV = "STREAMOPS_COMPACT_GRACE_SECONDS"
RETENTION_ENV = "STREAMOPS_SINK_RETENTION_DAYS"
DEFAULT_TARGET_MB = 64.0
DEFAULT_GRACE_SECONDS = 3600.0
#: The longest batch-time span of a compacted file: retention drops whole files.
DEFAULT_SPAN_SECONDS = 86400.0
#: Rows per row group of a compacted file: few enough to stream, many enough to read fast.
ROW_GROUP_ROWS = 1_000_000
TEMP_PREFIX = ".compact-"
HISTORY_KEEP = 50
T = TypeVar("T")


class SinkBusy(RuntimeError):
    """Another compaction, restore or rotation holds the sink's maintenance lease."""


@dataclass(frozen=True)
class CompactionPolicy:
    """How big compacted files get, how long merged files stay for running reads, and how old
    sink data may get (None: forever)."""

    target_bytes: int = int(DEFAULT_TARGET_MB * 1024 * 1024)
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    retention_seconds: float | None = None
    span_seconds: float = DEFAULT_SPAN_SECONDS

    @classmethod
    def from_env(
        cls,
        target_mb: float | None = None,
        grace_seconds: float | None = None,
        retention_days: float | None = None,
    ) -> CompactionPolicy:
        """The given values, else `$STREAMOPS_COMPACT_TARGET_MB`,
        `$STREAMOPS_COMPACT_GRACE_SECONDS` and `$STREAMOPS_SINK_RETENTION_DAYS`, else the
        defaults (64 MB, one hour, no age limit)."""
        target = target_mb or float(os.environ.get(TARGET_MB_ENV, DEFAULT_TARGET_MB))
        grace = grace_seconds
        if grace is None:
            grace = float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_SECONDS))
        days = retention_days
        if days is None and os.environ.get(RETENTION_ENV):
            days = float(os.environ[RETENTION_ENV])
        if target <= 0 or grace < 0 or (days is not None and days <= 0):
            raise ValueError(
                f"${TARGET_MB_ENV} and ${RETENTION_ENV} must be > 0 and ${GRACE_ENV} >= 0 "
                f"(got {target}, {days}, {grace})"
            )
        return cls(int(target * 1024 * 1024), grace, None if days is None else days * 86400)


@dataclass
class SinkHistory:
    """`<sink>/_streamops/sink.json`: what maintenance did to the sink, newest last."""

    compactions: list[dict[str, object]] = field(default_factory=list)
    #: Each truncation (a restore or rotation removed batches after `after`): quality checks
    #: re-check from there, since those batches are recomputed.
    truncations: list[dict[str, object]] = field(default_factory=list)
    #: The age limit the last compaction applied (`max_age_days`, None: forever), when, and the
    #: first batch it kept (`expired_before`).
    retention: dict[str, object] | None = None

    @classmethod
    def read(cls, sink: SinkLayout) -> SinkHistory:
        """The history, empty for a sink never maintained."""
        if not sink.history_file.exists():
            return cls()
        data = json.loads(sink.history_file.read_text())
        return cls(
            list(data.get("compactions", [])),
            list(data.get("truncations", [])),
            data.get("retention"),
        )

    def write(self, sink: SinkLayout) -> None:
        """Write it atomically, keeping the newest entries."""
        self.compactions = self.compactions[-HISTORY_KEEP:]
        self.truncations = self.truncations[-HISTORY_KEEP:]
        sink.history_file.write_text_atomic(json.dumps(asdict(self), indent=1) + "\n")

    @property
    def last_compaction(self) -> dict[str, object] | None:
        """The newest compaction's record."""
        return self.compactions[-1] if self.compactions else None


@dataclass
class CompactionResult:
    """What one run did."""

    through_batch_id: int | None
    files_before: int
    written: list[SinkFile] = field(default_factory=list)
    merged: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    deleted: int = 0
    expired: int = 0
    expired_before: int = 0
    seconds: float = 0.0
    #: Each commit's window (`time.monotonic()` seconds, start and end): from just before its
    #: new file or tombstone was renamed into place to the last move of the files it supersedes.
    commit_windows: list[tuple[float, float]] = field(default_factory=list)

    @property
    def longest_commit_ms(self) -> float | None:
        """The longest commit window of the run, in milliseconds (None: nothing committed)."""
        return max((1000 * (end - start) for start, end in self.commit_windows), default=None)

    def summary(self) -> str:
        """One line for logs and task output."""
        if self.through_batch_id is None:
            return "nothing to compact: no committed batch yet"
        head = (
            f"merged {self.merged:,} files ({self.bytes_in:,} bytes) into {len(self.written)} "
            f"({self.bytes_out:,} bytes)"
            if self.written
            else "no files to merge"
        )
        expired = (
            f"; expired {self.expired:,} files (kept batches from {self.expired_before})"
            if self.expired
            else ""
        )
        window = self.longest_commit_ms
        commits = "" if window is None else f" (commit window up to {window:.1f} ms)"
        return (
            f"{head}{expired}{commits}; deleted {self.deleted:,} superseded files; committed "
            f"batches through {self.through_batch_id}; {self.files_before:,} files before; "
            f"{self.seconds:.1f} s"
        )


def committed_through(checkpoint: str) -> int | None:
    """The sink batch id of the checkpoint's last committed batch (newer ones may be replayed)."""
    from spark_jobs.checkpoints import last_committed

    layout = CheckpointLayout.of(checkpoint)
    if not layout.root.exists():
        raise FileNotFoundError(
            f"checkpoint {checkpoint} does not exist, so which batches are committed is unknown: "
            "compact a sink with the checkpoint of the stream that writes it"
        )
    return last_committed(layout)[1]


class _MaintenanceLease:
    """The sink's maintenance lease, renewed while held; `lost` is set if it was taken over."""

    def __init__(self, sink: SinkLayout, what: str, owner: str) -> None:
        self.lease = Lease(sink.maintenance_lease, stream=what, owner=owner)
        self.lost = False

    def __enter__(self) -> _MaintenanceLease:
        try:
            self.lease.acquire()
        except LeaseHeld as held:
            raise SinkBusy(
                f"{held}; the sink is being maintained: run again once it is done"
            ) from held
        self.lease.start_renewing(lambda _holder: setattr(self, "lost", True))
        return self

    def __exit__(self, *_exc: object) -> None:
        self.lease.release()

    def check(self) -> None:
        """Raise before a change if the lease was lost (this process froze past its TTL)."""
        if self.lost:
            raise SinkBusy(f"lost the sink's maintenance lease {self.lease.lease_file}: stopping")


def compaction_runs(live: list[SinkFile], through: int, target_bytes: int) -> list[list[SinkFile]]:
    """Runs of consecutive live files a compaction may merge: committed, smaller than the target.

    A file at the target size or larger is left alone and ends a run, and so is a compacted file
    followed by another one: compaction closed it (at the target size, the span limit or a
    schema change), so only the newest compacted file grows.
    """
    committed = [f for f in live if f.last <= through]
    newest_range = max((i for i, f in enumerate(committed) if f.is_range), default=-1)
    runs: list[list[SinkFile]] = [[]]
    for i, f in enumerate(committed):
        if f.size < target_bytes and not (f.is_range and i < newest_range):
            runs[-1].append(f)
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if len(run) >= 2]


def compact(
    sink: str,
    checkpoint: str,
    policy: CompactionPolicy | None = None,
    owner: str = "compaction",
    progress: Callable[[str], None] | None = None,
) -> CompactionResult:
    """Merge a sink's committed small files, then delete files superseded past the grace period.

    Raises `SinkBusy` when another maintenance holds the sink, `FileNotFoundError` when the
    checkpoint is missing.
    """
    policy = policy or CompactionPolicy.from_env()
    layout = SinkLayout.of(sink)
    say = progress or log.info
    started = time.monotonic()
    through = committed_through(checkpoint)
    with _MaintenanceLease(layout, f"compaction of {layout.root}", owner) as lease:
        files = layout.files()
        result = CompactionResult(through, sum(1 for f in files if not f.tombstone))
        result.expired_before = expired_before(files)
        if _hide_superseded(layout, files, lease):
            files = layout.files()
        if through is not None:
            if policy.retention_seconds is not None:
                _expire(
                    layout,
                    files,
                    through=through,
                    max_age_seconds=policy.retention_seconds,
                    lease=lease,
                    result=result,
                )
                files = layout.files()
            _merge(
                layout,
                live_files(files),
                through=through,
                policy=policy,
                lease=lease,
                result=result,
                say=say,
            )
        result.deleted = _delete_superseded(layout, policy.grace_seconds, lease)
        result.seconds = time.monotonic() - started
        history = SinkHistory.read(layout)
        retention = {
            "max_age_days": (
                None if policy.retention_seconds is None else policy.retention_seconds / 86400
            ),
            "expired_before": result.expired_before,
        }
        if history.retention is None or any(
            history.retention.get(k) != v for k, v in retention.items()
        ):
            history.retention = {
                **retention,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            history.write(layout)
        if result.written or result.deleted or result.expired:
            history.compactions.append(
                {
                    "time": datetime.now(UTC).isoformat(timespec="seconds"),
                    "owner": owner,
                    "through_batch_id": through,
                    "merged": result.merged,
                    "written": [f.name for f in result.written],
                    "bytes_in": result.bytes_in,
                    "bytes_out": result.bytes_out,
                    "deleted": result.deleted,
                    "expired": result.expired,
                    "seconds": round(result.seconds, 3),
                    "commit_ms": (
                        None
                        if result.longest_commit_ms is None
                        else round(result.longest_commit_ms, 3)
                    ),
                }
            )
            history.write(layout)
    return result


def _hide_superseded(layout: SinkLayout, files: list[SinkFile], lease: _MaintenanceLease) -> int:
    """Move the superseded files and tombstones of the visible set to `_superseded/` (those a
    killed commit left, or an older version of this code); how many."""
    superseded = [old for old, _holder in superseded_files(files)]
    if superseded:
        lease.check()
        folder = layout.superseded_folder(datetime.now(UTC))
        for old in superseded:
            layout.hide(old, folder)
        log.info("moved %d superseded files to %s", len(superseded), folder)
    return len(superseded)


def _commit(
    layout: SinkLayout,
    put_in_place: Callable[[], T],
    superseded: list[SinkFile],
    result: CompactionResult,
) -> T:
    """Rename a new file or tombstone into place, then at once move the files it supersedes
    out of the visible set, in the order given, into a new folder of `_superseded/` named after
    this moment; record the commit window.

    Nothing but renames runs in the window: the new file is written and closed, and the folder
    made, before it starts.
    """
    folder = layout.superseded_folder(datetime.now(UTC))
    started = time.monotonic()
    placed = put_in_place()
    for f in superseded:
        layout.hide(f, folder)
    result.commit_windows.append((started, time.monotonic()))
    return placed


def _expire(
    layout: SinkLayout,
    files: list[SinkFile],
    *,
    through: int,
    max_age_seconds: float,
    lease: _MaintenanceLease,
    result: CompactionResult,
) -> None:
    """Expire the oldest committed live files whose newest batch is older than the limit, all in
    one step: a tombstone before the first file kept, then the files (and the tombstone before
    it) out of the visible set. Never the newest live file."""
    cutoff = datetime.now(UTC).timestamp() - max_age_seconds
    expired = []
    for f in live_files(files)[:-1]:
        if f.last > through:
            break
        newest = _read_batch_times(layout.root, f)[1]
        if newest is None or newest.timestamp() >= cutoff:
            break
        expired.append(f)
    if not expired:
        return
    lease.check()
    first_kept = expired[-1].last + 1
    tombstone = layout.tombstone(first_kept)
    older = [f for f in files if f.tombstone]  # hidden from plain readers anyway: moved last
    _commit(layout, lambda: tombstone.write_bytes_atomic(b""), [*expired, *older], result)
    result.expired = len(expired)
    result.expired_before = first_kept


def _read_batch_times(root: Location, f: SinkFile) -> tuple[datetime | None, datetime | None]:
    """The oldest and newest `batch_time` in a file (None, None when it has none)."""
    try:
        table = pq.read_table(f.path, columns=["batch_time"], filesystem=root.filesystem)
    except (KeyError, pa.ArrowInvalid):
        return None, None
    return _batch_times(table)


def _batch_times(table: pa.Table) -> tuple[datetime | None, datetime | None]:
    """The oldest and newest `batch_time` of a table's rows, as UTC datetimes."""
    import pyarrow.compute as pc

    if "batch_time" not in table.column_names or table.num_rows == 0:
        return None, None
    column = table.column("batch_time")
    if not pa.types.is_timestamp(column.type):
        return None, None
    column = column.cast(pa.timestamp("us", "UTC"))
    return pc.min(column).as_py(), pc.max(column).as_py()


def _merge(
    layout: SinkLayout,
    live: list[SinkFile],
    *,
    through: int,
    policy: CompactionPolicy,
    lease: _MaintenanceLease,
    result: CompactionResult,
    say: Callable[[str], None],
) -> None:
    total = sum(1 for f in live if f.last <= through)
    done = 0
    for run in compaction_runs(live, through, policy.target_bytes):
        writer = _RangeWriter(layout.root, policy.target_bytes, policy.span_seconds)
        for f, table in _read_ahead(layout.root, run):
            if not writer.add(f, table):
                _finish(layout, writer, lease, result)
                writer = _RangeWriter(layout.root, policy.target_bytes, policy.span_seconds)
                writer.add(f, table)
            done += 1
            if done % 5000 == 0:
                say(f"compaction: read {done:,} of {total:,} committed files")
        _finish(layout, writer, lease, result)


#: Files up to this size are read whole by a pool of threads; larger ones are streamed.
READ_AHEAD_MAX_BYTES = 8 * 1024 * 1024
READ_AHEAD_FILES = 64
READ_THREADS = 8


def _read_ahead(
    root: Location, files: list[SinkFile]
) -> Iterator[tuple[SinkFile, pa.Table | None]]:
    """The files in order, each small one with its rows read by a thread pool, a chunk at a time
    (so that memory holds at most `READ_AHEAD_FILES` small files)."""
    from concurrent.futures import ThreadPoolExecutor

    def read(f: SinkFile) -> pa.Table | None:
        if f.size > READ_AHEAD_MAX_BYTES:
            return None
        return pq.read_table(f.path, filesystem=root.filesystem)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        for start in range(0, len(files), READ_AHEAD_FILES):
            chunk = files[start : start + READ_AHEAD_FILES]
            yield from zip(chunk, pool.map(read, chunk), strict=True)


def _finish(
    layout: SinkLayout, writer: _RangeWriter, lease: _MaintenanceLease, result: CompactionResult
) -> None:
    """Commit the writer's file if it merged two files or more; else drop it."""
    if len(writer.sources) < 2:
        writer.abort()
        return
    lease.check()
    writer.close()
    written = _commit(layout, writer.commit, writer.sources, result)
    result.written.append(written)
    result.merged += len(writer.sources)
    result.bytes_in += sum(f.size for f in writer.sources)
    result.bytes_out += written.size


class _RangeWriter:
    """Streams whole source files, in batch order, into one hidden file; renamed at commit.

    The file ends at the target size, at a schema change, or before a source whose newest batch
    is more than `span_seconds` after the file's oldest one.
    """

    def __init__(
        self, root: Location, target_bytes: int, span_seconds: float = DEFAULT_SPAN_SECONDS
    ) -> None:
        self.root = root
        self.target_bytes = target_bytes
        self.span_seconds = span_seconds
        self._oldest: datetime | None = None
        self.sources: list[SinkFile] = []
        self.temp = root.child(f"{TEMP_PREFIX}{uuid.uuid4().hex}.tmp")
        self._stream: pa.NativeFile | None = None
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def add(self, f: SinkFile, table: pa.Table | None = None) -> bool:
        """Append a file's rows (`table`, or streamed from the file when None); False (nothing
        added) when they do not fit this file."""
        oldest, newest = (
            _batch_times(table) if table is not None else _read_batch_times(self.root, f)
        )
        if (
            self._writer is not None
            and self._oldest is not None
            and newest is not None
            and (newest - self._oldest).total_seconds() > self.span_seconds
        ):
            return False
        if table is not None:
            added = self._add(f, table.schema, table.to_batches())
        else:
            with self.root.filesystem.open_input_file(f.path) as handle:
                source = pq.ParquetFile(handle)
                added = self._add(f, source.schema_arrow, source.iter_batches(ROW_GROUP_ROWS))
        if added and oldest is not None and (self._oldest is None or oldest < self._oldest):
            self._oldest = oldest
        return added

    def _add(self, f: SinkFile, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> bool:
        if self._writer is not None and (
            self._schema is None
            or not schema.equals(self._schema)
            or self.written_bytes() >= self.target_bytes
        ):
            return False
        if self._writer is None:
            self._schema = schema
            self._stream = self.root.filesystem.open_output_stream(self.temp.path)
            self._writer = pq.ParquetWriter(self._stream, schema)
        for batch in batches:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            self._pending_bytes += batch.nbytes
            if self._pending_rows >= ROW_GROUP_ROWS:
                self._flush()
        self.sources.append(f)
        return True

    def written_bytes(self) -> int:
        """Bytes in the output so far; rows not yet written count a quarter of their memory
        size (Parquet's encoding and compression)."""
        flushed = self._stream.tell() if self._stream is not None else 0
        return flushed + self._pending_bytes // 4

    def _flush(self) -> None:
        if self._pending and self._writer is not None:
            table = pa.Table.from_batches(self._pending, schema=self._schema)
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self._pending = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def close(self) -> None:
        """Write the last rows and the footer: the hidden file is complete."""
        self._flush()
        assert self._writer is not None
        assert self._stream is not None
        self._writer.close()
        self._stream.close()

    def commit(self) -> SinkFile:
        """Rename the closed file to `part-<first>-<last>.parquet`."""
        first, last = self.sources[0].first, self.sources[-1].last
        target = self.root.child(sink_file_name(first, last))
        self.temp.move_to(target)
        info = self.root.filesystem.get_file_info(target.path)
        return SinkFile(first, last, target.path, info.size or 0, info.mtime_ns or 0)

    def abort(self) -> None:
        """Drop the hidden file."""
        if self._writer is not None:
            self._writer.close()
        if self._stream is not None:
            self._stream.close()
            self.root.filesystem.delete_file(self.temp.path)


def _delete_superseded(layout: SinkLayout, grace_seconds: float, lease: _MaintenanceLease) -> int:
    """Delete the folders of `_superseded/` whose commit is older than the grace period, and
    stale hidden files; how many sink files were deleted.

    A folder's name says when its files were superseded. Not the files' own mtimes: a rename
    keeps a file's mtime, which says when its batch was written.
    """
    now = datetime.now(UTC)
    deleted = 0
    for folder, since in layout.superseded_folders():
        if since is None:
            log.warning("%s is not a folder of a commit; left in place", folder)
        elif (now - since).total_seconds() >= grace_seconds:
            lease.check()
            deleted += len(list_sink_files(folder))
            layout.root.filesystem.delete_dir(folder.path)
    _drop_empty_superseded(layout)
    now_ns = time.time_ns()
    grace_ns = int(grace_seconds * 1e9)
    for info in layout.root.list():
        stale = info.base_name.startswith(TEMP_PREFIX) and info.base_name.endswith(".tmp")
        if stale and now_ns - int(info.mtime_ns or 0) >= grace_ns:
            layout.root.filesystem.delete_file(info.path)
    return deleted


def _drop_empty_superseded(layout: SinkLayout) -> None:
    """Remove the folders of `_superseded/` that nothing waits in any more, and `_superseded/`
    itself once empty (the next commit makes it again)."""
    for folder, since in layout.superseded_folders():
        if since is not None and not folder.list():
            layout.root.filesystem.delete_dir(folder.path)
    if layout.superseded_dir.is_dir() and not layout.superseded_dir.list():
        layout.root.filesystem.delete_dir(layout.superseded_dir.path)


def truncate(
    layout: SinkLayout, after_batch_id: int | None, *, owner: str, reason: str
) -> list[int]:
    """Remove every batch after `after_batch_id` (all when None) from a stopped stream's sink.

    A checkpoint restore or rotation calls it: Spark recomputes those batches, possibly grouped
    differently, so keeping them would count their records twice. A range file across the cut is
    rewritten with its batches up to it. Returns the first batch ids of the files removed.
    """
    with _MaintenanceLease(layout, f"truncation of {layout.root}", owner) as lease:
        files = layout.files()
        if _hide_superseded(layout, files, lease):
            files = layout.files()
        live = live_files(files)
        cut = -1 if after_batch_id is None else after_batch_id
        across = [(f, _rows_through(layout.root, f, cut)) for f in live if f.first <= cut < f.last]
        if cut >= 0 and expired_before(files) > cut + 1:
            # Batches after the cut are recomputed: only those up to it stay expired.
            layout.tombstone(cut + 1).write_bytes_atomic(b"")
        removed = []
        # The files of `_superseded/` after the cut first (no reader lists them), then those of
        # the visible set newest first (a reader sees the batches up to some point, never a
        # gap), tombstones after the files they hid. The ranges stay nested.
        gone = [f for f in layout.superseded() if f.last > cut]
        doomed = sorted(
            (f for f in files if f.last > cut and not any(f is a for a, _ in across)),
            key=lambda f: (f.tombstone, -f.first),
        )
        for f in [*gone, *doomed]:
            lease.check()
            layout.root.filesystem.delete_file(f.path)
            if not f.tombstone:
                removed.append(f.first)
        # The live file across the cut last, deleted as soon as its batches up to the cut are
        # in place (written before, renamed in): for that moment a plain reader sees them twice.
        for f, kept in across:
            lease.check()
            layout.root.child(sink_file_name(f.first, cut)).write_bytes_atomic(kept)
            layout.root.filesystem.delete_file(f.path)
            removed.append(f.first)
        _drop_empty_superseded(layout)
        history = SinkHistory.read(layout)
        history.truncations.append(
            {
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "after": after_batch_id,
                "reason": reason,
                "files_removed": len(removed),
            }
        )
        history.write(layout)
    return sorted(removed)


def _rows_through(root: Location, f: SinkFile, cut: int) -> bytes:
    """The Parquet bytes of range file `f`'s batches up to `cut` (`part-<first>-<cut>.parquet`)."""
    import pyarrow.compute as pc

    table = pq.read_table(f.path, filesystem=root.filesystem)
    kept = table.filter(pc.field("batch_id") <= cut)
    buffer = pa.BufferOutputStream()
    pq.write_table(kept, buffer, row_group_size=ROW_GROUP_ROWS)
    return bytes(buffer.getvalue().to_pybytes())


@dataclass(frozen=True)
class SinkStats:
    """What the Streams page and the metrics show of a sink."""

    files: int
    live_files: int
    bytes: int
    rows: int
    last_compaction: str | None
    #: The age limit the last compaction applied (None: kept forever, or never compacted).
    retention_days: float | None = None
    #: Every batch before this one expired (0: none did).
    expired_before: int = 0


def sink_stats(
    sink: str, rows_cache: MutableMapping[tuple[str, int, int], int] | None = None
) -> SinkStats:
    """Files (all, `_superseded/` included, and those a reader reads), bytes on disk and rows of
    a sink.

    Rows come from the Parquet footers of the live files; pass `rows_cache` (kept between
    calls) so that only footers of files new since the last call are read.
    """
    layout = SinkLayout.of(sink)
    files = layout.files()
    waiting = layout.superseded()
    live = live_files(files)
    reader = layout.reader().filesystem
    cache: MutableMapping[tuple[str, int, int], int] = {} if rows_cache is None else rows_cache
    keys = set()
    rows = 0
    for f in live:
        key = (f.path, f.size, f.mtime_ns)
        keys.add(key)
        if key not in cache:
            cache[key] = pq.read_metadata(f.path, filesystem=reader).num_rows
        rows += cache[key]
    for stale in [k for k in cache if k[0].startswith(layout.root.path) and k not in keys]:
        del cache[stale]
    history = SinkHistory.read(layout)
    last = history.last_compaction
    days = (history.retention or {}).get("max_age_days")
    return SinkStats(
        files=sum(1 for f in [*files, *waiting] if not f.tombstone),
        live_files=len(live),
        bytes=sum(f.size for f in [*files, *waiting]),
        rows=rows,
        last_compaction=str(last["time"]) if last else None,
        retention_days=None if days is None else float(str(days)),
        expired_before=expired_before(files),
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m spark_jobs.compaction --sink S --checkpoint C`: compact one sink by hand.

    In Airflow, `sink_compaction` (and `bin/streamops compact STREAM`) runs the same code.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.compaction", description=main.__doc__
    )
    parser.add_argument("--sink", required=True, help="the sink folder or URI")
    parser.add_argument("--checkpoint", required=True, help="the checkpoint of its stream")
    parser.add_argument(
        "--target-mb", type=float, default=None, help=f"default ${TARGET_MB_ENV} or 64"
    )
    parser.add_argument(
        "--grace-seconds", type=float, default=None, help=f"default ${GRACE_ENV} or 3600"
    )
    parser.add_argument(
        "--retention-days",
        type=float,
        default=None,
        help=f"expire batches older than this; default ${RETENTION_ENV}, or keep them forever",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        policy = CompactionPolicy.from_env(args.target_mb, args.grace_seconds, args.retention_days)
        result = compact(args.sink, args.checkpoint, policy, owner=_who())
    except (SinkBusy, FileNotFoundError, SinkLayoutError, ValueError) as err:
        print(f"compaction of {args.sink}: {err}", flush=True)
        return 2
    print(f"compaction of {args.sink}: {result.summary()}", flush=True)
    return 0


def _who() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()} (python -m spark_jobs.compaction)"


if __name__ == "__main__":
    raise SystemExit(main())
