"""A single-node Apache Kafka broker on this machine, for the tests and the demo.

    .venv/bin/python scripts/kafka.py start --port 9092 --dir data/kafka   # prints 127.0.0.1:9092
    .venv/bin/python scripts/kafka.py stop --dir data/kafka

The broker is Apache Kafka itself (`kafka.Kafka` of `org.apache.kafka:kafka_2.13`), from the
jars that `spark_jobs/jars.lock` pins (set `kafka-broker`, downloaded once into `.cache/jars/`),
run by the project's Java (`spark_jobs.java_runtime`). It runs in KRaft mode, broker and
controller in one process, listening on 127.0.0.1 only: clients on `--port`, the controller on a
free port recorded in the folder's `server.properties`. Its data, configuration, log
(`kafka.log`) and pid file (`kafka.pid`) live in `--dir`; a folder started before is started
again with its configuration and data (its storage is formatted only on the first start).

`start` returns once the broker answers a metadata request, and prints the bootstrap address.
The broker leads its own process group, detached from the caller; `stop` ends that group by the
pid in its pid file (SIGTERM, then SIGKILL after 30 s; `--now`: SIGKILL at once).
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.local_process import PidFile  # noqa: E402
from spark_jobs.jars import KAFKA_BROKER, JarUnavailable, resolve  # noqa: E402
from spark_jobs.java_runtime import java_home  # noqa: E402

BROKER_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
HOST = "127.0.0.1"
# Small enough for a 2-core test machine; a test broker holds little data.
JVM_OPTIONS = ["-Xmx256m", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
READY_TIMEOUT_SECONDS = 90.0
STOP_GRACE_SECONDS = 30.0
PID_FILE = "kafka.pid"
CONFIG_FILE = "server.properties"
LOG_FILE = "kafka.log"

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server
logger.server.level = INFO
"""


class BrokerError(Exception):
    """The broker could not be started or stopped; the message says why and what to do."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def cluster_id() -> str:
    """A new cluster id in Kafka's form: a random UUID, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    """The configuration of a single-node KRaft broker and controller on 127.0.0.1."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


@dataclass(frozen=True)
class BrokerFolder:
    """The files of one broker in its folder."""

    root: Path

    @property
    def pid_file(self) -> Path:
        """The pid of the broker's process (and process group)."""
        return self.root / PID_FILE

    @property
    def config(self) -> Path:
        """Its `server.properties`."""
        return self.root / CONFIG_FILE

    @property
    def log(self) -> Path:
        """Its standard output and error."""
        return self.root / LOG_FILE

    @property
    def data(self) -> Path:
        """Its `log.dirs`: the topics' data and the metadata log."""
        return self.root / "data"

    def port(self) -> int:
        """The client port its configuration names."""
        for line in self.config.read_text().splitlines():
            if line.startswith("advertised.listeners="):
                return int(line.rsplit(":", 1)[1])
        raise BrokerError(f"{self.config} names no advertised listener")

    @property
    def process(self) -> PidFile:
        """The broker's process, known by its pid file, its main class and its config."""
        return PidFile(self.pid_file, (BROKER_CLASS, str(self.config)))

    def pid(self) -> int | None:
        """The pid in the pid file, if there is one."""
        return self.process.pid()


def _java() -> str:
    home = java_home()
    return str(Path(home) / "bin" / "java") if home else "java"


def _classpath() -> str:
    try:
        return os.pathsep.join(str(path) for path in resolve(KAFKA_BROKER))
    except JarUnavailable as err:
        raise BrokerError(str(err)) from err


def is_running(folder: BrokerFolder) -> bool:
    """Whether the pid file names a live broker of this folder (not a reused pid)."""
    return folder.process.runs()


def _ready(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:
        return False
    return bool(metadata.brokers)


def start(root: Path, port: int | None) -> str:
    """Start the broker of folder `root` (on `port`, for a new folder); return its address."""
    folder = BrokerFolder(root.resolve())
    if is_running(folder):
        raise BrokerError(
            f"a broker of {folder.root} runs already (pid {folder.pid()}); "
            f"stop it first: scripts/kafka.py stop --dir {root}"
        )
    folder.root.mkdir(parents=True, exist_ok=True)
    classpath = _classpath()
    if folder.config.exists():
        if port is not None and port != folder.port():
            raise BrokerError(
                f"{folder.config} was created for port {folder.port()}, not {port}: start it "
                "without --port, or use another --dir"
            )
    else:
        if port is None:
            raise BrokerError(f"--port: required for a new broker folder ({folder.root})")
        folder.config.write_text(server_properties(port, _free_port(), folder.data))
    (folder.root / "log4j2.properties").write_text(LOG4J2)
    java = [
        _java(),
        *JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={folder.root / 'log4j2.properties'}",
        "-cp",
        classpath,
    ]
    if not (folder.data / "meta.properties").exists():
        formatted = subprocess.run(
            [*java, STORAGE_TOOL_CLASS, "format", "-t", cluster_id(), "-c", str(folder.config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if formatted.returncode != 0:
            raise BrokerError(
                f"formatting the storage in {folder.data} failed: "
                f"{(formatted.stderr or formatted.stdout).strip()}"
            )
    with folder.log.open("ab") as log:
        process = subprocess.Popen(
            [*java, BROKER_CLASS, str(folder.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, detached from the caller's
        )
    folder.process.write(process.pid)
    bootstrap = f"{HOST}:{folder.port()}"
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not _ready(bootstrap):
        if process.poll() is not None:
            folder.pid_file.unlink(missing_ok=True)
            raise BrokerError(
                f"the broker exited with code {process.returncode} before accepting clients; "
                f"see {folder.log}"
            )
        if time.monotonic() > deadline:
            stop(folder.root, now=True)
            raise BrokerError(
                f"the broker did not accept clients on {bootstrap} within "
                f"{READY_TIMEOUT_SECONDS:.0f} s; see {folder.log}"
            )
        time.sleep(0.2)
    return bootstrap


def stop(root: Path, now: bool = False) -> bool:
    """Stop the broker of folder `root` by its pid file's process group. False if none ran."""
    return BrokerFolder(root.resolve()).process.stop(now, STOP_GRACE_SECONDS)


def main(argv: list[str] | None = None) -> int:
    """`scripts/kafka.py start --port N --dir D` / `stop --dir D`."""
    parser = argparse.ArgumentParser(prog="scripts/kafka.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="start the broker; print its bootstrap address")
    start_cmd.add_argument("--port", type=int, help="client port on 127.0.0.1 (new folders)")
    start_cmd.add_argument("--dir", required=True, type=Path, help="the broker's folder")
    stop_cmd = commands.add_parser("stop", help="stop the broker by its pid file")
    stop_cmd.add_argument("--dir", required=True, type=Path, help="the broker's folder")
    stop_cmd.add_argument("--now", action="store_true", help="SIGKILL at once")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(start(args.dir, args.port), flush=True)
        elif not stop(args.dir, now=args.now):
            print(f"kafka: no broker of {args.dir} was running")
    except BrokerError as err:
        sys.stderr.write(f"kafka: error: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
