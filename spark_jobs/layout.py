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
    <sink>/_superseded/<time>/part-...      the files one commit superseded (merged by compaction,
                                            expired by retention), kept for reads under way until
                                            a grace period after <time> (UTC, when it superseded
                                            them: `superseded_folder_name`)
    <sink>/_streamops/
        maintenance.json  the lease of a compaction, restore or rotation (see `compaction.py`)
        sink.json         the sink's history: compactions, truncations (see `SinkHistory`)

The *visible set* is the files directly in the sink folder, the ones any Parquet reader of the
folder lists: names that start with `_` or `.` are skipped by Spark, pyarrow and pandas, and a
glob `<sink>/*.parquet` (DuckDB) does not descend into `_superseded/`.

The reader contract (`live_files`): the batch ranges of the visible set's files are nested or
disjoint, never partly overlapping. A file whose range lies inside another file's range is
*superseded*. Reading the files no other file supersedes gives every batch exactly once.

A compaction commits in two steps with nothing in between: it renames its range file into
place, and at once moves the files it supersedes to `_superseded/<time>/` (`SinkLayout.hide`).
So the visible set holds superseded files only for the few renames of that commit (or after a
kill in the middle of them, until the next compaction moves them): a reader of the folder itself
reads every batch once outside that window. A reader of the contract that listed a file before
it moved still opens it, in `_superseded/`, through `SinkLayout.reader`.

The time in the folder's name is when its files were superseded; the files' own mtimes would
not say (a rename keeps a file's mtime, and the newest range file is rewritten at every run).

A retention tombstone (an empty file; its `_` prefix hides it from plain directory readers) takes
part in the rule as the range `0..<batch_id> - 1` with no rows: the files it covers are expired,
moved to `_superseded/` right after it like merged files, and deleted after the same grace
period. Retention thus hides whole files, oldest first, and a reader sees every batch from the
tombstone on exactly once.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
#: The sub-folder of a sink where superseded files wait for the end of the grace period, in a
#: folder per commit named after its UTC time (`superseded_folder_name`).
SUPERSEDED_DIR = "_superseded"
SUPERSEDED_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"


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


def superseded_folder_name(when: datetime) -> str:
    """The name of the `_superseded/` folder of a commit made at `when`, e.g.
    `20260101T120000.000000Z` (no `:`, which HDFS refuses in names; sorts by time)."""
    return when.astimezone(UTC).strftime(SUPERSEDED_TIME_FORMAT)


def superseded_since(name: str) -> datetime | None:
    """When the files of a `_superseded/` folder were superseded (None: not such a folder)."""
    try:
        return datetime.strptime(name, SUPERSEDED_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


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
    def starting_offsets_file(self) -> Location:
        """A Kafka stream's position carried over by a rotation: the offsets the previous
        checkpoint generation committed, where this one starts (`checkpoints.rotate`)."""
        return self.root.child(STREAMOPS_DIR, "starting_offsets.json")

    def committed_source_offsets(self) -> list[Any]:
        """Each source's offsets at the last committed batch, as Spark's offset log holds them
        (a Kafka source's: `{topic: {partition: offset}}`); empty before the first commit."""
        commits = self.batch_ids(self.commits)
        if not commits:
            return []
        lines = self.offsets.child(str(commits[-1])).read_text().splitlines()
        # "v1", the batch's metadata, then one line per source.
        return [json.loads(line) for line in lines[2:] if line.strip()]

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
        """The visible set: every batch and range file and tombstone directly in the folder."""
        return list_sink_files(self.root)

    def live(self) -> list[SinkFile]:
        """The files a reader reads (`live_files`)."""
        return live_files(self.files())

    @property
    def superseded_dir(self) -> Location:
        """Where superseded files wait for the end of the grace period."""
        return self.root.child(SUPERSEDED_DIR)

    def superseded_folders(self) -> list[tuple[Location, datetime | None]]:
        """Each folder of `_superseded/`, oldest first, with when its files were superseded
        (None for a folder that is not a commit's)."""
        return [
            (Location(self.root.filesystem, info.path), superseded_since(info.base_name))
            for info in self.superseded_dir.list()
            if info.type == pafs.FileType.Directory
        ]

    def superseded(self) -> list[SinkFile]:
        """The files and tombstones waiting in `_superseded/`, by first batch id."""
        found = []
        for folder, _since in self.superseded_folders():
            found.extend(list_sink_files(folder))
        return sorted(found, key=_batch_order)

    def superseded_folder(self, when: datetime) -> Location:
        """Make the `_superseded/` folder of a commit made at `when`."""
        folder = self.superseded_dir.child(superseded_folder_name(when))
        folder.mkdirs()
        return folder

    def hide(self, f: SinkFile, folder: Location) -> None:
        """Take a superseded file out of the visible set: rename it into a commit's folder of
        `_superseded/` (`superseded_folder`)."""
        Location(self.root.filesystem, f.path).move_to(folder.child(posixpath.basename(f.path)))

    def find_superseded(self, path: str) -> str | None:
        """Where a file of the visible set that has gone now is: in the newest folder of
        `_superseded/` that holds its name (None: in none, or no file of this sink)."""
        parent, name = posixpath.split(path)
        if parent != self.root.path or SinkFile.parse(name, path) is None:
            return None
        for folder, _since in reversed(self.superseded_folders()):
            moved = folder.child(name)
            if self.root.filesystem.get_file_info(moved.path).type == pafs.FileType.File:
                return moved.path
        return None

    def reader(self) -> Location:
        """The folder as readers of the contract open it: a file gone from the visible set since
        it was listed is read from `_superseded/` (`find_superseded`, `storage.ReadFallback`)."""
        return self.root.with_read_fallback(self.find_superseded)

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
