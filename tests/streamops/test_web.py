"""The Streams plugin's FastAPI app: auth on the API, the page, the metrics, Data Docs.

Requests go through FastAPI's test client against the real app. Authentication is Airflow's own
`get_user`, so a request with neither a token nor the UI's session cookie is refused here as in
the api-server (the live check is in tests/plugins/test_streams_page.py); signed-in requests
replace only the auth dependency.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from streamops import web
from streamops.health import HealthThresholds
from streamops.overview import overview
from streamops.web import create_app, require_reader
from tests.streamops.test_health import NOW
from tests.streamops.test_overview import data_root, dead_pid

__all__ = ["data_root", "dead_pid"]  # fixtures, used by name


@pytest.fixture
def root(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMOPS_DATA_ROOT", str(data_root))
    monkeypatch.delenv("STREAMOPS_METRICS_TOKEN", raising=False)
    # The fixture's files are written at the fixed time NOW: judge them at that time.
    monkeypatch.setattr(
        web, "_overview", lambda: overview(str(data_root), now=NOW, thresholds=HealthThresholds())
    )
    return data_root


@pytest.fixture
def anonymous(root: Path) -> Iterator[TestClient]:
    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def signed_in(root: Path) -> Iterator[TestClient]:
    app = create_app()
    app.dependency_overrides[require_reader] = lambda: None
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    "path", ["/api/streams", "/api/streams/word_count", "/data-docs/index.html", "/runbook"]
)
def test_data_needs_an_airflow_login(anonymous: TestClient, path: str) -> None:
    response = anonymous.get(path)
    assert response.status_code == 401
    assert response.json()["detail"] == "Not authenticated"


def test_the_api_lists_every_stream(signed_in: TestClient) -> None:
    body = signed_in.get("/api/streams").json()
    assert [s["stream"] for s in body["streams"]] == ["totals", "word_count"]
    words = body["streams"][1]
    assert words["checkpoint"]["generation"] == 2
    assert words["quality"]["success"] is False
    assert {"state", "healthy", "last_batch_id", "recent_batches", "alerts"} <= set(words)


def test_an_unknown_stream_is_a_404_naming_the_known_ones(signed_in: TestClient) -> None:
    response = signed_in.get("/api/streams/nope")
    assert response.status_code == 404
    assert "known: totals, word_count" in response.json()["detail"]


def test_the_page_is_served_and_reads_the_api(anonymous: TestClient) -> None:
    response = anonymous.get("/ui")
    assert response.status_code == 200
    assert "<title>Streams</title>" in response.text
    assert 'const API = "api/streams"' in response.text


def test_metrics_parse_with_the_prometheus_parser(anonymous: TestClient) -> None:
    response = anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}

    # Counters are exposed as <name>_total; the parser strips the suffix from the family name.
    assert families["streamops_stream_restarts"].type == "counter"
    assert "streamops_stream_restarts_total" in response.text
    states = {
        (s.labels["stream"], s.labels["state"]): s.value
        for s in families["streamops_stream_state"].samples
    }
    assert states[("word_count", "running")] == 1
    assert states[("totals", "stopped")] == 1
    assert states[("word_count", "failed")] == 0
    sizes = {s.labels["stream"] for s in families["streamops_checkpoint_size_bytes"].samples}
    assert sizes == {"word_count", "totals"}
    healthy = {s.labels["stream"]: s.value for s in families["streamops_stream_healthy"].samples}
    assert healthy == {"totals": 1.0, "word_count": 1.0}
    last = {s.labels["stream"]: s.value for s in families["streamops_stream_last_batch_id"].samples}
    assert last["word_count"] == 44


def test_metrics_need_the_token_when_one_is_set(
    anonymous: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMOPS_METRICS_TOKEN", "s3cret")
    assert anonymous.get("/metrics").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert anonymous.get("/metrics", headers=wrong).status_code == 401
    right = {"Authorization": "Bearer s3cret"}
    assert anonymous.get("/metrics", headers=right).status_code == 200


def test_data_docs_are_served_from_their_folder_only(signed_in: TestClient, root: Path) -> None:
    site = root / "_streamops" / "quality" / "data_docs"
    site.mkdir(parents=True)
    (site / "index.html").write_text("<h1>docs</h1>")
    (root / "secret.txt").write_text("no")

    assert signed_in.get("/data-docs/index.html").text == "<h1>docs</h1>"
    assert signed_in.get("/data-docs/../../../secret.txt").status_code == 404
    assert signed_in.get("/data-docs/%2e%2e/%2e%2e/%2e%2e/secret.txt").status_code == 404


def test_the_runbook_is_rendered(signed_in: TestClient) -> None:
    response = signed_in.get("/runbook")
    assert response.status_code == 200
    assert 'id="not_running"' in response.text


def test_the_page_shows_open_incidents_and_those_resolved_lately(
    signed_in: TestClient, root: Path
) -> None:
    """Headless Chromium renders the page from the app's own API answer."""
    import shutil
    from datetime import timedelta

    from streamops.health import Breach
    from streamops.incidents import AlertSettings, IncidentStore, update

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/system-deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    store, quiet = IncidentStore(str(root)), lambda *_: []
    stalled = Breach("word_count", "stalled", "120 s", "stream word_count: stalled")
    backlog = Breach("totals", "backlog", "200 files", "stream totals: backlog")
    update("word_count", [stalled], NOW - timedelta(minutes=30), quiet, AlertSettings(), store)
    update("totals", [backlog], NOW - timedelta(minutes=30), quiet, AlertSettings(), store)
    update("totals", [], NOW - timedelta(minutes=5), quiet, AlertSettings(), store)
    from streamops import registry

    record = registry.load("totals", str(root))
    assert record is not None
    version = registry.SpecVersion.of("running_total", record.params, commit="abc")
    record.run_version(version)
    registry.save(record, str(root))
    page_html = signed_in.get("/ui").text
    api = signed_in.get("/api/streams").text
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.route(
                "**/api/streams", lambda r: r.fulfill(body=api, content_type="application/json")
            )
            page.route(
                "http://streams.test/ui",
                lambda r: r.fulfill(body=page_html, content_type="text/html"),
            )
            page.goto("http://streams.test/ui")
            page.wait_for_selector("body[data-loaded='true']", timeout=30_000)
            incident = page.inner_text("[data-incident='stalled']")
            resolved = page.inner_text("#resolved")
            spec = page.inner_text("[data-spec='totals']")
            no_spec = page.query_selector("[data-spec='word_count']")
        finally:
            browser.close()
    assert errors == []
    assert incident.startswith("incident stalled open for 30 min")
    assert resolved == "2026-01-05 11:55:00 stream totals: backlog resolved after 25 min"
    assert spec == f"spec {version.version}"
    assert no_spec is None  # a stream started before spec versions has none to show
