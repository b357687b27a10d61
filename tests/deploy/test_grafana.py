"""deploy/grafana/streamops.json: valid, one row per stream and a quality overview, every query
naming metrics that `/streamops/metrics` exports (read through the plugin's app from real files),
and provisioned by the compose file's Grafana (profile `metrics`). No Grafana server is needed;
tests/deploy/test_prometheus_scrape.py runs every query on a real Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient

from streamops.health import Breach
from streamops.incidents import AlertSettings, IncidentStore, update
from tests.conftest import ROOT
from tests.streamops.test_health import NOW
from tests.streamops.test_web import anonymous, data_root, dead_pid, root

__all__ = ["anonymous", "data_root", "dead_pid", "root"]  # fixtures, used by name

FOLDER = ROOT / "deploy" / "grafana"
DASHBOARD = FOLDER / "streamops.json"
METRIC = re.compile(r"\bstreamops_[a-z_]+\b")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    """Every PromQL query of the dashboard: its panels' and its variables'."""
    found = [t["expr"] for p in panels() for t in p["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            found.append(re.sub(r"^label_values\((\w+), \w+\)$", r"\1", variable["definition"]))
    return found


def exported(exposition: str) -> set[str]:
    """The metric names of an exposition: each family's (also those without a sample now) and
    each sample's (`_total` of counters)."""
    names = set(re.findall(r"^# (?:HELP|TYPE) (\w+)", exposition, re.M))
    names |= set(re.findall(r"^(\w+)[{ ]", exposition, re.M))
    return names


def test_every_query_names_a_metric_the_endpoint_exports(anonymous: TestClient, root: Path) -> None:
    # Given the endpoint with an open incident, so that every family has samples
    stalled = Breach("word_count", "stalled", "120 s", "stream word_count: stalled")
    update("word_count", [stalled], NOW, lambda *_: [], AlertSettings(), IncidentStore(str(root)))
    response = anonymous.get("/metrics")
    assert response.status_code == 200
    names = exported(response.text)
    used = {name for query in queries() for name in METRIC.findall(query)}
    assert len(used) >= 10  # the regex finds them
    assert used - names == set(), "the dashboard queries metrics the endpoint does not export"


def test_one_row_per_stream_and_a_quality_overview() -> None:
    board = dashboard()
    assert board["uid"] == "streamops"
    (stream_var,) = [v for v in board["templating"]["list"] if v["name"] == "stream"]
    assert stream_var["multi"]
    assert stream_var["includeAll"]
    (row,) = [p for p in board["panels"] if p["type"] == "row" and p.get("repeat")]
    assert row["repeat"] == "stream"
    # Each panel below the repeated row is about "$stream" alone
    below = [p for p in panels() if p["gridPos"]["y"] > row["gridPos"]["y"]]
    for panel in below:
        for target in panel["targets"]:
            assert 'stream="$stream"' in target["expr"], (panel["title"], target["expr"])
    used = " ".join(t["expr"] for p in below for t in p["targets"])
    for metric in (
        "streamops_stream_state",
        "streamops_stream_input_rows_per_second",
        "streamops_stream_processed_rows_per_second",
        "streamops_stream_batch_duration_seconds",
        "streamops_stream_backlog_files",
        "streamops_incident_open",
    ):
        assert metric in used, metric
    above = " ".join(
        t["expr"] for p in panels() if p["gridPos"]["y"] < row["gridPos"]["y"] for t in p["targets"]
    )
    assert "streamops_quality_success" in above
    # Every panel reads the dashboard's Prometheus variable, and ids are unique
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_the_compose_grafana_provisions_the_dashboard_on_the_compose_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    assert grafana["profiles"] == ["metrics"]
    mounts = dict(reversed(v.split(":")[:2]) for v in grafana["volumes"])
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provider = yaml.safe_load((FOLDER / "provisioning/dashboards/streamops.yml").read_text())
    (source,) = provider["providers"]
    path = source["options"]["path"]
    assert mounts[f"{path}/streamops.json"] == "./deploy/grafana/streamops.json"
    sources = yaml.safe_load((FOLDER / "provisioning/datasources/prometheus.yml").read_text())
    (prometheus,) = sources["datasources"]
    assert (prometheus["type"], prometheus["url"]) == ("prometheus", "http://prometheus:9090")
    assert "prometheus" in compose["services"]
