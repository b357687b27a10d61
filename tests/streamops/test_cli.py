"""The on-call CLI without Airflow: `status --local`, exit codes, and errors that say what to do.

Against a live Airflow it runs in the stack test (`tests/streamops/oncall_live.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamops import cli
from streamops.cli import main, status_table
from tests.conftest import ROOT
from tests.streamops.test_overview import data_root, dead_pid

__all__ = ["data_root", "dead_pid"]  # fixtures, used by name


@pytest.fixture
def root(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMOPS_DATA_ROOT", str(data_root))
    return data_root


def test_status_local_lists_streams_and_exits_1_when_one_is_unhealthy(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fixture's files were written at a fixed past time: word_count's driver is alive but
    # silent for months (stalled); totals is stopped on purpose (healthy).
    code = main(["status", "--local"])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["STREAM", "STATE", "HEALTHY"]
    assert lines[1].split()[:3] == ["totals", "stopped", "yes"]
    assert lines[2].split()[:3] == ["word_count", "stalled", "NO"]
    assert "stream word_count: stalled" in out
    assert "quality check failed" in out


def test_status_of_a_healthy_stream_exits_0(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--local", "totals", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert [s["stream"] for s in view["streams"]] == ["totals"]


def test_status_of_an_unknown_stream_names_the_known_ones(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--local", "nope"]) == 2
    assert "known: totals, word_count" in capsys.readouterr().err


def test_unreachable_airflow_exits_3_and_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STREAMOPS_AIRFLOW_TOKEN", raising=False)
    monkeypatch.setenv("STREAMOPS_AIRFLOW_USERNAME", "admin")
    monkeypatch.setenv("STREAMOPS_AIRFLOW_PASSWORD", "secret")
    assert main(["--url", "http://127.0.0.1:9", "status"]) == 3
    err = capsys.readouterr().err
    assert "cannot reach Airflow at http://127.0.0.1:9" in err
    assert "--local" in err


def test_a_missing_login_says_which_variables_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("STREAMOPS_AIRFLOW_TOKEN", "STREAMOPS_AIRFLOW_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "STACK_PASSWORDS", tmp_path / "none.json")
    assert main(["--url", "http://127.0.0.1:9", "stop", "x"]) == 3
    assert "STREAMOPS_AIRFLOW_USERNAME" in capsys.readouterr().err


def test_bad_params_are_refused() -> None:
    with pytest.raises(cli.CliError, match="expected KEY=VALUE"):
        cli._parse_params(["nokey"])
    assert cli._parse_params(["shuffle_partitions=4", "trigger_interval=10 seconds"]) == {
        "shuffle_partitions": 4,
        "trigger_interval": "10 seconds",
    }


def test_an_empty_overview_says_how_to_start_a_stream() -> None:
    assert "trigger word_count_stream" in status_table({"streams": [], "problems": []})


def test_the_wrapper_script_runs_the_cli() -> None:
    import subprocess

    done = subprocess.run(
        [str(ROOT / "bin" / "streamops"), "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "exit codes" in done.stdout
