"""checkpoint_rotation on a real Airflow: rotate a live stream, which stops, rotates, restarts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from spark_jobs.checkpoints import SnapshotStore
from spark_jobs.layout import CheckpointLayout, Generation
from tests.conftest import drop_file
from tests.dags.conftest import airflow_env, dags_test, run_state, running_stream

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow]

TEXT = "hello world spark streaming\nhello spark\n"


def test_rotating_a_running_stream_stops_rotates_and_restarts_it(
    airflow_home: Path, tmp_path: Path
) -> None:
    # Given a running running_total stream that has processed input
    stream_dir = tmp_path / "streams/running_total"
    drop_file(stream_dir / "input", "1.txt", TEXT, mtime=1_700_000_001)
    env = airflow_env(airflow_home, tmp_path)
    with running_stream("running_total_stream", stream_dir / "checkpoint", env) as stream:
        # When the stream is rotated to 3 partitions
        rotation = dags_test(
            "checkpoint_rotation",
            {"stream": "running_total", "action": "rotate", "shuffle_partitions": 3},
            env,
        )
        stream_output, _ = stream.communicate(timeout=240)
    output = rotation.stdout + rotation.stderr
    # Then the stream stopped at a batch boundary, the rotation logged its sizes, and asked for a
    # restart with the Params the stream ran with
    assert "stopped at a batch boundary, as requested" in stream_output
    assert run_state(rotation) == "success", output[-3000:]
    assert "stream running_total: rotate: generation 1 starts at sink batch 1" in output
    assert "size " in output
    assert "-> " in output
    assert "restart_stream" in output
    layout = CheckpointLayout.of(str(stream_dir / "checkpoint"))
    generation = Generation.read(layout)
    assert generation is not None
    assert (generation.number, generation.first_sink_batch_id) == (1, 1)
    assert [s.reason for s in SnapshotStore.of(layout).all()] == ["rotation"]
    # And the restarted stream (run here as a bounded run) continues the totals exactly
    drop_file(stream_dir / "input", "2.txt", "hello spark\n", mtime=1_700_000_002)
    resumed = dags_test(
        "running_total_stream", {"available_now": True, "shuffle_partitions": 3}, env
    )
    assert run_state(resumed) == "success"
    totals = pd.read_parquet(stream_dir / "sink").sort_values("batch_id")
    assert sorted(totals.batch_id.unique()) == [0, 1]
    expected = Counter((TEXT + "hello spark\n").split())
    assert totals.groupby("word")["total"].last().to_dict() == dict(expected)
