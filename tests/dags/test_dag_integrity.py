"""Every DAG loads cleanly and follows the project's rules (run on the real DagBag)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.dags.conftest import airflow_env
from tests.dags.dag_report import MARKER

# One DagBag report serves every test here: they run on one worker of a parallel run.
pytestmark = [pytest.mark.airflow, pytest.mark.xdist_group("dag_integrity")]

APPROVED_TAGS = {"streaming", "spark", "operations", "monitoring", "quality", "checkpoints"}
DAG_FILES = sorted(p.stem for p in (ROOT / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def report(airflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests/dags/dag_report.py")],
        env=airflow_env(airflow_home, tmp_path_factory.mktemp("data")),
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith(MARKER))
    return dict(json.loads(line[len(MARKER) :]))


def test_no_import_errors(report: dict[str, Any]) -> None:
    assert report["import_errors"] == {}


def test_one_dag_per_file_named_after_it(report: dict[str, Any]) -> None:
    assert sorted(report["dags"]) == DAG_FILES
    for dag_id, dag in report["dags"].items():
        assert dag["fileloc"] == dag_id


def test_no_heavy_imports_at_parse_time(report: dict[str, Any]) -> None:
    assert report["heavy_imports"] == []


def test_no_connection_or_variable_read_at_parse_time(report: dict[str, Any]) -> None:
    assert report["secret_reads"] == []


@pytest.mark.parametrize("dag_id", DAG_FILES)
def test_dag_follows_the_rules(report: dict[str, Any], dag_id: str) -> None:
    dag = report["dags"][dag_id]
    assert dag["owners"] == ["data-platform"]
    assert len(dag["retries"]) == 1
    assert dag["tags"]
    assert set(dag["tags"]) <= APPROVED_TAGS
    assert dag["doc_md"].strip().startswith(f"### {dag_id}")
    assert dag["catchup"] is False
    source = (ROOT / "dags" / f"{dag_id}.py").read_text()
    assert "schedule=" in source, "set the schedule explicitly, None included"
    assert source.rstrip().endswith("dag.test()"), (
        "end with `if __name__ == '__main__': dag.test()`"
    )


@pytest.mark.parametrize("dag_id", ["word_count_stream", "running_total_stream"])
def test_stream_dags_have_typed_params(report: dict[str, Any], dag_id: str) -> None:
    params = report["dags"][dag_id]["params"]
    assert {"stream", "source", "input", "sink", "checkpoint", "trigger_interval"} <= set(params)
    assert {"max_files_per_trigger", "shuffle_partitions"} <= set(params)
    assert params["source"]["enum"] == ["file", "socket", "rate", "kafka"]
    assert params["shuffle_partitions"]["minimum"] == 1
    assert {"kafka_topic", "kafka_topic_pattern", "kafka_starting_offsets"} <= set(params)
    assert {"max_offsets_per_trigger", "kafka_bootstrap_servers", "kafka_connection"} <= set(params)
    # No Param takes a client setting: a secret is never typed into the trigger form
    assert not [name for name in params if "option" in name or "password" in name]
    if dag_id == "word_count_stream":
        assert {"window", "slide"} <= set(params)
