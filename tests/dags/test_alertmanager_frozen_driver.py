"""A frozen driver (SIGSTOP) under real Airflow, paged through a real Alertmanager: the stream
DAG run under `airflow dags test`, `stream_health` runs through `dag.test()` (`HealthRuns`) with
the `streamops_alertmanager` connection, and Debian's Alertmanager started by the test with a
short `resolve_timeout`.

While the driver is frozen past the stall limit, Alertmanager holds exactly one active alert for
(word_count, stalled), for longer than its `resolve_timeout` (each health check posts it again);
after SIGCONT the next passing check resolves it.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from spark_jobs.status import read_status
from tests.conftest import drop_file
from tests.dags.conftest import airflow_env, health_runs, running_stream
from tests.dags.test_hung_drivers import HEALTH, frozen, lease_of, run_state_of, stop, wait_until
from tests.monitoring import active_alerts, alertmanager

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow]

RESOLVE_TIMEOUT = 5.0  # seconds


def test_a_frozen_driver_is_one_alertmanager_alert_until_it_resumes(
    airflow_home: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "streams/word_count/checkpoint"
    drop_file(tmp_path / "streams/word_count/input", "1.txt", "hello spark\n")
    with alertmanager(tmp_path / "alertmanager", f"{RESOLVE_TIMEOUT:g}s") as manager:
        connection = json.dumps({"conn_type": "http", "host": manager.url})
        # Given a running stream with self-healing off, and stream_health paging Alertmanager
        env = airflow_env(airflow_home, tmp_path, **HEALTH, STREAMOPS_STALL_RESTART_SECONDS="0")
        health_env = dict(env, AIRFLOW_CONN_STREAMOPS_ALERTMANAGER=connection)
        with (
            health_runs(health_env) as health,
            running_stream("word_count_stream", checkpoint, env) as stream,
        ):
            holder = lease_of(checkpoint)
            assert holder is not None
            assert health.run()[0] == "success"
            assert active_alerts(manager, "word_count") == []
            # When its driver is frozen past the stall limit (20 s)
            with frozen(holder):
                time.sleep(25)
                assert health.run()[0] == "failed"
                # Then Alertmanager has one alert for (word_count, stalled)
                (alert,) = wait_until(
                    lambda: active_alerts(manager, "word_count"), 30, "the stalled alert"
                )
                assert (alert["labels"]["signal"], alert["labels"]["severity"]) == (
                    "stalled",
                    "page",
                )
                # And it stays the one active alert for 3 x resolve_timeout, checked every 2 s
                end = time.monotonic() + 3 * RESOLVE_TIMEOUT
                checks = 0
                while time.monotonic() < end:
                    time.sleep(2)
                    assert health.run()[0] == "failed"
                    checks += 1
                    alerts = active_alerts(manager, "word_count")
                    assert [a["fingerprint"] for a in alerts] == [alert["fingerprint"]], alerts
                resumed_at = time.time()
            # When it is resumed and reports again
            wait_until(
                lambda: (
                    (s := read_status(str(checkpoint))) is not None
                    and datetime.fromisoformat(s.updated_at).timestamp() > resumed_at
                ),
                60,
                "a status written after SIGCONT",
            )
            # Then the next passing check resolves the alert in Alertmanager
            assert health.run()[0] == "success"
            assert active_alerts(manager, "word_count") == []
            output = stop(checkpoint, stream)
        print(f"{checks} checks while frozen; Alertmanager ready in {manager.started_in:.2f} s")
    assert run_state_of(output) == "success", output[-3000:]
