"""A driver exposes nothing by default: its ports are on loopback, its UI cannot kill, secrets are
redacted, and the status says where the UI is.

The job runs as a user starts it (`python -m spark_jobs.word_count`, no `SPARK_LOCAL_IP`). Another
host is played by a network namespace of the test's own, joined to this one by a veth pair with
a default route through it: from there every address of this machine is reachable, as from a
neighbour on the network. A listener of the test's own on every interface proves the path works,
so a closed driver port means the port is closed, not that the namespace is cut off.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from spark_jobs.status import StreamStatus, read_status
from tests.conftest import job_command

pytestmark = [pytest.mark.slow, pytest.mark.spark]

SECRETS = {
    # Redacted by Spark's default pattern.
    "spark.hadoop.fs.s3a.secret.key": "S3CR3T-value-0f-the-key",
    # Redacted only by the pattern the jobs add (api[._-]?key).
    "spark.streamops.webhook.api_key": "APIKEY-value-0f-the-hook",
}
PROBE = """
import json, socket, sys
result = {}
for target in json.loads(sys.argv[1]):
    host, port = target
    try:
        socket.create_connection((host, port), timeout=2).close()
        result[f"{host}:{port}"] = "open"
    except OSError as err:
        result[f"{host}:{port}"] = type(err).__name__
print(json.dumps(result))
"""


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def neighbour() -> Iterator[str]:
    """A network namespace reaching this machine's addresses through a veth pair; its name."""
    tag = os.getpid() % 100_000
    name, host_end, ns_end = f"streamops-{tag}", f"so{tag}h", f"so{tag}n"
    subnet = ipaddress.ip_network(f"10.{200 + tag % 50}.{tag % 250}.0/30")
    host_ip, ns_ip = (str(ip) for ip in subnet.hosts())
    created = run("ip", "netns", "add", name)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {created.stderr.strip()}")
    try:
        steps = [
            ("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end),
            ("ip", "link", "set", ns_end, "netns", name),
            ("ip", "addr", "add", f"{host_ip}/30", "dev", host_end),
            ("ip", "link", "set", host_end, "up"),
            ("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_end),
            ("ip", "netns", "exec", name, "ip", "link", "set", ns_end, "up"),
            ("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"),
            ("ip", "netns", "exec", name, "ip", "route", "add", "default", "via", host_ip),
        ]
        for step in steps:
            done = run(*step)
            assert done.returncode == 0, f"{' '.join(step)}: {done.stderr}"
        yield name
    finally:
        run("ip", "link", "del", host_end)
        run("ip", "netns", "del", name)


def probe_from(namespace: str, targets: list[tuple[str, int]]) -> dict[str, str]:
    """Connect to each (host, port) from inside the namespace: "open" or the error's name."""
    done = run(
        "ip", "netns", "exec", namespace, sys.executable, "-c", PROBE, json.dumps(targets)
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


def machine_addresses() -> list[str]:
    """Every IPv4 address of this machine but loopback: where a neighbour would connect."""
    return sorted(
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET
        and not ipaddress.ip_address(address.address).is_loopback
    )


def listening(pid: int) -> list[tuple[str, int]]:
    """The TCP (address, port) pairs the process and its children listen on."""
    root = psutil.Process(pid)
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        found += [(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


def http(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def kill_running_work(ui_url: str, app_id: str, proc: subprocess.Popen[str]) -> int:
    """Send the UI's kill requests at whatever job and stage of the stream runs, for up to 60 s;
    how many reached work the REST API had just listed as running. (Spark 4.2 answers them with a
    redirect to the list, later versions with 405: what matters is that nothing is killed.)"""
    api = f"{ui_url}/api/v1/applications/{app_id}"
    targeted = 0
    deadline = time.monotonic() + 60
    while targeted < 8 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        jobs = json.loads(http(f"{api}/jobs?status=running")[1])
        stages = json.loads(http(f"{api}/stages?status=active")[1])
        requests = [f"jobs/job/kill/?id={job['jobId']}" for job in jobs] + [
            f"stages/stage/kill/?id={stage['stageId']}" for stage in stages
        ]
        for request in requests:
            method = "POST" if targeted % 2 == 0 else "GET"
            code, _ = http(f"{ui_url}/{request}", method)
            assert code < 500, (request, method, code)
            targeted += 1
        time.sleep(0.02)
    return targeted


def wait_for_batches(checkpoint: Path, proc: subprocess.Popen[str], count: int) -> StreamStatus:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = read_status(str(checkpoint))
        if status and status.last_batch and status.last_batch.spark_batch_id >= count - 1:
            return status
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} micro-batches within 120 s")


def check_redacted(status: StreamStatus) -> None:
    """Conf values that look like secrets are redacted on the UI's Environment page (drawn in
    the browser from the UI's REST API)."""
    code, page = http(f"{status.ui_url}/environment/")
    assert code == 200
    assert not any(value in page for value in SECRETS.values())
    code, body = http(f"{status.ui_url}/api/v1/applications/{status.app_id}/environment")
    assert code == 200
    environment = json.loads(body)
    shown = dict(environment["sparkProperties"])
    for key, value in SECRETS.items():
        assert shown[key] == "*********(redacted)", key
        assert value not in body
    assert dict(environment["hadoopProperties"])["fs.s3a.secret.key"] == "*********(redacted)"


def test_a_driver_listens_on_loopback_only_its_ui_cannot_kill_and_hides_secrets(
    tmp_path: Path, neighbour: str
) -> None:
    # Given a job started by hand on a rate source, with secrets in its Spark conf
    env = {k: v for k, v in os.environ.items() if k != "SPARK_LOCAL_IP"}
    env["PYSPARK_SUBMIT_ARGS"] = " ".join(
        [f"--conf {key}={value}" for key, value in SECRETS.items()] + ["pyspark-shell"]
    )
    checkpoint = tmp_path / "ck"
    argv = [
        "--source", "rate", "--rows-per-second", "20",
        "--sink", str(tmp_path / "sink"), "--checkpoint", str(checkpoint),
        "--trigger-interval", "1 second", "--shuffle-partitions", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(
        job_command("word_count", *argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    # And a listener of the test's own on every interface
    control = socket.create_server(("0.0.0.0", 0))
    try:
        status = wait_for_batches(checkpoint, proc, 2)
        ports = listening(proc.pid)

        # Then every driver port (the UI, RPC, block manager, Py4J) is bound to loopback
        assert len(ports) >= 4, ports
        exposed = [
            (ip, port)
            for ip, port in ports
            if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback
        ]
        assert exposed == [], ports
        # And from another host none answers, on any address of this machine, while the
        # test's own listener does
        addresses = machine_addresses()
        targets = [(address, port) for address in addresses for _, port in ports]
        control_port = control.getsockname()[1]
        reached = probe_from(neighbour, [*targets, (addresses[0], control_port)])
        assert reached.pop(f"{addresses[0]}:{control_port}") == "open"
        assert reached
        assert all(result != "open" for result in reached.values()), reached

        # And the status says where the UI is; from loopback it answers with the query's
        # Structured Streaming page
        assert status.ui_url is not None
        assert status.app_id is not None
        ui_port = int(status.ui_url.rsplit(":", 1)[1])
        assert ui_port in {port for _, port in ports}
        assert status.streaming_ui_url is not None
        code, page = http(status.streaming_ui_url)
        assert code == 200
        assert status.run_id in page, page[:2000]
        assert "word_count" in page, page[:2000]

        # And its kill endpoints kill nothing: kills sent at the stream's running jobs and stages
        # (through each endpoint, by POST and GET) leave every job succeeded, no kill link shows,
        # and the stream goes on
        targeted = kill_running_work(status.ui_url, status.app_id, proc)
        assert targeted >= 4, f"only {targeted} kill requests reached running work"
        api = f"{status.ui_url}/api/v1/applications/{status.app_id}"
        jobs = json.loads(http(f"{api}/jobs")[1])
        assert [job for job in jobs if job["status"] == "FAILED"] == []
        stages = json.loads(http(f"{api}/stages")[1])
        assert [stage for stage in stages if stage["status"] in {"FAILED", "KILLED"}] == []
        assert "kill" not in http(f"{status.ui_url}/jobs/")[1].lower()
        batch = status.last_batch.spark_batch_id if status.last_batch else 0
        after = wait_for_batches(checkpoint, proc, batch + 3)
        assert after.state == "running"

        check_redacted(status)
    finally:
        control.close()
        os.killpg(proc.pid, 15)
        try:
            proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
