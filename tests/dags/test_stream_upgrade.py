"""stream_upgrade on a real Airflow: the dry run of the failure `make demo` met (a window added
to a running word_count) is refused by the preflight, naming Spark's reason, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.status import read_status
from streamops import registry
from tests.conftest import drop_file
from tests.dags.conftest import airflow_env, dags_test, run_state
from tests.streamops.test_upgrades import WINDOW_MISSING_STATE, digest

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow]


def test_a_window_added_in_mode_restart_is_refused_and_nothing_is_written(
    airflow_home: Path, tmp_path: Path
) -> None:
    # Given a word_count stream its DAG ran for two batches (one file each)
    stream_dir = tmp_path / "streams/word_count"
    for n in (1, 2):
        drop_file(stream_dir / "input", f"{n}.txt", "hello world\nhello spark\n")
    env = airflow_env(airflow_home, tmp_path)
    started = dags_test(
        "word_count_stream", {"available_now": True, "max_files_per_trigger": 1}, env
    )
    assert run_state(started) == "success", (started.stdout + started.stderr)[-3000:]
    record = registry.load("word_count", str(tmp_path))
    assert record is not None
    assert record.spec_version is not None
    status = read_status(record.checkpoint)
    assert status is not None
    assert status.spec_version == record.spec_version  # the driver names what it runs
    before = digest(record.checkpoint, record.sink, str(registry.registry_dir(str(tmp_path)).path))

    # When its upgrade to 30-second windows is tried in mode restart
    upgrade = dags_test(
        "stream_upgrade",
        {"stream": "word_count", "changes": {"window": "30 seconds"}, "mode": "restart"},
        env,
    )

    # Then the run fails with the verdict and Spark's own reason, and nothing was written
    output = upgrade.stdout + upgrade.stderr
    assert run_state(upgrade) == "failed", output[-3000:]
    assert "upgrade of word_count (mode restart): refused" in output
    assert WINDOW_MISSING_STATE in output
    assert "upgrade of word_count refused: mode restart was asked, but" in output
    after = digest(record.checkpoint, record.sink, str(registry.registry_dir(str(tmp_path)).path))
    assert after == before
