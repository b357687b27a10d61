"""The Alertmanager channel against a real Alertmanager (Debian's `prometheus-alertmanager`).

Each test starts its own Alertmanager on a free port with a short `resolve_timeout` and a webhook
receiver in the test, and drives the real incident code: `streamops.incidents.update` with
breaches, through `IncidentChannels` and the `streamops_alertmanager` connection, with the wall
clock (Alertmanager judges `resolve_timeout` by its own).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from streamops.health import Breach
from streamops.incidents import AlertSettings, IncidentStore, update
from streamops.notifiers import IncidentChannels, incident_links
from tests.conftest import free_port
from tests.monitoring import Server, active_alerts, alertmanager

RESOLVE_TIMEOUT = 3.0  # seconds: Alertmanager resolves an alert not posted again within this
SETTINGS = AlertSettings()


def stalled() -> Breach:
    return Breach("wc", "stalled", "120 s", "stream wc: stalled (no status for 120 s)")


class Notifications:
    """Alertmanager's webhook receiver: what Alertmanager notified, one body per notification."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses(self) -> list[str]:
        return [body["status"] for body in self.bodies]


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    receiver = Notifications()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Point the `streamops_alertmanager` connection at a URL (and no other channel's)."""
    monkeypatch.setenv("STREAMOPS_DATA_ROOT", str(tmp_path))
    for name in ("SLACK", "SMTP", "WEBHOOK", "PAGERDUTY"):
        monkeypatch.delenv(f"AIRFLOW_CONN_STREAMOPS_{name}", raising=False)

    def point(url: str) -> None:
        connection = {"conn_type": "http", "host": url}
        monkeypatch.setenv("AIRFLOW_CONN_STREAMOPS_ALERTMANAGER", json.dumps(connection))

    return point


@pytest.fixture
def manager(tmp_path: Path, notifications: Notifications, connect: Any) -> Iterator[Server]:
    with alertmanager(
        tmp_path / "alertmanager", f"{RESOLVE_TIMEOUT:g}s", webhook=notifications.url
    ) as server:
        print(f"Alertmanager ready in {server.started_in:.2f} s")
        connect(server.url)
        yield server


def active(server: Server) -> list[dict[str, Any]]:
    """The alerts of stream wc that Alertmanager holds active now."""
    return active_alerts(server, "wc")


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def check(root: Path, *breaches: Breach, send: Any = None) -> list[dict[str, Any]]:
    """One health check of stream wc at the wall clock's time."""
    return update(
        "wc",
        list(breaches),
        datetime.now(UTC),
        send or IncidentChannels(str(root)),
        SETTINGS,
        IncidentStore(str(root)),
        log=print,
    )


def test_an_open_incident_stays_one_active_alert_past_resolve_timeout_then_resolves(
    tmp_path: Path, manager: Server, notifications: Notifications
) -> None:
    # When stream wc starts failing its checks, once a second
    opened = datetime.now(UTC).replace(microsecond=0)
    check(tmp_path, stalled())
    (incident,) = IncidentStore(str(tmp_path)).all()
    # Then Alertmanager holds one alert for it, with the incident's labels, links and start
    wait_for(lambda: len(active(manager)) == 1, 10, "the alert is active")
    (alert,) = active(manager)
    assert {k: alert["labels"][k] for k in ("alertname", "stream", "signal", "severity")} == {
        "alertname": "streamops_stalled",
        "stream": "wc",
        "signal": "stalled",
        "severity": "page",
    }
    links = incident_links({"signal": "stalled"})
    assert alert["generatorURL"] == links["page"]
    assert alert["annotations"]["runbook_url"] == links["runbook"]
    assert alert["annotations"]["summary"].startswith("stream wc: stalled since")
    assert alert["annotations"]["description"] == "stream wc: stalled (no status for 120 s)"
    assert datetime.fromisoformat(alert["startsAt"]) == datetime.fromisoformat(incident.opened_at)
    assert datetime.fromisoformat(incident.opened_at) >= opened
    # And while the incident stays open for three times resolve_timeout, checked every second,
    # it stays one active alert (each check posts it again)
    end = time.monotonic() + 3 * RESOLVE_TIMEOUT
    while time.monotonic() < end:
        time.sleep(1)
        sent = check(tmp_path, stalled())
        assert sent == []  # no notification for people: only the refresh
        alerts = active(manager)
        assert len(alerts) == 1, alerts
        assert alerts[0]["fingerprint"] == alert["fingerprint"]
    assert notifications.statuses() == ["firing"]  # Alertmanager notified its receiver once
    # When the stream passes its check
    check(tmp_path)
    # Then the alert is resolved at once (not after resolve_timeout), and the receiver is told
    assert active(manager) == []
    wait_for(lambda: notifications.statuses() == ["firing", "resolved"], 10, "resolved sent")
    resolved = notifications.bodies[-1]["alerts"][0]
    (closed,) = IncidentStore(str(tmp_path)).all()
    assert datetime.fromisoformat(resolved["endsAt"]) == datetime.fromisoformat(closed.resolved_at)


def test_without_the_refreshes_alertmanager_would_resolve_a_live_incident(
    tmp_path: Path, manager: Server
) -> None:
    # Given a sender that delivers the same notifications but takes no refreshes
    channels = IncidentChannels(str(tmp_path))

    def notifications_only(event: dict[str, Any], due: list[str] | None) -> list[str]:
        return channels(event, due)

    check(tmp_path, stalled(), send=notifications_only)
    wait_for(lambda: len(active(manager)) == 1, 10, "the alert is active")
    # When the incident stays open past resolve_timeout, checked every second
    end = time.monotonic() + RESOLVE_TIMEOUT + 2
    while time.monotonic() < end:
        time.sleep(1)
        check(tmp_path, stalled(), send=notifications_only)
    # Then Alertmanager has resolved it by itself: the refreshes are what keep it active
    assert active(manager) == []
    assert [i.state for i in IncidentStore(str(tmp_path)).all()] == ["firing"]


def test_a_down_alertmanager_gets_the_alert_at_the_next_check(
    tmp_path: Path, notifications: Notifications, connect: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the connection names a port where Alertmanager is not running yet
    port = free_port()
    connect(f"http://127.0.0.1:{port}")
    check(tmp_path, stalled())
    assert "could not notify Alertmanager of firing stalled" in capsys.readouterr().out
    (incident,) = IncidentStore(str(tmp_path)).all()
    assert incident.undelivered[0]["channels"] == ["Alertmanager"]
    # When it is up at the next check
    with alertmanager(
        tmp_path / "alertmanager", f"{RESOLVE_TIMEOUT:g}s", webhook=notifications.url, port=port
    ) as server:
        check(tmp_path, stalled())
        # Then it has the alert, once, and nothing is left to deliver
        wait_for(lambda: len(active(server)) == 1, 10, "the alert is active")
        (incident,) = IncidentStore(str(tmp_path)).all()
        assert incident.undelivered == []
        assert "FIRING (a retry)" in capsys.readouterr().out
