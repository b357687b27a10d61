"""Maintenance of a live stream's files.

Checkpoint actions (the `checkpoint_rotation` DAG): stop the stream at a batch boundary, act,
and say how to restart. The action runs while this task holds the checkpoint's lease
(`spark_jobs/lease.py`), so no driver can start on the checkpoint half-way through.

Sink compaction (the `sink_compaction` DAG): merges committed batch files while the stream runs,
under the sink's own maintenance lease (`spark_jobs/compaction.py`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal

from spark_jobs import checkpoints
from spark_jobs.layout import CheckpointLayout
from spark_jobs.lease import Lease, LeaseHeld
from spark_jobs.storage import Location
from streamops import registry
from streamops.config import stream_run_id

log = logging.getLogger(__name__)

Action = Literal["rotate", "snapshot", "restore", "prune"]
ACTIONS: tuple[Action, ...] = ("rotate", "snapshot", "restore", "prune")
STOP_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class Outcome:
    """What an action did, and how to start the stream again if it was running."""

    stream: str
    action: str
    summary: str
    size_before: int
    size_after: int
    restart_dag_id: str | None
    restart_conf: dict[str, object]


def stop_and_lease(
    record: registry.StreamRecord, owner: str, timeout: float = STOP_TIMEOUT_SECONDS
) -> tuple[Lease, bool]:
    """Stop the stream at a batch boundary if it runs, then hold its checkpoint's lease.

    Returns the held lease (renewed until released) and whether the stream was running (and so
    should be restarted).
    """
    layout = CheckpointLayout.of(record.checkpoint)
    lease = Lease(layout.lease_file, record.stream, owner)
    was_running = False
    deadline = time.monotonic() + timeout
    while True:
        try:
            lease.acquire()
            lease.start_renewing(
                lambda holder: log.error("lost the lease of %s to %s", record.checkpoint, holder)
            )
            return lease, was_running
        except LeaseHeld as held:
            if not was_running:
                log.info(
                    "stream %s runs (%s): asking it to stop",
                    record.stream,
                    held.holder.describe(),
                )
                layout.stop_request.write_text_atomic("stop\n")
                was_running = True
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"stream {record.stream} did not stop within {timeout:.0f} s; its "
                    f"driver ({held.holder.describe()}) may be stuck mid-batch: check its log, or "
                    "mark its stream task failed (which stops the driver) and run this action "
                    "again"
                ) from held
            time.sleep(2)


def run_action(
    record: registry.StreamRecord,
    action: Action,
    *,
    owner: str,
    snapshot_id: str | None = None,
    keep_count: int = checkpoints.DEFAULT_KEEP_COUNT,
    keep_age: timedelta = checkpoints.DEFAULT_KEEP_AGE,
    shuffle_partitions: int | None = None,
    reason: str = "manual",
) -> Outcome:
    """Run one checkpoint action on a stream, stopping and restarting it around the action.

    `reason` is recorded in a snapshot's manifest (`manual`, `upgrade to <version>`, ...)."""
    layout = CheckpointLayout.of(record.checkpoint)
    store = checkpoints.SnapshotStore.of(layout)
    needs_stop = action in ("rotate", "restore", "snapshot")
    lease, was_running = stop_and_lease(record, owner) if needs_stop else (None, False)
    try:
        before = checkpoints.tree_size(layout.root)
        if action == "snapshot":
            snapshot = store.create(layout, reason=reason)
            summary = f"snapshot {snapshot.id} ({snapshot.size_bytes} bytes)"
        elif action == "restore":
            snapshot = checkpoints.restore(layout, Location.of(record.sink), snapshot_id)
            summary = (
                f"restored snapshot {snapshot.id} "
                f"(sink batches up to {snapshot.last_sink_batch_id})"
            )
        elif action == "rotate":
            rotation = checkpoints.rotate(
                layout,
                Location.of(record.sink),
                Location.of(record.input) if record.input else None,
                carry_totals=record.job == "running_total",
            )
            summary = (
                f"generation {rotation.generation.number} starts at sink batch "
                f"{rotation.generation.first_sink_batch_id}; old generation kept as snapshot "
                f"{rotation.snapshot.id}; "
                + (
                    f"it reads on from the Kafka offsets committed ({json.dumps(offsets)})"
                    if (offsets := rotation.kafka_offsets)
                    else f"{rotation.archived_inputs} processed input files moved to _processed/"
                )
            )
        else:
            in_use = checkpoints.snapshot_in_use(layout)
            deleted = store.prune(
                keep_count=keep_count,
                keep_age=keep_age,
                protect=frozenset({in_use} if in_use else set()),
            )
            summary = (
                f"pruned {len(deleted)} snapshot(s): {', '.join(s.id for s in deleted) or '-'}"
            )
        after = checkpoints.tree_size(layout.root)
        if action == "prune":
            after = before = checkpoints.tree_size(store.root)
    finally:
        if lease is not None:
            lease.release()
    conf = dict(record.params)
    if action == "rotate" and shuffle_partitions:
        conf["shuffle_partitions"] = shuffle_partitions
    return Outcome(
        stream=record.stream,
        action=action,
        summary=summary,
        size_before=before,
        size_after=after,
        restart_dag_id=record.dag_id if was_running else None,
        restart_conf=conf,
    )


def act_on_stream(
    stream: str, actions: list[Action], params: Mapping[str, Any], owner: str
) -> dict[str, object]:
    """Run `actions` on a stream's checkpoint with the `checkpoint_rotation` Params; log sizes.

    Returns what restarts the stream (a `TriggerDagRunOperator`'s arguments) when it ran before,
    else an empty dict."""
    record = registry.load(stream)
    if record is None:
        raise registry.UnknownStream(stream, (r.stream for r in registry.load_all()))
    restart: dict[str, object] = {}
    for action in actions:
        outcome = run_action(
            record,
            action,
            owner=owner,
            snapshot_id=params["snapshot_id"],
            keep_count=params["keep_count"],
            keep_age=timedelta(hours=params["keep_age_hours"]),
            shuffle_partitions=params["shuffle_partitions"],
        )
        print(
            f"stream {stream}: {action}: {outcome.summary}; size "
            f"{outcome.size_before:,} -> {outcome.size_after:,} bytes"
        )
        if outcome.restart_dag_id:
            restart = {
                "trigger_dag_id": outcome.restart_dag_id,
                "trigger_run_id": stream_run_id(stream),
                "conf": outcome.restart_conf,
            }
    return restart


def request_stop(stream: str) -> str:
    """Ask a stream's driver to stop at the next batch boundary, and record that it should no
    longer run (the `stream_control` DAG)."""
    record = registry.load(stream)
    if record is None:
        raise registry.UnknownStream(stream, (r.stream for r in registry.load_all()))
    layout = CheckpointLayout.of(record.checkpoint)
    layout.stop_request.write_text_atomic("stop\n")
    record.desired = "stopped"
    registry.save(record)
    return f"stop requested for stream {record.stream} ({layout.stop_request})"


def compact_stream(
    stream: str,
    owner: str,
    target_mb: float | None = None,
    grace_minutes: float | None = None,
) -> dict[str, object]:
    """Compact one stream's sink; skip it (saying why) while another maintenance holds it."""
    from airflow.sdk.exceptions import AirflowFailException

    from spark_jobs.compaction import CompactionPolicy, SinkBusy, compact
    from spark_jobs.layout import SinkLayoutError

    record = registry.load(stream)
    if record is None:
        return {"stream": stream, "skipped": "no longer registered"}
    grace = None if grace_minutes is None else grace_minutes * 60
    retention = record.params.get("sink_retention_days")
    try:
        if retention is not None and not isinstance(retention, int | float):
            raise ValueError(f"sink_retention_days {retention!r} is not a number of days")
        policy = CompactionPolicy.from_env(target_mb, grace, retention)
        if record.job == "running_total" and policy.retention_seconds is not None:
            # Its sink is the record of every word's total: a rotation carries totals from it.
            print(f"stream {stream}: a running_total sink keeps every batch (no retention)")
            policy = replace(policy, retention_seconds=None)
        result = compact(record.sink, record.checkpoint, policy, owner=owner, progress=print)
    except SinkBusy as busy:
        print(f"stream {stream}: not compacted this time: {busy}")
        return {"stream": stream, "skipped": str(busy)}
    except (FileNotFoundError, SinkLayoutError, ValueError) as err:
        raise AirflowFailException(f"stream {stream}: cannot compact {record.sink}: {err}") from err
    print(f"stream {stream}: {result.summary()}")
    return {
        "stream": stream,
        "merged": result.merged,
        "written": [f.name for f in result.written],
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "deleted": result.deleted,
        "expired": result.expired,
        "expired_before": result.expired_before,
        "through_batch_id": result.through_batch_id,
    }
