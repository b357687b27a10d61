"""The embedded stack (`make demo` / `make stop`): real Airflow standalone, real streams.

`test_stack_starts_streams_and_stops_without_orphans` brings the whole stack up in a temporary
AIRFLOW_HOME and data root on free ports (about 2 min on 2 cores), checks the API, the
`spark_default` connection, the three streams' runs and sinks, lines typed into the socket
stream, a fourth stream of the same job started with `bin/streamops` and its exact sink, the
refusal of a duplicate stream name and of a duplicate checkpoint, the quality results of every
stream, the on-call surfaces (`tests/streamops/oncall_live.py`: Streams page in Chromium at
1,280 pixels, API auth, metrics, CLI, which stops one stream while the others go on), then stops
it and checks that no process and no active run of it is left. The other tests are quick checks
of the feeder and the environment.

Why it takes 3 to 4 minutes beside another test worker (233 s in the last CI run): the stack's
start alone (Airflow standalone's four processes, three driver JVMs, their first batches) takes
80 to 120 s on 2 cores, and every check above needs a running stack; each would otherwise pay
for a start of its own.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import AIRFLOW_STACK, ROOT, drop_file, read_sink
from tests.streamops.oncall_live import check_on_call_surfaces, cli, streams_by_name

# The demo's streams and their DAGs.
STREAMS = {
    "word_count": "word_count_stream",
    "running_total": "running_total_stream",
    "word_count_socket": "word_count_stream",
}


def load_script(name: str) -> ModuleType:
    """Import `scripts/<name>.py` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"scripts_{name}", ROOT / "scripts" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


stack = load_script("stack")
feeder = load_script("feeder")


# The standalone api-server (one worker, SQLite) has gone silent for over 30 s at a time on two
# busy cores, with four streams and sink_quality running: the workers' own calls to it were
# repeated too. A request waits as long as the server's worker timeout (120 s) before it fails.
API_TIMEOUT = 120


def run_stack(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`scripts/stack.py ARGS` as a user runs it; its output is echoed for the test report."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stack.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    print(f"$ stack.py {' '.join(args)}  -> exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def api_get(port: int, path: str, token: str | None = None) -> Any:
    """GET an Airflow REST path; its JSON."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=API_TIMEOUT) as response:
        return json.loads(response.read())


def api_post(port: int, path: str, body: object, token: str) -> Any:
    """POST to an Airflow REST path; its JSON."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=API_TIMEOUT) as response:
        return json.loads(response.read())


def sink_counts(data: Path, stream: str) -> dict[str, int]:
    """Each word's count summed over a word_count stream's sink."""
    frame = read_sink(data / "streams" / stream / "sink")
    if frame.empty:
        return {}
    return {str(k): int(v) for k, v in frame.groupby("word")["count"].sum().items()}


def task_log(home: Path, dag_id: str, run_id: str) -> str:
    """Every log file of a run's tasks (the task's and its trigger's), joined."""
    folder = home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    return "".join(p.read_text(errors="replace") for p in sorted(folder.rglob("*.log*")))


def refused(port: int, token: str, home: Path, conf: dict[str, Any], why: str) -> None:
    """A word_count_stream run with `conf` fails at once, saying `why` and naming the run that
    holds the stream (word_count_b's)."""
    run = api_post(
        port, "/api/v2/dags/word_count_stream/dagRuns", {"logical_date": None, "conf": conf}, token
    )
    path = f"/api/v2/dags/word_count_stream/dagRuns/{run['dag_run_id']}"
    state = wait_for(
        lambda: (s := api_get(port, path, token)["state"]) in ("failed", "success") and s,
        180,
        f"the run of {conf} to end",
    )
    log = task_log(home, "word_count_stream", run["dag_run_id"])
    assert state == "failed", log[-3000:]
    assert why in log, log[-3000:]
    assert "word_count_stream/word_count_b__" in log, log[-3000:]


def login(port: int, home: Path) -> str:
    """A token for the admin user, with the password standalone generated."""
    passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
    body = json.dumps({"username": "admin", "password": passwords["admin"]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/auth/token",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=API_TIMEOUT) as response:
        return str(json.loads(response.read())["access_token"])


def processes_of(home: Path) -> list[str]:
    """Live processes that belong to an AIRFLOW_HOME: by environment or working directory.

    Independent of `stack.stack_processes` on purpose. (Airflow's renamed processes hide their
    environment, but keep the working directory standalone started in.)
    """
    wanted = f"AIRFLOW_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if wanted in environ or cwd.is_relative_to(home):
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """Poll `check` until it returns something true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(2)
    pytest.fail(f"{what} within {timeout:.0f} s")


@pytest.mark.airflow
@pytest.mark.slow
@AIRFLOW_STACK
def test_stack_starts_streams_and_stops_without_orphans(tmp_path: Path) -> None:  # noqa: PLR0915
    home, data = tmp_path / "airflow", tmp_path / "data"
    port, socket_port = stack.free_port(), stack.free_port()
    where = ["--home", str(home), "--data-root", str(data), "--port", str(port)]
    timings: dict[str, float] = {}
    try:
        # When the stack starts
        t0 = time.monotonic()
        started = run_stack(
            "start",
            *where,
            "--feeder-interval",
            "2",
            "--socket-port",
            str(socket_port),
            timeout=900,
        )
        timings["start"] = time.monotonic() - t0
        assert started.returncode == 0, started.stderr[-4000:]
        # Then it printed how to reach and use it
        out = started.stdout
        assert f"http://localhost:{port}" in out
        assert re.search(r"login\s+admin / \S+", out)
        for hint in ("nc -lk 9999", f"nc localhost {socket_port}", "feeder.py --type", "mv "):
            assert hint in out
        # And the API answers, healthy
        health = api_get(port, "/api/v2/monitor/health")
        for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
            assert health[part]["status"] == "healthy", health
        # And each stream has a running run of its DAG, whose id names the stream
        token = login(port, home)
        password = json.loads(stack.Stack(home, data, port).password_file.read_text())["admin"]
        run_ids: dict[str, str] = {}
        for dag_id in set(STREAMS.values()):
            runs = api_get(port, f"/api/v2/dags/{dag_id}/dagRuns?state=running", token)
            for run in runs["dag_runs"]:
                run_ids[run["conf"]["stream"]] = run["dag_run_id"]
        assert set(run_ids) == set(STREAMS), run_ids
        for stream, run_id in run_ids.items():
            assert run_id.startswith(f"{stream}__"), run_ids
        # And spark_default resolves to local[2] for Airflow's own CLI in the stack's environment
        env = stack.stack_env(stack.Stack(home, data, port), 0, 0)
        env.pop(stack.MARKER)
        conn = subprocess.run(
            [str(stack.VENV_BIN / "airflow"), "connections", "get", "spark_default", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert conn.returncode == 0, conn.stderr[-2000:]
        assert json.loads(conn.stdout)[0]["host"] == "local[2]"
        assert json.loads(conn.stdout)[0]["conn_type"] == "spark"
        # And the fed text reaches every sink
        t1 = time.monotonic()
        for stream in STREAMS:
            sink = data / "streams" / stream / "sink"
            wait_for(lambda s=sink: list(s.glob("part-*.parquet")), 240, f"no sink file in {sink}")
        timings["sinks after start"] = time.monotonic() - t1
        # And lines typed into the socket are counted, each batch printed into the run's log
        with socket.create_connection(("127.0.0.1", socket_port), timeout=10) as typing:
            typing.sendall(b"zebra typed zebra\n")
        wait_for(
            lambda: sink_counts(data, "word_count_socket").get("zebra") == 2,
            120,
            "the typed words in word_count_socket's sink",
        )
        socket_log = task_log(home, "word_count_stream", run_ids["word_count_socket"])
        assert "driver: Time: " in socket_log, socket_log[-3000:]

        # When a fourth stream of the same job starts on an input of its own, with bin/streamops
        drop_file(data / "streams/word_count_b/input", "b1.txt", "alpha beta\nalpha\n")
        fourth = cli(port, password, "start", "word_count_b", "--dag", "word_count_stream")
        assert fourth.returncode == 0, fourth.stderr
        # Then it runs beside the others, and its sink holds exactly its input's counts
        wait_for(
            lambda: sink_counts(data, "word_count_b") == {"alpha": 2, "beta": 1},
            240,
            f"word_count_b's counts (has {sink_counts(data, 'word_count_b')})",
        )
        # And a run for a stream name another run holds is refused, naming that run (its own
        # checkpoint, so that the name, not the lease, refuses it)
        refused(
            port,
            token,
            home,
            {"stream": "word_count_b", "checkpoint": "streams/word_count_b2/checkpoint"},
            "is already run by word_count_stream/word_count_b__",
        )
        # And so is a stream on another stream's checkpoint, naming the driver that holds it
        refused(
            port,
            token,
            home,
            {"stream": "word_count_c", "checkpoint": "streams/word_count_b/checkpoint"},
            "is leased by stream word_count_b, pid ",
        )
        # And status reports both streams running, with the stack's memory
        status = run_stack("status", "-v", *where, timeout=120)
        assert status.returncode == 0
        for stream in STREAMS:
            assert re.search(rf"{stream}\s+running", status.stdout), status.stdout
        # And every stream's sink passed its quality checks (sink_quality, unpaused by the stack)
        t4 = time.monotonic()
        wait_for(
            lambda: all(
                (streams_by_name(port, token)[s].get("quality") or {}).get("success")
                for s in STREAMS
            ),
            600,
            "a passed quality check of every stream",
        )
        timings["quality results"] = time.monotonic() - t4
        rss = re.search(r"processes\s+(\d+), RSS (\d+) MiB summed \(PSS (\d+) MiB", status.stdout)
        assert rss, status.stdout
        print(f"stack memory: {rss[1]} processes, RSS {rss[2]} MiB, PSS {rss[3]} MiB")
        # And the on-call surfaces work on it: Streams page, API, metrics, CLI (stops word_count)
        t3 = time.monotonic()
        check_on_call_surfaces(port, token, password)
        timings["on-call surfaces"] = time.monotonic() - t3
        # And stopping word_count left the other streams of its job running: word_count_b
        # counts a new file
        drop_file(data / "streams/word_count_b/input", "b2.txt", "beta gamma\n")
        wait_for(
            lambda: sink_counts(data, "word_count_b") == {"alpha": 2, "beta": 2, "gamma": 1},
            120,
            f"word_count_b's new counts (has {sink_counts(data, 'word_count_b')})",
        )
        states = {name: s["state"] for name, s in streams_by_name(port, token).items()}
        assert states["word_count"] == "stopped", states
        for name in ("word_count_socket", "word_count_b", "running_total"):
            assert states[name] in ("running", "falling_behind"), states
        # When it stops
        t2 = time.monotonic()
        stopped = run_stack("stop", *where, timeout=300)
        timings["stop"] = time.monotonic() - t2
        # Then it says so, and no process of it is left
        assert stopped.returncode == 0, stopped.stderr
        assert re.search(r"stopped \d+ processes; none left", stopped.stdout)
        assert processes_of(home) == []
        assert stack.stack_processes(home) == []
        # And every stream ended at a batch boundary: its run succeeded; only the two refused
        # runs failed, and no run is left queued or running
        with sqlite3.connect(home / "airflow.db") as db:
            ended = db.execute(
                "SELECT run_id, state FROM dag_run WHERE dag_id LIKE '%_stream'"
            ).fetchall()
        states = collections.Counter(state for _, state in ended)
        assert states == {"success": 4, "failed": 2}, ended
    finally:
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
        if processes_of(home) or stack.stack_processes(home):
            run_stack("stop", "--now", *where, timeout=300)
        assert processes_of(home) == []


def test_stack_environment_configures_airflow_for_the_repository(tmp_path: Path) -> None:
    env = stack.stack_env(stack.Stack(tmp_path / "home", tmp_path / "data", 8123), 8793, 8794)
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(ROOT / "plugins")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "8"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__API__PORT"] == "8123"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"]) == {
        "conn_type": "spark",
        "host": "local[2]",
    }
    assert env["PATH"].split(os.pathsep)[0] == str(ROOT / ".venv" / "bin")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), str(ROOT / "plugins")]
    assert env["STREAMOPS_DATA_ROOT"] == str(tmp_path / "data")
    assert env[stack.MARKER] == str(tmp_path / "home")


def test_spark_default_connection_gives_master_local(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    env = stack.stack_env(stack.Stack(Path("/nonexistent"), Path("/nonexistent"), 8080), 0, 0)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", env["AIRFLOW_CONN_SPARK_DEFAULT"])
    hook = SparkSubmitHook(conn_id="spark_default")
    assert hook._connection["master"] == "local[2]"
    assert hook._build_spark_submit_command("app.py")[:3] == [
        "spark-submit",
        "--master",
        "local[2]",
    ]


def test_feeder_writes_the_same_finished_files_into_every_folder(tmp_path: Path) -> None:
    folders = [tmp_path / "a", tmp_path / "b"]
    argv = ["--interval", "0.01", "--files", "3", "--seed", "1", "--quiet"]
    for folder in folders:
        argv += ["--folder", str(folder)]
    assert feeder.main(argv) == 0
    names = [sorted(p.name for p in folder.iterdir()) for folder in folders]
    assert names[0] == names[1]
    assert len(names[0]) == 3
    assert not [n for n in names[0] if n.startswith(".")]  # nothing left under a hidden name
    for name in names[0]:
        text = (folders[0] / name).read_text()
        assert text == (folders[1] / name).read_text()
        assert text.splitlines()[0] in feeder.SEED_SENTENCES


def test_feeder_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        feeder.parse_args(["--interval", "0"])
    assert exited.value.code == 2
    assert "--interval: must be greater than 0" in capsys.readouterr().err


def test_feeder_socket_relays_lines_like_nc_lk(tmp_path: Path) -> None:
    port = stack.free_port()
    relay = feeder.LineRelay(port)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    try:
        # Given a reader (the socket stream) and a person typing, both connected
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as reader,
            socket.create_connection(("127.0.0.1", port), timeout=5) as typist,
        ):
            wait_for(lambda: len(relay.clients) == 2, 10, "both clients registered")
            # When the feeder sends a sample and the person types a line
            relay.send("hello spark\n")
            typist.sendall(b"typed words\n")
            # Then the reader gets both, and the typist only what it did not send itself
            got = b""
            while got.count(b"\n") < 2:
                got += reader.recv(1024)
            assert got.decode().splitlines() == ["hello spark", "typed words"]
            assert typist.recv(1024) == b"hello spark\n"
    finally:
        relay.shutdown()
        relay.server_close()


def test_feeder_type_says_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    assert feeder.main(["--type", "--socket-port", str(stack.free_port())]) == 1
    assert "nothing listens on 127.0.0.1:" in capsys.readouterr().err
