"""Where everything of a stream lives: the one definition both Spark jobs and Airflow read.

A checkpoint folder holds Spark's own files and, in `_streamops/`, ours:

    <checkpoint>/
        metadata              Spark: the query id
        offsets/<N>           Spark: what batch N reads (written before the batch runs)
        commits/<N>           Spark: batch N finished
        sources/, state/      Spark: file-source log, state store
        _streamops/
            generation.json   our sink batch id of Spark batch 0 (see `Generation`)
            status.json       the job's progress, written by its listener (see `status.py`)
            lease.json        which driver runs the query on this checkpoint (see `lease.py`)
            stop-request      present: stop at the next batch boundary and exit 0

A sink folder is a Parquet dataset of batch files and, once compacted, range files:

    <sink>/part-<batch_id>.parquet          one micro-batch's rows (ids are 12 digits)
    <sink>/part-<first>-<last>.parquet      the rows of batches first..last, merged by compaction
    <sink>/_expired-before-<batch_id>       a retention tombstone: every batch before it expired
    <sink>/.part-...tmp                     a file being written; hidden, so no reader sees it
    <sink>/_streamops/
        maintenance.json  the lease of a compaction, restore or rotation (see `compaction.py`)
        sink.json         the sink's history: compactions, truncations (see `SinkHistory`)

The reader contract (`live_files`): the batch ranges of a sink's files are nested or disjoint,
never partly overlapping. A file whose range lies inside another file's range is *superseded*
(compaction leaves the files it merged in place for a grace period, so that reads already under
way finish). Reading the files no other file supersedes gives every batch exactly once.

A retention tombstone (an empty file; its `_` prefix hides it from plain directory readers) takes
part in the rule as the range `0..<batch_id> - 1` with no rows: the files it covers are expired,
superseded like merged files, and deleted after the same grace period. Retention thus hides whole
files, oldest first, in one step, and a reader sees every batch from the tombstone on exactly once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pyarrow import fs as pafs

from spark_jobs.storage import Location

STREAMOPS_DIR = "_streamops"
LEASE_FILE = "lease.json"
STATUS_FILE = "status.json"
STOP_REQUEST = "stop-request"
#: Files of `_streamops/` that describe the running stream, not the checkpoint's content: a
#: snapshot leaves them out, and a restore or rotation keeps the live ones.
CONTROL_FILES = (LEASE_FILE, STATUS_FILE, STOP_REQUEST)
SINK_FILE_PATTERN = re.compile(r"^part-(\d{12})(?:-(\d{12}))?\.parquet$")
TOMBSTONE_PATTERN = re.compile(r"^_expired-before-(\d{12})$")
SINK_HISTORY_FILE = "sink.json"
MAINTENANCE_LEASE_FILE = "maintenance.json"


def sink_file_name(first: int, last: int | None = None) -> str:
    """The file that holds one micro-batch's rows in a sink, or those of batches first..last."""
    if last is None or last == first:
        return f"part-{first:012d}.parquet"
    if last < first:
        raise ValueError(f"a sink file's range {first}..{last} ends before it starts")
    return f"part-{first:012d}-{last:012d}.parquet"


def tombstone_name(first_kept: int) -> str:
    """The retention tombstone that expires every batch before `first_kept`."""
    return f"_expired-before-{first_kept:012d}"


@dataclass(frozen=True)
class SinkFile:
    """One Parquet file of a sink: the batches it holds, and what the listing said of it."""

    first: int
    last: int
    path: str
    size: int = 0
    mtime_ns: int = 0
    #: A retention tombstone: it holds no rows, and expires the batches of its range.
    tombstone: bool = False

    @property
    def name(self) -> str:
        """`part-<first>.parquet`, `part-<first>-<last>.parquet` or `_expired-before-<id>`."""
        if self.tombstone:
            return tombstone_name(self.last + 1)
        return sink_file_name(self.first, self.last)

    @property
    def is_range(self) -> bool:
        """Whether compaction wrote it (it may hold several batches)."""
        return self.last > self.first and not self.tombstone

    def holds(self, other: SinkFile) -> bool:
        """Whether `other`'s batches all lie in this file's range."""
        return self.first <= other.first and other.last <= self.last

    @classmethod
    def parse(cls, name: str, path: str, size: int = 0, mtime_ns: int = 0) -> SinkFile | None:
        """The sink file a name denotes, or None for any other name."""
        match = SINK_FILE_PATTERN.match(name)
        if match is None:
            expired = TOMBSTONE_PATTERN.match(name)
            if expired is None or int(expired.group(1)) == 0:
                return None
            return cls(0, int(expired.group(1)) - 1, path, size, mtime_ns, tombstone=True)
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        return cls(first, last, path, size, mtime_ns) if last >= first else None


class SinkLayoutError(ValueError):
    """Two files of a sink hold partly overlapping batch ranges: not a sink this code wrote."""


def _batch_order(f: SinkFile) -> tuple[int, int, bool]:
    """By first batch, the wider range first, a tombstone before a file of the same range."""
    return (f.first, -f.last, not f.tombstone)


def list_sink_files(sink: Location) -> list[SinkFile]:
    """Every batch and range file and tombstone of a sink, by first batch id (empty when there
    is no sink)."""
    found = []
    for info in sink.list():
        if info.type != pafs.FileType.File:
            continue
        parsed = SinkFile.parse(info.base_name, info.path, info.size or 0, info.mtime_ns or 0)
        if parsed is not None:
            found.append(parsed)
    return sorted(found, key=_batch_order)


def live_files(files: list[SinkFile]) -> list[SinkFile]:
    """The reader contract: the files no other file (or tombstone) supersedes, in batch order.

    Raises `SinkLayoutError` when two ranges partly overlap (some batch could not be read from
    exactly one file).
    """
    return [f for f in _outermost(files) if not f.tombstone]


def expired_before(files: list[SinkFile]) -> int:
    """The first batch retention keeps: every batch before it expired (0 when none did)."""
    return max((f.last + 1 for f in files if f.tombstone), default=0)


def _outermost(files: list[SinkFile]) -> list[SinkFile]:
    """The files and tombstones no other one holds, in batch order."""
    live: list[SinkFile] = []
    for f in sorted(files, key=_batch_order):
        if live and f.first <= live[-1].last:
            if f.last <= live[-1].last:
                continue  # superseded by the live file that holds it
            raise SinkLayoutError(
                f"sink files {live[-1].path} and {f.path} hold partly overlapping batch ranges, "
                "so no reader can take each batch from one file; move the one that was not "
                "written by this project's sink or compaction out of the sink folder"
            )
        live.append(f)
    return live


def superseded_files(files: list[SinkFile]) -> list[tuple[SinkFile, SinkFile]]:
    """Each superseded file (or tombstone) with the live file or tombstone that holds it."""
    live = _outermost(files)
    result = []
    i = 0
    for f in sorted(files, key=_batch_order):
        while i < len(live) and live[i].last < f.first:
            i += 1
        if i < len(live) and live[i] is not f and live[i].holds(f):
            result.append((f, live[i]))
    return result


@dataclass(frozen=True)
class CheckpointLayout:
    """The files of one checkpoint folder."""

    root: Location

    @classmethod
    def of(cls, checkpoint: str) -> CheckpointLayout:
        """The layout of the checkpoint at a local path or URI."""
        return cls(Location.of(checkpoint))

    @property
    def offsets(self) -> Location:
        """Spark's write-ahead log of what each batch reads."""
        return self.root.child("offsets")

    @property
    def commits(self) -> Location:
        """Spark's log of finished batches."""
        return self.root.child("commits")

    @property
    def metadata(self) -> Location:
        """Spark's query metadata file."""
        return self.root.child("metadata")

    @property
    def generation_file(self) -> Location:
        """Our record of how sink batch ids relate to this checkpoint's batch ids."""
        return self.root.child(STREAMOPS_DIR, "generation.json")

    @property
    def status_file(self) -> Location:
        """The job's machine-readable progress."""
        return self.root.child(STREAMOPS_DIR, STATUS_FILE)

    @property
    def lease_file(self) -> Location:
        """Which driver runs the query on this checkpoint: its lease (see `lease.py`)."""
        return self.root.child(STREAMOPS_DIR, LEASE_FILE)

    @property
    def stop_request(self) -> Location:
        """Its presence asks the running job to stop at the next batch boundary."""
        return self.root.child(STREAMOPS_DIR, STOP_REQUEST)

    def batch_ids(self, log: Location) -> list[int]:
        """The batch ids present in Spark's `offsets` or `commits` log, ascending."""
        return sorted(int(info.base_name) for info in log.list() if info.base_name.isdigit())

    def is_new(self) -> bool:
        """True when Spark has never planned a batch in this checkpoint."""
        return not self.batch_ids(self.offsets)

    def batch_timestamp_ms(self, batch_id: int) -> int:
        """The timestamp Spark recorded for a batch in its offset log.

        Spark writes it before the batch runs and reuses it when a batch is replayed after a
        crash, so it is the same on every attempt of the batch.
        """
        log_file = self.offsets.child(str(batch_id))
        lines = log_file.read_text().splitlines()
        if len(lines) < 2:
            raise ValueError(
                f"checkpoint offset file {log_file} is truncated: expected a version line and a "
                "metadata line; restore the checkpoint from a snapshot"
            )
        return int(json.loads(lines[1])["batchTimestampMs"])


@dataclass(frozen=True)
class Generation:
    """How a checkpoint's batch ids map onto the sink's, which increase over a job's whole life.

    Spark numbers batches from 0 in every new checkpoint. The sink numbers them
    `first_sink_batch_id + spark_batch_id`, so a new checkpoint continues after the last batch
    already in the sink instead of colliding with it.
    """

    first_sink_batch_id: int
    # 0 for a checkpoint's first life; each rotation starts the next number.
    number: int = 0

    def sink_batch_id(self, spark_batch_id: int) -> int:
        """The sink's batch id of a Spark batch of this checkpoint."""
        return self.first_sink_batch_id + spark_batch_id

    @classmethod
    def read(cls, layout: CheckpointLayout) -> Generation | None:
        """The recorded generation of a checkpoint, if any."""
        if not layout.generation_file.exists():
            return None
        data = json.loads(layout.generation_file.read_text())
        return cls(
            first_sink_batch_id=int(data["first_sink_batch_id"]), number=int(data.get("number", 0))
        )

    def write(self, layout: CheckpointLayout) -> None:
        """Record this generation in the checkpoint."""
        layout.generation_file.write_text_atomic(
            json.dumps({"first_sink_batch_id": self.first_sink_batch_id, "number": self.number})
            + "\n"
        )


@dataclass(frozen=True)
class SinkLayout:
    """The files of one sink folder."""

    root: Location

    @classmethod
    def of(cls, sink: str) -> SinkLayout:
        """The layout of the sink at a local path or URI."""
        return cls(Location.of(sink))

    def files(self) -> list[SinkFile]:
        """Every batch and range file, superseded ones included."""
        return list_sink_files(self.root)

    def live(self) -> list[SinkFile]:
        """The files a reader reads (`live_files`)."""
        return live_files(self.files())

    def tombstone(self, first_kept: int) -> Location:
        """The retention tombstone that expires every batch before `first_kept`."""
        return self.root.child(tombstone_name(first_kept))

    @property
    def history_file(self) -> Location:
        """What compactions and truncations did to the sink (`compaction.SinkHistory`)."""
        return self.root.child(STREAMOPS_DIR, SINK_HISTORY_FILE)

    @property
    def maintenance_lease(self) -> Location:
        """Held while a compaction, restore or rotation rewrites the sink's files."""
        return self.root.child(STREAMOPS_DIR, MAINTENANCE_LEASE_FILE)
