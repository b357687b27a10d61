"""Checkpoint lifecycle on real checkpoints: corruption is caught by name, snapshots restore to
exact sinks, rotation carries input position and state, retention keeps what it must."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from expectations import suites
from expectations.reconcile import reconcile_pair
from expectations.suites import QualityConfig, ReconcilePair
from expectations.validate import QualityRunner, Report, StreamSink
from spark_jobs import running_total, word_count
from spark_jobs.checkpoints import (
    CheckpointCorrupt,
    Snapshot,
    SnapshotStore,
    restore,
    rotate,
    snapshot_in_use,
    tree_size,
    validate,
)
from spark_jobs.compaction import compact
from spark_jobs.layout import CheckpointLayout, Generation
from spark_jobs.lease import Lease
from spark_jobs.storage import Location
from tests.conftest import drop_file, read_sink, run_available_now

TEXTS = [
    "hello world spark streaming\nhello spark\n",
    "hello spark\n",
    "spark state store rocksdb spark\n",
    "world of streams\n",
    "hello again world\n",
    "checkpoints rotate spark\n",
    "last words here\n",
]


def feed(folder: Path, index: int) -> Counter[str]:
    drop_file(folder, f"{index:03d}.txt", TEXTS[index % len(TEXTS)], mtime=1_700_000_000 + index)
    return Counter(TEXTS[index % len(TEXTS)].split())


def argv(root: Path, job: str, partitions: int = 2) -> list[str]:
    return [
        "--input", str(root / f"{job}-in"),
        "--sink", str(root / f"{job}-sink"),
        "--checkpoint", str(root / f"{job}-ck"),
        "--max-files-per-trigger", "1",
        "--shuffle-partitions", str(partitions),
    ]  # fmt: skip


def build_checkpoint(spark: SparkSession, root: Path) -> CheckpointLayout:
    """A running_total checkpoint after 3 batches, with a snapshot taken after batch 1."""
    for i in range(2):
        feed(root / "running_total-in", i)
    run_available_now(spark, running_total, argv(root, "running_total"))
    SnapshotStore.of(CheckpointLayout.of(str(root / "running_total-ck"))).create(
        CheckpointLayout.of(str(root / "running_total-ck"))
    )
    feed(root / "running_total-in", 2)
    run_available_now(spark, running_total, argv(root, "running_total"))
    return CheckpointLayout.of(str(root / "running_total-ck"))


def _empty_offset(ck: Path) -> str:
    (ck / "offsets/2").write_bytes(b"")
    return "offset file .*offsets/2 is empty"


def _truncated_commit(ck: Path) -> str:
    (ck / "commits/1").write_text('v1\n{"nextBatchWat')
    return "commit file .*commits/1 is truncated"


def _missing_commit(ck: Path) -> str:
    (ck / "commits/1").unlink()
    return "commit log .*commits has a gap: no file for batch 1"


def _missing_state(ck: Path) -> str:
    # RocksDB with changelog checkpointing writes 3.changelog (and a 3.zip snapshot now and then)
    partition = next(p.parent for p in sorted((ck / "state/0").glob("*/3.changelog")))
    for version_file in partition.glob("3.*"):
        version_file.unlink()
    victim = partition / "3"
    return f"state file for version 3 \\(batch 2\\) is missing in .*state/0/{victim.parent.name}"


def _deleted_metadata(ck: Path) -> str:
    (ck / "metadata").unlink()
    return "metadata is missing"


@pytest.mark.spark
@pytest.mark.parametrize(
    "corrupt",
    [_empty_offset, _truncated_commit, _missing_commit, _missing_state, _deleted_metadata],
)
def test_each_corruption_is_named_and_restoring_the_snapshot_gives_exact_sinks(
    spark: SparkSession, tmp_path: Path, corrupt: object
) -> None:
    root = tmp_path
    layout = build_checkpoint(spark, root)
    validate(layout)  # sound before the damage
    # Given one kind of damage
    expected_message = corrupt(Path(layout.root.path))  # type: ignore[operator]
    # Then validation names the file and the snapshot to restore
    with pytest.raises(CheckpointCorrupt, match=expected_message) as caught:
        validate(layout)
    assert "restore snapshot" in str(caught.value)
    # And the job refuses to start on it (exit code 2, one line)
    with pytest.raises(Exception, match="is damaged"):
        run_available_now(spark, running_total, argv(root, "running_total"))
    # When the snapshot is restored and the stream resumes with more input
    snapshot = restore(layout, Location.of(str(root / "running_total-sink")))
    assert snapshot.last_sink_batch_id == 1
    assert snapshot_in_use(layout) == snapshot.id
    feed(root / "running_total-in", 3)
    run_available_now(spark, running_total, argv(root, "running_total"))
    # Then the totals are exact: replayed batches were not counted twice
    expected = sum((Counter(TEXTS[i].split()) for i in range(4)), Counter())
    totals = read_sink(root / "running_total-sink").sort_values("batch_id")
    assert totals.groupby("word")["total"].last().to_dict() == dict(expected)
    assert not totals.duplicated(["batch_id", "word"]).any()


@pytest.mark.spark
@pytest.mark.slow
def test_rotation_keeps_counts_and_totals_exact_and_can_change_partitions(
    spark: SparkSession, tmp_path: Path
) -> None:
    expected: Counter[str] = Counter()
    index = 0
    sizes = []
    for generation, partitions in enumerate([2, 3, 4, 1]):
        # Given input that keeps arriving, also while a rotation is under way
        for _ in range(2):
            for job in ("word_count", "running_total"):
                feed(tmp_path / f"{job}-in", index)
            expected += Counter(TEXTS[index % len(TEXTS)].split())
            index += 1
        run_available_now(spark, word_count, argv(tmp_path, "word_count", partitions))
        run_available_now(spark, running_total, argv(tmp_path, "running_total", partitions))
        # (and both sinks are compacted and reconciled, incrementally, in every generation)
        for job in ("word_count", "running_total"):
            compact(str(tmp_path / f"{job}-sink"), str(tmp_path / f"{job}-ck"))
        incremental = reconcile(tmp_path, tmp_path / "quality")
        assert incremental.success, incremental.message()
        assert incremental.checks == {"reconcile": True}, incremental.checked
        for job in ("word_count", "running_total"):
            feed(tmp_path / f"{job}-in", index)
        expected += Counter(TEXTS[index % len(TEXTS)].split())
        index += 1
        if generation == 3:
            break
        # When both streams are rotated (stopped at a batch boundary: available-now ended)
        for job in ("word_count", "running_total"):
            layout = CheckpointLayout.of(str(tmp_path / f"{job}-ck"))
            rotation = rotate(
                layout,
                Location.of(str(tmp_path / f"{job}-sink")),
                Location.of(str(tmp_path / f"{job}-in")),
                carry_totals=job == "running_total",
            )
            assert rotation.generation.number == generation + 1
            assert rotation.archived_inputs == 2 if generation == 0 else 3
            sizes.append((rotation.size_before, rotation.size_after))
    for job in ("word_count", "running_total"):
        run_available_now(
            spark, word_count if job == "word_count" else running_total, argv(tmp_path, job, 1)
        )

    # Then word_count's counts and running_total's totals equal the input exactly
    counts = read_sink(tmp_path / "word_count-sink")
    totals = read_sink(tmp_path / "running_total-sink").sort_values("batch_id")
    assert counts.groupby("word")["count"].sum().to_dict() == dict(expected)
    assert totals.groupby("word")["total"].last().to_dict() == dict(expected)
    # And sink batch ids kept increasing across generations, one file per input file
    assert sorted(counts.batch_id.unique()) == list(range(index))
    assert sorted(totals.batch_id.unique()) == list(range(index))
    # And each running total is the running sum of word_count's counts (same file per batch id)
    cumulative = counts.sort_values("batch_id").assign(
        cum=lambda f: f.groupby("word")["count"].cumsum()
    )
    merged = totals.merge(cumulative, on=["batch_id", "word"])
    assert (merged.total == merged.cum).all()
    assert len(merged) == len(totals)
    # And a rotated checkpoint is smaller than the one it replaced; old generations are snapshots
    assert all(after < before for before, after in sizes)
    layout = CheckpointLayout.of(str(tmp_path / "running_total-ck"))
    assert [s.reason for s in SnapshotStore.of(layout).all()] == ["rotation"] * 3
    generation_record = Generation.read(layout)
    assert generation_record is not None
    assert generation_record.number == 3
    # And reconciliation run incrementally across compactions and rotations agrees with a run
    # over both whole sinks: both pass, and every word stands at the same place
    last = reconcile(tmp_path, tmp_path / "quality")
    whole = reconcile(tmp_path, tmp_path / "quality-whole")
    assert last.success, last.message()
    assert whole.success, whole.message()
    assert last.checks == whole.checks == {"reconcile": True}, (last.checked, whole.checked)
    print(f"incremental: {last.checked}\nwhole: {whole.checked}")
    standings = [
        pd.read_parquet(root / "_streamops/quality/word_count~running_total.reconcile.parquet")
        .sort_values("word")
        .reset_index(drop=True)
        for root in (tmp_path / "quality", tmp_path / "quality-whole")
    ]
    pd.testing.assert_frame_equal(*standings)


def reconcile(streams: Path, root: Path) -> Report:
    """One sink_quality reconciliation of the word_count and running_total streams."""
    runner = QualityRunner(str(root), QualityConfig.load(suites.DEFAULT_CONFIG), run="test")
    report = reconcile_pair(
        runner,
        ReconcilePair("word_count", "running_total"),
        *(
            StreamSink(job, job, str(streams / f"{job}-sink"), str(streams / f"{job}-ck"))
            for job in ("word_count", "running_total")
        ),
    )
    runner.commit()
    return report


def make_snapshot(store: SnapshotStore, snapshot_id: str, created: datetime) -> None:
    folder = store.root.child(snapshot_id)
    folder.mkdirs()
    manifest = Snapshot(snapshot_id, created.isoformat(), 0, 0, 1, "test")
    folder.child("snapshot.json").write_text_atomic(json.dumps(manifest.__dict__))


def test_retention_prunes_by_count_and_age_but_never_the_newest_or_protected(
    tmp_path: Path,
) -> None:
    store = SnapshotStore(Location.of(str(tmp_path / "ck.snapshots")))
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    ages = {"s01": 72, "s02": 48, "s03": 30, "s04": 5, "s05": 4, "s06": 3, "s07": 2, "s08": 1}
    for snapshot_id, hours in ages.items():
        make_snapshot(store, snapshot_id, now - timedelta(hours=hours))
    deleted = store.prune(
        keep_count=3, keep_age=timedelta(hours=24), now=now, protect=frozenset({"s02"})
    )
    assert sorted(s.id for s in deleted) == ["s01", "s03", "s04", "s05"]
    assert [s.id for s in store.all()] == ["s02", "s06", "s07", "s08"]
    # Even when every snapshot is too old, the newest stays
    store.prune(keep_count=10, keep_age=timedelta(minutes=1), now=now + timedelta(days=30))
    assert [s.id for s in store.all()] == ["s08"]


def test_a_new_checkpoint_is_valid(tmp_path: Path) -> None:
    validate(CheckpointLayout.of(str(tmp_path / "never-started")))
    assert tree_size(Location.of(str(tmp_path / "never-started"))) == 0


@pytest.mark.spark
def test_snapshots_leave_the_lease_out_and_a_restore_keeps_the_live_one(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Given a checkpoint whose lease is held, as checkpoint_rotation holds it during an action
    layout = build_checkpoint(spark, tmp_path)
    lease = Lease(layout.lease_file, "running_total", "checkpoint_rotation/manual__1")
    lease.acquire()
    try:
        # When a snapshot is taken and restored
        snapshot = SnapshotStore.of(layout).create(layout)
        copy = Path(SnapshotStore.of(layout).root.child(snapshot.id).path)
        restore(layout, Location.of(str(tmp_path / "running_total-sink")), snapshot.id)
        # Then the snapshot holds no lease, and the checkpoint still holds the live one
        assert not (copy / "_streamops" / "lease.json").exists()
        holder = lease.read()
        assert holder is not None
        assert holder.token == lease.token
    finally:
        lease.release()
