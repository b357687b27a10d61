"""Every stream at a glance: what the Streams page, its JSON API, the metrics and the CLI show.

One function, `overview()`, reads what the control plane and the jobs already write under the data
root and judges it with the same rules as the `stream_health` DAG (`streamops.health.evaluate`):

- the registry record (`_streamops/streams/<stream>.json`): should it run, restarts, last error;
- the job's status (`<checkpoint>/_streamops/status.json`): state, recent batches, rates;
- the checkpoint's lease (`<checkpoint>/_streamops/lease.json`, `spark_jobs/lease.py`): which
  driver holds the checkpoint, and whether it is alive;
- where the driver's Spark UI is, from the status, and how to reach it (`spark_ui_view`);
- the input backlog (from the checkpoint's file-source log), the checkpoint's generation, size
  and snapshots;
- the newest quality result (`_streamops/quality/history.jsonl`), recent alerts
  (`_streamops/alerts.jsonl`), open and lately resolved incidents (`_streamops/incidents/`).

Each stream gets one state, for a human at a glance:

| state | meaning |
| --- | --- |
| `running` | should run and runs (a `last_exception` breach still makes it unhealthy) |
| `starting` | (re)started by its DAG; its job has not reported a batch yet |
| `falling_behind` | runs, but `falling_behind`, `backlog` or `slow_batches` is breached |
| `stalled` | its driver is alive but makes no progress |
| `restarting` | its job failed; its stream task waits out the backoff and starts it again |
| `failed` | should run, does not, and nothing will restart it (budget used up, task gone) |
| `stopped` | stopped on purpose (stream_control, or an available-now run that finished) |

`healthy` is False when the stream has a breach, or is restarting. Nothing here imports Spark or
pandas; the cost is a few small file reads per stream, plus a listing of the checkpoint (for its
size) and of the input folder, cached for `CACHE_SECONDS`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from spark_jobs.checkpoints import SnapshotStore, tree_size
from spark_jobs.layout import CheckpointLayout, Generation
from spark_jobs.lease import read_lease
from spark_jobs.session import is_loopback
from spark_jobs.status import StreamStatus, batch_time_breakdown, read_status
from spark_jobs.storage import Location
from streamops import registry
from streamops.health import (
    Backlog,
    Breach,
    HealthThresholds,
    backlog_of,
    driver_alive,
    evaluate,
    parse_time,
)
from streamops.incidents import Incident, IncidentStore

State = Literal[
    "running", "starting", "falling_behind", "stalled", "restarting", "failed", "stopped"
]
STATES: tuple[State, ...] = (
    "running",
    "starting",
    "falling_behind",
    "stalled",
    "restarting",
    "failed",
    "stopped",
)
# Signals that mean "runs, but does not keep up".
LAGGING = ("falling_behind", "backlog", "slow_batches")
# Listings (checkpoint size, snapshots, backlog) are cached this long per stream.
CACHE_SECONDS = 15.0
RECENT_ALERTS = 10
# Resolved incidents listed on the page.
RECENT_INCIDENTS = 10
# Only the end of the alerts file is read: enough for the recent alerts of every stream.
ALERTS_TAIL_BYTES = 256 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPoint:
    """One recent micro-batch, for the page's chart."""

    batch_id: int
    time: str
    input_rows: int
    input_rows_per_second: float
    processed_rows_per_second: float
    duration_seconds: float
    state_rows: int | None


@dataclass(frozen=True)
class CheckpointInfo:
    """Where the checkpoint is, its generation, its size and its newest snapshot."""

    path: str
    generation: int | None
    first_sink_batch_id: int | None
    size_bytes: int | None
    snapshots: int
    latest_snapshot: dict[str, Any] | None


@dataclass(frozen=True)
class SinkInfo:
    """The sink's files (all, and those readers read), bytes, rows and last compaction."""

    files: int | None
    live_files: int | None
    size_bytes: int | None
    rows: int | None
    last_compaction: str | None
    retention_days: float | None = None  # the age limit applied (None: kept forever)
    expired_before: int = 0  # every batch before this one expired


@dataclass(frozen=True)
class QualityInfo:
    """The newest Great Expectations validation of the stream's sink."""

    time: str | None
    success: bool
    checked: str | None
    rows: int | None
    failures: int
    data_docs: str | None


@dataclass(frozen=True)
class SparkUiView:
    """The running driver's Spark UI: the link to its query's Structured Streaming page.

    A UI bound to loopback (the default, `spark_jobs/session.py`) answers on its driver's host
    only: a browser elsewhere reaches it through `tunnel`, then opens `tunneled_url`.
    """

    url: str
    ui: str
    port: int | None
    driver_host: str
    loopback_only: bool
    # Whether the driver runs where this overview was made (the api-server, or the CLI's host).
    on_this_host: bool
    tunnel: str | None
    tunneled_url: str | None


def spark_ui_view(status: StreamStatus | None, this_host: str | None = None) -> SparkUiView | None:
    """Where the stream's Spark UI is, while its driver runs one."""
    if status is None or status.state not in ("starting", "running") or not status.ui_url:
        return None
    url = status.streaming_ui_url or status.ui_url
    parts = urlsplit(status.ui_url)
    loopback = is_loopback(parts.hostname or "")
    port = parts.port
    tunnel = tunneled = None
    if loopback and port:
        tunnel = f"ssh -N -L {port}:localhost:{port} {status.host}"
        tunneled = urlsplit(url)._replace(netloc=f"localhost:{port}").geturl()
    return SparkUiView(
        url=url,
        ui=status.ui_url,
        port=port,
        driver_host=status.host,
        loopback_only=loopback,
        on_this_host=status.host == (this_host or socket.gethostname()),
        tunnel=tunnel,
        tunneled_url=tunneled,
    )


@dataclass
class StreamOverview:
    """One stream, as the on-call engineer sees it."""

    stream: str
    job: str
    dag_id: str
    run_id: str
    desired: str
    state: State
    healthy: bool
    breaches: list[dict[str, Any]]
    trigger_interval: str | None
    sink: str
    input: str
    lease: str | None
    driver: str | None
    started_at: str | None
    status_updated_at: str | None
    status_age_seconds: float | None
    last_batch_id: int | None
    last_batch_time: str | None
    last_batch_age_seconds: float | None
    input_rows_per_second: float | None
    processed_rows_per_second: float | None
    batch_duration_seconds: float | None
    state_rows: int | None
    backlog_files: int | None
    backlog_bytes: int | None
    # A Kafka stream: per topic, the records its last batch left behind the latest offsets.
    records_behind: dict[str, int] | None
    restarts_total: int
    last_error: str | None
    exception: str | None
    checkpoint: CheckpointInfo
    sink_files: SinkInfo
    quality: QualityInfo | None
    # The Params of the run that started the stream: `streamops start` starts it the same way.
    params: dict[str, Any] = field(default_factory=dict)
    recent_batches: list[BatchPoint] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    # Its open incidents (`streamops.incidents`), oldest first.
    incidents: list[dict[str, Any]] = field(default_factory=list)
    spark_ui: SparkUiView | None = None
    # Where batch time goes, phase by phase (`spark_jobs.status.batch_time_breakdown`): the last
    # batch and the median of the recent ones.
    batch_time: list[dict[str, Any]] = field(default_factory=list)
    # The spec version its driver runs (its status says; the record, before it has written one)
    # and that version's code version (`registry.SpecVersion`).
    spec_version: str | None = None
    code_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Overview:
    """Every registered stream, when it was read, and what could not be read."""

    generated_at: str
    data_root: str
    streams: list[StreamOverview]
    problems: list[str]
    # Incidents resolved lately (any stream), newest first.
    recent_incidents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Whether every stream is healthy and everything could be read."""
        return not self.problems and all(s.healthy for s in self.streams)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "generated_at": self.generated_at,
            "data_root": self.data_root,
            "healthy": self.healthy,
            "streams": [s.to_dict() for s in self.streams],
            "problems": self.problems,
            "recent_incidents": self.recent_incidents,
        }


# --- Small cache for listings --------------------------------------------------------------------

_cache: dict[tuple[str, str], tuple[float, Any]] = {}
_cache_lock = threading.Lock()


def _cached(kind: str, key: str, compute: Callable[[], T], ttl: float = CACHE_SECONDS) -> T:
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get((kind, key))
    if hit and now - hit[0] < ttl:
        return hit[1]  # type: ignore[no-any-return]
    value = compute()
    with _cache_lock:
        _cache[(kind, key)] = (now, value)
    return value


def clear_cache() -> None:
    """Forget cached listings (tests, or after an action that changed a checkpoint)."""
    with _cache_lock:
        _cache.clear()


# --- Reading -------------------------------------------------------------------------------------


def overview(
    root: str,
    now: datetime | None = None,
    thresholds: HealthThresholds | None = None,
    use_cache: bool = True,
) -> Overview:
    """Read and judge every registered stream under the data root `root`."""
    from expectations.results import latest_results

    now = now or datetime.now(UTC)
    thresholds = thresholds or HealthThresholds.from_env()
    problems: list[str] = []
    try:
        records = sorted(registry.load_all(root), key=lambda r: r.stream)
    except (OSError, ValueError, TypeError) as err:
        records = []
        problems.append(
            f"cannot read the stream registry {registry.registry_dir(root)}: {err} — check that "
            "this process can read the data root ($STREAMOPS_DATA_ROOT)"
        )
    try:
        quality = latest_results(root)
    except (OSError, ValueError) as err:
        quality = {}
        problems.append(f"cannot read the quality history: {err}")
    alerts = recent_alerts(root, problems)
    streams = []
    for record in records:
        try:
            streams.append(
                stream_overview(record, now, thresholds, quality, alerts, problems, use_cache)
            )
        except (OSError, ValueError, TypeError) as err:
            problems.append(f"stream {record.stream}: cannot read its files: {err}")
    recent = read_incidents(root, now, streams, problems)
    return Overview(
        generated_at=now.isoformat(timespec="seconds"),
        data_root=root,
        streams=streams,
        problems=problems,
        recent_incidents=recent,
    )


def incident_view(incident: Incident, now: datetime) -> dict[str, Any]:
    """An incident as the page, the CLI and the metrics show it."""
    return {
        "stream": incident.stream,
        "signal": incident.signal,
        "state": incident.state,
        "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at,
        "age_seconds": round((now - datetime.fromisoformat(incident.opened_at)).total_seconds()),
        "duration_seconds": round(incident.duration(now).total_seconds()),
        "value": incident.value,
        "message": incident.message,
        "checks": incident.checks,
        "flaps": incident.flaps,
        "reminders": incident.reminders,
        "dedup_key": incident.dedup_key,
    }


def read_incidents(
    root: str, now: datetime, streams: list[StreamOverview], problems: list[str]
) -> list[dict[str, Any]]:
    """Attach each stream's open incidents to it; the incidents resolved lately, newest first."""
    store = IncidentStore(root)
    try:
        current = store.all()
        closed = store.recent_closed(RECENT_INCIDENTS)
    except (OSError, ValueError, TypeError) as err:
        problems.append(f"cannot read the incidents in {store.folder}: {err}")
        return []
    by_stream = {s.stream: s for s in streams}
    for incident in current:
        if incident.state == "firing" and incident.stream in by_stream:
            by_stream[incident.stream].incidents.append(incident_view(incident, now))
    resolved = [i for i in current if i.state == "resolved"] + closed
    resolved.sort(key=lambda i: i.resolved_at or "", reverse=True)
    return [incident_view(i, now) for i in resolved[:RECENT_INCIDENTS]]


def recent_alerts(root: str, problems: list[str]) -> list[dict[str, Any]]:
    """The newest alerts of the alerts file (any stream), oldest first."""
    location = Location.of(root).child("_streamops", "alerts.jsonl")
    try:
        info = location.filesystem.get_file_info(location.path)
        if info.size is None:
            return []
        with location.filesystem.open_input_file(location.path) as handle:
            start = max(info.size - ALERTS_TAIL_BYTES, 0)
            handle.seek(start)
            data = handle.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, OSError) as err:
        if isinstance(err, FileNotFoundError) or not location.exists():
            return []
        problems.append(f"cannot read the alerts file {location}: {err}")
        return []
    lines = data.splitlines()[1:] if start else data.splitlines()
    alerts = []
    for line in lines:
        try:
            alert = json.loads(line)
        except ValueError:
            continue
        if isinstance(alert, dict):
            alerts.append(alert)
    return alerts


def _status(record: registry.StreamRecord, problems: list[str]) -> StreamStatus | None:
    try:
        return read_status(record.checkpoint)
    except (ValueError, TypeError, OSError) as err:
        problems.append(
            f"stream {record.stream}: its status file "
            f"{CheckpointLayout.of(record.checkpoint).status_file} is unreadable: {err}"
        )
        return None


def _backlog(
    record: registry.StreamRecord,
    status: StreamStatus | None,
    problems: list[str],
    use_cache: bool,
) -> Backlog | None:
    try:
        if not use_cache or not record.input:  # without an input folder: nothing to list
            return backlog_of(record, status)
        return _cached("backlog", record.checkpoint, lambda: backlog_of(record), ttl=5.0)
    except OSError as err:
        problems.append(f"stream {record.stream}: backlog unknown ({err})")
        return None


def checkpoint_info(checkpoint: str, use_cache: bool = True) -> CheckpointInfo:
    """Generation, size and snapshots of a checkpoint."""

    def compute() -> CheckpointInfo:
        layout = CheckpointLayout.of(checkpoint)
        generation = Generation.read(layout)
        store = SnapshotStore.of(layout)
        snapshots = store.all()
        latest = snapshots[-1] if snapshots else None
        return CheckpointInfo(
            path=checkpoint,
            generation=generation.number if generation else None,
            first_sink_batch_id=generation.first_sink_batch_id if generation else None,
            size_bytes=tree_size(layout.root) if layout.root.exists() else None,
            snapshots=len(snapshots),
            latest_snapshot=asdict(latest) if latest else None,
        )

    return _cached("checkpoint", checkpoint, compute) if use_cache else compute()


# Rows of each live sink file, by (path, size, mtime): a file's footer is read once.
_footer_rows: dict[tuple[str, int, int], int] = {}
_footer_lock = threading.Lock()


def sink_info(sink: str, problems: list[str], use_cache: bool = True) -> SinkInfo:
    """Files, bytes and rows of a sink (footers of files new since the last call are read)."""
    from spark_jobs.compaction import sink_stats

    def compute() -> SinkInfo:
        try:
            with _footer_lock:
                stats = sink_stats(sink, _footer_rows)
        except (OSError, ValueError) as err:
            problems.append(f"sink {sink}: cannot list or read it ({err})")
            return SinkInfo(None, None, None, None, None)
        return SinkInfo(
            stats.files,
            stats.live_files,
            stats.bytes,
            stats.rows,
            stats.last_compaction,
            stats.retention_days,
            stats.expired_before,
        )

    return _cached("sink", sink, compute) if use_cache else compute()


def quality_info(summary: dict[str, Any] | None) -> QualityInfo | None:
    """The page's view of a quality history line."""
    if not summary:
        return None
    failures = summary.get("failures") or []
    return QualityInfo(
        time=summary.get("time"),
        success=bool(summary.get("success")),
        checked=summary.get("checked"),
        rows=summary.get("rows"),
        failures=len(failures) if isinstance(failures, list) else 0,
        data_docs=summary.get("data_docs"),
    )


def judge(
    record: registry.StreamRecord,
    status: StreamStatus | None,
    breaches: list[Breach],
    restart_pending: bool,
) -> tuple[State, bool]:
    """A stream's state and whether it is healthy, from what `evaluate` found and whether its
    stream task has a restart pending."""
    signals = {b.signal for b in breaches}
    running_now = (
        status is not None
        and status.state in ("starting", "running")
        and driver_alive(status) is not False
    )
    if record.desired != "running":
        return ("running" if running_now else "stopped"), True
    restarts = [parse_time(t) for t in record.restarts]
    if restart_pending and restarts and (status is None or status.state in ("failed", "stopped")):
        return "restarting", False
    if restart_pending and restarts and status and parse_time(status.updated_at) <= max(restarts):
        return "restarting", False
    if "not_running" in signals:
        return ("restarting" if restart_pending and restarts else "failed"), False
    if "stalled" in signals:
        return "stalled", False
    if signals & set(LAGGING):
        return "falling_behind", False
    if status is None or status.state == "starting" or status.last_batch is None:
        return "starting", not breaches
    if parse_time(status.updated_at) < parse_time(record.updated_at):
        return "starting", not breaches
    return "running", not breaches


#: How long after its due time a pending restart still counts: the new driver's JVM start.
RESTART_GRACE_SECONDS = 300.0


def restart_pending(record: registry.StreamRecord, now: datetime) -> bool:
    """Whether the stream's task waits to start its failed driver again (or is starting it)."""
    if not record.restart_at:
        return False
    due = parse_time(record.restart_at)
    return (now - due).total_seconds() < RESTART_GRACE_SECONDS


def stream_overview(  # noqa: PLR0917  (the overview's shared reads, passed down)
    record: registry.StreamRecord,
    now: datetime,
    thresholds: HealthThresholds,
    quality: dict[str, dict[str, Any]],
    alerts: list[dict[str, Any]],
    problems: list[str],
    use_cache: bool = True,
) -> StreamOverview:
    """One stream's overview at time `now`."""
    status = _status(record, problems)
    backlog = _backlog(record, status, problems, use_cache)
    breaches = evaluate(record, status, now, thresholds, backlog)
    holder = read_lease(CheckpointLayout.of(record.checkpoint).lease_file)
    live = holder is not None and not holder.is_gone(now=now.timestamp())
    state, healthy = judge(record, status, breaches, restart_pending(record, now))
    last = status.last_batch if status else None
    last_time = parse_time(last.timestamp) if last else None
    updated = parse_time(status.updated_at) if status else None
    version = (status.spec_version if status else None) or record.spec_version
    known = record.version(version)
    return StreamOverview(
        stream=record.stream,
        job=record.job,
        dag_id=record.dag_id or f"{record.job}_stream",
        run_id=record.run_id,
        desired=record.desired,
        state=state,
        healthy=healthy,
        breaches=[asdict(b) for b in breaches],
        trigger_interval=record.trigger_interval,
        sink=record.sink,
        input=record.input,
        lease=holder.describe(now.timestamp()) if holder is not None and live else None,
        driver=f"pid {status.pid} on {status.host}" if status else None,
        started_at=status.started_at if status else None,
        status_updated_at=status.updated_at if status else None,
        status_age_seconds=round((now - updated).total_seconds(), 1) if updated else None,
        last_batch_id=last.batch_id if last else None,
        last_batch_time=last.timestamp if last else None,
        last_batch_age_seconds=(round((now - last_time).total_seconds(), 1) if last_time else None),
        input_rows_per_second=last.input_rows_per_second if last else None,
        processed_rows_per_second=last.processed_rows_per_second if last else None,
        batch_duration_seconds=last.duration_ms / 1000 if last else None,
        state_rows=last.state_rows if last else None,
        backlog_files=backlog.files if backlog else None,
        backlog_bytes=backlog.size_bytes if backlog else None,
        records_behind=backlog.records_behind if backlog else None,
        restarts_total=len(record.restarts),
        last_error=record.last_error,
        exception=status.exception if status else None,
        checkpoint=checkpoint_info(record.checkpoint, use_cache),
        sink_files=sink_info(record.sink, problems, use_cache),
        quality=quality_info(quality.get(f"stream {record.stream}")),
        params=dict(record.params),
        recent_batches=[
            BatchPoint(
                batch_id=b.batch_id,
                time=b.timestamp,
                input_rows=b.input_rows,
                input_rows_per_second=b.input_rows_per_second,
                processed_rows_per_second=b.processed_rows_per_second,
                duration_seconds=b.duration_ms / 1000,
                state_rows=b.state_rows,
            )
            for b in (status.recent_batches if status else [])
        ],
        alerts=[a for a in alerts if a.get("stream") == record.stream][-RECENT_ALERTS:],
        spark_ui=spark_ui_view(status) if live else None,
        batch_time=batch_time_breakdown(status.recent_batches) if status else [],
        spec_version=version,
        code_version=known.code if known else None,
    )
