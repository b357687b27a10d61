"""`StreamAlertNotifier`: the alerts file for real; Slack and SMTP with only their sends replaced.

Connections come from `AIRFLOW_CONN_*` variables, as a deployment would set them, and are looked
up by the real Task SDK. The Slack provider is not installed here, so its hook is stood in for by
a module that looks the connection up like the real hook and records what it would post. The SMTP
provider is installed: the real `SmtpHook` builds the e-mail, and only `smtplib.SMTP` is replaced.
"""

from __future__ import annotations

import email
import json
import smtplib
import sys
from email import policy
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import pytest
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException

from streamops.notifiers import StreamAlertNotifier, alerts_file

SLACK_MODULE = "airflow.providers.slack.hooks.slack_webhook"
MESSAGE = (
    "stream word_count: not_running (desired running, but its driver (pid 4242 on vm) is gone; "
    "last status 'running' 3 min ago) — check the word_count_stream run's log, then trigger it"
)


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data root, and no alert connection unless a test sets one."""
    monkeypatch.setenv("STREAMOPS_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_CONN_STREAMOPS_SLACK", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_STREAMOPS_SMTP", raising=False)
    return tmp_path


def failure_context(error: BaseException, **params: Any) -> dict[str, Any]:
    """What Airflow passes an `on_failure_callback`: the task instance, Params, the exception."""
    ti = SimpleNamespace(
        dag_id="stream_health",
        task_id="check_stream",
        run_id="scheduled__2026-01-05T12:00:00+00:00",
        map_index=2,
    )
    return {"ti": ti, "params": params, "exception": error}


def logged(capsys: pytest.CaptureFixture[str]) -> str:
    """What the notifier logged: Airflow's task logging (structlog) writes to the console."""
    captured = capsys.readouterr()
    return captured.out + captured.err


def alerts(root: Path) -> list[dict[str, Any]]:
    path = root / "_streamops" / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


class SlackWebhookHookStandIn:
    """Looks the connection up as `SlackWebhookHook` does; records the post instead of sending."""

    posts: ClassVar[list[tuple[str, str]]] = []
    fail = False

    def __init__(self, *, slack_webhook_conn_id: str) -> None:
        self.url = BaseHook.get_connection(slack_webhook_conn_id).password

    def send_text(self, text: str) -> None:
        if self.fail:
            raise ConnectionError("hooks.slack.com: connection refused")
        self.posts.append((str(self.url), text))


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> type[SlackWebhookHookStandIn]:
    """The Slack provider's webhook hook, as if installed."""
    module = ModuleType(SLACK_MODULE)
    module.SlackWebhookHook = SlackWebhookHookStandIn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, SLACK_MODULE, module)
    monkeypatch.setattr(SlackWebhookHookStandIn, "posts", [])
    monkeypatch.setattr(SlackWebhookHookStandIn, "fail", False)
    return SlackWebhookHookStandIn


class SMTPStandIn:
    """`smtplib.SMTP` without the network: records each mail the real SmtpHook sends."""

    sent: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, host: str = "", port: int = 0, timeout: float = 0, **_: Any) -> None:
        self.host = host
        self.port = port

    def sendmail(self, from_addr: str, to_addrs: list[str], msg: str) -> None:
        self.sent.append({"from": from_addr, "to": to_addrs, "msg": msg, "host": self.host})

    def close(self) -> None:
        pass


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> type[SMTPStandIn]:
    monkeypatch.setattr(smtplib, "SMTP", SMTPStandIn)
    monkeypatch.setattr(SMTPStandIn, "sent", [])
    return SMTPStandIn


def set_smtp_connection(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> None:
    connection = {
        "conn_type": "smtp",
        "host": "mail.example.com",
        "port": 25,
        "extra": {"from_email": "streamops@example.com", "disable_ssl": True, "disable_tls": True}
        | extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_STREAMOPS_SMTP", json.dumps(connection))


def test_each_alert_is_logged_and_appended_as_one_json_line(
    data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notifier = StreamAlertNotifier()
    error = AirflowFailException(f"{MESSAGE}\nstream word_count: backlog (120 files) — drain it")
    # When two failed tasks are reported
    notifier(failure_context(error))
    notifier(failure_context(AirflowFailException("disk full"), stream="running_total"))
    # Then the alerts file holds one line each, with the first line of the exception
    first, second = alerts(data_root)
    assert first["message"] == MESSAGE
    assert first["stream"] == "word_count"
    assert (first["dag_id"], first["task_id"], first["map_index"]) == (
        "stream_health",
        "check_stream",
        2,
    )
    assert first["run_id"] == "scheduled__2026-01-05T12:00:00+00:00"
    assert first["time"].startswith("20")
    # And a message that names no stream falls back on the run's Params
    assert (second["stream"], second["message"]) == ("running_total", "disk full")
    # And each alert is in the task log
    assert f"ALERT {MESSAGE}" in logged(capsys)
    assert alerts_file(str(data_root)).path == str(data_root / "_streamops/alerts.jsonl")


def test_slack_is_posted_to_when_its_connection_exists(
    data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    slack: type[SlackWebhookHookStandIn],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Without the connection, Slack is not wanted: not tried, nothing logged about it
    StreamAlertNotifier()(failure_context(AirflowFailException(MESSAGE)))
    assert slack.posts == []
    assert "Slack" not in logged(capsys)
    # With it, the alert is posted through the webhook hook on that connection
    monkeypatch.setenv(
        "AIRFLOW_CONN_STREAMOPS_SLACK",
        json.dumps({"conn_type": "slackwebhook", "password": "https://hooks.slack.com/T0/B0/X"}),
    )
    StreamAlertNotifier()(failure_context(AirflowFailException(MESSAGE)))
    [(url, text)] = slack.posts
    assert url == "https://hooks.slack.com/T0/B0/X"
    assert text.splitlines()[0] == MESSAGE
    assert "stream_health.check_stream[2], run scheduled__2026-01-05T12:00:00+00:00" in text
    assert len(alerts(data_root)) == 2


def test_a_slack_connection_without_the_provider_warns(
    data_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, SLACK_MODULE, None)  # importing it raises ImportError
    monkeypatch.setenv("AIRFLOW_CONN_STREAMOPS_SLACK", '{"conn_type": "slackwebhook"}')
    StreamAlertNotifier()(failure_context(AirflowFailException(MESSAGE)))
    assert "apache-airflow-providers-slack is not installed" in logged(capsys)
    assert len(alerts(data_root)) == 1


def test_e_mail_goes_to_the_connections_recipients(
    monkeypatch: pytest.MonkeyPatch, smtp: type[SMTPStandIn]
) -> None:
    StreamAlertNotifier()(failure_context(AirflowFailException(MESSAGE)))
    assert smtp.sent == []
    set_smtp_connection(monkeypatch, to="oncall@example.com, lead@example.com")
    StreamAlertNotifier()(failure_context(AirflowFailException(MESSAGE)))
    [mail] = smtp.sent
    assert mail["host"] == "mail.example.com"
    assert mail["from"] == "streamops@example.com"
    assert mail["to"] == ["oncall@example.com", "lead@example.com"]
    sent = email.message_from_string(mail["msg"], policy=policy.default)
    assert str(sent["Subject"]).startswith("[streamops] word_count: stream word_count: not_running")
    [body] = [part for part in sent.walk() if part.get_content_type() == "text/html"]
    assert "stream_health.check_stream[2]" in body.get_content()


def test_an_smtp_connection_without_recipients_warns(
    monkeypatch: pytest.MonkeyPatch, smtp: type[SMTPStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    set_smtp_connection(monkeypatch)
    StreamAlertNotifier()(failure_context(AirflowFailException(MESSAGE)))
    assert smtp.sent == []
    assert "connection streamops_smtp has no 'to' in its extra field" in logged(capsys)


def test_a_failing_channel_does_not_stop_the_others(
    data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    slack: type[SlackWebhookHookStandIn],
    smtp: type[SMTPStandIn],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_STREAMOPS_SLACK", '{"conn_type": "slackwebhook"}')
    set_smtp_connection(monkeypatch, to="oncall@example.com")
    monkeypatch.setattr(slack, "fail", True)
    StreamAlertNotifier()(failure_context(AirflowFailException(MESSAGE)))
    assert "could not send the alert by Slack" in logged(capsys)
    assert len(smtp.sent) == 1
    assert len(alerts(data_root)) == 1
