"""The status contract: what a running job tells the control plane, and how it is read back.

A job's `StatusListener` (see `listener.py`) rewrites `<checkpoint>/_streamops/status.json`
atomically on every event. Airflow's health checks and any other reader call `read_status()`.
Only the standard library and `storage` are imported here, so DAG files may import it.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from spark_jobs.layout import CheckpointLayout

State = Literal["starting", "running", "stopped", "failed"]
RECENT_BATCHES = 30
# Spark's phases of a micro-batch, in the order they run (`StreamingQueryProgress.durationMs`):
# find the new offsets, plan the batch's input, plan the query, run it (for the jobs: their
# `foreachBatch` function), write the offset log (WAL) and the commit log.
SPARK_PHASES = (
    "latestOffset",
    "getBatch",
    "queryPlanning",
    "addBatch",
    "walCommit",
    "commitOffsets",
)
# The jobs' own parts of `addBatch` (`runner.start`): reading the batch's time from the offset
# log, computing the batch's result and collecting it to the driver as Arrow (one Spark action),
# writing the sink file, printing it (`--console`).
JOB_PARTS = ("prepare", "result", "write", "console")


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string, the format of every time in the status."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class BatchProgress:
    """One micro-batch, as reported by Spark's `StreamingQueryProgress`."""

    batch_id: int
    spark_batch_id: int
    timestamp: str
    input_rows: int
    input_rows_per_second: float
    processed_rows_per_second: float
    duration_ms: int
    state_rows: int | None
    # Where the batch's time went: Spark's phases (SPARK_PHASES) and the job's parts of
    # `addBatch` (JOB_PARTS), in milliseconds. Empty in statuses written before they were kept.
    phases_ms: dict[str, int] = field(default_factory=dict)
    job_ms: dict[str, int] = field(default_factory=dict)
    # Kafka sources: per topic, the records between the batch's end offsets and the latest
    # offsets the source saw when it planned the batch (the backlog in records). Empty for the
    # other sources.
    records_behind: dict[str, int] = field(default_factory=dict)


@dataclass
class StreamStatus:
    """A job's last known progress. Times are ISO-8601 UTC strings."""

    job: str
    checkpoint: str
    sink: str
    state: State = "starting"
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    query_id: str | None = None
    run_id: str | None = None
    # The Spark application, and where its UI is reached (`session.ui_url`); None without a UI.
    app_id: str | None = None
    ui_url: str | None = None
    trigger_interval: str | None = None
    #: The version of the stream's spec the driver runs (`--spec-version`), if it was given.
    spec_version: str | None = None
    started_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)
    last_batch: BatchProgress | None = None
    recent_batches: list[BatchProgress] = field(default_factory=list)
    exception: str | None = None

    def record_batch(self, batch: BatchProgress) -> None:
        """Add a finished batch, keeping the most recent ones."""
        self.state = "running"
        self.last_batch = batch
        self.recent_batches = [*self.recent_batches, batch][-RECENT_BATCHES:]
        self.updated_at = utc_now()

    @property
    def streaming_ui_url(self) -> str | None:
        """The query's page in the Spark UI's Structured Streaming tab (its batch timeline)."""
        if not self.ui_url or not self.run_id:
            return None
        return f"{self.ui_url.rstrip('/')}/StreamingQuery/statistics/?id={self.run_id}"

    def to_json(self) -> str:
        """The status file's content."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StreamStatus:
        """Parse a status file's content."""
        data: dict[str, Any] = json.loads(text)
        last = data.pop("last_batch", None)
        recent = data.pop("recent_batches", [])
        # Fields of a newer version are ignored.
        status = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        status.last_batch = BatchProgress(**last) if last else None
        status.recent_batches = [BatchProgress(**b) for b in recent]
        return status


def batch_from_progress(
    progress: dict[str, Any], first_sink_batch_id: int, job_ms: dict[str, int] | None = None
) -> BatchProgress:
    """Pick the fields we keep out of a `StreamingQueryProgress` JSON document; `job_ms` is the
    job's own timing of the batch's `addBatch` parts."""
    state_rows = [op.get("numRowsTotal", 0) for op in progress.get("stateOperators", [])]
    durations = progress.get("durationMs") or {}
    return BatchProgress(
        batch_id=first_sink_batch_id + int(progress["batchId"]),
        spark_batch_id=int(progress["batchId"]),
        timestamp=str(progress["timestamp"]),
        input_rows=int(progress.get("numInputRows", 0)),
        input_rows_per_second=float(progress.get("inputRowsPerSecond") or 0.0),
        processed_rows_per_second=float(progress.get("processedRowsPerSecond") or 0.0),
        duration_ms=int(progress.get("batchDuration", 0)),
        state_rows=sum(state_rows) if state_rows else None,
        phases_ms={p: int(durations[p]) for p in SPARK_PHASES if p in durations},
        job_ms=dict(job_ms or {}),
        records_behind=records_behind(progress.get("sources") or []),
    )


def _offsets(value: Any) -> dict[str, dict[str, int]]:
    """A Kafka source's offsets, `{topic: {partition: offset}}`: an object in the progress JSON
    of the JVM, a string of it in PySpark's progress objects."""
    parsed = json.loads(value) if isinstance(value, str) else value
    return parsed if isinstance(parsed, dict) else {}


def records_behind(sources: list[dict[str, Any]]) -> dict[str, int]:
    """Per topic, how many records of the Kafka sources among a progress's `sources` are past
    the batch's end offsets: the sum over the topic's partitions of latest minus end offset."""
    behind: dict[str, int] = {}
    for source in sources:
        if not str(source.get("description", "")).startswith("Kafka"):
            continue
        try:
            end, latest = (_offsets(source.get(key)) for key in ("endOffset", "latestOffset"))
        except ValueError:
            continue
        for topic, partitions in latest.items():
            done = end.get(topic, {})
            behind[topic] = behind.get(topic, 0) + sum(
                max(0, int(offset) - int(done.get(partition, 0)))
                for partition, offset in partitions.items()
            )
    return behind


def batch_time_breakdown(batches: list[BatchProgress]) -> list[dict[str, Any]]:
    """Where the batches' time went, phase by phase: the last batch's milliseconds and the
    median over `batches`. The job's parts follow `addBatch`, named `addBatch.<part>`; `other`
    is the batch duration the phases do not cover (Spark's own bookkeeping between them).
    """
    timed = [b for b in batches if b.phases_ms]
    if not timed:
        return []

    def parts(batch: BatchProgress) -> dict[str, int]:
        found: dict[str, int] = {}
        for phase in SPARK_PHASES:
            if phase in batch.phases_ms:
                found[phase] = batch.phases_ms[phase]
            if phase == "addBatch":
                found |= {f"addBatch.{p}": batch.job_ms[p] for p in JOB_PARTS if p in batch.job_ms}
        spark_total = sum(batch.phases_ms.values())
        found["other"] = max(0, batch.duration_ms - spark_total)
        return found

    each = [parts(b) for b in timed]
    names = list(dict.fromkeys(name for found in each for name in found))
    return [
        {
            "phase": name,
            "last_ms": each[-1].get(name),
            "median_ms": statistics.median(found.get(name, 0) for found in each),
            "batches": len(each),
        }
        for name in names
    ]


def write_status(status: StreamStatus) -> None:
    """Atomically replace the status file of the status's checkpoint."""
    CheckpointLayout.of(status.checkpoint).status_file.write_text_atomic(status.to_json())


def read_status(checkpoint: str) -> StreamStatus | None:
    """The status a job last wrote beside a checkpoint, or None if it never wrote one."""
    status_file = CheckpointLayout.of(checkpoint).status_file
    if not status_file.exists():
        return None
    return StreamStatus.from_json(status_file.read_text())
