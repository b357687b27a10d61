"""Checkpoint lifecycle: validate, snapshot, restore, prune and rotate, without losing or
duplicating a record.

Everything goes through `storage.Location` (pyarrow's filesystems), so it works on local paths
here and on `s3://`, `gs://` or `hdfs://` URIs on a cluster. Nothing here imports pyspark: the
jobs call `validate` before every start, and Airflow tasks call the rest while the stream is
stopped (at a batch boundary) and its lease is held.

Snapshots live beside the checkpoint, in `<checkpoint>.snapshots/<id>/`, each with a
`snapshot.json` manifest. Retention keeps the newest snapshot always, and otherwise the
`keep_count` newest (default 10) that are younger than `keep_age` (default 24 h), the defaults of
Flink's savepoint history.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from pyarrow import fs as pafs

from spark_jobs.layout import (
    CONTROL_FILES,
    STREAMOPS_DIR,
    CheckpointLayout,
    Generation,
    SinkLayout,
)
from spark_jobs.storage import Location

DEFAULT_KEEP_COUNT = 10
DEFAULT_KEEP_AGE = timedelta(hours=24)
STATE_FILE_SUFFIXES = (".zip", ".delta", ".snapshot", ".changelog")
# Control files that describe a running stream, not its data: never part of a snapshot.
BASE_TOTALS_FILE = "base_totals.parquet"
RESTORED_FROM_FILE = "restored-from"


class CheckpointCorrupt(Exception):
    """The checkpoint cannot be resumed safely; the message names the file and the remedy."""


# ---------------------------------------------------------------------------------------------
# Validation


def _log_lines(location: Location) -> list[str]:
    return location.read_text().splitlines()


def _remedy(layout: CheckpointLayout) -> str:
    latest = SnapshotStore.of(layout).latest()
    if latest:
        return (
            f"restore snapshot {latest.id} (checkpoint_rotation DAG, action 'restore'; it holds "
            f"batches up to {latest.last_sink_batch_id})"
        )
    return (
        "no snapshot exists: move the checkpoint aside and start the job on a new one with "
        "--allow-new-checkpoint (the file source then reads its whole input folder again)"
    )


def validate(layout: CheckpointLayout) -> None:
    """Check that Spark can resume from a checkpoint. A new (empty) checkpoint is valid.

    Detects: a missing or unreadable `metadata`, empty or truncated `offsets/N` and `commits/N`
    files, gaps in either log, a commit without its offsets, and missing state files for the
    last committed version. Raises `CheckpointCorrupt` naming the file and the remedy.
    """
    if layout.is_new() and not layout.batch_ids(layout.commits):
        return

    def corrupt(what: str) -> CheckpointCorrupt:
        return CheckpointCorrupt(f"checkpoint {layout.root} is damaged: {what}; {_remedy(layout)}")

    try:
        json.loads(layout.metadata.read_text())["id"]
    except FileNotFoundError:
        raise corrupt(f"{layout.metadata} is missing (it holds the query id)") from None
    except (ValueError, KeyError):
        raise corrupt(f"{layout.metadata} is unreadable") from None

    _validate_logs(layout, corrupt)
    offsets = layout.batch_ids(layout.offsets)
    commits = layout.batch_ids(layout.commits)
    if commits and (not offsets or commits[-1] > offsets[-1]):
        raise corrupt(f"commit {commits[-1]} has no offset file in {layout.offsets}")
    if offsets and commits and offsets[-1] - commits[-1] > 1:
        raise corrupt(
            f"commit file {layout.commits.child(str(commits[-1] + 1))} is missing: batches "
            f"{commits[-1] + 1} to {offsets[-1]} were planned but only one may be uncommitted"
        )
    if offsets and not commits and offsets[0] > 0:
        raise corrupt(f"commit log {layout.commits} is empty but offsets start at {offsets[0]}")
    if commits:
        _validate_state(layout, commits[-1], corrupt)


def _validate_logs(layout: CheckpointLayout, corrupt: Callable[[str], CheckpointCorrupt]) -> None:
    for log, name in ((layout.offsets, "offset"), (layout.commits, "commit")):
        ids = layout.batch_ids(log)
        if ids and ids != list(range(ids[0], ids[-1] + 1)):
            missing = sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))
            raise corrupt(f"{name} log {log} has a gap: no file for batch {missing[0]}")
        for batch_id in ids:
            file = log.child(str(batch_id))
            lines = _log_lines(file)
            if not lines:
                raise corrupt(f"{name} file {file} is empty (a crash while it was written)")
            try:
                if lines[0] != "v1" or len(lines) < 2:
                    raise ValueError
                for line in lines[1:]:
                    json.loads(line)
            except ValueError:
                raise corrupt(f"{name} file {file} is truncated or unreadable") from None


def _validate_state(
    layout: CheckpointLayout, last_committed: int, corrupt: Callable[[str], CheckpointCorrupt]
) -> None:
    state = layout.root.child("state")
    if not state.is_dir():
        return
    version = last_committed + 1
    for operator in state.list():
        if not operator.base_name.isdigit():
            continue
        op = Location(state.filesystem, operator.path)
        partitions = [p for p in op.list() if p.base_name.isdigit()]
        try:
            expected = json.loads(_log_lines(op.child("_metadata", "metadata"))[1])
            count = int(expected["stateStoreInfo"][0]["numPartitions"])
        except (FileNotFoundError, IndexError, KeyError, ValueError):
            count = len(partitions)
        for partition in range(count):
            folder = op.child(str(partition))
            names = {info.base_name for info in folder.list()}
            if not any(f"{version}{suffix}" in names for suffix in STATE_FILE_SUFFIXES):
                raise corrupt(
                    f"state file for version {version} (batch {last_committed}) is missing in "
                    f"{folder}"
                )


# ---------------------------------------------------------------------------------------------
# Snapshots


@dataclass(frozen=True)
class Snapshot:
    """A copy of a checkpoint taken at a batch boundary."""

    id: str
    created_at: str
    last_spark_batch_id: int | None
    last_sink_batch_id: int | None
    size_bytes: int
    reason: str

    @property
    def created(self) -> datetime:
        """`created_at` as a datetime."""
        return datetime.fromisoformat(self.created_at)


def tree_size(location: Location) -> int:
    """Bytes in all files below a folder (0 when it does not exist)."""
    selector = pafs.FileSelector(location.path, allow_not_found=True, recursive=True)
    return sum(i.size or 0 for i in location.filesystem.get_file_info(selector) if i.is_file)


def _copy_tree(source: Location, target: Location) -> None:
    target.mkdirs()
    pafs.copy_files(
        source.path,
        target.path,
        source_filesystem=source.filesystem,
        destination_filesystem=target.filesystem,
    )


def last_committed(layout: CheckpointLayout) -> tuple[int | None, int | None]:
    """The last committed Spark batch id of a checkpoint, and its sink batch id."""
    commits = layout.batch_ids(layout.commits)
    if not commits:
        generation = Generation.read(layout)
        return None, (generation.first_sink_batch_id - 1 if generation else None)
    generation = Generation.read(layout) or Generation(0)
    return commits[-1], generation.sink_batch_id(commits[-1])


class SnapshotStore:
    """The snapshots of one checkpoint."""

    def __init__(self, root: Location) -> None:
        self.root = root

    @classmethod
    def of(cls, layout: CheckpointLayout) -> SnapshotStore:
        """The store beside a checkpoint: `<checkpoint>.snapshots/`."""
        parent = posixpath.dirname(layout.root.path)
        return cls(Location(layout.root.filesystem, f"{parent}/{layout.root.name}.snapshots"))

    def all(self) -> list[Snapshot]:
        """Every complete snapshot, oldest first."""
        snapshots = []
        for info in self.root.list():
            manifest = self.root.child(info.base_name, "snapshot.json")
            if info.base_name.startswith(".") or not manifest.exists():
                continue
            snapshots.append(Snapshot(**json.loads(manifest.read_text())))
        return sorted(snapshots, key=lambda s: (s.created_at, s.id))

    def latest(self) -> Snapshot | None:
        """The newest snapshot, or None."""
        snapshots = self.all()
        return snapshots[-1] if snapshots else None

    def get(self, snapshot_id: str) -> Snapshot:
        """One snapshot by id; `ValueError` listing the ids when there is no such snapshot."""
        for snapshot in self.all():
            if snapshot.id == snapshot_id:
                return snapshot
        known = ", ".join(s.id for s in self.all()) or "none"
        raise ValueError(f"no snapshot {snapshot_id!r} in {self.root} (snapshots: {known})")

    def create(self, layout: CheckpointLayout, reason: str = "manual") -> Snapshot:
        """Copy a quiescent checkpoint (stopped at a batch boundary) into a new snapshot.

        The copy is made under a hidden name and renamed when complete, so a snapshot is either
        listed whole or not at all.
        """
        validate(layout)
        spark_batch, sink_batch = last_committed(layout)
        now = datetime.now(UTC)
        snapshot_id = f"{now:%Y%m%dT%H%M%S%fZ}-b{sink_batch if sink_batch is not None else 'none'}"
        staging = self.root.child(f".{snapshot_id}.tmp")
        _copy_tree(layout.root, staging)
        for name in CONTROL_FILES:
            control = staging.child(STREAMOPS_DIR, name)
            if control.exists():
                control.filesystem.delete_file(control.path)
        snapshot = Snapshot(
            id=snapshot_id,
            created_at=now.isoformat(),
            last_spark_batch_id=spark_batch,
            last_sink_batch_id=sink_batch,
            size_bytes=tree_size(staging),
            reason=reason,
        )
        staging.child("snapshot.json").write_text_atomic(json.dumps(asdict(snapshot), indent=2))
        self.root.filesystem.move(staging.path, self.root.child(snapshot_id).path)
        return snapshot

    def prune(
        self,
        keep_count: int = DEFAULT_KEEP_COUNT,
        keep_age: timedelta = DEFAULT_KEEP_AGE,
        now: datetime | None = None,
        protect: frozenset[str] = frozenset(),
    ) -> list[Snapshot]:
        """Delete snapshots beyond `keep_count` or older than `keep_age`. Returns the deleted.

        The newest snapshot and those in `protect` (e.g. the one a checkpoint was restored from)
        are never deleted.
        """
        now = now or datetime.now(UTC)
        snapshots = self.all()
        keep = {s.id for s in snapshots[-keep_count:] if now - s.created <= keep_age}
        keep |= set(protect)
        if snapshots:
            keep.add(snapshots[-1].id)
        deleted = [s for s in snapshots if s.id not in keep]
        for snapshot in deleted:
            self.root.filesystem.delete_dir(self.root.child(snapshot.id).path)
        return deleted


def _clear_checkpoint(layout: CheckpointLayout) -> None:
    """Delete a checkpoint's content, except the control files (the caller holds the lease)."""
    for info in layout.root.list():
        if info.base_name == STREAMOPS_DIR:
            meta = Location(layout.root.filesystem, info.path)
            for item in meta.list():
                if item.base_name not in CONTROL_FILES:
                    _delete(Location(meta.filesystem, item.path))
        else:
            _delete(Location(layout.root.filesystem, info.path))


def _delete(location: Location) -> None:
    if location.is_dir():
        location.filesystem.delete_dir(location.path)
    elif location.exists():
        location.filesystem.delete_file(location.path)


def truncate_sink(sink: Location, after_batch_id: int | None, reason: str) -> list[int]:
    """Delete a sink's batches with ids above `after_batch_id` (all when None).

    Spark recomputes those batches from the checkpoint, possibly grouped differently, so
    keeping them would count their records twice. Under the sink's maintenance lease, so never
    beside a compaction (`compaction.truncate`).
    """
    from spark_jobs.compaction import truncate

    return truncate(SinkLayout(sink), after_batch_id, owner=reason, reason=reason)


def restore(layout: CheckpointLayout, sink: Location, snapshot_id: str | None = None) -> Snapshot:
    """Put a snapshot (by default the latest) back in place of a stopped stream's checkpoint.

    Sink batches written after the snapshot are removed: the job recomputes them when it
    resumes, so every record ends up in the sink exactly once.
    """
    store = SnapshotStore.of(layout)
    snapshot = store.get(snapshot_id) if snapshot_id else store.latest()
    if snapshot is None:
        raise ValueError(f"no snapshot to restore in {store.root}")
    _clear_checkpoint(layout)
    source = store.root.child(snapshot.id)
    for info in source.list():
        if info.base_name == "snapshot.json":
            continue
        item = Location(source.filesystem, info.path)
        if item.is_dir():
            _copy_tree(item, layout.root.child(info.base_name))
        else:
            layout.root.child(info.base_name).write_bytes_atomic(item.read_bytes())
    truncate_sink(sink, snapshot.last_sink_batch_id, f"restore of snapshot {snapshot.id}")
    layout.root.child(STREAMOPS_DIR, RESTORED_FROM_FILE).write_text_atomic(snapshot.id + "\n")
    return snapshot


def snapshot_in_use(layout: CheckpointLayout) -> str | None:
    """The snapshot the checkpoint was last restored from, which pruning must keep."""
    marker = layout.root.child(STREAMOPS_DIR, RESTORED_FROM_FILE)
    return marker.read_text().strip() if marker.exists() else None


# ---------------------------------------------------------------------------------------------
# Rotation


def processed_files(layout: CheckpointLayout) -> list[str]:
    """The input files (URIs as Spark logged them) of every committed batch of a file source."""
    commits = layout.batch_ids(layout.commits)
    if not commits:
        return []
    log = layout.root.child("sources", "0")
    files: dict[str, None] = {}
    for info in log.list():
        if info.base_name.startswith("."):
            continue
        for line in Location(log.filesystem, info.path).read_text().splitlines()[1:]:
            entry = json.loads(line)
            if int(entry.get("batchId", -1)) <= commits[-1]:
                files[entry["path"]] = None
    return list(files)


@dataclass(frozen=True)
class Rotation:
    """What a rotation did."""

    snapshot: Snapshot
    generation: Generation
    archived_inputs: int
    size_before: int
    size_after: int
    # A Kafka source's committed offsets, where the new generation starts (None: not Kafka).
    kafka_offsets: dict[str, dict[str, int]] | None = None


def rotate(
    layout: CheckpointLayout,
    sink: Location,
    input_dir: Location | None,
    carry_totals: bool,
) -> Rotation:
    """Start a new checkpoint generation for a stopped stream, keeping the old one as a snapshot.

    - Input position: the input files of committed batches move to `<input>/_processed/`,
      which Spark's file source does not list, so the new generation reads exactly the files
      the old one had not committed. Each stream therefore needs an input folder of its own.
    - Kafka position: the offsets of the last committed batch go to
      `_streamops/starting_offsets.json`; the new generation's source starts there
      (`sources.read_kafka`), so it reads exactly the records the old one had not committed.
    - State (`carry_totals`, running_total): each word's total at the last committed batch
      goes to `_streamops/base_totals.parquet`; the job adds it to the new generation's counts.
    - Batch ids: the new generation's batch 0 is the sink batch after the last committed one.
    The new checkpoint starts with the shuffle partitions of the job's next start, so rotation
    is how a stateful stream changes them.
    """
    size_before = tree_size(layout.root)
    snapshot = SnapshotStore.of(layout).create(layout, reason="rotation")
    _, last_sink = last_committed(layout)
    previous = Generation.read(layout) or Generation(0)
    base = _final_totals(sink, last_sink) if carry_totals else None
    kafka_offsets = [o for o in layout.committed_source_offsets() if is_kafka_offsets(o)]
    if not kafka_offsets and layout.starting_offsets_file.exists():
        # Nothing committed since the last rotation: the position it carried still holds.
        kafka_offsets = [json.loads(layout.starting_offsets_file.read_text())]

    archived = 0
    if input_dir is not None:
        archive = input_dir.child("_processed", snapshot.id)
        for uri in processed_files(layout):
            path = Location.of(uri)
            if posixpath.dirname(path.path) == input_dir.path and path.exists():
                archive.mkdirs()
                path.filesystem.move(path.path, archive.child(path.name).path)
                archived += 1

    truncate_sink(sink, last_sink, f"rotation to generation {previous.number + 1}")
    _clear_checkpoint(layout)
    if base is not None:
        import pyarrow.parquet as pq

        target = layout.root.child(STREAMOPS_DIR, BASE_TOTALS_FILE)
        layout.root.child(STREAMOPS_DIR).mkdirs()
        with target.filesystem.open_output_stream(target.path) as stream:
            pq.write_table(base, stream)
    if kafka_offsets:
        layout.starting_offsets_file.write_text_atomic(json.dumps(kafka_offsets[0]) + "\n")
    generation = Generation(
        first_sink_batch_id=0 if last_sink is None else last_sink + 1,
        number=previous.number + 1,
    )
    generation.write(layout)
    return Rotation(
        snapshot,
        generation,
        archived,
        size_before,
        tree_size(layout.root),
        kafka_offsets[0] if kafka_offsets else None,
    )


def is_kafka_offsets(offsets: Any) -> bool:
    """Whether a source's line of Spark's offset log is a Kafka source's offsets:
    `{topic: {partition: offset}}`."""
    return (
        isinstance(offsets, dict)
        and bool(offsets)
        and all(
            isinstance(partitions, dict)
            and all(p.isdigit() and isinstance(o, int) for p, o in partitions.items())
            for partitions in offsets.values()
        )
    )


def _final_totals(sink: Location, last_sink_batch_id: int | None) -> pa.Table:
    """Each word's latest total in a running_total sink, up to a batch id: `word, base_total`."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    layout = SinkLayout(sink)
    files = [
        f.path for f in layout.live() if last_sink_batch_id is None or f.first <= last_sink_batch_id
    ]
    fields: list[pa.Field[Any]] = [
        pa.field("word", pa.string()),
        pa.field("base_total", pa.int64()),
    ]
    schema = pa.schema(fields)
    if not files:
        return schema.empty_table()
    table = ds.dataset(files, filesystem=layout.reader().filesystem, format="parquet").to_table(
        columns=["word", "total", "batch_id"],
        filter=None if last_sink_batch_id is None else ds.field("batch_id") <= last_sink_batch_id,
    )
    latest = table.group_by("word").aggregate([("batch_id", "max")])
    joined = table.join(
        latest, keys=["word", "batch_id"], right_keys=["word", "batch_id_max"], join_type="inner"
    )
    result = joined.select(["word", "total"]).rename_columns(["word", "base_total"])
    return result.filter(pc.is_valid(result["word"])).cast(schema)
