"""The `stream_health` DAG's tasks: which streams to check, one stream's check, orphan drivers.

The rules live in `streamops.health` (pure, no Airflow); this module runs them against the
registry and the checkpoints, updates the incidents, and fails a task with one line per breach.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from spark_jobs.layout import CheckpointLayout
from spark_jobs.status import read_status
from streamops import registry
from streamops.health import Breach, HealthThresholds, backlog_of, evaluate, parse_time
from streamops.incidents import AlertSettings, IncidentStore, update
from streamops.notifiers import IncidentChannels


def streams_to_check(only: str | None) -> list[str]:
    """The registered streams that should be running (all, or `only`); resolves the incidents
    of the others (stopped on purpose, or no longer registered) when checking all."""
    try:
        records = registry.select(only)
    except registry.UnknownStream as err:
        raise AirflowFailException(str(err)) from err
    wanted = [record.stream for record in records if record.desired == "running"]
    stopped = sorted({record.stream for record in records} - set(wanted))
    print(f"checking {len(wanted)} streams: {wanted}; not expected to run: {stopped}")
    if not only:
        for stream in sorted({i.stream for i in IncidentStore().all()} - set(wanted)):
            print(f"stream {stream}: not expected to run: resolving its incidents")
            update(stream, [], datetime.now(UTC), IncidentChannels())
    return wanted


def check_stream(stream: str) -> dict[str, Any]:
    """Evaluate one stream's health, update its incidents (and notify), fail with one line per
    breach, worst first."""
    try:
        thresholds = HealthThresholds.from_env()
        settings = AlertSettings.from_env()
    except ValueError as err:
        raise AirflowFailException(
            f"stream {stream}: invalid health or alert settings: {err}"
        ) from err
    record = registry.load(stream)
    if record is None:
        return {"stream": stream, "checked": False, "reason": "no longer registered"}
    now = datetime.now(UTC)
    status = backlog = None
    try:
        status = read_status(record.checkpoint)
    except (ValueError, TypeError, OSError) as err:
        breaches = [
            Breach(
                stream,
                "not_running",
                "status unreadable",
                f"stream {stream}: not_running (its status file "
                f"{CheckpointLayout.of(record.checkpoint).status_file} is unreadable: {err})"
                " — check the job's log; the next batch rewrites the file",
            )
        ]
    else:
        breaches = []
        try:
            backlog = backlog_of(record, status)
        except OSError as err:
            breaches.append(
                Breach(
                    stream,
                    "check_error",
                    "backlog unknown",
                    f"stream {stream}: backlog unknown (cannot list {record.input} or read "
                    f"the checkpoint's source log: {err}) — check the workers' access to "
                    "the data root",
                )
            )
        breaches = evaluate(record, status, now, thresholds, backlog) + breaches
    restart = (record.restarts[-1], record.last_error or "") if record.restarts else None
    update(stream, breaches, now, IncidentChannels(), settings, restart=restart)
    if breaches:
        raise AirflowFailException("\n".join(breach.message for breach in breaches))
    return {
        "stream": stream,
        "checked": True,
        "state": status.state if status else None,
        "last_batch_id": status.last_batch.batch_id if status and status.last_batch else None,
        "status_age_seconds": (
            round((now - parse_time(status.updated_at)).total_seconds()) if status else None
        ),
        "backlog_files": backlog.files if backlog else None,
    }


def stop_orphan_drivers(ti: Any) -> list[str]:
    """Ask every live driver whose stream DAG run is no longer active to stop."""
    from streamops.supervision import dagrun_state, orphan_drivers
    from streamops.triggers import stop_driver

    stopped = []
    for record, holder in orphan_drivers(
        registry.load_all(), lambda dag_id, run_id: dagrun_state(ti, dag_id, run_id)
    ):
        done = stop_driver(record.checkpoint, holder.token, grace_seconds=0, kill=False)
        if done:
            print(
                f"stream {record.stream}: its driver ({holder.describe()}) has no active "
                f"run of its DAG: {done}"
            )
            stopped.append(record.stream)
    return stopped
