"""
### stream_health

Checks, every minute, each stream that should be running (started by its stream DAG and not
stopped with `stream_control`). One mapped `check_stream` task per stream: it **fails when the
stream breaches a threshold**, with one line per breach, worst first, each naming the stream, the
signal, the value and what to do.

**Incidents, not alert storms.** Each (stream, signal) that breaks is one incident
(`streamops/incidents.py`, kept in `<data root>/_streamops/incidents/`): one *firing*
notification when it opens, nothing while it lasts, a *reminder* every
`$STREAMOPS_ALERT_REPEAT_SECONDS` (4 h), one *resolved* notification, with how long it lasted, at
the first passing check. A stream that breaks again within `$STREAMOPS_ALERT_FLAP_SECONDS` (15
min) of recovering reopens the same incident: one *flapping* notice, and *resolved* once it has
stayed resolved that long. Notifications go to `<data root>/_streamops/alerts.jsonl`, and to
Slack, e-mail, Alertmanager (`/api/v2/alerts`, posted again at every check while the incident
is open, with `endsAt` when it resolves), PagerDuty (Events API v2, one `dedup_key` per incident)
and a webhook (Alertmanager's webhook-receiver format) when the `streamops_slack`,
`streamops_smtp`, `streamops_alertmanager`, `streamops_pagerduty` and `streamops_webhook`
connections exist (docs/oncall.md). A channel that fails is retried at the next check, as the
task log says. A stream stopped on purpose has its
incidents resolved.

Signals (default thresholds in brackets):

- `not_running`: no status file; or the status says `stopped` / `failed`; or the driver ran on
  this host and its process is gone; or a driver elsewhere has written no status for longer than
  the stall limit [stall limit = 10 x trigger interval, at least 60 s].
- `stalled`: the driver is alive but has written no status for longer than the stall limit (a
  stuck batch); or no batch for longer than the stall limit while input files waited as long.
- `falling_behind`: rows processed at under 90% of the rate they arrived, in each of the last K
  batches that had input [K = 3, 90%].
- `backlog`: files not yet read in the input folder, by count or size [100 files or 1 GiB].
- `slow_batches`: each of the last K batches took longer than the trigger interval [K = 3].
- `last_exception`: running again, but failed and was restarted within the window, or its status
  reports an exception [30 min, the restart budget's window]. Not for a hung driver its
  supervisor restarted (`$STREAMOPS_STALL_RESTART_SECONDS`): its `stalled` incident says so.

Within the stall limit of a (re)start, a stream whose job has not reported yet is taken as
starting, not as a breach. Why these defaults: the floor of 60 s keeps a 1-second stream from
being flagged for one slow batch or for Spark's 10-second idle heartbeat; three batches in a row
separate a trend from a GC pause.

**Tune** with environment variables of the Airflow workers, read at each check (no restart or
redeploy of DAGs needed): `STREAMOPS_HEALTH_STALL_MULTIPLE`,
`STREAMOPS_HEALTH_STALL_FLOOR_SECONDS`, `STREAMOPS_HEALTH_FALLING_BEHIND_BATCHES`,
`STREAMOPS_HEALTH_FALLING_BEHIND_RATIO`,
`STREAMOPS_HEALTH_BACKLOG_FILES`, `STREAMOPS_HEALTH_BACKLOG_BYTES`,
`STREAMOPS_HEALTH_SLOW_BATCHES`, `STREAMOPS_HEALTH_EXCEPTION_WINDOW_SECONDS`. The schedule is
`STREAMOPS_HEALTH_SCHEDULE` (a cron expression, default `* * * * *`), read when this file is
parsed.

**Orphan drivers.** A stream's driver runs apart from Airflow and is watched by its deferred
stream task. A driver whose stream DAG run is no longer active (the run was deleted, or ended
while its driver lived on) is an orphan: `stop_orphan_drivers` asks it to stop at the next batch
boundary (stop request and SIGTERM) and says so once, so no driver outlives its run by more than
one health interval. Drivers started by hand, outside Airflow, are left alone.

Trigger it by hand with *Stream* set to check one stream now.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, task

from streamops.notifiers import StreamAlertNotifier
from streamops.params import stream_param

with DAG(
    dag_id="stream_health",
    schedule=os.environ.get("STREAMOPS_HEALTH_SCHEDULE", "* * * * *"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "stream": stream_param(
            "check only this stream; empty: every stream that should be running"
        ),
    },
    tags=["streaming", "monitoring"],
    default_args={
        "owner": "data-platform",
        # The schedule is the retry; a retry would also delay the alert.
        "retries": 0,
        # A check must never hang the next minute's run (max_active_runs=1).
        "execution_timeout": timedelta(minutes=2),
    },
) as dag:
    # A failure of the listing itself alerts (once per failed task); the checks notify through
    # their incidents instead.
    @task(on_failure_callback=StreamAlertNotifier())
    def list_streams() -> list[str]:
        """The names of the registered streams that should be running; resolves the incidents
        of the others (stopped on purpose, or no longer registered)."""
        from airflow.sdk import get_current_context

        from streamops.health_checks import streams_to_check

        return streams_to_check(get_current_context()["params"].get("stream"))

    @task(map_index_template="{{ stream }}")
    def check_stream(stream: str) -> dict[str, Any]:
        """Evaluate one stream's health, update its incidents (and notify), fail with one line
        per breach, worst first."""
        from streamops import health_checks
        from streamops.tasks import name_map_index

        name_map_index(stream)
        return health_checks.check_stream(stream)

    @task(on_failure_callback=StreamAlertNotifier())
    def stop_orphan_drivers() -> list[str]:
        """Ask every live driver whose stream DAG run is no longer active to stop."""
        from airflow.sdk import get_current_context

        from streamops import health_checks

        return health_checks.stop_orphan_drivers(get_current_context()["ti"])

    check_stream.expand(stream=list_streams())
    stop_orphan_drivers()


if __name__ == "__main__":
    dag.test()
