"""The Airflow side of the sink quality checks: the `sink_quality` DAG's schedule and task bodies.

The schedule combines time and data (`AssetOrTimeSchedule`): a cron timetable (default every 10
minutes, `$STREAMOPS_QUALITY_SCHEDULE`) or an event of the `stream_sinks` asset, whose
`AssetWatcher` (`streamops.triggers.SinkBatchesTrigger`, in the triggerer) polls the registered
streams' sinks for new part files every `$STREAMOPS_QUALITY_POLL_SECONDS` (default 60) seconds.

The validation itself lives in `expectations/` (Great Expectations, pandas, pyarrow), imported
inside the task functions only: this module is imported when DAG files are parsed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable

from streamops.config import data_root
from streamops.triggers import DEFAULT_POLL_SECONDS, SinkBatchesTrigger

if TYPE_CHECKING:
    from expectations.suites import ReconcilePair
    from streamops import registry

log = logging.getLogger(__name__)

SCHEDULE_ENV = "STREAMOPS_QUALITY_SCHEDULE"
POLL_ENV = "STREAMOPS_QUALITY_POLL_SECONDS"
DEFAULT_SCHEDULE = "*/10 * * * *"
ASSET_NAME = "stream_sinks"
ASSET_URI = "x-streamops://stream-sinks"


def stream_sinks_asset(root: str | None = None) -> Asset:
    """The registered streams' sinks, watched for new part files."""
    root = root or data_root()
    poll = float(os.environ.get(POLL_ENV, DEFAULT_POLL_SECONDS))
    return Asset(
        name=ASSET_NAME,
        uri=ASSET_URI,
        group="streamops",
        extra={"data_root": root},
        watchers=[
            AssetWatcher(
                name="stream_sinks_new_batches",
                trigger=SinkBatchesTrigger(root=root, poll_interval=poll),
            )
        ],
    )


def quality_schedule() -> AssetOrTimeSchedule:
    """Every N minutes (cron, UTC) or when a stream writes new output."""
    cron = os.environ.get(SCHEDULE_ENV, DEFAULT_SCHEDULE)
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=stream_sinks_asset()
    )


# ---------------------------------------------------------------------------------------------
# Task bodies (run on the worker)


def validate_stream(stream: str, revalidate_all: bool, run: str) -> dict[str, Any]:
    """Validate one stream's new batches; fail with what failed, where, and samples."""
    from airflow.sdk.exceptions import AirflowFailException

    from expectations.results import QualityConfigError
    from expectations.suites import QualityConfig
    from expectations.validate import QualityRunner, StreamSink
    from streamops import registry

    record = registry.load(stream)
    if record is None:
        return {"subject": f"stream {stream}", "checked": "not validated: no longer registered"}
    try:
        runner = QualityRunner(data_root(), QualityConfig.load(), run=run)
        report = runner.validate_stream(StreamSink.from_record(record), revalidate_all)
    except QualityConfigError as err:
        raise AirflowFailException(f"stream {stream}: {err}") from err
    except (OSError, ValueError) as err:
        # Retried: a storage hiccup. The watermark did not move, so nothing is skipped.
        raise RuntimeError(
            f"stream {stream}: cannot validate its sink {record.sink}: {err} - check that the "
            "workers can read the data root"
        ) from err
    _finish(runner)
    print(f"stream {stream}: {report.checked}; {report.rows} rows; checks: {report.checks}")
    for note in report.notes:
        print(f"stream {stream}: {note}")
    if not report.success:
        raise AirflowFailException(report.message())
    return report.summary(run, runner.now.isoformat())


def pairs_to_reconcile(
    configured: Sequence[ReconcilePair], records: Iterable[registry.StreamRecord]
) -> list[ReconcilePair]:
    """The pairs in `thresholds.yaml`, then every word_count and running_total stream that read
    the same input folder (word_count without windows: windowed counts do not add up per batch)."""
    from expectations.suites import ReconcilePair

    pairs = list(dict.fromkeys(configured))
    by_input: dict[str, dict[str, list[str]]] = {}
    for record in records:
        windowed = bool(record.params.get("window"))
        if not record.input or (record.job == "word_count" and windowed):
            continue
        by_input.setdefault(record.input, {}).setdefault(record.job, []).append(record.stream)
    for jobs in by_input.values():
        for word_count in sorted(jobs.get("word_count", [])):
            for running_total in sorted(jobs.get("running_total", [])):
                pair = ReconcilePair(word_count, running_total)
                if pair not in pairs:
                    pairs.append(pair)
    return pairs


def reconcile_streams(only: str | None, revalidate_all: bool, run: str) -> list[dict[str, Any]]:
    """Reconcile every pair (or those with `only`); fail on any difference."""
    from airflow.sdk.exceptions import AirflowFailException

    from expectations.reconcile import reconcile_pair
    from expectations.results import QualityConfigError
    from expectations.suites import QualityConfig
    from expectations.validate import QualityRunner, Report, StreamSink
    from streamops import registry

    try:
        config = QualityConfig.load()
    except QualityConfigError as err:
        raise AirflowFailException(str(err)) from err
    runner = QualityRunner(data_root(), config, run=run)
    records = {record.stream: record for record in registry.load_all()}
    reports: list[Report] = []
    for pair in pairs_to_reconcile(config.pairs, records.values()):
        if only and only not in (pair.word_count, pair.running_total):
            continue
        missing = [s for s in (pair.word_count, pair.running_total) if s not in records]
        if missing:
            print(f"{pair.name}: not reconciled: {', '.join(missing)} not registered")
            continue
        word_count = StreamSink.from_record(records[pair.word_count])
        running_total = StreamSink.from_record(records[pair.running_total])
        try:
            reports.append(reconcile_pair(runner, pair, word_count, running_total, revalidate_all))
        except (OSError, ValueError) as err:
            raise RuntimeError(
                f"streams {pair.word_count} and {pair.running_total}: cannot reconcile: {err} - "
                "check that the workers can read both sinks and checkpoints"
            ) from err
    _finish(runner)
    for report in reports:
        print(f"{report.subject}: {report.checked}")
        for note in report.notes:
            print(f"{report.subject}: {note}")
    failed = [report for report in reports if not report.success]
    if failed:
        raise AirflowFailException("\n".join(report.message() for report in failed))
    return [report.summary(run, runner.now.isoformat()) for report in reports]


def _finish(runner: Any) -> None:
    """Build the Data Docs (logging where they are), then record the run's results."""
    try:
        url = runner.build_docs()
        print(f"Data Docs: {url}")
    except Exception:
        # Results and watermarks are still recorded; the next run builds the docs again.
        log.exception("the Data Docs could not be built")
    runner.commit()
