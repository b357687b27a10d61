"""Debian's Prometheus tools for the tests: promtool, and a real Alertmanager and Prometheus.

`scripts/system-deps.sh` installs them (packages `prometheus` and `prometheus-alertmanager`); a
test that needs a missing one is skipped with that reason. Every server here is the test's own
process: a free port of 127.0.0.1, its data in the test's temporary folder, its own process
group, stopped by that group at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

PROMTOOL = "promtool"
PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"


def binary(name: str) -> str:
    """The path of one of Debian's Prometheus programs, or a skip that says how to get it."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )
    if found is None:
        package = "prometheus-alertmanager" if name == ALERTMANAGER else "prometheus"
        pytest.skip(f"{name} is not installed (Debian's {package}; `make system-deps` installs it)")
    return found


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; its findings are on stderr (lint) or stdout (tests)."""
    return subprocess.run(
        [binary(PROMTOOL), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def http_json(url: str, body: Any = None, timeout: float = 10) -> Any:
    """GET (or POST `body` as JSON to) `url`; the JSON answer, or None for an empty one."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw.strip() else None


@dataclass
class Server:
    """One server process started by a test."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    started_in: float

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _wait_ready(server: Server, path: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"{server.name} exited with {server.process.returncode}:\n{server.output()}"
            )
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(server.url + path, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{server.name} was not ready at {server.url}{path}:\n{server.output()}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(15)


@contextlib.contextmanager
def serve(name: str, argv: list[str], url: str, ready: str, log: Path) -> Iterator[Server]:
    """Start `argv` in a process group of its own, wait until `url + ready` answers 200, and
    stop that group when the block ends."""
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, process, url, log, 0.0)
    try:
        _wait_ready(server, ready, started + 60)
        server.started_in = time.monotonic() - started
        yield server
    finally:
        _stop(server)


def alertmanager_config(folder: Path, resolve_timeout: str, webhook: str | None = None) -> Path:
    """An Alertmanager configuration: every alert to one receiver, a webhook or none."""
    receiver: dict[str, Any] = {"name": "tests"}
    if webhook is not None:
        receiver["webhook_configs"] = [{"url": webhook, "send_resolved": True}]
    config = {
        "global": {"resolve_timeout": resolve_timeout},
        "route": {
            "receiver": "tests",
            "group_by": ["alertname", "stream", "signal"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [receiver],
    }
    path = folder / "alertmanager.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


@contextlib.contextmanager
def alertmanager(
    folder: Path, resolve_timeout: str = "5m", webhook: str | None = None, port: int | None = None
) -> Iterator[Server]:
    """A real Alertmanager on `port` (default: a free one), alone (no cluster), its data under
    `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = alertmanager_config(folder, resolve_timeout, webhook)
    port = port or free_port()
    argv = [
        binary(ALERTMANAGER),
        f"--config.file={config}",
        f"--storage.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: a single instance
        "--log.level=info",
    ]
    with serve(
        "Alertmanager", argv, f"http://127.0.0.1:{port}", "/-/ready", folder / "alertmanager.log"
    ) as server:
        yield server


@contextlib.contextmanager
def prometheus(folder: Path, config: Path) -> Iterator[Server]:
    """A real Prometheus on a free port with `config`, its TSDB under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        binary(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=info",
    ]
    with serve(
        "Prometheus", argv, f"http://127.0.0.1:{port}", "/-/ready", folder / "prometheus.log"
    ) as server:
        yield server


def active_alerts(server: Server, stream: str) -> list[dict[str, Any]]:
    """The alerts of `stream` that an Alertmanager holds active now (`GET /api/v2/alerts`)."""
    query = urllib.parse.urlencode({"filter": f'stream="{stream}"', "active": "true"})
    alerts: list[dict[str, Any]] = http_json(f"{server.url}/api/v2/alerts?{query}")
    return [a for a in alerts if a["status"]["state"] == "active"]
