"""Incidents per (stream, signal): open once, remind, resolve, flap, survive concurrent checks and
failing channels. Real files under a temporary data root; the clock is passed in."""

from __future__ import annotations

import json
import multiprocessing
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from streamops.health import Breach
from streamops.incidents import AlertSettings, IncidentStore, update
from streamops.notifiers import IncidentChannels, alertmanager_webhook_payload

T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
SETTINGS = AlertSettings(repeat=timedelta(hours=4), flap_window=timedelta(minutes=15))


def stalled(stream: str = "wc") -> Breach:
    return Breach(stream, "stalled", "120 s", f"stream {stream}: stalled (no status for 120 s)")


def behind(stream: str = "wc") -> Breach:
    return Breach(stream, "falling_behind", "0.5", f"stream {stream}: falling_behind (50%)")


class Outbox:
    """A channel that records what it is sent, and fails while `down` is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.down = False

    def __call__(self, event: dict[str, Any], channels: list[str] | None) -> list[str]:
        if self.down:
            return ["webhook"]
        self.sent.append((event["kind"], event["signal"], event["dedup_key"]))
        return []


def check(root: Path, outbox: Outbox, at: datetime, *breaches: Breach, stream: str = "wc") -> None:
    update(stream, list(breaches), at, outbox, SETTINGS, IncidentStore(str(root)), log=print)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def test_a_30_minute_outage_is_one_firing_and_one_resolved_notification(tmp_path: Path) -> None:
    outbox = Outbox()
    # When a stream fails its check every minute for 30 minutes, then passes
    for minute in range(30):
        check(tmp_path, outbox, minutes(minute), stalled())
    check(tmp_path, outbox, minutes(30))
    # Then on-call got two notifications of one incident
    assert [(kind, signal) for kind, signal, _ in outbox.sent] == [
        ("firing", "stalled"),
        ("resolved", "stalled"),
    ]
    assert len({key for *_, key in outbox.sent}) == 1
    # And the incident is kept (resolved) for the flap window, then closed into the history
    (incident,) = IncidentStore(str(tmp_path)).all()
    assert (incident.state, incident.checks, incident.resolved_at) == (
        "resolved",
        30,
        minutes(30).isoformat(),
    )
    assert incident.duration(minutes(99)) == timedelta(minutes=30)
    check(tmp_path, outbox, minutes(46))
    assert IncidentStore(str(tmp_path)).all() == []
    (closed,) = IncidentStore(str(tmp_path)).recent_closed()
    assert (closed.signal, closed.checks) == ("stalled", 30)
    assert len(outbox.sent) == 2


def test_a_reminder_goes_out_each_repeat_interval(tmp_path: Path) -> None:
    outbox = Outbox()
    for minute in range(0, 9 * 60, 10):
        check(tmp_path, outbox, minutes(minute), stalled())
    kinds = [kind for kind, *_ in outbox.sent]
    assert kinds == ["firing", "reminder", "reminder"]  # at 4 h and 8 h
    (incident,) = IncidentStore(str(tmp_path)).all()
    assert incident.reminders == 2


def test_two_signals_are_two_incidents_resolved_one_by_one(tmp_path: Path) -> None:
    outbox = Outbox()
    check(tmp_path, outbox, minutes(0), stalled(), behind())
    check(tmp_path, outbox, minutes(1), stalled(), behind())
    check(tmp_path, outbox, minutes(2), behind())
    check(tmp_path, outbox, minutes(3))
    assert [(k, s) for k, s, _ in outbox.sent] == [
        ("firing", "stalled"),
        ("firing", "falling_behind"),
        ("resolved", "stalled"),
        ("resolved", "falling_behind"),
    ]
    # And another stream's check leaves these alone
    check(tmp_path, outbox, minutes(4), stream="other")
    assert len(outbox.sent) == 4


def test_a_flapping_stream_is_one_incident_with_a_count(tmp_path: Path) -> None:
    outbox = Outbox()
    # When a stream breaks and recovers every other minute for 20 minutes, then stays healthy
    for minute in range(20):
        check(tmp_path, outbox, minutes(minute), *([stalled()] if minute % 2 == 0 else []))
    for minute in range(20, 40):
        check(tmp_path, outbox, minutes(minute))
    # Then it was one incident: firing, resolved, one flapping notice, and a final resolve
    assert [k for k, *_ in outbox.sent] == ["firing", "resolved", "flapping", "resolved"]
    assert len({key for *_, key in outbox.sent}) == 1
    (closed,) = IncidentStore(str(tmp_path)).recent_closed()
    assert closed.flaps == 9
    # And a break long after is a new incident
    check(tmp_path, outbox, minutes(120), stalled())
    assert outbox.sent[-1][0] == "firing"
    assert outbox.sent[-1][2] != outbox.sent[0][2]


def test_a_failing_channel_is_retried_at_the_next_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = Outbox()
    outbox.down = True
    check(tmp_path, outbox, minutes(0), stalled())
    assert "could not notify webhook of firing stalled: retried at the next check" in (
        capsys.readouterr().out
    )
    (incident,) = IncidentStore(str(tmp_path)).all()
    assert incident.undelivered[0]["channels"] == ["webhook"]
    outbox.down = False
    check(tmp_path, outbox, minutes(1), stalled())
    assert [k for k, *_ in outbox.sent] == ["firing"]  # the retry; no second firing
    assert "FIRING (a retry)" in capsys.readouterr().out
    (incident,) = IncidentStore(str(tmp_path)).all()
    assert incident.undelivered == []


def _one_check(root: str, at: str, queue: Any) -> None:
    sent: list[str] = []

    def send(event: dict[str, Any], channels: list[str] | None) -> list[str]:
        sent.append(event["kind"])
        return []

    update(
        "wc",
        [stalled()],
        datetime.fromisoformat(at),
        send,
        SETTINGS,
        IncidentStore(root),
        log=lambda _: None,
    )
    queue.put(sent)


def test_concurrent_checks_in_separate_processes_open_one_incident(tmp_path: Path) -> None:
    # Given 8 checks of the same failing stream at once (two health runs, a retried task)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [
        context.Process(target=_one_check, args=(str(tmp_path), T0.isoformat(), queue))
        for _ in range(8)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    # Then exactly one of them opened the incident and notified
    sent = [queue.get(timeout=10) for _ in processes]
    assert sorted(kind for kinds in sent for kind in kinds) == ["firing"]
    (incident,) = IncidentStore(str(tmp_path)).all()
    assert incident.checks == 8


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: keeps each JSON body; answers 500 while `failing` is set."""

    bodies: ClassVar[list[dict[str, Any]]] = []
    failing = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Receiver.failing:
            self.send_response(500)
        else:
            Receiver.bodies.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_webhook_gets_alertmanager_webhook_payloads_with_one_dedup_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.bodies, Receiver.failing = [], True
    monkeypatch.setenv(
        "AIRFLOW_CONN_STREAMOPS_WEBHOOK",
        json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{server.server_port}"}),
    )
    channels = IncidentChannels(str(tmp_path))
    store = IncidentStore(str(tmp_path))
    try:
        # When the receiver is down as the incident opens, then up
        update("wc", [stalled()], minutes(0), channels, SETTINGS, store)
        Receiver.failing = False
        update("wc", [stalled()], minutes(1), channels, SETTINGS, store)
        update("wc", [], minutes(2), channels, SETTINGS, store)
    finally:
        server.shutdown()
    # Then it got the firing payload (retried) and the resolved one, with one dedup key
    assert [b["status"] for b in Receiver.bodies] == ["firing", "resolved"]
    assert len({b["groupKey"] for b in Receiver.bodies}) == 1
    alert = Receiver.bodies[1]["alerts"][0]
    assert alert["labels"] == {
        "alertname": "streamops_stalled",
        "stream": "wc",
        "signal": "stalled",
        "severity": "page",
    }
    assert alert["annotations"]["runbook_url"].endswith("/streamops/runbook#stalled")
    assert (alert["startsAt"], alert["endsAt"]) == (minutes(0).isoformat(), minutes(2).isoformat())
    # And the alerts file has one line per notification, written once each
    lines = [json.loads(x) for x in (tmp_path / "_streamops/alerts.jsonl").read_text().splitlines()]
    assert [(x["kind"], x["stream"]) for x in lines] == [("firing", "wc"), ("resolved", "wc")]
    assert lines[1]["duration_seconds"] == 120


def test_the_payload_of_a_firing_incident_has_no_end() -> None:
    event = {
        "kind": "firing",
        "status": "firing",
        "stream": "wc",
        "signal": "stalled",
        "value": "120 s",
        "opened_at": T0.isoformat(),
        "resolved_at": None,
        "duration_seconds": 0,
        "flaps": 0,
        "checks": 1,
        "dedup_key": "streamops/wc/stalled/x",
        "headline": "h",
        "message": "m",
        "note": None,
    }
    payload = alertmanager_webhook_payload(event)
    assert payload["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert payload["version"] == "4"


class RefreshedOutbox(Outbox):
    """An Outbox that also takes the refreshes of open incidents (as the Alertmanager channel)."""

    refreshes_open = True


def test_a_sender_that_asks_gets_a_refresh_of_each_open_incident_at_every_check(
    tmp_path: Path,
) -> None:
    outbox = RefreshedOutbox()
    # When stream wc fails for 3 checks, passes, flaps back and resolves for good
    check(tmp_path, outbox, minutes(0), stalled())
    check(tmp_path, outbox, minutes(1), stalled(), behind())
    check(tmp_path, outbox, minutes(2), stalled(), behind())
    check(tmp_path, outbox, minutes(3), behind())
    check(tmp_path, outbox, minutes(4))
    # Then each check refreshed every open incident it sent nothing else about, after the
    # notifications
    assert [(k, s) for k, s, _ in outbox.sent] == [
        ("firing", "stalled"),
        ("firing", "falling_behind"),
        ("refresh", "stalled"),
        ("refresh", "stalled"),
        ("refresh", "falling_behind"),
        ("resolved", "stalled"),
        ("refresh", "falling_behind"),
        ("resolved", "falling_behind"),
    ]
    # And a refresh is never kept for a retry: the next check sends a new one
    outbox.sent, outbox.down = [], True
    check(tmp_path, outbox, minutes(30), stalled())
    check(tmp_path, outbox, minutes(31), stalled())
    (incident,) = IncidentStore(str(tmp_path)).all()
    assert [pending["event"]["kind"] for pending in incident.undelivered] == ["firing"]
    # And senders that do not ask get no refresh (Outbox: the tests above)


def test_a_flapping_incident_is_refreshed_until_it_resolves_for_good(tmp_path: Path) -> None:
    outbox = RefreshedOutbox()
    check(tmp_path, outbox, minutes(0), stalled())
    check(tmp_path, outbox, minutes(1))  # resolved
    check(tmp_path, outbox, minutes(2), stalled())  # flapping: the same incident, open again
    check(tmp_path, outbox, minutes(3))  # passes, but it resolves only after a quiet window
    check(tmp_path, outbox, minutes(19))
    check(tmp_path, outbox, minutes(20))
    assert [k for k, *_ in outbox.sent] == [
        "firing",
        "resolved",
        "flapping",
        "refresh",
        "resolved",
    ]


def test_pagerduty_gets_trigger_then_resolve_with_one_dedup_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a local receiver in PagerDuty's place (no PagerDuty is reachable from the tests)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.bodies, Receiver.failing = [], True
    monkeypatch.setenv("STREAMOPS_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_CONN_STREAMOPS_WEBHOOK", raising=False)
    monkeypatch.setenv(
        "AIRFLOW_CONN_STREAMOPS_PAGERDUTY",
        json.dumps(
            {
                "conn_type": "http",
                "host": f"http://127.0.0.1:{server.server_port}",
                "password": "R0UTINGKEY",
            }
        ),
    )
    channels = IncidentChannels(str(tmp_path))
    store = IncidentStore(str(tmp_path))
    try:
        # When it is down as the incident opens, then up for a reminder and the resolve
        update("wc", [stalled()], minutes(0), channels, SETTINGS, store)
        Receiver.failing = False
        update("wc", [stalled()], minutes(1), channels, SETTINGS, store)
        update("wc", [stalled()], minutes(4 * 60 + 1), channels, SETTINGS, store)  # a reminder
        update("wc", [], minutes(4 * 60 + 2), channels, SETTINGS, store)
    finally:
        server.shutdown()
        server.server_close()
    # Then it got the trigger (retried) and the resolve, with one dedup key, and no reminder
    assert [b["event_action"] for b in Receiver.bodies] == ["trigger", "resolve"]
    assert {b["dedup_key"] for b in Receiver.bodies} == {f"streamops/wc/stalled/{T0.isoformat()}"}
    assert {b["routing_key"] for b in Receiver.bodies} == {"R0UTINGKEY"}
    trigger = Receiver.bodies[0]
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["summary"].startswith("stream wc: stalled since")
    assert (trigger["payload"]["component"], trigger["payload"]["group"]) == ("wc", "stalled")
    assert trigger["links"][0]["href"].endswith("/streamops/runbook#stalled")
    assert "payload" not in Receiver.bodies[1]
