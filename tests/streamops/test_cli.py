"""The on-call CLI without Airflow: `status --local`, exit codes, and errors that say what to do.

Against a live Airflow it runs in the stack test (`tests/streamops/oncall_live.py`).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


def test_status_of_one_stream_names_the_spec_version_its_driver_runs(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamops import registry

    record = registry.load("totals", str(root))
    assert record is not None
    version = registry.SpecVersion.of("running_total", record.params, commit="abc")
    record.run_version(version)
    registry.save(record, str(root))
    main(["status", "--local", "totals"])
    out = capsys.readouterr().out
    assert f"stream totals: spec version {version.version} (code {version.code})" in out


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


class SlowApiServer(ThreadingHTTPServer):
    """An HTTP server with the few routes of Airflow's REST API that `trigger` and `wait_for_run`
    use, which answers its first `late[method]` requests of each method only after the client
    gave up on them (an api-server busy on a loaded machine). It does what each request asks all
    the same."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.late = {"GET": 0, "POST": 0}
        self.runs: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: SlowApiServer

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: object) -> None:
        self.server.requests.append(f"{self.command} {self.path} -> {status}")
        if self.server.late[self.command] > 0:
            self.server.late[self.command] -= 1
            time.sleep(1.5)  # past the client's timeout: the answer is lost
        raw = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except OSError:
            pass  # the client left

    def do_GET(self) -> None:
        if self.path in ("/api/v2/dags/stream_control", "/api/v2/dags/stream_upgrade"):
            self._answer(200, {"dag_id": self.path.rsplit("/", 1)[-1], "is_paused": False})
            return
        run_id = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
        if run_id in self.server.runs:
            self._answer(200, self.server.runs[run_id])
        else:
            self._answer(404, {"detail": "no such run"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        run_id = body["dag_run_id"]
        if run_id in self.server.runs:
            self._answer(409, {"detail": f"run {run_id} exists"})
            return
        self.server.runs[run_id] = {**body, "state": "success"}
        self._answer(200, self.server.runs[run_id])


@pytest.fixture
def slow_api() -> Iterator[SlowApiServer]:
    server = SlowApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(server: SlowApiServer, monkeypatch: pytest.MonkeyPatch) -> cli.Airflow:
    monkeypatch.setenv("STREAMOPS_AIRFLOW_TOKEN", "a-token")
    return cli.Airflow(f"http://127.0.0.1:{server.server_address[1]}", timeout=0.5)


def test_a_trigger_whose_answer_was_lost_is_repeated_without_making_a_second_run(
    slow_api: SlowApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an api-server that makes the run but answers too late, then answers in time
    client = _client(slow_api, monkeypatch)
    slow_api.late = {"GET": 1, "POST": 1}  # the DAG lookup, then the POST
    # When the CLI triggers a run
    run_id = client.trigger("stream_control", {"stream": "s", "action": "stop"}, "a note", "r1")
    # Then it got the run id, and the server holds exactly one run: the repeat found it
    assert run_id == "r1"
    assert list(slow_api.runs) == ["r1"]
    assert [r for r in slow_api.requests if r.startswith("POST")] == [
        "POST /api/v2/dags/stream_control/dagRuns -> 200",
        "POST /api/v2/dags/stream_control/dagRuns -> 409",
    ]


def test_a_run_id_taken_by_another_run_is_refused(
    slow_api: SlowApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run r1 that another trigger made, with another conf
    client = _client(slow_api, monkeypatch)
    slow_api.runs["r1"] = {"dag_run_id": "r1", "conf": {"stream": "other"}, "note": None}
    # When the CLI asks for a run with the same id, it is refused: never taken for its own
    with pytest.raises(cli.CliError, match="HTTP 409"):
        client.trigger("stream_control", {"stream": "s", "action": "stop"}, "a note", "r1")


def test_waiting_for_a_run_outlasts_a_late_answer(
    slow_api: SlowApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(slow_api, monkeypatch)
    slow_api.runs["r1"] = {"dag_run_id": "r1", "state": "success"}
    slow_api.late["GET"] = 1
    assert client.wait_for_run("stream_control", "r1", timeout=30) == "success"
    assert slow_api.requests[0].startswith("GET /api/v2/dags/stream_control/dagRuns/r1")
    assert len(slow_api.requests) == 2  # the late answer, then the one in time


def test_an_api_server_that_never_answers_in_time_is_reported_unreachable(
    slow_api: SlowApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = _client(slow_api, monkeypatch)
    slow_api.late["GET"] = 100
    started = time.monotonic()
    late = r"Airflow at http://127.0.0.1:\d+ did not answer within 0.5 s"
    with pytest.raises(cli.Unreachable, match=late):
        client.run_state("stream_control", "r1")
    assert len(slow_api.requests) == 1 + cli.RETRIES
    # And each repeat was announced, so a slow command says what it waits for
    said = capsys.readouterr().err
    assert said.count("no answer within 0.5 s from Airflow; trying again in") == cli.RETRIES, said
    assert time.monotonic() - started < 20


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


def test_an_upgrade_without_dry_run_is_a_stream_upgrade_run_with_the_changes(
    slow_api: SlowApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _client(slow_api, monkeypatch)
    url = f"http://127.0.0.1:{slow_api.server_address[1]}"
    argv = ["--url", url, "upgrade", "s", "--set", "trigger_interval=5 seconds", "--set",
            "shuffle_partitions=4", "--mode", "restart", "--wait"]  # fmt: skip
    assert main(argv) == 0
    (run,) = slow_api.runs.values()
    assert run["conf"] == {
        "stream": "s",
        "changes": {"trigger_interval": "5 seconds", "shuffle_partitions": 4},
        "mode": "restart",
        "dry_run": False,
    }
    assert "upgrade s: triggered stream_upgrade run" in capsys.readouterr().out
