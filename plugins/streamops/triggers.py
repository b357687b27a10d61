"""The control plane's triggers: `SinkBatchesTrigger` and `StreamDriverTrigger`.

`StreamDriverTrigger` watches one running stream driver for its deferred stream task (below).

`SinkBatchesTrigger` fires when a stream writes new output. It runs in Airflow's triggerer, as
the `AssetWatcher` of the `stream_sinks` asset that schedules
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
import os
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

DEFAULT_POLL_SECONDS = 60.0


def newest_sink_files(root: str) -> dict[str, dict[str, int]]:
    """For each registered stream whose sink holds batches: its newest batch file's mtime (ns)
    and its largest batch id. Compacted range files are not new output and are not counted.
    Streams whose sink cannot be listed are left out (and logged)."""
    import logging

    from spark_jobs.layout import SinkLayout
    from streamops import registry

    log = logging.getLogger(__name__)
    marks: dict[str, dict[str, int]] = {}
    for record in registry.load_all(root):
        try:
            files = SinkLayout.of(record.sink).files()
        except (OSError, ValueError) as err:
            log.warning("stream %s: cannot list its sink %s: %s", record.stream, record.sink, err)
            continue
        if files:
            marks[record.stream] = {
                "batch_id": max(f.last for f in files),
                "mtime_ns": max(
                    (f.mtime_ns for f in files if not f.is_range and not f.tombstone), default=0
                ),
            }
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


DRIVER_POLL_SECONDS = 5.0
#: No deferral of a stream task ends sooner. Airflow 3.3 fails a task that resumes before the
#: scheduler has processed the executor's "success" event of the attempt that deferred
#: (apache/airflow#72716, "state mismatch"); on a busy scheduler that event can take seconds.
MIN_DEFERRAL_SECONDS = 10.0
#: How long a user's kill (mark failed or success, clear) waits for a graceful stop before it
#: kills a driver on this host: within `on_kill`'s 30 s limit of the triggerer.
KILL_GRACE_SECONDS = 15.0


def read_new_lines(path: str, offset: int, last: bool = False) -> tuple[list[str], int]:
    """The complete lines appended to a local file since byte `offset`, and the new offset;
    with `last`, also a last line without its newline (a rotated copy's, which nothing will
    complete there).

    A file shorter than `offset` has been rotated since (`registry.rotate_driver_log`): it is
    read from its start.
    """
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0
            handle.seek(offset)
            data = handle.read(1 << 20)
    except OSError:
        return [], offset
    # A last line only at the file's end, not where a read of a long stretch stopped.
    to_end = offset + len(data) == size
    end = len(data) - 1 if last and data and to_end else data.rfind(b"\n")
    if end < 0:
        return [], offset
    text = data[: end + 1].decode("utf-8", errors="replace")
    return text.splitlines(), offset + end + 1


class StreamDriverTrigger(BaseTrigger):
    """Watch one stream driver from the triggerer until it ends; fire one event when it has.

    The driver is the holder of the checkpoint's lease with `token` (`spark_jobs/lease.py`). It
    has ended when the lease is gone, held by another token, or its holder is gone (its process
    on this host died, or it stopped renewing). Every poll also copies the new lines of the
    driver's log into the task log, so the run's log in the UI shows what the job says, and
    rotates the driver's log once it reaches `log_max_bytes` (`registry.rotate_driver_log`).

    Nothing is kept between polls but the log offset: after a triggerer restart the trigger is
    rebuilt from its arguments and watches the same driver again (a few log lines may repeat).
    A triggerer restart or shutdown stops nothing; only a user's action on the task
    (`on_kill`: mark failed or success, clear) stops the driver.
    """

    def __init__(
        self,
        *,
        stream: str,
        checkpoint: str,
        token: str,
        driver_log: str,
        log_offset: int = 0,
        poll_interval: float = DRIVER_POLL_SECONDS,
        stall_restart_seconds: float = 0.0,
        log_max_bytes: int = 0,
        pid: int = -1,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.pid = int(pid)  # the driver's, for the event (-1: unknown, a trigger of old)
        self.stream = stream
        self.checkpoint = checkpoint
        self.token = token
        self.driver_log = driver_log
        self.log_offset = int(log_offset)
        self.poll_interval = float(poll_interval)
        self.stall_restart_seconds = float(stall_restart_seconds)
        self.log_max_bytes = int(log_max_bytes)  # rotate the driver log at this size; 0: never

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class path and arguments the triggerer re-creates this trigger from."""
        return (
            "streamops.triggers.StreamDriverTrigger",
            {
                "stream": self.stream,
                "checkpoint": self.checkpoint,
                "token": self.token,
                "driver_log": self.driver_log,
                "log_offset": self.log_offset,
                "poll_interval": self.poll_interval,
                "stall_restart_seconds": self.stall_restart_seconds,
                "log_max_bytes": self.log_max_bytes,
                "pid": self.pid,
            },
        )

    def _holder(self) -> Any:
        from spark_jobs.layout import CheckpointLayout
        from spark_jobs.lease import read_lease

        return read_lease(CheckpointLayout.of(self.checkpoint).lease_file)

    def _driver_alive(self) -> bool:
        holder = self._holder()
        return holder is not None and holder.token == self.token and not holder.is_gone()

    def _hung(self) -> str | None:
        """Why the live driver counts as hung (no progress for `stall_restart_seconds`), after
        killing it; None while it makes progress, or when it cannot be killed from here."""
        import time

        from spark_jobs.status import read_status
        from streamops.health import parse_time

        if self.stall_restart_seconds <= 0:
            return None
        holder = self._holder()
        if holder is None or holder.token != self.token:
            return None
        status = read_status(self.checkpoint)
        last = holder.since
        if status is not None and status.pid == holder.pid:
            last = max(last, parse_time(status.updated_at).timestamp())
        idle = time.time() - last
        if idle <= self.stall_restart_seconds:
            return None
        if holder.process_alive() is None:
            self.log.warning(
                "stream %s: its driver made no progress for %.0f s, but runs on %s: it cannot "
                "be restarted from here",
                self.stream,
                idle,
                holder.host,
            )
            return None
        done = kill_driver(holder)
        return (
            f"the driver (pid {holder.pid}) made no progress for {idle:.0f} s, over the "
            f"{self.stall_restart_seconds:.0f} s of $STREAMOPS_STALL_RESTART_SECONDS: {done}; "
            "restarted from its checkpoint"
        )

    def _copy_log(self) -> None:
        from streamops.registry import rotate_driver_log

        lines, self.log_offset = read_new_lines(self.driver_log, self.log_offset)
        for line in lines:
            self.log.info("driver: %s", line)
        if not self.log_max_bytes or self.log_offset < self.log_max_bytes:
            return
        try:
            rotated = rotate_driver_log(self.driver_log)
        except OSError as err:
            self.log.warning("stream %s: cannot rotate %s: %s", self.stream, self.driver_log, err)
            return
        # What the driver wrote since the read above is in the copy now, up to a line it may
        # have been writing: its start ends the copy, its newline starts the emptied log.
        lines, _ = read_new_lines(rotated, self.log_offset, last=True)
        for line in lines:
            self.log.info("driver: %s", line)
        self.log_offset = 0
        self.log.info(
            "stream %s: the driver log reached %.3g MB: its lines so far are in %s",
            self.stream,
            self.log_max_bytes / 1024 / 1024,
            rotated,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll the driver's lease; yield one event when the driver has ended."""
        # See MIN_DEFERRAL_SECONDS: a driver that ends at once is reported after that.
        first_check = asyncio.get_running_loop().time() + MIN_DEFERRAL_SECONDS
        while True:
            await asyncio.to_thread(self._copy_log)
            try:
                alive = await asyncio.to_thread(self._driver_alive)
            except Exception:
                # Storage trouble is not the driver's end: look again at the next poll.
                self.log.exception("stream %s: cannot read the lease; retrying", self.stream)
                alive = True
            hung = None
            if alive:
                try:
                    hung = await asyncio.to_thread(self._hung)
                except Exception:
                    self.log.exception("stream %s: cannot read its status; retrying", self.stream)
            if hung:
                self.log.warning("stream %s: %s", self.stream, hung)
            if (hung or not alive) and asyncio.get_running_loop().time() >= first_check:
                await asyncio.to_thread(self._copy_log)
                self.log.info("stream %s: its driver has ended", self.stream)
                yield TriggerEvent(  # type: ignore[no-untyped-call]
                    {
                        "stream": self.stream,
                        "token": self.token,
                        # What the operator's execute_complete also gets as its own kwargs;
                        # `airflow dags test` hands it the event alone.
                        "pid": self.pid,
                        "driver_log": self.driver_log,
                        "log_offset": self.log_offset,
                        "hung": hung,
                    }
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """A user acted on the task: stop the driver at a batch boundary, then kill it if it
        runs on this host and has not stopped within `KILL_GRACE_SECONDS`."""
        done = await asyncio.to_thread(stop_driver, self.checkpoint, self.token, KILL_GRACE_SECONDS)
        self.log.info("stream %s: a user acted on the task; its driver: %s", self.stream, done)


def kill_driver(holder: Any) -> str:
    """SIGKILL a driver on this host that cannot stop by itself (frozen, hung): its process group
    (spark-submit's JVM and the job's Python, started in a session of their own) when it has one
    of its own, else its process. Its checkpoint replays the unfinished batch at the next start."""
    import os
    import signal

    try:
        group = os.getpgid(holder.pid)
    except ProcessLookupError:
        return "it had already ended"
    try:
        if group not in (os.getpgid(0), 0, 1):
            os.killpg(group, signal.SIGKILL)
            return f"killed its process group {group} (SIGKILL)"
        os.kill(holder.pid, signal.SIGKILL)
    except ProcessLookupError:
        return "it had already ended"
    return "killed it (SIGKILL)"


def stop_driver(
    checkpoint: str, token: str | None, grace_seconds: float, kill: bool = True
) -> str | None:
    """Stop the driver holding a checkpoint's lease: a stop request and SIGTERM (a graceful stop
    at the batch boundary), then, with `kill`, SIGKILL after `grace_seconds` if it runs on this
    host.

    `token` limits this to one driver (None: whichever holds the lease). Returns what was done,
    or None when the driver had already been asked to stop (so a caller says it once).
    """
    import os
    import signal
    import time

    from spark_jobs.layout import CheckpointLayout
    from spark_jobs.lease import read_lease

    layout = CheckpointLayout.of(checkpoint)
    holder = read_lease(layout.lease_file)
    if holder is None or (token and holder.token != token) or holder.is_gone():
        return "no live driver"
    if not kill and layout.stop_request.exists():
        return None
    layout.stop_request.write_text_atomic("stop\n")
    if holder.process_alive() is None:  # on another host: it reads the stop request
        return "asked it to stop (stop request; it runs on another host)"
    try:
        os.kill(holder.pid, signal.SIGTERM)
    except ProcessLookupError:
        return "it had already ended"
    if not kill:
        return "asked it to stop at the next batch boundary (stop request and SIGTERM)"
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if holder.process_alive() is False:
            return "it stopped gracefully"
        time.sleep(0.5)
    if holder.process_alive():
        try:
            os.kill(holder.pid, signal.SIGKILL)
        except ProcessLookupError:
            return "it stopped gracefully"
        return f"killed it (SIGKILL) after {grace_seconds:.0f} s"
    return "it stopped gracefully"
