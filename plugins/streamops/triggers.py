"""`SinkBatchesTrigger`: an asset-watcher trigger that fires when a stream writes new output.

It runs in Airflow's triggerer, as the `AssetWatcher` of the `stream_sinks` asset that schedules
the `sink_quality` DAG. Every `poll_interval` seconds it lists the sink folder of each registered
stream (`<data root>/_streamops/streams/*.json`) and fires one event when any sink holds a part
file newer than the newest it has seen: a new batch, or a batch rewritten by a replay or a
checkpoint restore. Cost: one folder listing per stream and poll, no file is read.

Events only say "look now": the `sink_quality` DAG decides what to validate from its own
watermarks, so an event lost (triggerer restart) or doubled costs at most one extra or one later
run, and the DAG's cron schedule validates anyway. Several events before a run starts make one
run (Airflow queues asset events per DAG). The trigger starts from what the sinks hold when it
starts, so it signals changes made while it runs.

Nothing heavy is imported at module level: DAG files import this module when they are parsed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

DEFAULT_POLL_SECONDS = 60.0


def newest_sink_files(root: str) -> dict[str, dict[str, int]]:
    """For each registered stream whose sink holds batches: its newest file's mtime (ns) and its
    largest batch id. Streams whose sink cannot be listed are left out (and logged)."""
    import logging

    from spark_jobs.layout import SINK_FILE_PATTERN
    from spark_jobs.storage import Location
    from streamops import registry

    log = logging.getLogger(__name__)
    marks: dict[str, dict[str, int]] = {}
    for record in registry.load_all(root):
        try:
            infos = Location.of(record.sink).list()
        except (OSError, ValueError) as err:
            log.warning("stream %s: cannot list its sink %s: %s", record.stream, record.sink, err)
            continue
        batch_ids = []
        mtimes = []
        for info in infos:
            match = SINK_FILE_PATTERN.match(info.base_name)
            if match:
                batch_ids.append(int(match.group(1)))
                mtimes.append(int(info.mtime_ns or 0))
        if batch_ids:
            marks[record.stream] = {"batch_id": max(batch_ids), "mtime_ns": max(mtimes)}
    return marks


class SinkBatchesTrigger(BaseEventTrigger):
    """Fire when a registered stream's sink gets a part file newer than any seen before.

    :param root: the data root holding the stream registry.
    :param poll_interval: seconds between two listings of the sinks.
    """

    def __init__(self, root: str, poll_interval: float = DEFAULT_POLL_SECONDS) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.root = root
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class path and arguments the triggerer re-creates this trigger from."""
        return (
            "streamops.triggers.SinkBatchesTrigger",
            {"root": self.root, "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll the sinks forever; yield an event naming the streams with new output."""
        seen = await self._poll()
        if seen is None:
            seen = {}
        while True:
            await asyncio.sleep(self.poll_interval)
            marks = await self._poll()
            if marks is None:
                continue
            changed = {
                stream: mark
                for stream, mark in marks.items()
                if mark["mtime_ns"] > seen.get(stream, {}).get("mtime_ns", -1)
            }
            seen.update(changed)
            if changed:
                self.log.info("new sink output: %s", changed)
                yield TriggerEvent({"streams": changed})  # type: ignore[no-untyped-call]

    async def _poll(self) -> dict[str, dict[str, int]] | None:
        try:
            return await asyncio.to_thread(newest_sink_files, self.root)
        except Exception:
            # A broken registry file must not kill the watcher; the cron schedule still runs.
            self.log.exception("cannot list the stream sinks under %s; retrying", self.root)
            return None
