"""A Spark standalone cluster on this machine: one master and N workers, from the pyspark package.

    .venv/bin/python scripts/spark_cluster.py --workers 2   # runs until Ctrl-C, then stops all

The pip package has Spark's jars and `bin/spark-class` but not `sbin/start-master.sh`, so the
master and the workers are started as `spark-class org.apache.spark.deploy.master.Master ...`
and `... worker.Worker ...`, with the project's Java (`spark_jobs.java_runtime`). Every port is a
free one (master RPC and web UI, each worker's RPC and web UI), so the cluster runs beside an
Airflow on 8080 and other clusters. Each process leads its own process group, so stopping the
cluster reaches the executors the workers started too; `stop()` checks that none is left.

Tests and `bench/cluster.py` use `SparkCluster` as a context manager:

    with SparkCluster(tmp_path, workers=1, worker_cores=2) as cluster:
        ...  # submit to cluster.master_url, e.g. spark://localhost:40123
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from spark_jobs.java_runtime import java_home  # noqa: E402

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# Every process of a cluster carries this variable, so a scan of /proc finds what outlived it.
MARKER = "STREAMOPS_SPARK_CLUSTER"
START_SECONDS = 90.0
TERM_SECONDS = 20.0


class ClusterError(Exception):
    """The cluster did not come up or did not go away; the message says which part and why."""


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spark_home() -> Path:
    """The installed pyspark package: Spark's jars, `bin/` and `sbin/`."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


@dataclass
class SparkCluster:
    """A master and `workers` workers on localhost; logs and work folders under `home`.

    `default_cores` is the master's `spark.deploy.defaultCores`: the cores an application gets
    when it does not set `spark.cores.max`. Left unset, the first application takes every core
    and a second stream waits for executors forever.

    `reverse_proxy` turns on the master's reverse proxy (`spark.ui.reverseProxy`): the master's
    web UI then serves each application's UI at `<webui_url>/proxy/<app-id>/`, and a driver that
    reads this cluster's `spark-defaults.conf` (`SPARK_CONF_DIR=<conf_dir>`) records that URL in
    its status. Its own UI can stay on the driver's host.
    """

    home: Path
    workers: int = 1
    worker_cores: int = 2
    worker_memory: str = "2g"
    default_cores: int | None = None
    reverse_proxy: bool = False
    host: str = "localhost"
    master_port: int = field(default_factory=free_port)
    webui_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        """What `spark-submit --master` and the `spark_default` connection take."""
        return f"spark://{self.host}:{self.master_port}"

    @property
    def webui_url(self) -> str:
        """The master's web UI; `<url>/json/` is its state as JSON."""
        return f"http://127.0.0.1:{self.webui_port}"

    @property
    def conf_dir(self) -> Path:
        """The cluster's `SPARK_CONF_DIR`; drivers that should share its settings read it."""
        return self.home / "conf"

    def spark_defaults(self) -> str:
        """The cluster's `spark-defaults.conf`: the reverse proxy, when it is on."""
        if not self.reverse_proxy:
            return ""
        return f"spark.ui.reverseProxy true\nspark.ui.reverseProxyUrl {self.webui_url}\n"

    def connection(self, deploy_mode: str = "client") -> dict[str, Any]:
        """The `spark_default` connection (JSON form) that submits to this cluster."""
        return {
            "conn_type": "spark",
            "host": f"spark://{self.host}",
            "port": self.master_port,
            "extra": {"deploy-mode": deploy_mode},
        }

    def env(self) -> dict[str, str]:
        """The environment of the master, the workers and their executors."""
        env = dict(os.environ)
        conf_dir = self.conf_dir
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "spark-defaults.conf").write_text(self.spark_defaults())
        env.update(
            {
                MARKER: str(self.home),
                "SPARK_HOME": str(spark_home()),
                # The cluster's own conf folder: no spark-defaults.conf or spark-env.sh of the
                # machine.
                "SPARK_CONF_DIR": str(conf_dir),
                "SPARK_LOCAL_DIRS": str(self.home / "local"),
                "SPARK_NO_DAEMONIZE": "1",
                "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON", sys.executable),
            }
        )
        env.pop("PYSPARK_SUBMIT_ARGS", None)
        if home := java_home():
            env["JAVA_HOME"] = home
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.home / "logs" / f"{name}.log").open("wb")
        with log:
            process = subprocess.Popen(
                [str(spark_home() / "bin" / "spark-class"), *args],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start(self) -> SparkCluster:
        """Start the master and the workers; return once every worker is registered and alive."""
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        master_args = [
            MASTER_CLASS,
            "--host",
            self.host,
            "--port",
            str(self.master_port),
            "--webui-port",
            str(self.webui_port),
        ]
        if self.default_cores is not None:
            properties = self.home / "conf" / "master.properties"
            properties.parent.mkdir(parents=True, exist_ok=True)
            properties.write_text(
                f"spark.deploy.defaultCores {self.default_cores}\n{self.spark_defaults()}"
            )
            master_args += ["--properties-file", str(properties)]
        self._spawn("master", master_args)
        self._wait(lambda state: state is not None, "the master's web UI")
        for _ in range(self.workers):
            self.add_worker()
        return self

    def add_worker(self) -> None:
        """Start one more worker and wait until the master counts it alive."""
        index = len(self.processes)  # the master is process 0
        work_dir = self.home / f"worker-{index}"
        work_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            f"worker-{index}",
            [
                WORKER_CLASS,
                "--host",
                self.host,
                "--port",
                str(free_port()),
                "--webui-port",
                str(free_port()),
                "--cores",
                str(self.worker_cores),
                "--memory",
                self.worker_memory,
                "--work-dir",
                str(work_dir),
                self.master_url,
            ],
        )
        self._wait(lambda state: state is not None and state["aliveworkers"] >= index, "workers")

    def state(self) -> dict[str, Any] | None:
        """The master's state (workers, active and completed applications), or None."""
        try:
            with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=5) as response:
                state: dict[str, Any] = json.load(response)
                return state
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def applications(self) -> list[dict[str, Any]]:
        """Every application the master has seen, running or completed."""
        state = self.state() or {}
        return [*state.get("activeapps", []), *state.get("completedapps", [])]

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not ready(self.state()):
            for process in self.processes:
                if process.poll() is not None:
                    raise ClusterError(
                        f"a Spark process exited with code {process.returncode} while waiting "
                        f"for {what}; logs: {self.home / 'logs'}\n{self.log_tail()}"
                    )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{what} not up after {START_SECONDS:.0f} s; logs: {self.home / 'logs'}\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.5)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every log of the cluster."""
        parts = []
        for log in sorted((self.home / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def leftovers(self) -> list[int]:
        """Pids of processes still carrying this cluster's marker (executors included)."""
        marker = f"{MARKER}={self.home}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """Stop the workers (which stop their executors), then the master; SIGKILL what remains.

        Raises `ClusterError` if a process of the cluster is still there afterwards.
        """
        for process in reversed(self.processes):
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + TERM_SECONDS
        while time.monotonic() < deadline and (
            any(p.poll() is None for p in self.processes) or self.leftovers()
        ):
            time.sleep(0.2)
        for pid in [*(p.pid for p in self.processes if p.poll() is None), *self.leftovers()]:
            _signal_group(pid, signal.SIGKILL)
        for process in self.processes:
            process.wait(timeout=10)
        time.sleep(0.2)
        if left := self.leftovers():
            raise ClusterError(f"processes of the cluster still running after stop: {left}")

    def __enter__(self) -> SparkCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def main(argv: list[str] | None = None) -> int:
    """Run a cluster in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="spark_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="number of workers (default 1)")
    parser.add_argument("--cores", type=int, default=2, help="cores per worker (default 2)")
    parser.add_argument("--memory", default="2g", help="memory per worker (default 2g)")
    parser.add_argument(
        "--default-cores", type=int, help="cores per application (default: all free ones)"
    )
    parser.add_argument(
        "--reverse-proxy",
        action="store_true",
        help="serve each application's UI through the master's web UI",
    )
    parser.add_argument(
        "--home", type=Path, default=ROOT / ".spark-cluster", help="logs and work folders"
    )
    args = parser.parse_args(argv)
    cluster = SparkCluster(
        args.home.resolve(),
        args.workers,
        args.cores,
        args.memory,
        args.default_cores,
        reverse_proxy=args.reverse_proxy,
    )
    with cluster:
        print(f"master {cluster.master_url}, web UI {cluster.webui_url}", flush=True)
        print(
            "spark_default: AIRFLOW_CONN_SPARK_DEFAULT='"
            + json.dumps(cluster.connection())
            + "'; Ctrl-C stops the cluster",
            flush=True,
        )
        if cluster.reverse_proxy:
            print(
                f"drivers: SPARK_CONF_DIR={cluster.conf_dir} puts their UIs behind "
                f"{cluster.webui_url}/proxy/<app-id>/",
                flush=True,
            )
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    print("stopped; no process left", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
