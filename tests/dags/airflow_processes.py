"""Airflow's components as separate processes that a test can kill and start again one by one.

`AirflowProcesses` starts `airflow api-server`, `scheduler`, `dag-processor` and `triggerer`,
each in a process group of its own, on a fresh SQLite database, with the repository's DAGs and
plugins, and the REST API open to every caller (the simple auth manager's all-admins mode).
It ends only the process groups it started, by their ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import free_port
from tests.dags.conftest import BIN, airflow_env

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
T = TypeVar("T")


def wait_for(
    check: Callable[[], T], timeout: float, what: str | Callable[[], str], interval: float = 1.0
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`.

    `what` may be a function, to name what was seen while waiting.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {said}")
        time.sleep(interval)


class AirflowProcesses:
    """Airflow's four long-running components, started and stopped one by one."""

    def __init__(self, home: Path, data_root: Path, **extra_env: str) -> None:
        self.home = home
        self.port = free_port()
        self.env = airflow_env(
            home,
            data_root,
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM="4",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{self.port}/execution/",
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            **extra_env,
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"],
            env=self.env,
            check=True,
            capture_output=True,
        )

    # -- processes ------------------------------------------------------------------------

    def start(self, *components: str) -> None:
        """Start components (default: all), each in its own process group."""
        for component in components or COMPONENTS:
            log = open(self.home / f"{component}.log", "ab")  # noqa: SIM115  (owned by the child)
            self.procs[component] = subprocess.Popen(
                [str(BIN / "airflow"), *component.split()],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )
            log.close()
        if "api-server" in (components or COMPONENTS):
            wait_for(self.api_up, 120, "the api-server to answer")

    def stop(self, component: str, sig: signal.Signals, timeout: float = 90) -> None:
        """Signal a component's process group and wait for its leader; SIGKILL after `timeout`."""
        proc = self.procs.pop(component)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        # What the leader left of its group (workers, task processes) goes with it.
        deadline = time.monotonic() + 30
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self, component: str, sig: signal.Signals) -> None:
        """Stop a component with `sig`, then start it again."""
        self.stop(component, sig)
        self.start(component)

    def stop_all(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop every component this object started."""
        for component in list(self.procs):
            self.stop(component, sig)

    def log(self, component: str) -> str:
        return (self.home / f"{component}.log").read_text(errors="replace")

    # -- REST API -------------------------------------------------------------------------

    def api(self, method: str, path: str, body: object = None) -> Any:
        """Call Airflow's REST API; its JSON answer."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def api_up(self) -> bool:
        try:
            self.api("GET", "/api/v2/monitor/health")
            return True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def dag_parsed(self, dag_id: str) -> bool:
        try:
            return bool(self.api("GET", f"/api/v2/dags/{dag_id}"))
        except (OSError, urllib.error.URLError):
            return False

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Unpause a DAG and trigger a run; its run id."""
        wait_for(lambda: self.dag_parsed(dag_id), 180, f"{dag_id} to be parsed")
        self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run = self.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}
        )
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_state(self, dag_id: str, run_id: str, task_id: str = "run_stream") -> str | None:
        ti = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        return ti.get("state")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
