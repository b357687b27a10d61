"""The `StreamingQueryListener` that keeps a job's status file current."""

from __future__ import annotations

import json
import logging

from pyspark.sql.streaming.listener import (
    QueryIdleEvent,
    QueryProgressEvent,
    QueryStartedEvent,
    QueryTerminatedEvent,
    StreamingQueryListener,
)

from spark_jobs.status import StreamStatus, batch_from_progress, utc_now, write_status

log = logging.getLogger(__name__)


class StatusListener(StreamingQueryListener):
    """Writes the job's `StreamStatus` on start, on every batch, when idle and on termination.

    A failure to write the status is logged and never stops the stream: the status is a view of
    the stream, not part of it.
    """

    def __init__(
        self,
        status: StreamStatus,
        first_sink_batch_id: int,
        job_timings: dict[int, dict[str, int]] | None = None,
    ) -> None:
        self.status = status
        self.first_sink_batch_id = first_sink_batch_id
        # Spark batch id -> the job's timing of its `addBatch` parts, filled in by the job's
        # `foreachBatch` function (same process) before the batch's progress event arrives.
        self.job_timings = {} if job_timings is None else job_timings
        self._save()

    def _save(self) -> None:
        self.status.updated_at = utc_now()
        try:
            write_status(self.status)
        except Exception:
            log.exception("could not write the status file for %s", self.status.checkpoint)

    def onQueryStarted(self, event: QueryStartedEvent) -> None:
        """The query is up: record its ids."""
        self.status.state = "running"
        self.status.query_id = str(event.id)
        self.status.run_id = str(event.runId)
        self.status.exception = None
        self._save()

    def onQueryProgress(self, event: QueryProgressEvent) -> None:
        """A batch finished: record its figures."""
        progress = json.loads(event.progress.json)
        job_ms = self.job_timings.pop(int(progress["batchId"]), None)
        self.status.record_batch(batch_from_progress(progress, self.first_sink_batch_id, job_ms))
        self._save()

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        """No new input: refresh `updated_at`, which the health check reads as a heartbeat."""
        self._save()

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        """The query ended: record whether it failed, and why."""
        self.status.state = "failed" if event.exception else "stopped"
        self.status.exception = event.exception.splitlines()[0] if event.exception else None
        self._save()
