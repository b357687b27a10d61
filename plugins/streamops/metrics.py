"""The stream overview as Prometheus metrics (text exposition format).

Served by the Streams plugin at `/streamops/metrics`; every series carries a `stream` label.
Names follow Prometheus conventions: `streamops_` prefix, base units in the name (`_seconds`,
`_bytes`), `_total` for counters, 0/1 gauges for states.

| metric | type | meaning |
| --- | --- | --- |
| `streamops_stream_healthy` | gauge | 1 when the stream has no health breach |
| `streamops_stream_state` | gauge | 1 for the current state (label `state`), else 0 |
| `streamops_stream_desired_running` | gauge | 1 when the control plane wants it running |
| `streamops_stream_breach` | gauge | 1 per breached health signal (label `signal`) |
| `streamops_stream_last_batch_id` | gauge | the sink batch id of the last finished batch |
| `streamops_stream_last_batch_timestamp_seconds` | gauge | when that batch started (Unix time) |
| `streamops_stream_status_age_seconds` | gauge | seconds since the job last wrote its status |
| `streamops_stream_input_rows_per_second` | gauge | input rate of the last batch |
| `streamops_stream_processed_rows_per_second` | gauge | processing rate of the last batch |
| `streamops_stream_batch_duration_seconds` | gauge | duration of the last batch |
| `streamops_stream_state_rows` | gauge | rows in the query's state store (stateful jobs) |
| `streamops_stream_backlog_files`, `_backlog_bytes` | gauge | input not yet read |
| `streamops_source_records_behind` | gauge | Kafka: records past the last batch (label `topic`) |
| `streamops_stream_restarts_total` | counter | restarts by the supervisor |
| `streamops_stream_spec_info` | gauge | 1, labels: the driver's spec `version` and its `code` |
| `streamops_incident_open` | gauge | 1 per open incident (labels `stream`, `signal`) |
| `streamops_incident_opened_timestamp_seconds` | gauge | when each open incident opened |
| `streamops_checkpoint_size_bytes` | gauge | bytes in the checkpoint |
| `streamops_checkpoint_generation` | gauge | rotations so far |
| `streamops_checkpoint_snapshots` | gauge | snapshots kept |
| `streamops_checkpoint_latest_snapshot_timestamp_seconds` | gauge | newest snapshot's time |
| `streamops_sink_files` | gauge | Parquet files in the sink, merged ones still in grace included |
| `streamops_sink_size_bytes` | gauge | bytes of those files |
| `streamops_sink_rows` | gauge | rows a reader reads (each batch once) |
| `streamops_sink_last_compaction_timestamp_seconds` | gauge | the last compaction's time |
| `streamops_sink_retention_seconds` | gauge | the sink's age limit (absent: kept forever) |
| `streamops_sink_expired_before_batch` | gauge | every batch before this one expired |
| `streamops_quality_success` | gauge | 1 when the newest validation of the sink passed |
| `streamops_quality_last_validation_timestamp_seconds` | gauge | when it ran |
| `streamops_overview_problems` | gauge | files that could not be read (0 when all is readable) |

`promtool check metrics` finds nothing to report in this exposition
(tests/streamops/test_metrics.py). The alert rules on these metrics are
`deploy/prometheus/streamops-rules.yml` (docs/oncall.md); `docs/runbook.md` says what to do for
each breach.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamops.health import SIGNALS, parse_time
from streamops.overview import STATES, Overview, StreamOverview

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _timestamp(text: str | None) -> float | None:
    return parse_time(text).timestamp() if text else None


def _gauge(
    name: str,
    doc: str,
    streams: Iterable[StreamOverview],
    value: Callable[[StreamOverview], float | None],
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["stream"])
    for stream in streams:
        number = value(stream)
        if number is not None:
            family.add_metric([stream.stream], float(number))
    return family


class OverviewCollector(Collector):
    """Turns one `Overview` into metric families."""

    def __init__(self, view: Overview) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:  # noqa: PLR0915  (one family after another)
        streams = self.view.streams
        spec = GaugeMetricFamily(
            "streamops_stream_spec_info",
            "The spec version the stream's driver runs, and its code version (docs/upgrades.md).",
            labels=["stream", "version", "code"],
        )
        for stream in streams:
            if stream.spec_version:
                spec.add_metric([stream.stream, stream.spec_version, stream.code_version or ""], 1)
        yield spec
        yield _gauge(
            "streamops_stream_healthy",
            "1 when the stream has no health breach and is not restarting.",
            streams,
            lambda s: int(s.healthy),
        )
        state = GaugeMetricFamily(
            "streamops_stream_state",
            "1 for the stream's current state, 0 for the other states.",
            labels=["stream", "state"],
        )
        breach = GaugeMetricFamily(
            "streamops_stream_breach",
            "1 for each health signal over its threshold.",
            labels=["stream", "signal"],
        )
        incident_open = GaugeMetricFamily(
            "streamops_incident_open",
            "1 for each open incident (stream_health: one per stream and signal).",
            labels=["stream", "signal"],
        )
        incident_opened = GaugeMetricFamily(
            "streamops_incident_opened_timestamp_seconds",
            "When each open incident opened (Unix time).",
            labels=["stream", "signal"],
        )
        records_behind = GaugeMetricFamily(
            "streamops_source_records_behind",
            "Kafka streams: records of each topic past the last micro-batch's end offsets.",
            labels=["stream", "topic"],
        )
        restarts = CounterMetricFamily(
            "streamops_stream_restarts",
            "Restarts of the stream's job by its supervisor.",
            labels=["stream"],
        )
        for stream in streams:
            for name in STATES:
                state.add_metric([stream.stream, name], float(stream.state == name))
            breached = {b["signal"] for b in stream.breaches}
            for signal in SIGNALS:
                breach.add_metric([stream.stream, signal], float(signal in breached))
            restarts.add_metric([stream.stream], float(stream.restarts_total))
            for topic, count in sorted((stream.records_behind or {}).items()):
                records_behind.add_metric([stream.stream, topic], float(count))
            for incident in stream.incidents:
                labels = [stream.stream, incident["signal"]]
                incident_open.add_metric(labels, 1.0)
                incident_opened.add_metric(labels, parse_time(incident["opened_at"]).timestamp())
        yield state
        yield breach
        yield incident_open
        yield incident_opened
        yield restarts
        yield records_behind
        yield _gauge(
            "streamops_stream_desired_running",
            "1 when the control plane wants the stream running.",
            streams,
            lambda s: int(s.desired == "running"),
        )
        yield _gauge(
            "streamops_stream_last_batch_id",
            "Sink batch id of the last finished micro-batch.",
            streams,
            lambda s: s.last_batch_id,
        )
        yield _gauge(
            "streamops_stream_last_batch_timestamp_seconds",
            "Start of the last finished micro-batch, Unix time.",
            streams,
            lambda s: _timestamp(s.last_batch_time),
        )
        yield _gauge(
            "streamops_stream_status_age_seconds",
            "Seconds since the job last wrote its status file.",
            streams,
            lambda s: s.status_age_seconds,
        )
        yield _gauge(
            "streamops_stream_input_rows_per_second",
            "Input rate of the last micro-batch.",
            streams,
            lambda s: s.input_rows_per_second,
        )
        yield _gauge(
            "streamops_stream_processed_rows_per_second",
            "Processing rate of the last micro-batch.",
            streams,
            lambda s: s.processed_rows_per_second,
        )
        yield _gauge(
            "streamops_stream_batch_duration_seconds",
            "Duration of the last micro-batch.",
            streams,
            lambda s: s.batch_duration_seconds,
        )
        yield _gauge(
            "streamops_stream_state_rows",
            "Rows in the query's state store.",
            streams,
            lambda s: s.state_rows,
        )
        yield _gauge(
            "streamops_stream_backlog_files",
            "Input files the stream has not read yet.",
            streams,
            lambda s: s.backlog_files,
        )
        yield _gauge(
            "streamops_stream_backlog_bytes",
            "Bytes of input the stream has not read yet.",
            streams,
            lambda s: s.backlog_bytes,
        )
        yield _gauge(
            "streamops_checkpoint_size_bytes",
            "Bytes in the stream's checkpoint.",
            streams,
            lambda s: s.checkpoint.size_bytes,
        )
        yield _gauge(
            "streamops_checkpoint_generation",
            "Rotations of the stream's checkpoint so far.",
            streams,
            lambda s: s.checkpoint.generation,
        )
        yield _gauge(
            "streamops_checkpoint_snapshots",
            "Snapshots kept of the stream's checkpoint.",
            streams,
            lambda s: s.checkpoint.snapshots,
        )
        yield _gauge(
            "streamops_checkpoint_latest_snapshot_timestamp_seconds",
            "When the newest snapshot was taken, Unix time.",
            streams,
            lambda s: (
                _timestamp(s.checkpoint.latest_snapshot["created_at"])
                if s.checkpoint.latest_snapshot
                else None
            ),
        )
        yield _gauge(
            "streamops_sink_files",
            "Parquet files in the stream's sink, merged ones in their grace period included.",
            streams,
            lambda s: s.sink_files.files,
        )
        yield _gauge(
            "streamops_sink_size_bytes",
            "Bytes of the stream's sink files.",
            streams,
            lambda s: s.sink_files.size_bytes,
        )
        yield _gauge(
            "streamops_sink_rows",
            "Rows in the stream's sink, each batch once.",
            streams,
            lambda s: s.sink_files.rows,
        )
        yield _gauge(
            "streamops_sink_last_compaction_timestamp_seconds",
            "When the stream's sink was last compacted, Unix time.",
            streams,
            lambda s: (
                _timestamp(s.sink_files.last_compaction) if s.sink_files.last_compaction else None
            ),
        )
        yield _gauge(
            "streamops_sink_retention_seconds",
            "The age limit of the stream's sink data, as the last compaction applied it.",
            streams,
            lambda s: (
                s.sink_files.retention_days * 86400
                if s.sink_files.retention_days is not None
                else None
            ),
        )
        yield _gauge(
            "streamops_sink_expired_before_batch",
            "Every batch of the stream's sink before this one expired (0: none did).",
            streams,
            lambda s: s.sink_files.expired_before,
        )
        yield _gauge(
            "streamops_quality_success",
            "1 when the newest validation of the stream's sink passed.",
            streams,
            lambda s: int(s.quality.success) if s.quality else None,
        )
        yield _gauge(
            "streamops_quality_last_validation_timestamp_seconds",
            "When the newest validation of the stream's sink ran, Unix time.",
            streams,
            lambda s: _timestamp(s.quality.time) if s.quality else None,
        )
        problems = GaugeMetricFamily(
            "streamops_overview_problems",
            "Files of the data root that could not be read for this overview.",
        )
        problems.add_metric([], float(len(self.view.problems)))
        yield problems


def render(view: Overview) -> bytes:
    """The Prometheus text exposition of an overview."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OverviewCollector(view))
    return generate_latest(registry)
