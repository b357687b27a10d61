"""`/streamops/metrics` passes `promtool check metrics` (Debian's promtool, the real linter):
names, units, `_total` on counters, HELP on every family.

The exposition is read through the plugin's FastAPI app from real files (the overview fixture of
test_overview), in several states at once: a running stream with an open incident, a stopped one
with a resolved incident, then the running one dead.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from spark_jobs.layout import CheckpointLayout
from spark_jobs.status import read_status, write_status
from streamops import registry
from streamops.health import Breach
from streamops.incidents import AlertSettings, IncidentStore, update
from streamops.overview import clear_cache
from tests.monitoring import promtool
from tests.streamops.test_health import NOW, make_status
from tests.streamops.test_web import anonymous, data_root, dead_pid, root, signed_in

__all__ = ["anonymous", "data_root", "dead_pid", "root", "signed_in"]  # fixtures, used by name


def lint(exposition: str) -> str:
    """promtool's findings on an exposition: empty when it has none."""
    done = promtool("check", "metrics", stdin=exposition)
    findings = (done.stdout + done.stderr).strip()
    assert (done.returncode == 0) == (findings == ""), (done.returncode, findings)
    return findings


def test_promtool_reports_what_breaks_the_conventions() -> None:
    # The linter itself: a counter without `_total`, a non-base unit and no HELP are reported
    findings = lint(
        "# TYPE streamops_x counter\nstreamops_x 1\n# TYPE y_milliseconds gauge\ny_milliseconds 3\n"
    )
    assert 'counter metrics should have "_total" suffix' in findings
    assert 'use base unit "seconds" instead of "milliseconds"' in findings
    assert "no help text" in findings


def test_the_metrics_endpoint_passes_promtool_in_every_state(
    anonymous: TestClient, root: Path, dead_pid: int
) -> None:
    # Given word_count with an open incident and totals with a resolved one
    store, quiet = IncidentStore(str(root)), lambda *_: []
    stalled = Breach("word_count", "stalled", "120 s", "stream word_count: stalled")
    backlog = Breach("totals", "backlog", "200 files", "stream totals: backlog")
    update("word_count", [stalled], NOW - timedelta(minutes=30), quiet, AlertSettings(), store)
    update("totals", [backlog], NOW - timedelta(minutes=30), quiet, AlertSettings(), store)
    update("totals", [], NOW - timedelta(minutes=5), quiet, AlertSettings(), store)
    # When Prometheus scrapes the endpoint
    response = anonymous.get("/metrics")
    assert response.status_code == 200
    # Then promtool finds nothing, and the exposition has every kind of family filled in
    assert lint(response.text) == ""
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["streamops_stream_restarts"].type == "counter"
    assert len(families["streamops_incident_open"].samples) == 1
    assert {s.labels["stream"] for s in families["streamops_quality_success"].samples} == {
        "word_count"
    }
    for family in families.values():
        assert family.documentation, family.name

    # Given the running stream's driver is gone (failed, not running, no lease)
    record = registry.load("word_count", str(root))
    assert record is not None
    write_status(make_status(checkpoint=record.checkpoint, state="failed", pid=dead_pid))
    lease = CheckpointLayout.of(record.checkpoint).lease_file
    lease.filesystem.delete_file(lease.path)
    clear_cache()
    response = anonymous.get("/metrics")
    # Then promtool still finds nothing, and the breach is there
    assert lint(response.text) == ""
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    breaches = {
        (s.labels["stream"], s.labels["signal"]): s.value
        for s in families["streamops_stream_breach"].samples
    }
    assert breaches[("word_count", "not_running")] == 1


def test_a_kafka_streams_records_behind_are_a_gauge_per_topic(
    anonymous: TestClient, signed_in: TestClient, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a Kafka stream (no input folder) whose last batch left records behind on two topics
    from dataclasses import replace

    from streamops.cli import main
    from tests.streamops.test_health import make_record

    checkpoint = str(root / "streams/wc_kafka/checkpoint")
    registry.save(
        make_record(stream="wc_kafka", input="", checkpoint=checkpoint, sink=str(root / "s")),
        str(root),
    )
    status = make_status(checkpoint=checkpoint)
    assert status.last_batch is not None
    status.last_batch = replace(status.last_batch, records_behind={"lines": 1200, "clicks": 3})
    write_status(status)
    clear_cache()
    # When Prometheus scrapes the endpoint
    response = anonymous.get("/metrics")
    # Then each topic is a sample of streamops_source_records_behind, and promtool finds nothing
    assert lint(response.text) == ""
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    behind = {
        (s.labels["stream"], s.labels["topic"]): s.value
        for s in families["streamops_source_records_behind"].samples
    }
    assert behind == {("wc_kafka", "lines"): 1200.0, ("wc_kafka", "clicks"): 3.0}
    # And the page's API and the CLI show the backlog in records
    view = signed_in.get("/api/streams").json()
    (stream,) = [s for s in view["streams"] if s["stream"] == "wc_kafka"]
    assert stream["records_behind"] == {"lines": 1200, "clicks": 3}
    main(["status", "--local", "wc_kafka"])
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("wc_kafka")]
    assert "1203 records" in line


def test_the_spec_version_each_driver_runs_is_a_metric(anonymous: TestClient, root: Path) -> None:
    # Given word_count's driver runs a spec version the registry knows
    record = registry.load("word_count", str(root))
    assert record is not None
    version = registry.SpecVersion.of("word_count", record.params, commit="abc123")
    record.run_version(version)
    registry.save(record, str(root))
    status = read_status(record.checkpoint)
    assert status is not None
    status.spec_version = version.version
    write_status(status)
    clear_cache()
    # When Prometheus scrapes the endpoint
    response = anonymous.get("/metrics")
    # Then the version and its code are labels of one sample, and promtool finds nothing
    assert lint(response.text) == ""
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = families["streamops_stream_spec_info"].samples
    assert [(s.labels, s.value) for s in samples] == [
        ({"stream": "word_count", "version": version.version, "code": version.code}, 1.0)
    ]
