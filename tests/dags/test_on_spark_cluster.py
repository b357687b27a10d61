"""The stream DAGs, unchanged, on a Spark standalone cluster instead of `local[2]`.

Only the `spark_default` connection changes: `spark://localhost:<port>`, client deploy mode (the
driver runs beside the Airflow task, the executors on the cluster's worker). The cluster is a
master and a worker started from the pyspark package (`scripts/spark_cluster.py`) on free ports;
about 1.5 to 2.5 min on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from spark_jobs.layout import CheckpointLayout
from spark_jobs.status import read_status
from tests.conftest import ROOT, drop_file
from tests.dags.conftest import airflow_env, dags_test, run_state, running_stream

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow, pytest.mark.integration]

FIRST = "hello world spark streaming\nhello spark\n"
SECOND = "spark on a cluster\nhello cluster\n"
STREAMS = {"word_count_stream": "word_count", "running_total_stream": "running_total"}


def load_spark_cluster() -> ModuleType:
    """`scripts/spark_cluster.py` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "scripts_spark_cluster", ROOT / "scripts" / "spark_cluster.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def wait_for_batch(checkpoint: Path, batch_id: int, timeout: float = 120) -> None:
    """Wait until the stream's status shows sink batch `batch_id` committed."""
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(str(checkpoint))
        if status is not None and status.last_batch and status.last_batch.batch_id >= batch_id:
            return
        assert time.monotonic() < deadline, f"{checkpoint}: batch {batch_id} never came"
        time.sleep(1)


def test_both_streams_run_on_a_standalone_cluster(airflow_home: Path, tmp_path: Path) -> None:
    spark_cluster = load_spark_cluster()
    data = tmp_path / "data"
    checkpoints = {s: data / f"streams/{s}/checkpoint" for s in STREAMS.values()}
    for stream in STREAMS.values():
        drop_file(data / f"streams/{stream}/input", "1.txt", FIRST)
    # Given a master and one 2-core worker that gives each application one core, so that both
    # streams get an executor at the same time
    # and serves each application's UI through its own (its reverse proxy)
    cluster = spark_cluster.SparkCluster(
        tmp_path / "cluster", workers=1, worker_cores=2, default_cores=1, reverse_proxy=True
    )
    with cluster:
        # And spark_default pointing at it; nothing else differs from the embedded stack
        env = airflow_env(
            airflow_home,
            data,
            AIRFLOW_CONN_SPARK_DEFAULT=json.dumps(cluster.connection("client")),
            SPARK_CONF_DIR=str(cluster.conf_dir),
        )
        # When both stream DAGs run and each is fed a second file while it runs
        with (
            running_stream("word_count_stream", checkpoints["word_count"], env) as word_count,
            running_stream("running_total_stream", checkpoints["running_total"], env) as total,
        ):
            state = cluster.state()
            assert state is not None
            running = {a["name"]: a for a in state["activeapps"]}
            for stream in STREAMS.values():
                drop_file(data / f"streams/{stream}/input", "2.txt", SECOND)
            for checkpoint in checkpoints.values():
                wait_for_batch(checkpoint, 1)
            # And each driver's UI is reached through the master, at the URL its status records
            for checkpoint in checkpoints.values():
                status = read_status(str(checkpoint))
                assert status is not None
                assert status.ui_url == f"{cluster.webui_url}/proxy/{status.app_id}", status
                assert status.streaming_ui_url is not None
                with urllib.request.urlopen(status.streaming_ui_url, timeout=30) as response:
                    page = response.read().decode()
                assert str(status.run_id) in page, page[:2000]
            # And are stopped: word_count through stream_control, running_total by the stop
            # request stream_control writes
            control = dags_test("stream_control", {"stream": "word_count", "action": "stop"}, env)
            assert run_state(control) == "success", control.stdout[-2000:]
            stop = CheckpointLayout.of(str(checkpoints["running_total"])).stop_request
            stop.write_text_atomic("stop\n")
            outputs = {
                "word_count": word_count.communicate(timeout=180)[0],
                "running_total": total.communicate(timeout=180)[0],
            }
        applications = {a["name"]: a for a in cluster.applications()}

    # Then both runs succeeded, stopped at a batch boundary
    for output in outputs.values():
        assert "stopped at a batch boundary, as requested" in output, output[-3000:]
        assert "state=success" in output, output[-3000:]
    # And both jobs ran as applications of the cluster, one core each, and have finished
    assert set(running) == {"streamops-word_count", "streamops-running_total"}
    assert {name: a["cores"] for name, a in running.items()} == {
        "streamops-word_count": 1, "streamops-running_total": 1,
    }  # fmt: skip
    assert {name: a["state"] for name, a in applications.items()} == {
        "streamops-word_count": "FINISHED", "streamops-running_total": "FINISHED",
    }  # fmt: skip
    # And the sinks hold exactly the counts of the two files
    counts = pd.read_parquet(data / "streams/word_count/sink")
    assert counts.groupby("word")["count"].sum().to_dict() == {
        "hello": 3, "world": 1, "spark": 3, "streaming": 1, "on": 1, "a": 1, "cluster": 2,
    }  # fmt: skip
    assert sorted(counts.batch_id.unique()) == [0, 1]
    totals = pd.read_parquet(data / "streams/running_total/sink")
    assert totals.loc[totals.batch_id == 0].set_index("word")["total"].to_dict() == {
        "hello": 2, "world": 1, "spark": 2, "streaming": 1,
    }  # fmt: skip
    assert totals.loc[totals.batch_id == 1].set_index("word")["total"].to_dict() == {
        "hello": 3, "spark": 3, "on": 1, "a": 1, "cluster": 2,
    }  # fmt: skip
    # And the cluster stopped with no process left (stop() raises otherwise), nor any driver
    assert cluster.leftovers() == []
    assert [p for p in Path("/proc").iterdir() if p.name.isdigit() and _mentions(p, tmp_path)] == []


def _mentions(proc: Path, folder: Path) -> bool:
    try:
        return str(folder) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return False
