"""The embedded stack: Airflow standalone running three streams, fed with sample text.

    make demo     # .venv/bin/python scripts/stack.py start
    make status   # .venv/bin/python scripts/stack.py status
    make stop     # .venv/bin/python scripts/stack.py stop

`start` brings up `airflow standalone` (SQLite, LocalExecutor, a small `parallelism`) with this
repository's DAGs and plugins and the `spark_default` connection (Spark `local[2]`), unpauses
every DAG, starts `scripts/feeder.py` (sample files, and the seed's `nc -lk 9999` socket), then
triggers three streams: `word_count` and `running_total` on files, and `word_count_socket` on the
socket with console output in its task log. It waits for each stream's first micro-batch and
prints the UI URL, the login and how to feed your own text.

`stop` asks running streams to stop at a batch boundary (their DAG runs then succeed, and
queued ones are marked failed, so the next `start` begins clean), then
terminates every process the stack started, including those that left its process group (task
processes, spark-submit, Spark drivers): each carries `STREAMOPS_STACK_HOME=<home>` in its
environment, which a scan of /proc finds. It ends with "stopped N processes; none left".

`status` says whether the stack runs, its URL, its memory and each stream's state and last batch.

Everything lives in `--home` (default `<repo>/.airflow`): `airflow.cfg`, the SQLite database, the
logs, `standalone.log`, `feeder.log`, the admin password and `stack.json` (pids). Streams read
and write under `--data-root` (default `$STREAMOPS_DATA_ROOT` or `<repo>/data`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from spark_jobs.java_runtime import java_home  # noqa: E402
from spark_jobs.layout import CheckpointLayout  # noqa: E402
from spark_jobs.status import StreamStatus, read_status  # noqa: E402
from streamops.cli import request_json  # noqa: E402
from streamops.config import stream_run_id  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
DEFAULT_HOME = ROOT / ".airflow"
DEFAULT_PORT = 8080
# Every process the stack starts inherits this variable; `stop` finds leftovers by it.
MARKER = "STREAMOPS_STACK_HOME"
# How long `stop` waits after SIGTERM before it sends SIGKILL.
TERM_SECONDS = 30.0
# How long `stop` waits for the scheduler to end a stream's run once its task process is gone.
RUN_END_SECONDS = 15.0

# The seed's `nc -lk 9999` port, served by the feeder for the socket stream (`--socket-port`).
SOCKET_PORT = 9999
# `make demo KAFKA=1`: a broker (scripts/kafka.py) on this port or the next free one, and the
# topic the feeder writes the sample lines to.
KAFKA_PORT = 9092
KAFKA_TOPIC = "lines"
KAFKA_PARTITIONS = 3


@dataclass(frozen=True)
class DemoStream:
    """A stream `start` runs: its DAG, its name, and its Params beyond the defaults."""

    dag_id: str
    stream: str
    conf: tuple[tuple[str, object], ...] = ()

    @property
    def source(self) -> str:
        return str(dict(self.conf).get("source", "file"))


def demo_streams(socket_port: int = SOCKET_PORT, kafka: bool = False) -> tuple[DemoStream, ...]:
    """The streams `start` runs: two file streams, and the seed's socket stream; with `kafka`
    (`make demo KAFKA=1`) a third word_count, on the topic `lines` of a local broker.

    The file streams take a micro-batch every 5 s, the feeder's pace: three streams at the seed's
    1 s beside Airflow keep 2 cores busy. The socket stream keeps the seed's 1 s. The Kafka
    stream names only its topic: its brokers come from the `kafka_default` connection.
    """
    every_5s = (("trigger_interval", "5 seconds"),)
    streams: tuple[DemoStream, ...] = (
        DemoStream("word_count_stream", "word_count", every_5s),
        DemoStream("running_total_stream", "running_total", every_5s),
        DemoStream(
            "word_count_stream",
            "word_count_socket",
            (("source", "socket"), ("socket_port", socket_port), ("console", True)),
        ),
    )
    if kafka:
        kafka_conf = (("source", "kafka"), ("kafka_topic", KAFKA_TOPIC), *every_5s)
        streams += (DemoStream("word_count_stream", "word_count_kafka", kafka_conf),)
    return streams


STREAM_DAGS = tuple(dict.fromkeys(s.dag_id for s in demo_streams()))
# Unpaused once parsed: the health check (every minute); stream_control, which runs only when
# triggered (the UI, or `bin/streamops stop`; a paused DAG's runs would never start); the quality
# checks (every 10 minutes and on new sink files), the daily checkpoint rotation and the hourly
# sink compaction.
CONTROL_DAGS = (
    "stream_health",
    "stream_control",
    "sink_quality",
    "checkpoint_rotation",
    "sink_compaction",
)

T = TypeVar("T")


class StackError(Exception):
    """The stack cannot do what was asked; the message says why and what to do."""


def say(text: str) -> None:
    """A progress line."""
    print(f"==> {text}", flush=True)


def note(text: str) -> None:
    """A detail under a progress line."""
    print(f"    {text}", flush=True)


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Stack:
    """Where one stack lives and how it is reached."""

    home: Path
    data_root: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def state_file(self) -> Path:
        """Pids, ports and start time of the running stack."""
        return self.home / "stack.json"

    @property
    def log_file(self) -> Path:
        """`airflow standalone`'s output (every Airflow component's, prefixed with its name)."""
        return self.home / "standalone.log"

    @property
    def feeder_log(self) -> Path:
        """The sample-text feeder's output."""
        return self.home / "feeder.log"

    @property
    def kafka_dir(self) -> Path:
        """The Kafka broker's folder (`make demo KAFKA=1`): its config, data, log and pid."""
        return self.home / "kafka"

    @property
    def password_file(self) -> Path:
        """The admin password the simple auth manager generated."""
        return self.home / "simple_auth_manager_passwords.json.generated"

    @property
    def api_url(self) -> str:
        """The API server as this script calls it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        """The UI as a browser on this machine opens it."""
        return f"http://localhost:{self.port}"

    def checkpoint(self, stream: str) -> Path:
        """A stream's checkpoint under the default layout of `streamops.config`."""
        return self.data_root / "streams" / stream / "checkpoint"

    def input_folder(self, stream: str) -> Path:
        """A stream's file-source input folder under the default layout."""
        return self.data_root / "streams" / stream / "input"

    def sink(self, stream: str) -> Path:
        """A stream's sink folder under the default layout."""
        return self.data_root / "streams" / stream / "sink"


def start_kafka(stack: Stack) -> str:
    """Start the demo's broker (a new folder gets the first free port from KAFKA_PORT) and make
    sure the topic exists; return the bootstrap address."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    from scripts import kafka

    new = not (stack.kafka_dir / "server.properties").exists()
    try:
        bootstrap = str(kafka.start(stack.kafka_dir, pick_port(KAFKA_PORT) if new else None))
    except kafka.BrokerError as err:
        raise StackError(f"the Kafka broker did not start: {err}") from err
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if KAFKA_TOPIC not in admin.list_topics(timeout=30).topics:
        for future in admin.create_topics([NewTopic(KAFKA_TOPIC, KAFKA_PARTITIONS, 1)]).values():
            future.result(timeout=30)
    return bootstrap


def stop_kafka(stack: Stack) -> None:
    """Stop the demo's broker if it runs (by its pid file's process group)."""
    from scripts import kafka

    if (stack.kafka_dir / "kafka.pid").exists() and kafka.stop(stack.kafka_dir):
        note(f"stopped the Kafka broker ({stack.kafka_dir})")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on `port` (so Airflow can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pick_port(preferred: int) -> int:
    """`preferred` when it is free, else any free port (for the log servers of a second stack)."""
    return preferred if port_is_free(preferred, "0.0.0.0") else free_port()


def stack_env(stack: Stack, worker_log_port: int, trigger_log_port: int) -> dict[str, str]:
    """The environment of every process the stack starts."""
    env = dict(os.environ)
    # A user's own Airflow settings must not leak in: the stack's config file lives in its home.
    env.pop("AIRFLOW_CONFIG", None)
    env.update(
        {
            MARKER: str(stack.home),
            "AIRFLOW_HOME": str(stack.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # LocalExecutor forks `parallelism` worker processes up front (about 2 GB of RSS
            # with the default 32), and each running task holds one worker. A running stream's
            # task is deferred and holds none, so 8 covers streams starting, stream_health, a
            # quality check and stream_control runs, with room to spare, on 2 cores.
            "AIRFLOW__CORE__PARALLELISM": "8",
            # SQLite waits up to 60 s for its write lock instead of 5 (`streamops/embedded.py`)
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "streamops.embedded.SQLITE_CONNECT_ARGS",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": (
                "streamops.embedded.SQLITE_CONNECT_ARGS_ASYNC"
            ),
            # A task that was running when all of Airflow died (a stream task starting its
            # driver, before it defers) is reset and run again once the scheduler finds the old
            # scheduler dead: at its next orphan check (default every 300 s).
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "60",
            # How often the DAG folder is listed for new or deleted files (default 300 s).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__API__HOST": stack.host,
            "AIRFLOW__API__PORT": str(stack.port),
            # Task processes report to the API server; its default URL assumes port 8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{stack.api_url}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
            # Master `local[2]`: SparkSubmitHook takes a `spark` connection's host as the master
            # when it has no port (`_resolve_connection`).
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
            # `airflow standalone` starts its parts as `airflow ...` from PATH, and the provider
            # runs `spark-submit` from PATH: both are in the virtual env.
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
            "PYSPARK_PYTHON": str(VENV_BIN / "python"),
            "STREAMOPS_DATA_ROOT": str(stack.data_root),
        }
    )
    if home := java_home():
        env["JAVA_HOME"] = home
    return env


# --------------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True)
class Proc:
    """A process as /proc shows it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    cmdline: str
    comm: str

    @property
    def label(self) -> str:
        """A short name for reports: `airflow scheduler`, `Spark driver JVM`, `feeder`, ..."""
        words = self.cmdline.split()
        if not words:
            return self.comm
        if "feeder.py" in self.cmdline:
            return "feeder"
        if Path(words[0]).name == "java":
            return "Spark driver JVM (spark-submit)"
        if "spark_jobs/" in self.cmdline and len(words) > 1:
            return f"Spark job python ({Path(words[1]).stem})"
        if words[0] == "airflow" and len(words) > 1:  # a title set with setproctitle
            if words[1] == "worker":
                executor = "LocalExecutor" in self.cmdline
                return "airflow executor worker" if executor else "airflow task process"
            return f"airflow {words[1]}"
        for i, word in enumerate(words[:-1]):
            if Path(word).name == "airflow":
                return f"airflow {words[i + 1]}"
        return Path(words[0]).name


def read_proc(pid: int) -> Proc | None:
    """The process `pid`, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) is in parentheses and may contain spaces: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    cmdline = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0], cmdline, comm)


def is_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count: it only waits to be reaped)."""
    proc = read_proc(pid)
    return proc is not None and proc.state not in ("Z", "X")


def own_lineage() -> set[int]:
    """This process and its ancestors: never signalled, whatever their environment says."""
    pids: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        proc = read_proc(pid)
        if proc is None:
            break
        pid = proc.ppid
    return pids


def _marked(pid: int, marker: bytes, home: Path) -> bool:
    """Whether the process carries the stack's marker, or is a python/java working in `home`.

    The environment alone is not enough: Airflow renames its workers and task processes with
    setproctitle, which overwrites the memory /proc/<pid>/environ shows.
    """
    try:
        if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return True
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        exe = Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return False
    return cwd.is_relative_to(home) and (exe.startswith("python") or exe == "java")


def stack_processes(home: Path) -> list[Proc]:
    """Every live process the stack in `home` started, wherever it was reparented.

    Three marks, any of which is enough: `STREAMOPS_STACK_HOME=<home>` in the environment; a
    python or java process whose working directory is in `home` (Airflow's components and tasks
    inherit standalone's); and the session of a marked process (every process the stack starts
    begins a session, and Airflow's task processes and spark-submit keep it: they only change
    their process group). A session id is not reused while any process of it lives.
    """
    marker = f"{MARKER}={home}".encode()
    skip = own_lineage()
    procs = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in skip:
            proc = read_proc(int(entry.name))
            if proc is not None and proc.state not in ("Z", "X"):
                procs.append(proc)
    own_sessions = {p.sid for p in (read_proc(pid) for pid in skip) if p is not None}
    marked = {p.pid for p in procs if _marked(p.pid, marker, home)}
    wanted = {p.sid for p in procs if p.pid in marked} - own_sessions - {0}
    return sorted((p for p in procs if p.pid in marked or p.sid in wanted), key=lambda p: p.pid)


def memory_kib(pids: Iterable[int]) -> tuple[int, int]:
    """Summed RSS and PSS (shared pages divided among their users) of `pids`, in KiB."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, value = line.partition(":")
                if name == "Rss":
                    rss += int(value.split()[0])
                elif name == "Pss":
                    pss += int(value.split()[0])
    return rss, pss


def signal_all(procs: Iterable[Proc], signum: int) -> None:
    """Send `signum` to each process that still runs."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.5) -> T | None:
    """Call `check` until it returns something true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, indented, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"    ({path} does not exist)"
    return "\n".join(f"    | {line}" for line in text)


# --------------------------------------------------------------------------------------------
# State file


def load_state(stack: Stack) -> dict[str, Any] | None:
    """The running stack's `stack.json`, or None."""
    try:
        data: dict[str, Any] = json.loads(stack.state_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data


def save_state(stack: Stack, state: dict[str, Any]) -> None:
    """Write `stack.json` atomically."""
    tmp = stack.state_file.with_name(".stack.json.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(stack.state_file)


# --------------------------------------------------------------------------------------------
# Airflow's REST API


class Api:
    """A small client of Airflow 3's public REST API (`/api/v2`), logged in as the admin."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._token: str | None = None

    def _call(
        self, method: str, path: str, body: object = None, token: str | None = None
    ) -> tuple[int, Any]:
        return request_json(method, f"{self.stack.api_url}{path}", body, token)

    def health(self) -> dict[str, Any] | None:
        """`/api/v2/monitor/health` (no login needed), or None while the server is not up."""
        try:
            status, body = self._call("GET", "/api/v2/monitor/health")
        except (OSError, ValueError):
            return None
        return body if status == 200 and isinstance(body, dict) else None

    def login(self) -> None:
        """Get a token for the admin user with the generated password."""
        password = admin_password(self.stack)
        if password is None:
            raise StackError(
                f"no admin password in {self.stack.password_file}; see {self.stack.log_file}"
            )
        status, body = self._call(
            "POST", "/auth/token", {"username": "admin", "password": password}
        )
        if status not in (200, 201) or not isinstance(body, dict):
            raise StackError(f"login as admin failed (HTTP {status}: {body})")
        self._token = str(body["access_token"])

    def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """An authenticated call; logs in (again) when needed."""
        if self._token is None:
            self.login()
        status, answer = self._call(method, path, body, self._token)
        if status == 401:
            self.login()
            status, answer = self._call(method, path, body, self._token)
        return status, answer

    def ok(self, method: str, path: str, body: object = None) -> Any:
        """An authenticated call that must succeed; its JSON answer."""
        status, answer = self.call(method, path, body)
        if status >= 300:
            raise StackError(f"{method} {path} failed with HTTP {status}: {answer}")
        return answer


def admin_password(stack: Stack) -> str | None:
    """The generated admin password, or None before standalone wrote it."""
    try:
        passwords = json.loads(stack.password_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    password = passwords.get("admin") if isinstance(passwords, dict) else None
    return str(password) if password else None


# --------------------------------------------------------------------------------------------
# start


def check_not_running(stack: Stack) -> None:
    """Refuse to start a second stack in the same home, or on a taken port."""
    leftovers = stack_processes(stack.home)
    if leftovers:
        state = load_state(stack) or {}
        where = f" (UI {state['url']})" if state.get("url") else ""
        raise StackError(
            f"a stack in {stack.home} already runs{where}: {len(leftovers)} processes, e.g. pid "
            f"{leftovers[0].pid} ({leftovers[0].label}). See it with `make status`; stop it with "
            "`make stop` (or scripts/stack.py stop --home ...) before starting again."
        )
    if not port_is_free(stack.port, stack.host):
        raise StackError(
            f"port {stack.port} is in use by another program (another Airflow?). Stop it, or "
            "choose another port: scripts/stack.py start --port 8081"
        )


def start_standalone(stack: Stack, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`airflow standalone` in a new session (its own process group), output to its log."""
    airflow = VENV_BIN / "airflow"
    if not airflow.exists():
        raise StackError(f"{airflow} is missing: set up the virtual env first (`make demo` does)")
    with stack.log_file.open("ab") as log:
        log.write(f"\n===== stack.py start {datetime.now(UTC).isoformat()} =====\n".encode())
        log.flush()
        return subprocess.Popen(
            [str(airflow), "standalone"],
            cwd=stack.home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_api(
    stack: Stack, api: Api, standalone: subprocess.Popen[bytes], timeout: float
) -> None:
    """Wait until the API server answers and the scheduler and DAG processor are healthy."""
    started = time.monotonic()
    last_report = started
    while True:
        health = api.health()
        parts = {}
        if health:
            parts = {k: str(v.get("status")) for k, v in health.items() if isinstance(v, dict)}
            wanted = ("metadatabase", "scheduler", "dag_processor")
            if all(parts.get(name) == "healthy" for name in wanted) and admin_password(stack):
                return
        if standalone.poll() is not None:
            raise StackError(
                f"airflow standalone exited with code {standalone.returncode} while starting. "
                f"The end of {stack.log_file}:\n{log_tail(stack.log_file)}"
            )
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise StackError(
                f"Airflow did not become healthy within {timeout:.0f} s (health: "
                f"{parts or 'API server not answering'}). The end of {stack.log_file}:\n"
                f"{log_tail(stack.log_file)}\nA slow machine may need --timeout {2 * timeout:.0f}."
            )
        if time.monotonic() - last_report >= 15:
            last_report = time.monotonic()
            waiting = ", ".join(f"{k} {v}" for k, v in parts.items()) or "API server not up yet"
            note(f"{elapsed:.0f} s: {waiting}")
        time.sleep(1)


def import_errors(api: Api) -> list[dict[str, Any]]:
    """The DAG files that failed to import, as the API lists them."""
    answer = api.ok("GET", "/api/v2/importErrors?limit=100")
    return list(answer.get("import_errors", []))


def wait_for_dags(api: Api, dag_ids: Iterable[str], timeout: float) -> None:
    """Wait until every DAG in `dag_ids` is parsed; fail on an import error in one of them."""
    missing = list(dag_ids)
    started = time.monotonic()
    last_report = started
    while True:
        missing = [d for d in missing if api.call("GET", f"/api/v2/dags/{d}")[0] != 200]
        errors = import_errors(api)
        ours = [e for e in errors if any(d in str(e.get("filename")) for d in missing)]
        if ours or (not missing and errors):
            for error in errors:
                print(f"\nimport error in {error.get('filename')}:", file=sys.stderr)
                print(str(error.get("stack_trace", "")).rstrip(), file=sys.stderr)
        if ours:
            raise StackError(
                "the stream DAGs do not import (errors above); fix them, then start again"
            )
        if not missing:
            if errors:
                note(f"warning: {len(errors)} other DAG file(s) do not import (errors above)")
            return
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise StackError(
                f"DAGs {', '.join(missing)} did not appear within {timeout:.0f} s; see the "
                f"dag-processor lines in {api.stack.log_file}"
            )
        if time.monotonic() - last_report >= 15:
            last_report = time.monotonic()
            note(f"{elapsed:.0f} s: waiting for {', '.join(missing)}")
        time.sleep(2)


def unpause(api: Api, dag_id: str) -> None:
    """Unpause a DAG."""
    api.ok("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})


@dataclass(frozen=True)
class StreamRun:
    """A stream DAG's run that `start` waits for."""

    dag_id: str
    run_id: str
    stream: str
    source: str
    resumed: bool


def active_runs(api: Api, dag_id: str) -> dict[str, StreamRun]:
    """The runs a stack that was killed (not stopped) left running or queued, by stream.

    Their stream tasks are deferred, so the new stack's triggerer watches their drivers again, or
    restarts them from the checkpoint if they died with the old stack: those runs carry on.
    (Triggering another would be refused: the active run holds the stream's name, and its
    driver the checkpoint's lease.)
    """
    answer = api.ok(
        "GET", f"/api/v2/dags/{dag_id}/dagRuns?state=running&state=queued&order_by=run_after"
    )
    found: dict[str, StreamRun] = {}
    for run in answer.get("dag_runs", []):
        conf = run.get("conf") or {}
        stream = str(conf.get("stream") or dag_id.removesuffix("_stream"))
        if stream in found and run.get("state") != "running":
            continue
        found[stream] = StreamRun(
            dag_id=dag_id,
            run_id=str(run["dag_run_id"]),
            stream=stream,
            source=str(conf.get("source") or "file"),
            resumed=True,
        )
    return found


def trigger(api: Api, demo: DemoStream) -> StreamRun:
    """Trigger a demo stream's run, named after the stream."""
    answer = api.ok(
        "POST",
        f"/api/v2/dags/{demo.dag_id}/dagRuns",
        {
            "dag_run_id": stream_run_id(demo.stream),
            "logical_date": None,
            "conf": {"stream": demo.stream, **dict(demo.conf)},
            "note": f"stream {demo.stream}, started by scripts/stack.py",
        },
    )
    return StreamRun(demo.dag_id, str(answer["dag_run_id"]), demo.stream, demo.source, False)


def task_log_tail(stack: Stack, dag_id: str, run_id: str) -> str:
    """The end of the stream task's log of a run, for error messages."""
    logs = sorted((stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}").rglob("*.log"))
    if not logs:
        return f"    (no task log yet under {stack.home / 'logs'})"
    return f"    {logs[-1]}:\n{log_tail(logs[-1], 30)}"


def parse_time(text: str) -> datetime:
    """An ISO-8601 time (as status files and Spark write them) as an aware datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def wait_for_streams(
    stack: Stack, api: Api, runs: list[StreamRun], since: datetime, timeout: float
) -> None:
    """Wait until each stream runs: its query is up and, with the file source, a batch is done."""
    pending = list(runs)
    started = time.monotonic()
    last_report = started
    while pending:
        for run in list(pending):
            answer = api.ok("GET", f"/api/v2/dags/{run.dag_id}/dagRuns/{run.run_id}")
            if answer.get("state") in ("failed", "success"):
                raise StackError(
                    f"{run.dag_id} run {run.run_id} ended ({answer['state']}) instead of running "
                    f"the stream. The task log:\n{task_log_tail(stack, run.dag_id, run.run_id)}"
                )
            status = read_status(str(stack.checkpoint(run.stream)))
            if status is None or parse_time(status.started_at) < since:
                continue
            if status.state == "failed":
                raise StackError(
                    f"stream {run.stream} failed: {status.exception}\nThe task log:\n"
                    f"{task_log_tail(stack, run.dag_id, run.run_id)}"
                )
            batch = status.last_batch
            if status.state == "running" and (batch is not None or run.source != "file"):
                done = f"batch {batch.batch_id} read {batch.input_rows} lines" if batch else "up"
                note(f"{run.stream}: running, {done}")
                pending.remove(run)
        elapsed = time.monotonic() - started
        names = ", ".join(run.stream for run in pending)
        if pending and elapsed > timeout:
            details = "\n".join(task_log_tail(stack, r.dag_id, r.run_id) for r in pending)
            raise StackError(
                f"{names} did not run a micro-batch within {timeout:.0f} s. "
                f"The end of the task log:\n{details}"
            )
        if pending and time.monotonic() - last_report >= 15:
            last_report = time.monotonic()
            note(f"{elapsed:.0f} s: waiting for {names}")
        if pending:
            time.sleep(2)


def start_feeder(
    stack: Stack,
    env: dict[str, str],
    interval: float,
    socket_port: int,
    kafka_bootstrap: str | None = None,
) -> subprocess.Popen[bytes]:
    """`scripts/feeder.py` in its own session: the file streams' input folders, the socket, and
    the Kafka topic when there is a broker."""
    command = [str(VENV_BIN / "python"), str(ROOT / "scripts" / "feeder.py")]
    command += ["--interval", f"{interval:g}", "--socket-port", str(socket_port)]
    if kafka_bootstrap:
        command += ["--kafka-bootstrap-servers", kafka_bootstrap, "--kafka-topic", KAFKA_TOPIC]
    for demo in demo_streams(socket_port):
        if demo.source == "file":
            command += ["--folder", str(stack.input_folder(demo.stream))]
    with stack.feeder_log.open("ab") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def print_banner(  # noqa: PLR0917  (what the banner reports)
    stack: Stack,
    runs: list[StreamRun],
    interval: float,
    took: float,
    socket_port: int,
    kafka_bootstrap: str | None = None,
) -> None:
    """What is running, where, and how to use it."""
    password = admin_password(stack) or f"(see {stack.password_file})"
    wc_input = stack.input_folder("word_count")
    rt_input = stack.input_folder("running_total")
    socket_logs = stack.home / "logs" / "dag_id=word_count_stream"
    print(
        f"""
==> the stack is up ({took:.0f} s)

  Airflow UI    {stack.ui_url}
  Streams page  {stack.ui_url}/plugin/streams   (Browse > Streams: states, rates, quality, alerts)
  login         admin / {password}
                (generated; kept in {stack.password_file})
  streams       {", ".join(f"{r.stream} ({r.dag_id})" for r in runs)}
  also running  stream_health (every minute), sink_quality (on new sink files, and every
                10 min: Data Docs linked from the Streams page), checkpoint_rotation (daily),
                sink_compaction (hourly)
  data          {stack.data_root}/streams/<stream>/input, sink (Parquet), checkpoint
  sample text   scripts/feeder.py adds a file every {interval:g} s to the file streams' input
                folders, and sends the same lines to 127.0.0.1:{socket_port}
  logs          {stack.log_file}, {stack.feeder_log},
                task logs in {stack.home / "logs"}

Type into the socket stream (the seed's `nc -lk 9999` workflow)
  nc localhost {socket_port}          (or, without nc: .venv/bin/python scripts/feeder.py --type)
  then type lines: word_count_socket counts them in its next micro-batch, and prints each batch
  (`Time: ...`, then its words) into its task log: Airflow UI > word_count_stream > run
  word_count_socket__... > run_stream > Logs, or under {socket_logs}.

{kafka_part(kafka_bootstrap)}Feed your own files
  Both file streams read every new file in their input folder, once. Write the file under a
  hidden name (Spark skips names starting with '.'), then mv it into place:
      printf 'hello spark\\nhello world\\n' > {wc_input}/.mine.txt
      mv {wc_input}/.mine.txt {wc_input}/mine.txt
  running_total reads {rt_input}: put a copy there too.

More streams: trigger word_count_stream or running_total_stream with a new stream name (up to
32 per job at once), or `bin/streamops start NAME --dag word_count_stream --param source=file`.

  on call bin/streamops status   (exit 0 when every stream is healthy; docs/runbook.md)
          bin/streamops stop word_count --wait, start word_count, restart, rotate, ...
  status  make status          (scripts/stack.py status)
  stop    make stop            (stops every stream and every process this started)
""",
        flush=True,
    )


def kafka_part(bootstrap: str | None) -> str:
    """The banner's lines on the Kafka stream (`make demo KAFKA=1`), or none."""
    if not bootstrap:
        return ""
    return f"""Type into the Kafka topic (stream word_count_kafka, topic {KAFKA_TOPIC})
  .venv/bin/python scripts/feeder.py --type --kafka-bootstrap-servers {bootstrap}
  then type lines: each is one record of {KAFKA_TOPIC} ({KAFKA_PARTITIONS} partitions), counted in
  word_count_kafka's next micro-batch. The broker is Apache Kafka (scripts/kafka.py) on
  {bootstrap}; the stream's brokers come from the Airflow connection kafka_default.

"""


def start_streams(api: Api, socket_port: int, kafka: bool = False) -> list[StreamRun]:
    """Unpause every DAG; trigger each demo stream, or carry on with its run if still active."""
    for dag_id in (*CONTROL_DAGS, *STREAM_DAGS):
        unpause(api, dag_id)
    say(f"unpaused {', '.join((*CONTROL_DAGS, *STREAM_DAGS))}")
    runs: list[StreamRun] = []
    active = {dag_id: active_runs(api, dag_id) for dag_id in STREAM_DAGS}
    for demo in demo_streams(socket_port, kafka):
        run = active[demo.dag_id].get(demo.stream)
        if run is None:
            run = trigger(api, demo)
            say(f"triggered {demo.dag_id} for stream {demo.stream}: run {run.run_id}")
        else:
            say(f"stream {demo.stream}: its run {run.run_id} is still active")
            note("(left by a stack that was killed, not stopped: it resumes from the checkpoint)")
        runs.append(run)
    return runs


def start(stack: Stack, args: argparse.Namespace) -> int:
    """Bring the whole stack up; on failure before Airflow is usable, stop what was started."""
    t0 = time.monotonic()
    stack.home.mkdir(parents=True, exist_ok=True)
    check_not_running(stack)
    for demo in demo_streams(args.socket_port):
        if demo.source == "file":
            stack.input_folder(demo.stream).mkdir(parents=True, exist_ok=True)
    if not port_is_free(args.socket_port):
        raise StackError(
            f"port {args.socket_port} is in use (an `nc -lk {args.socket_port}` of your own?): "
            "the demo's socket stream reads the sample feeder there. Stop that program, or "
            "choose another port: scripts/stack.py start --socket-port 9998"
        )
    env = stack_env(stack, pick_port(8793), pick_port(8794))
    kafka_bootstrap = None
    if args.kafka:
        say(f"starting the Kafka broker (about 5-10 s); log: {stack.kafka_dir / 'kafka.log'}")
        kafka_bootstrap = start_kafka(stack)
        note(f"Kafka on {kafka_bootstrap}, topic {KAFKA_TOPIC}: the connection kafka_default")
        env["AIRFLOW_CONN_KAFKA_DEFAULT"] = json.dumps(
            {"conn_type": "kafka", "extra": {"bootstrap.servers": kafka_bootstrap}}
        )

    say(f"starting Airflow standalone (about 30-60 s on 2 cores); log: {stack.log_file}")
    note(f"AIRFLOW_HOME={stack.home}  data root {stack.data_root}")
    note(f"DAGs {ROOT / 'dags'}, spark_default = local[2], parallelism 8, LocalExecutor on SQLite")
    standalone = start_standalone(stack, env)
    state: dict[str, Any] = {
        "home": str(stack.home),
        "data_root": str(stack.data_root),
        "url": stack.ui_url,
        "port": stack.port,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "pgid": os.getpgid(standalone.pid),
        "pids": {"standalone": standalone.pid},
        "kafka": kafka_bootstrap,
    }
    save_state(stack, state)
    api = Api(stack)
    try:
        wait_for_api(stack, api, standalone, args.timeout)
        note(f"API server healthy after {time.monotonic() - t0:.0f} s")
        say("waiting for the DAG processor to parse the stream DAGs")
        wait_for_dags(api, [*STREAM_DAGS, *CONTROL_DAGS], args.timeout)
        note(f"parsed after {time.monotonic() - t0:.0f} s")
    except BaseException:
        say("start failed: stopping what was started")
        stop_processes(stack, state)
        stop_kafka(stack)
        raise

    # The feeder first: the socket stream's driver connects to it as it starts.
    feeder = start_feeder(stack, env, args.feeder_interval, args.socket_port, kafka_bootstrap)
    state["pids"]["feeder"] = feeder.pid
    save_state(stack, state)
    say(f"started the sample-text feeder (pid {feeder.pid}): {stack.feeder_log}")
    wait_until(lambda: not port_is_free(args.socket_port), 30)

    since = datetime.now(UTC)
    runs = start_streams(api, args.socket_port, kafka=bool(kafka_bootstrap))

    if args.no_wait:
        note("not waiting for the streams (--no-wait); `make status` shows them")
    else:
        say("waiting for the streams' first micro-batch (Spark starts in 20-90 s)")
        try:
            wait_for_streams(stack, api, runs, since, args.stream_timeout)
        except StackError as err:
            raise StackError(
                f"{err}\nAirflow keeps running so you can look at the run in the UI "
                f"({stack.ui_url}); `make stop` stops everything."
            ) from err
    took = time.monotonic() - t0
    print_banner(stack, runs, args.feeder_interval, took, args.socket_port, kafka_bootstrap)
    return 0


# --------------------------------------------------------------------------------------------
# stop


def stop_streams(stack: Stack, procs: list[Proc], grace: float) -> None:
    """Ask the stack's running streams to stop at a batch boundary and wait for their DAG runs.

    Writes the same stop request `stream_control` writes: the job finishes its micro-batch and
    exits 0, and the stream's DAG run succeeds, so the next `start` begins from a clean state.
    """
    from streamops import registry

    pids = {p.pid for p in procs}
    api = Api(stack)
    api_up = api.health() is not None
    waiting: list[tuple[registry.StreamRecord, StreamStatus | None]] = []
    for record in registry.load_all(str(stack.data_root)):
        if record.desired != "running":
            continue
        status = read_status(record.checkpoint)
        driver_here = status is not None and status.pid in pids and status.state != "stopped"
        run_here = False
        if api_up and record.dag_id and record.run_id:
            with contextlib.suppress(StackError, OSError):
                code, run = api.call("GET", f"/api/v2/dags/{record.dag_id}/dagRuns/{record.run_id}")
                run_here = code == 200 and run.get("state") in ("running", "queued")
        if driver_here or run_here:
            CheckpointLayout.of(record.checkpoint).stop_request.write_text_atomic("stop\n")
            waiting.append((record, status))
    if not waiting:
        if api_up:
            end_leftover_runs(api)
        return
    names = ", ".join(r.stream for r, _ in waiting)
    say(f"stopping {names} at a batch boundary (up to {grace:.0f} s)")

    tasks_gone_at: list[float] = []

    def finished() -> bool:
        for _, status in waiting:
            if status is not None and status.pid in pids and is_alive(status.pid):
                return False
        # The scheduler marks a run done a moment after its task ends. A run whose task process
        # is gone for good (a killed stack) never ends: give up on those after RUN_END_SECONDS.
        if not any(p.label == "airflow task process" and is_alive(p.pid) for p in procs):
            tasks_gone_at.append(time.monotonic())
            if tasks_gone_at[-1] - tasks_gone_at[0] > RUN_END_SECONDS:
                return True
        if not api_up:
            return True
        for record, _ in waiting:
            with contextlib.suppress(StackError, OSError):
                path = f"/api/v2/dags/{record.dag_id}/dagRuns/{record.run_id}"
                code, run = api.call("GET", path)
                if code == 200 and run.get("state") in ("running", "queued"):
                    return False
        return True

    t0 = time.monotonic()
    if wait_until(finished, grace, interval=1):
        note(f"streams stopped and their DAG runs ended ({time.monotonic() - t0:.0f} s)")
    else:
        note(f"streams still running after {grace:.0f} s: terminating them instead")
    if api_up:
        end_leftover_runs(api)


def end_leftover_runs(api: Api) -> None:
    """Mark failed the stream runs still queued or running, so the next `start` begins clean.

    Those are runs that never started a stream (queued behind others, or triggered while the
    stack was stopping) or whose stream did not stop in time: their drivers are terminated next.
    """
    for dag_id in STREAM_DAGS:
        with contextlib.suppress(StackError, OSError):
            answer = api.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns?state=running&state=queued")
            for run in answer.get("dag_runs", []):
                path = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
                api.ok("PATCH", path, {"state": "failed"})
                api.call("PATCH", f"{path}?update_mask=note", {"note": "ended by `make stop`"})
                note(f"marked {dag_id} run {run['dag_run_id']} ({run['state']}) failed")


def stop_processes(
    stack: Stack, state: dict[str, Any] | None, earlier: Iterable[Proc] = ()
) -> list[Proc]:
    """SIGTERM everything the stack started, wait, SIGKILL what remains; what was stopped.

    `earlier` are processes found before (and perhaps already ended by a graceful stop): they
    count as stopped too.
    """
    seen: dict[int, Proc] = {p.pid: p for p in earlier}
    pgid = (state or {}).get("pgid")
    leader = read_proc(int(pgid)) if pgid else None

    def remaining() -> list[Proc]:
        procs = stack_processes(stack.home)
        for proc in procs:
            seen.setdefault(proc.pid, proc)
        return procs

    procs = remaining()
    # The group leader is `airflow standalone` itself: signal its group only while it is ours.
    if leader is not None and leader.pid in {p.pid for p in procs}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGTERM)
    signal_all(procs, signal.SIGTERM)
    terminated = {p.pid for p in procs}
    # Components stop in a few seconds; new processes (a task's on_kill) can appear meanwhile.
    deadline = time.monotonic() + TERM_SECONDS
    while (procs := remaining()) and time.monotonic() < deadline:
        new = [p for p in procs if p.pid not in terminated]
        signal_all(new, signal.SIGTERM)
        terminated.update(p.pid for p in new)
        time.sleep(0.5)
    if procs:
        labels = collections.Counter(p.label for p in procs)
        listing = ", ".join(f"{n} x {label}" for label, n in sorted(labels.items()))
        note(f"still running after {TERM_SECONDS:.0f} s: {listing}; sending SIGKILL")
    for _ in range(10):
        procs = remaining()
        if not procs:
            break
        signal_all(procs, signal.SIGKILL)
        time.sleep(0.5)
    left = remaining()
    if left:
        listing = ", ".join(f"{p.pid} ({p.label})" for p in left)
        raise StackError(f"could not stop every process; still running: {listing}")
    return list(seen.values())


def stop(stack: Stack, args: argparse.Namespace) -> int:
    """Stop the stack: streams gracefully, then every process it started; verify none remain."""
    state = load_state(stack)
    procs = stack_processes(stack.home)
    if not procs:
        stop_kafka(stack)
        stack.state_file.unlink(missing_ok=True)
        print(f"stack in {stack.home}: not running; stopped 0 processes; none left")
        return 0
    say(f"stopping the stack in {stack.home} ({len(procs)} processes)")
    feeder_pid = ((state or {}).get("pids") or {}).get("feeder")
    for proc in procs:
        if proc.pid == feeder_pid or proc.label == "feeder":
            os.kill(proc.pid, signal.SIGTERM)
            note(f"stopped the feeder (pid {proc.pid})")
    if not args.now:
        try:
            stop_streams(stack, procs, args.grace)
        except (StackError, OSError) as err:
            note(f"could not stop the streams gracefully ({err}); terminating them")
    say(f"terminating Airflow, its tasks and Spark (SIGTERM; SIGKILL after {TERM_SECONDS:.0f} s)")
    t0 = time.monotonic()
    stopped = stop_processes(stack, state, procs)
    stop_kafka(stack)  # after the drivers that read from it
    note(f"all ended after {time.monotonic() - t0:.0f} s:")
    counts = collections.Counter(p.label for p in stopped)
    for label, count in sorted(counts.items()):
        note(f"{count} x {label}")
    stack.state_file.unlink(missing_ok=True)
    print(f"stopped {len(stopped)} processes; none left", flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# status


def age(text: str | None) -> str:
    """How long ago an ISO-8601 time was, e.g. '3 s ago'."""
    if not text:
        return "never"
    seconds = (datetime.now(UTC) - parse_time(text)).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def status(stack: Stack, args: argparse.Namespace) -> int:
    """Print whether the stack runs, its URL and memory, and each stream's state."""
    state = load_state(stack) or {}
    procs = stack_processes(stack.home)
    if procs:
        rss, pss = memory_kib(p.pid for p in procs)
        pids = state.get("pids", {})
        standalone = pids.get("standalone")
        alive = "running" if standalone and is_alive(standalone) else "NOT running"
        print(f"stack in {stack.home}: running since {state.get('started_at', '?')}")
        print(
            f"  Airflow UI    {state.get('url', stack.ui_url)}  (login admin / see "
            f"{stack.password_file.name})"
        )
        print(f"  standalone    pid {standalone}: {alive}")
        feeder = pids.get("feeder")
        if feeder:
            print(f"  feeder        pid {feeder}: {'running' if is_alive(feeder) else 'stopped'}")
        health = Api(stack).health()
        if health:
            parts = {k: v.get("status") for k, v in health.items() if isinstance(v, dict)}
            print("  health        " + ", ".join(f"{k} {v}" for k, v in parts.items()))
        else:
            print("  health        the API server does not answer")
        print(
            f"  processes     {len(procs)}, RSS {rss / 1024:.0f} MiB summed "
            f"(PSS {pss / 1024:.0f} MiB: shared pages counted once)"
        )
        if args.verbose:
            for label, count in sorted(collections.Counter(p.label for p in procs).items()):
                print(f"                {count} x {label}")
    else:
        print(f"stack in {stack.home}: not running (start it with `make demo`)")
    print(f"  streams       (data root {stack.data_root})")
    streams = known_streams(stack)
    width = max(len(name) for name, _, _ in streams) + 1
    for stream, checkpoint, sink in streams:
        st = read_status(str(checkpoint))
        if st is None:
            print(f"    {stream:{width}} no status yet")
            continue
        batch = st.last_batch
        last = (
            f"last batch {batch.batch_id} {age(batch.timestamp)}, {batch.input_rows} lines"
            if batch
            else "no batch yet"
        )
        sink_files = len(list(sink.glob("part-*.parquet")))
        print(
            f"    {stream:{width}} {st.state:8} {last}; status updated {age(st.updated_at)}; "
            f"{sink_files} sink files"
        )
        if st.exception:
            print(f"    {'':{width}} exception: {st.exception.splitlines()[0]}")
    return 0


def known_streams(stack: Stack) -> list[tuple[str, Path, Path]]:
    """Name, checkpoint and sink of the default streams and of every stream ever started here."""
    from streamops import registry

    streams = {d.stream: (stack.checkpoint(d.stream), stack.sink(d.stream)) for d in demo_streams()}
    with contextlib.suppress(OSError, ValueError, TypeError):
        for record in registry.load_all(str(stack.data_root)):
            if "://" not in record.checkpoint and "://" not in record.sink:
                streams[record.stream] = (Path(record.checkpoint), Path(record.sink))
    return [(name, *paths) for name, paths in streams.items()]


# --------------------------------------------------------------------------------------------
# Command line


def positive(text: str) -> float:
    """An argparse type: a number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: `start`, `stop`, `status`, each with the stack's location options."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home", type=Path, default=DEFAULT_HOME, help=f"AIRFLOW_HOME (default: {DEFAULT_HOME})"
    )
    common.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where the streams' folders live (default: the running stack's, else "
        "$STREAMOPS_DATA_ROOT or <repo>/data)",
    )
    common.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"API server and UI port (default: the running stack's, else {DEFAULT_PORT})",
    )
    parser = argparse.ArgumentParser(
        prog="stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start_p = sub.add_parser("start", parents=[common], help="start the stack and both streams")
    start_p.add_argument(
        "--timeout",
        type=positive,
        default=300,
        help="seconds to wait for Airflow to be healthy and for the DAGs (default: 300)",
    )
    start_p.add_argument(
        "--stream-timeout",
        type=positive,
        default=300,
        help="seconds to wait for the streams' first micro-batch (default: 300)",
    )
    start_p.add_argument(
        "--feeder-interval",
        type=positive,
        default=5,
        help="seconds between two sample files (default: 5)",
    )
    start_p.add_argument(
        "--socket-port",
        type=int,
        default=SOCKET_PORT,
        help=f"the socket stream's port, served by the feeder (default: {SOCKET_PORT})",
    )
    start_p.add_argument(
        "--no-wait", action="store_true", help="do not wait for the streams' first micro-batch"
    )
    start_p.add_argument(
        "--kafka",
        action="store_true",
        help=f"also start a Kafka broker and a third stream, word_count_kafka, on topic "
        f"{KAFKA_TOPIC} (make demo KAFKA=1)",
    )
    stop_p = sub.add_parser("stop", parents=[common], help="stop every process the stack started")
    stop_p.add_argument(
        "--grace",
        type=positive,
        default=90,
        help="seconds the streams get to stop at a batch boundary (default: 90)",
    )
    stop_p.add_argument(
        "--now", action="store_true", help="skip the graceful stream stop; terminate at once"
    )
    status_p = sub.add_parser("status", parents=[common], help="is it running; stream states")
    status_p.add_argument("-v", "--verbose", action="store_true", help="list the processes")
    return parser.parse_args(argv)


def make_stack(args: argparse.Namespace) -> Stack:
    """The stack the options name; a running stack's own data root and port by default."""
    home = args.home.resolve()
    state = load_state(Stack(home, home, DEFAULT_PORT)) or {}
    data_root = args.data_root or state.get("data_root")
    if data_root is None:
        data_root = os.environ.get("STREAMOPS_DATA_ROOT") or ROOT / "data"
    if "://" in str(data_root):
        raise StackError(
            f"data root {data_root} is a URI; the embedded stack needs a local folder "
            "(--data-root DIR)"
        )
    port = args.port or state.get("port") or DEFAULT_PORT
    return Stack(home=home, data_root=Path(data_root).resolve(), port=int(port))


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; errors print one message and exit 1."""
    args = parse_args(argv)
    commands = {"start": start, "stop": stop, "status": status}
    try:
        return commands[args.command](make_stack(args), args)
    except StackError as err:
        print(f"stack {args.command}: error: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(
            f"stack {args.command}: interrupted; `make stop` stops whatever was started",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
