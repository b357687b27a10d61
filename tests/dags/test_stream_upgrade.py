"""Upgrades of a live stream on a real Airflow: the failure `make demo` met (a window added to a
running word_count) is refused by the preflight against the live checkpoint while the stream
runs on untouched, and a trigger-interval change cuts over at a batch boundary, exactly."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from spark_jobs.checkpoints import SnapshotStore
from spark_jobs.layout import CheckpointLayout
from spark_jobs.lease import read_lease
from spark_jobs.status import read_status
from streamops import registry
from tests.conftest import ROOT, drop_file
from tests.dags.conftest import airflow_env, dags_test, run_state, running_stream
from tests.streamops.test_upgrades import WINDOW_MISSING_STATE

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow]

TEXTS = ["hello world\nhello spark\n", "spark streaming\n", "hello again\n", "last words\n"]


def wait_for_batch(checkpoint: Path, batch_id: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(str(checkpoint))
        if status is not None and status.last_batch and status.last_batch.batch_id >= batch_id:
            return
        assert time.monotonic() < deadline, f"no batch {batch_id} within {timeout:.0f} s"
        time.sleep(0.5)


def test_a_refused_upgrade_leaves_the_live_stream_and_a_restart_cuts_over_exactly(
    airflow_home: Path, tmp_path: Path
) -> None:
    # Given a word_count stream running under its DAG, two batches in
    stream_dir = tmp_path / "streams/word_count"
    checkpoint = stream_dir / "checkpoint"
    drop_file(stream_dir / "input", "0.txt", TEXTS[0])
    env = airflow_env(airflow_home, tmp_path)
    with running_stream("word_count_stream", checkpoint, env) as stream:
        drop_file(stream_dir / "input", "1.txt", TEXTS[1])
        wait_for_batch(checkpoint, 1)
        record = registry.load("word_count", str(tmp_path))
        assert record is not None
        status = read_status(str(checkpoint))
        assert status is not None
        assert status.spec_version == record.spec_version  # the driver names what it runs
        holder = read_lease(CheckpointLayout.of(str(checkpoint)).lease_file)
        assert holder is not None

        # When a window is asked for in mode restart (the CLI's dry run on the live checkpoint)
        refused = subprocess.run(
            [str(ROOT / "bin/streamops"), "upgrade", "word_count", "--set", "window=30 seconds",
             "--mode", "restart", "--dry-run"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

        # Then it is refused with Spark's reason, and the same driver goes on with its batches
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "upgrade of word_count (mode restart): refused" in refused.stdout
        assert WINDOW_MISSING_STATE in refused.stdout
        drop_file(stream_dir / "input", "2.txt", TEXTS[2])
        wait_for_batch(checkpoint, 2)
        still = read_lease(CheckpointLayout.of(str(checkpoint)).lease_file)
        assert still is not None
        assert (still.token, still.pid) == (holder.token, holder.pid)

        # When the trigger interval is changed, for real
        upgrade = dags_test(
            "stream_upgrade",
            {
                "stream": "word_count",
                "changes": {"trigger_interval": "2 seconds"},
                "dry_run": False,
            },
            env,
        )
        stream_output, _ = stream.communicate(timeout=240)

    # Then the stream stopped at a batch boundary, its checkpoint was snapshotted for the new
    # version, and the new spec's run was asked for
    output = upgrade.stdout + upgrade.stderr
    assert run_state(upgrade) == "success", output[-3000:]
    assert "upgrade of word_count (mode auto): restart" in output
    assert "stopped at a batch boundary, as requested" in stream_output
    assert "start_new_spec" in output
    (snapshot,) = SnapshotStore.of(CheckpointLayout.of(str(checkpoint))).all()
    assert snapshot.reason.startswith("upgrade to ")
    assert snapshot.last_sink_batch_id == 2
    new_version = snapshot.reason.removeprefix("upgrade to ")

    # And the new spec on the same checkpoint (run here as a bounded run: `airflow dags test`
    # runs no triggered run) goes on from the next batch: every word counted exactly once
    drop_file(stream_dir / "input", "3.txt", TEXTS[3])
    params = {**record.params, "trigger_interval": "2 seconds", "available_now": True}
    resumed = dags_test("word_count_stream", params, env)
    assert run_state(resumed) == "success", (resumed.stdout + resumed.stderr)[-3000:]
    sink = pd.read_parquet(stream_dir / "sink")
    assert sorted(sink.batch_id.unique()) == [0, 1, 2, 3]
    assert sink.groupby("word")["count"].sum().to_dict() == dict(Counter(" ".join(TEXTS).split()))
    after = registry.load("word_count", str(tmp_path))
    assert after is not None
    assert after.versions[0].version == record.spec_version
    assert len(after.versions) == 2  # the first spec, then the bounded run's
    assert new_version != record.spec_version
