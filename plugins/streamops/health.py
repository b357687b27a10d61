"""Is a stream healthy? Pure checks of a stream's record, status and input backlog.

`evaluate()` turns what the control plane knows about one stream (its registry record, the status
its job last wrote, and the files waiting in its input folder) into a list of `Breach`es, worst
first. Nothing here imports Airflow or Spark, so every rule can be tested with plain objects and
fixed times. The `stream_health` DAG runs it every minute for each stream that should be running.

Signals, in order of severity (each breach is one line: stream, signal, value, what to do):

- `not_running`: the stream should run (`desired == "running"`), but there is no status file, or
  the status says it stopped or failed, or its driver ran on this host and that process is gone,
  or a driver on another host has written no status for longer than the stall limit.
- `stalled`: the driver is alive but has written no status for longer than the stall limit (a
  stuck batch), or no batch has finished for longer than the stall limit although input files
  have been waiting that long.
- `falling_behind`: in each of the last K batches that had input, rows were processed more slowly
  than they arrived (`processed_rows_per_second < 0.9 * input_rows_per_second`).
- `backlog`: more files, or more bytes, wait unread in the input folder than the limits; for a
  Kafka stream, more records than the limit are past its last batch (`backlog_records`).
- `slow_batches`: each of the last K batches took longer than the trigger interval, so batches run
  back to back and latency grows.
- `last_exception`: the stream is running, but failed (and was restarted) within the exception
  window, or its status carries an exception.

The stall limit of a stream is `stall_multiple` x its trigger interval, but at least
`stall_floor_seconds`. A job writes its status on every batch and, when idle, on Spark's idle
event (every 10 s by default), so a healthy stream's status is never older than that limit.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

from pyarrow import fs as pafs

from spark_jobs.cli import interval_ms
from spark_jobs.layout import CheckpointLayout
from spark_jobs.status import BatchProgress, StreamStatus
from spark_jobs.storage import Location
from streamops.registry import StreamRecord

log = logging.getLogger(__name__)

SIGNALS = (
    "not_running",
    "stalled",
    "falling_behind",
    "backlog",
    "slow_batches",
    "last_exception",
)
ENV_PREFIX = "STREAMOPS_HEALTH_"
GIB = 1024**3
MAX_MESSAGE_DETAIL = 300


@dataclass(frozen=True)
class HealthThresholds:
    """When a signal becomes a breach. Every field can be set with an environment variable.

    The variable is `STREAMOPS_HEALTH_` + the field name in upper case, e.g.
    `STREAMOPS_HEALTH_BACKLOG_FILES=500`; see `from_env()`.
    """

    #: No status update (or no finished batch while input waits) for longer than this many
    #: trigger intervals is a stall. 10 intervals ride out a few slow batches and the idle event's
    #: 10 s cadence without waiting long on slow triggers.
    stall_multiple: float = 10.0
    #: The stall limit is never shorter than this: a 1-second stream is not flagged because one
    #: batch took 15 s, nor because Spark reports idleness only every 10 s.
    stall_floor_seconds: float = 60.0
    #: `falling_behind` needs this many batches in a row (among those with input) processing slower
    #: than input arrives: one slow batch (a JVM warm-up, a GC pause) is noise, three is a trend.
    falling_behind_batches: int = 3
    #: ... where "slower" means below this share of the input rate. Spark's two rates are
    #: measured over different spans (batch duration vs time since the last batch), so a stream
    #: that keeps up shows 90-100% on a busy machine; below 90% the backlog really grows.
    falling_behind_ratio: float = 0.9
    #: `backlog` when more files than this wait unread in the input folder.
    backlog_files: int = 100
    #: `backlog` when more bytes than this wait unread in the input folder.
    backlog_bytes: int = GIB
    #: `backlog` when a Kafka stream's last batch left more records than this unread, all its
    #: topics together.
    backlog_records: int = 1_000_000
    #: `slow_batches` needs this many batches in a row longer than the trigger interval.
    slow_batches: int = 3
    #: `last_exception` reports a failure the control plane restarted from for this long (the
    #: default is the restart budget's window, see `supervision.py`).
    exception_window_seconds: float = 30 * 60.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value <= 0:
                raise ValueError(
                    f"health threshold {item.name} ({ENV_PREFIX}{item.name.upper()}) must be "
                    f"greater than 0, got {value!r}"
                )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> HealthThresholds:
        """The defaults, overridden by `STREAMOPS_HEALTH_<FIELD>` variables of the worker.

        Read when the health check runs, never when a DAG file is parsed, so a change takes
        effect at the next check. Raises `ValueError` naming the variable when a value is bad.
        """
        env = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for item in fields(cls):
            name = f"{ENV_PREFIX}{item.name.upper()}"
            raw = env.get(name)
            if raw is None or not raw.strip():
                continue
            parse: Callable[[str], float | int] = float if isinstance(item.default, float) else int
            try:
                values[item.name] = parse(raw.strip())
            except ValueError:
                kind = "a number" if parse is float else "a whole number"
                raise ValueError(f"{name}={raw!r}: expected {kind}") from None
        return cls(**values)  # type: ignore[arg-type]

    def stall_limit(self, trigger_interval: str | None) -> timedelta:
        """How long a stream with this trigger interval may go without progress."""
        seconds = trigger_seconds(trigger_interval) * self.stall_multiple
        return timedelta(seconds=max(seconds, self.stall_floor_seconds))


@dataclass(frozen=True)
class Backlog:
    """Input the stream's query has not picked up yet: files in its input folder, or for a
    Kafka stream the records past its last batch, per topic (None: not a Kafka stream)."""

    files: int
    size_bytes: int
    oldest_mtime: datetime | None = None
    records_behind: dict[str, int] | None = None


@dataclass(frozen=True)
class Breach:
    """One signal over its threshold, for one stream. `message` is one line for a human."""

    stream: str
    signal: str
    value: float | str
    message: str


def trigger_seconds(trigger_interval: str | None) -> float:
    """A trigger interval in seconds; 0 for none (available-now) or back-to-back batches."""
    if not trigger_interval:
        return 0.0
    try:
        return interval_ms(trigger_interval, allow_zero=True) / 1000
    except ValueError:
        log.warning("ignoring unreadable trigger interval %r", trigger_interval)
        return 0.0


def parse_time(text: str) -> datetime:
    """An ISO-8601 time of the status or registry (`...Z` or `...+00:00`) as an aware datetime."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def ago(delta: timedelta) -> str:
    """A duration for a message: `45 s`, `3 min`, `2.5 h`."""
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= MAX_MESSAGE_DETAIL else line[: MAX_MESSAGE_DETAIL - 1] + "…"


def driver_alive(status: StreamStatus) -> bool | None:
    """Whether the job's driver process still exists: None when it ran on another host."""
    if status.host != socket.gethostname():
        return None
    try:
        os.kill(status.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _stream_dag(record: StreamRecord) -> str:
    return record.dag_id or f"{record.job}_stream"


def _batch_finished_at(batch: BatchProgress) -> datetime:
    return parse_time(batch.timestamp) + timedelta(milliseconds=batch.duration_ms)


def evaluate(
    record: StreamRecord,
    status: StreamStatus | None,
    now: datetime,
    thresholds: HealthThresholds,
    backlog: Backlog | None,
) -> list[Breach]:
    """The breaches of one stream at time `now` (aware), worst first; empty when healthy.

    A stream that should not run (`record.desired == "stopped"`) has no breaches. Within
    `stall_limit` of the control plane (re)starting a stream, a missing or older status is
    taken for a job still starting, not as a breach. `backlog` None means unknown (not checked).
    Whether the driver process exists is checked only when it ran on this host.
    """
    if record.desired != "running":
        return []
    checker = _Checker(record, status, now, thresholds, backlog)
    breaches = checker.run()
    return sorted(breaches, key=lambda breach: SIGNALS.index(breach.signal))


@dataclass
class _Checker:
    record: StreamRecord
    status: StreamStatus | None
    now: datetime
    thresholds: HealthThresholds
    backlog: Backlog | None

    def __post_init__(self) -> None:
        self.limit = self.thresholds.stall_limit(self.record.trigger_interval)
        self.dag = _stream_dag(self.record)

    def breach(self, signal: str, value: float | str, detail: str, action: str) -> Breach:
        return Breach(
            stream=self.record.stream,
            signal=signal,
            value=value,
            message=f"stream {self.record.stream}: {signal} ({detail}) — {action}",
        )

    def run(self) -> list[Breach]:
        breaches: list[Breach] = []
        if self.starting():
            # The status, if any, belongs to the run before the (re)start: nothing to judge yet.
            breaches += self.backlog_breach()
            return breaches
        down = self.not_running()
        breaches += down
        breaches += self.backlog_breach()
        if down:
            # Rates and durations of a dead query say nothing more; the backlog shows the damage.
            return breaches
        breaches += self.stalled()
        breaches += self.falling_behind()
        breaches += self.slow_batches()
        breaches += self.last_exception()
        return breaches

    def starting(self) -> bool:
        """The control plane (re)started the stream recently and its job has not reported since."""
        started = parse_time(self.record.updated_at)
        if self.now - started > self.limit:
            return False
        return self.status is None or parse_time(self.status.updated_at) < started

    def restart_action(self) -> str:
        run = f" (run {self.record.run_id})" if self.record.run_id else ""
        return (
            f"check the {self.dag} run's log{run}, fix the cause, then trigger {self.dag} again: "
            "it resumes from its checkpoint"
        )

    def not_running(self) -> list[Breach]:
        status = self.status
        layout = CheckpointLayout.of(self.record.checkpoint)
        if status is None:
            age = self.now - parse_time(self.record.updated_at)
            return [
                self.breach(
                    "not_running",
                    "missing",
                    f"desired running, but its job has written no status to {layout.status_file} "
                    f"in the {ago(age)} since it was started",
                    self.restart_action(),
                )
            ]
        age = self.now - parse_time(status.updated_at)
        if status.state not in ("starting", "running"):
            error = f": {_one_line(status.exception)}" if status.exception else ""
            return [
                self.breach(
                    "not_running",
                    status.state,
                    f"desired running; last status '{status.state}' {ago(age)} ago{error}",
                    self.restart_action(),
                )
            ]
        alive = driver_alive(status)
        if alive is False:
            return [
                self.breach(
                    "not_running",
                    "driver gone",
                    f"desired running, but its driver (pid {status.pid} on {status.host}) is gone; "
                    f"last status '{status.state}' {ago(age)} ago",
                    self.restart_action(),
                )
            ]
        if alive is None and age > self.limit:
            return [
                self.breach(
                    "not_running",
                    "no heartbeat",
                    f"desired running, but its driver (pid {status.pid} on {status.host}) has "
                    f"written no status for {ago(age)} (limit {ago(self.limit)})",
                    f"check that the driver still runs on {status.host}; if not, "
                    + self.restart_action(),
                )
            ]
        return []

    def stalled(self) -> list[Breach]:
        status = self.status
        assert status is not None  # not_running() reported a missing status
        silent = self.now - parse_time(status.updated_at)
        if silent > self.limit:
            return [
                self.breach(
                    "stalled",
                    round(silent.total_seconds()),
                    f"its driver (pid {status.pid} on {status.host}) is alive but has written no "
                    f"status for {ago(silent)} (limit {ago(self.limit)}): a batch is stuck",
                    f"look at the {self.dag} run's log and the Spark UI for the stuck batch; if it "
                    f"does not recover, mark the run failed (this stops the driver) and trigger "
                    f"{self.dag} again",
                )
            ]
        backlog = self.backlog
        if backlog is None or backlog.files == 0:
            return []
        last = status.last_batch
        progress_at = _batch_finished_at(last) if last else parse_time(status.started_at)
        idle = self.now - progress_at
        waiting = self.now - backlog.oldest_mtime if backlog.oldest_mtime else idle
        if idle > self.limit and waiting > self.limit:
            return [
                self.breach(
                    "stalled",
                    round(idle.total_seconds()),
                    f"no batch for {ago(idle)} (limit {ago(self.limit)}) while {backlog.files} "
                    f"files wait in {self.record.input} (oldest {ago(waiting)})",
                    "check that the waiting files are readable and were moved in with an atomic "
                    f"rename, and the {self.dag} run's log; restart the stream if it stays stuck",
                )
            ]
        return []

    def falling_behind(self) -> list[Breach]:
        assert self.status is not None
        k = self.thresholds.falling_behind_batches
        with_input = [b for b in self.status.recent_batches if b.input_rows > 0][-k:]
        if len(with_input) < k:
            return []
        ratio_limit = self.thresholds.falling_behind_ratio
        if not all(
            b.processed_rows_per_second < ratio_limit * b.input_rows_per_second for b in with_input
        ):
            return []
        last = with_input[-1]
        ratio = last.processed_rows_per_second / last.input_rows_per_second
        return [
            self.breach(
                "falling_behind",
                round(ratio, 3),
                f"processed {last.processed_rows_per_second:.0f} rows/s but "
                f"{last.input_rows_per_second:.0f} rows/s arrived in the last batch, "
                f"{ratio:.0%} of the input rate; below {ratio_limit:.0%} of it in each of the "
                f"last {k} batches with input",
                "give the job more executor cores or memory, or more shuffle partitions for a "
                "larger cluster; the backlog grows until it keeps up",
            )
        ]

    def backlog_breach(self) -> list[Breach]:
        backlog = self.backlog
        t = self.thresholds
        if backlog is not None and backlog.records_behind is not None:
            return self.records_breach(backlog.records_behind)
        if backlog is None or (
            backlog.files <= t.backlog_files and backlog.size_bytes <= t.backlog_bytes
        ):
            return []
        return [
            self.breach(
                "backlog",
                backlog.files,
                f"{backlog.files} files, {backlog.size_bytes / 2**20:.1f} MiB unread in "
                f"{self.record.input} (limits {t.backlog_files} files, "
                f"{t.backlog_bytes / 2**20:.0f} MiB)",
                "check the stream keeps up (falling_behind, slow_batches) and give it more "
                "resources; after an outage or a bulk load, let it drain",
            )
        ]

    def records_breach(self, behind: dict[str, int]) -> list[Breach]:
        limit = self.thresholds.backlog_records
        total = sum(behind.values())
        if total <= limit:
            return []
        topics = ", ".join(f"{topic} {count}" for topic, count in sorted(behind.items()))
        return [
            self.breach(
                "backlog",
                total,
                f"{total} records behind the latest offsets after the last batch ({topics}; "
                f"limit {limit})",
                "check the stream keeps up (falling_behind, slow_batches) and give it more "
                "resources or a higher max_offsets_per_trigger; after an outage, let it drain",
            )
        ]

    def slow_batches(self) -> list[Breach]:
        assert self.status is not None
        trigger = trigger_seconds(self.record.trigger_interval)
        k = self.thresholds.slow_batches
        recent = self.status.recent_batches[-k:]
        if trigger <= 0 or len(recent) < k:
            return []
        if not all(b.duration_ms > trigger * 1000 for b in recent):
            return []
        durations = ", ".join(f"{b.duration_ms / 1000:.1f} s" for b in recent)
        return [
            self.breach(
                "slow_batches",
                recent[-1].duration_ms / 1000,
                f"the last {k} batches took {durations}, each longer than the trigger interval "
                f"'{self.record.trigger_interval}'",
                "batches now run back to back and latency grows: give the job more resources, "
                "or set a longer trigger interval",
            )
        ]

    def last_exception(self) -> list[Breach]:
        assert self.status is not None
        if self.status.exception:
            return [
                self.breach(
                    "last_exception",
                    _one_line(self.status.exception),
                    f"the running job reports: {_one_line(self.status.exception)}",
                    f"read the error in the {self.dag} run's log",
                )
            ]
        if self.record.last_error_kind == "hung":
            # Restarted by its supervisor for making no progress: its `stalled` incident says so.
            return []
        window = timedelta(seconds=self.thresholds.exception_window_seconds)
        recent = [t for t in _times(self.record.restarts) if self.now - t <= window]
        if not recent or not self.record.last_error:
            return []
        error = _one_line(self.record.last_error)
        return [
            self.breach(
                "last_exception",
                error,
                f"running again, but failed {len(recent)} times in the last {ago(window)}, last "
                f"{ago(self.now - max(recent))} ago: {error}",
                f"read the error in the {self.dag} run's log and fix its cause before the restart "
                "budget is used up",
            )
        ]


def _times(texts: Iterable[str]) -> list[datetime]:
    times = []
    for text in texts:
        try:
            times.append(parse_time(text))
        except ValueError:
            log.warning("ignoring unreadable restart time %r", text)
    return times


# --- Backlog: input files the checkpoint's file-source log does not list yet ---------------------


def _visible(name: str) -> bool:
    """Whether Spark's file source reads a file of this name (see its `InMemoryFileIndex`)."""
    return not name.startswith((".", "_")) and not name.endswith("._COPYING_")


def _file_key(path: str) -> str:
    """`<folder>/<file>`: how a file is matched between a listing and Spark's log.

    Spark logs fully qualified URIs (`file:///data/in/a%20b.txt`, `s3a://bucket/in/x`), while
    `pyarrow.fs` lists paths in its own form (`/data/in/a b.txt`, `bucket/in/x`). The file source
    reads only the direct children of its folder, so the folder's name and the file's name
    identify a file in every filesystem.
    """
    parent, name = posixpath.split(path.rstrip("/"))
    return f"{posixpath.basename(parent)}/{name}"


def source_log_files(layout: CheckpointLayout) -> list[Location]:
    """The files of the checkpoint's file-source log that together list every file read.

    `sources/0/<N>` holds the files batch N read; every 10th batch (by default) Spark writes
    `<N>.compact`, holding everything up to batch N, and later deletes the older files.
    """
    folder = layout.root.child("sources", "0")
    names = [info.base_name for info in folder.list() if info.type == pafs.FileType.File]
    compacted = [
        int(name.removesuffix(".compact"))
        for name in names
        if name.endswith(".compact") and name.removesuffix(".compact").isdigit()
    ]
    last_compact = max(compacted, default=-1)
    chosen = [f"{last_compact}.compact"] if last_compact >= 0 else []
    chosen += [
        str(n) for n in sorted(int(name) for name in names if name.isdigit()) if n > last_compact
    ]
    return [folder.child(name) for name in chosen]


def files_in_source_log(layout: CheckpointLayout) -> set[str]:
    """`<folder>/<file>` keys of every input file the checkpoint's file source has taken."""
    keys: set[str] = set()
    for log_file in source_log_files(layout):
        lines = log_file.read_text().splitlines()
        if not lines or not lines[0].startswith("v"):
            log.warning("skipping %s: not a Spark metadata log file (no version line)", log_file)
            continue
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                uri = json.loads(line)["path"]
            except (ValueError, KeyError, TypeError):
                log.warning("skipping an unreadable entry of %s: %.200s", log_file, line)
                continue
            keys.add(_file_key(unquote(urlsplit(uri).path)))
    return keys


def backlog_of(record: StreamRecord, status: StreamStatus | None = None) -> Backlog:
    """The files in a file stream's input folder that its query has not taken yet; for a Kafka
    stream, the records its last batch left behind the latest offsets, from `status`.

    Works on any filesystem `pyarrow.fs` reaches (local, HDFS, S3, GCS): it lists the input folder
    and reads the checkpoint's file-source log. Streams without an input folder (socket, rate)
    have an empty backlog. Cost: one listing and at most 10 small log reads (one compact file and
    the deltas after it).
    """
    if not record.input:
        last = status.last_batch if status else None
        if last is not None and last.records_behind:
            return Backlog(files=0, size_bytes=0, records_behind=dict(last.records_behind))
        return Backlog(files=0, size_bytes=0)
    taken = files_in_source_log(CheckpointLayout.of(record.checkpoint))
    waiting = [
        info
        for info in Location.of(record.input).list()
        if info.type == pafs.FileType.File
        and _visible(info.base_name)
        and _file_key(info.path) not in taken
    ]
    mtimes = [info.mtime for info in waiting if info.mtime is not None]
    return Backlog(
        files=len(waiting),
        size_bytes=sum(info.size or 0 for info in waiting),
        oldest_mtime=min(mtimes) if mtimes else None,
    )
