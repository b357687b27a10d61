"""The `StreamingQueryListener` that keeps a job's status file current."""

from __future__ import annotations

import json
import logging
from typing import Any

from pyspark.sql.streaming.listener import (
    JStreamingQueryListener,
    QueryIdleEvent,
    QueryProgressEvent,
    QueryStartedEvent,
    QueryTerminatedEvent,
    StreamingQueryListener,
    StreamingQueryProgress,
)

from spark_jobs.status import StreamStatus, batch_from_progress, utc_now, write_status

log = logging.getLogger(__name__)


class ProgressAsJson(JStreamingQueryListener):
    """PySpark's bridge from the JVM's listener bus, handing over each progress as its JSON.

    PySpark builds a progress event's Python object field by field, with a call into the JVM for
    each: 90 to 330 ms of calls per micro-batch for running_total, running beside the next batch
    and competing with it for the driver's cores. The progress's `json()` is one call, and
    `StreamingQueryProgress.fromJson` builds the same object from it, as Spark Connect does: the
    whole event, status file included, then takes 3 to 8 ms. The other events are small and keep
    PySpark's conversion.
    """

    def onQueryProgress(self, jevent: Any) -> None:
        """One call into the JVM for the whole progress."""
        progress = StreamingQueryProgress.fromJson(json.loads(jevent.progress().json()))
        self.pylistener.onQueryProgress(QueryProgressEvent(progress))


class StatusListener(StreamingQueryListener):
    """Writes the job's `StreamStatus` on start, on every batch, when idle and on termination.

    A failure to write the status is logged and never stops the stream: the status is a view of
    the stream, not part of it.
    """

    @property
    def _jlistener(self) -> Any:
        """The JVM side of this listener, bridged by `ProgressAsJson` (PySpark's own, otherwise)."""
        from pyspark import SparkContext

        if not hasattr(self, "_jlistenerobj"):
            jvm = SparkContext._jvm
            assert jvm is not None
            self._jlistenerobj = (
                jvm.org.apache.spark.sql.streaming.PythonStreamingQueryListenerWrapper(
                    ProgressAsJson(self)
                )
            )
        return self._jlistenerobj

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
        try:
            progress = json.loads(event.progress.json)
            job_ms = self.job_timings.pop(int(progress["batchId"]), None)
            batch = batch_from_progress(progress, self.first_sink_batch_id, job_ms)
        except Exception:  # a progress this code cannot read: the stream goes on regardless
            log.exception("could not read a progress event of %s", self.status.checkpoint)
        else:
            self.status.record_batch(batch)
        self._save()

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        """No new input: refresh `updated_at`, which the health check reads as a heartbeat."""
        self._save()

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        """The query ended: record whether it failed, and why."""
        self.status.state = "failed" if event.exception else "stopped"
        self.status.exception = event.exception.splitlines()[0] if event.exception else None
        self._save()
