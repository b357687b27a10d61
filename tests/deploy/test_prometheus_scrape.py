"""A real Prometheus (Debian's) scrapes `/streamops/metrics` with the compose file's scrape job
and the metrics token, loads the alert rules, and a dead driver makes the stream-down rule fire.

The endpoint is the plugin's FastAPI app, mounted at `/streamops` as in the api-server and served
by uvicorn on a free port, reading the overview fixture's real files (test_overview). The compose
configuration is used with only the streamops job's target, the intervals (2 s and 1 s, to keep the
test short) and the rules' path changed, and without its job that scrapes Prometheus itself.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from fastapi import FastAPI

from spark_jobs.layout import CheckpointLayout
from spark_jobs.status import write_status
from streamops import registry
from streamops.health import Breach
from streamops.incidents import AlertSettings, IncidentStore, update
from streamops.overview import clear_cache
from streamops.web import create_app
from tests.conftest import ROOT, free_port
from tests.deploy.test_grafana import queries as grafana_queries
from tests.deploy.test_prometheus_rules import RULES
from tests.monitoring import http_json, prometheus
from tests.streamops.test_health import NOW, make_status
from tests.streamops.test_web import data_root, dead_pid, root

__all__ = ["data_root", "dead_pid", "root"]  # fixtures, used by name

TOKEN = "scrape-s3cret"
INTERVAL = 2.0  # seconds between scrapes
# Prometheus applies its targets about 5 s after it starts (its scrape manager reloads at most
# every 5 s), then scrapes each at an offset within the interval: measured here, 5.8-6 s with
# 1 s scrapes, 9.7 s with 5 s ones.
TARGETS_APPLIED = 5.0


@pytest.fixture
def endpoint(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`host:port` of the plugin's app, behind the metrics token."""
    monkeypatch.setenv("STREAMOPS_METRICS_TOKEN", TOKEN)
    outer = FastAPI()
    outer.mount("/streamops", create_app())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(outer, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def compose_config(folder: Path, target: str) -> Path:
    """deploy/prometheus/prometheus.yml with the token block the compose service appends."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    config["global"] = {"scrape_interval": f"{INTERVAL:g}s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    job = config["scrape_configs"][-1]
    assert job["job_name"] == "streamops"
    config["scrape_configs"] = [job]
    job["static_configs"] = [{"targets": [target]}]
    (folder / "metrics-token").write_text(TOKEN)
    job["authorization"] = {"credentials_file": str(folder / "metrics-token")}
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = http_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def add_stopped_kafka_stream(root: Path) -> str:
    """Register a stopped Kafka stream (no input folder) whose last batch left records behind."""
    from dataclasses import replace

    from tests.streamops.test_health import make_record

    checkpoint = str(root / "streams/wc_kafka/checkpoint")
    record = make_record(
        stream="wc_kafka", input="", desired="stopped", checkpoint=checkpoint, sink=str(root / "s")
    )
    registry.save(record, str(root))
    status = make_status(checkpoint=checkpoint, state="stopped")
    assert status.last_batch is not None
    status.last_batch = replace(status.last_batch, records_behind={"lines": 7})
    write_status(status)
    clear_cache()
    return record.stream


def test_prometheus_scrapes_the_streams_and_a_dead_driver_fires_the_rule(
    tmp_path: Path, root: Path, endpoint: str, dead_pid: int
) -> None:
    # Given an open incident, so that every metric has a sample, and a Prometheus with the
    # compose file's job and the rules
    stalled = Breach("word_count", "stalled", "120 s", "stream word_count: stalled")
    update("word_count", [stalled], NOW, lambda *_: [], AlertSettings(), IncidentStore(str(root)))
    config = compose_config(tmp_path, endpoint)
    with prometheus(tmp_path / "prometheus", config) as server:
        ready = time.time()
        print(f"Prometheus ready in {server.started_in:.2f} s")
        # Then it has every stream's health, scraped with the token
        wait_for(
            lambda: len(query(server.url, "streamops_stream_healthy")) == 2, 30, "both streams"
        )
        up = query(server.url, 'up{job="streamops"}')
        assert up[0]["value"][1] == "1", "the scrape with the token failed"
        # And its first sample of them (Prometheus's own timestamp) came within two scrape
        # intervals of Prometheus applying its targets (with the default 15 s scrapes: within
        # two intervals of its start)
        samples = query(server.url, "streamops_stream_healthy[1m]")
        first = min(float(s["values"][0][0]) for s in samples)
        print(f"first scrape of the streams {first - ready:.2f} s after Prometheus was ready")
        assert first - ready <= TARGETS_APPLIED + 2 * INTERVAL
        rules = http_json(f"{server.url}/api/v1/rules")["data"]["groups"][0]["rules"]
        assert len(rules) == 7
        assert query(server.url, 'ALERTS{alertname="StreamopsStreamDown"}') == []

        # Given also a stopped Kafka stream whose last batch left records behind (the
        # dashboard's one Kafka query has data then)
        kafka = add_stopped_kafka_stream(root)
        # When word_count's driver dies (status failed, its lease gone)
        record = registry.load("word_count", str(root))
        assert record is not None
        write_status(make_status(checkpoint=record.checkpoint, state="failed", pid=dead_pid))
        lease = CheckpointLayout.of(record.checkpoint).lease_file
        lease.filesystem.delete_file(lease.path)
        clear_cache()
        # Then the stream-down rule fires in Prometheus for that stream alone (pending for its
        # `for:` of 2 minutes, then firing: the promtool unit tests cover the wait)
        alerts = wait_for(
            lambda: query(server.url, 'ALERTS{alertname="StreamopsStreamDown"}'),
            INTERVAL + 10,
            "StreamopsStreamDown",
        )
        assert [(a["metric"]["stream"], a["metric"]["alertstate"]) for a in alerts] == [
            ("word_count", "pending")
        ]
        assert alerts[0]["metric"]["severity"] == "page"
        # And every query of the Grafana dashboard runs there (a PromQL error fails the request)
        # and finds data
        for promql in grafana_queries():
            stream = kafka if "streamops_source_" in promql else "word_count"
            concrete = promql.replace('=~"$stream"', '=~".+"').replace("$stream", stream)
            assert query(server.url, concrete), f"no data: {concrete}"
