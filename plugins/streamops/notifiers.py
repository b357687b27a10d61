"""How people are told: `IncidentChannels` for stream incidents, `StreamAlertNotifier` for failed
tasks.

`IncidentChannels` sends the notifications of `streamops.incidents` (firing, reminder, flapping,
resolved, and the refreshes of open incidents) to every channel whose connection exists, and
reports which channels failed, for the incident to retry them. The channels, in `CHANNELS`:

- `alerts file` (always): one JSON line in `<data root>/_streamops/alerts.jsonl`;
- `Slack` (`streamops_slack`, a `slackwebhook` connection) and `e-mail` (`streamops_smtp`, an
  `smtp` connection with extra `to`): the text of `incident_text`;
- `Alertmanager` (`streamops_alertmanager`, an `http` connection whose host is Alertmanager's
  base URL): one alert, posted to Alertmanager's API (`POST /api/v2/alerts`);
- `PagerDuty` (`streamops_pagerduty`, an `http` connection, host `https://events.pagerduty.com`,
  the integration's routing key as password): an Events API v2 event (`/v2/enqueue`), trigger
  when the incident fires or flaps, resolve when it resolves;
- `webhook` (`streamops_webhook`, an `http` connection, optional extra `endpoint`): the body that
  Alertmanager posts to its *webhook receivers* (version 4).

Each takes every notification but the refreshes, which only Alertmanager takes; PagerDuty takes
no reminders either (it keeps alerting by itself).

The Alertmanager channel is Alertmanager's own client side: the alert (labels `alertname`,
`stream`, `signal`, `severity`) is posted again at every health check while the incident is
open, so that Alertmanager's `resolve_timeout` never resolves a live incident, and with `endsAt`
when it resolves. PagerDuty gets one `dedup_key` per incident. The webhook's body is not what
Alertmanager itself accepts: it is for receivers that take Alertmanager's webhooks (Grafana
OnCall, Opsgenie's and PagerDuty's Alertmanager integrations); its `groupKey` and each alert's
`fingerprint` come from the incident's dedup key.

`StreamAlertNotifier` tells people that a task failed, once per failed task.

Use it as a task's `on_failure_callback`: Airflow calls that only when the task has failed for
good (not before each retry), so one failure is one alert. Every alert is logged and appended as
one JSON line to `<data root>/_streamops/alerts.jsonl`. It is also sent where a connection says:

- `streamops_slack`: a Slack incoming webhook (conn type `slackwebhook`, the webhook token as the
  password), sent with the Slack provider's `SlackWebhookHook`
  (`apache-airflow-providers-slack`);
- `streamops_smtp`: a mail server (conn type `smtp`), sent with the SMTP provider's `SmtpHook`
  to the addresses in the connection's extra field `to` (comma-separated).

Connections are looked up when an alert is sent, never when a DAG file is parsed. A missing
connection means the channel is not wanted; a connection without its provider installed logs a
warning. A channel that fails is logged and does not stop the others.
"""

from __future__ import annotations

import hashlib
import html
import importlib
import json
import os
import posixpath
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseNotifier
from airflow.sdk.exceptions import AirflowNotFoundException

from streamops.config import data_root

if TYPE_CHECKING:
    # pyarrow-based; imported when an alert is sent, not when a DAG file is parsed.
    from airflow.sdk import Connection, Context

    from spark_jobs.storage import Location

SLACK_CONN_ID = "streamops_slack"
SMTP_CONN_ID = "streamops_smtp"
WEBHOOK_CONN_ID = "streamops_webhook"
ALERTMANAGER_CONN_ID = "streamops_alertmanager"
PAGERDUTY_CONN_ID = "streamops_pagerduty"
#: Alertmanager's API for clients (the body is a JSON list of alerts).
ALERTMANAGER_ALERTS = "/api/v2/alerts"
PAGERDUTY_ENQUEUE = "/v2/enqueue"
#: Signals someone acts on now; the others can wait for the working day (as in the rules file).
PAGE_SIGNALS = frozenset({"not_running", "stalled", "check_error"})
DEFAULT_BASE_URL = "http://localhost:8080"
STREAM_IN_MESSAGE = re.compile(r"^stream ([a-z][a-z0-9_]*)\b")


def alerts_file(root: str | None = None) -> Location:
    from spark_jobs.storage import Location

    """Where alerts are appended, one JSON object a line."""
    return Location.of(root or data_root()).child("_streamops", "alerts.jsonl")


def append_line(location: Location, line: str) -> None:
    """Append one line to a file, creating it (and its folder) if needed.

    Local files and HDFS append in place, so concurrent alerts do not overwrite each other.
    Object stores cannot append: the file is rewritten, and two alerts in the same instant may
    lose one line there (the task logs keep every alert).
    """
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    from spark_jobs.storage import Location

    parent = Location(location.filesystem, posixpath.dirname(location.path))
    parent.mkdirs()
    try:
        with location.filesystem.open_append_stream(location.path) as stream:
            stream.write(data)
    except NotImplementedError:
        old = location.read_bytes() if location.exists() else b""
        location.write_bytes_atomic(old + data)


class StreamAlertNotifier(BaseNotifier):
    """Log a failed task, append it to the alerts file, and send it to Slack and e-mail if set up.

    :param root: the data root holding `_streamops/alerts.jsonl` (default: `$STREAMOPS_DATA_ROOT`
        when the alert is sent).
    """

    def __init__(self, root: str | None = None) -> None:
        super().__init__()
        self.root = root

    def notify(self, context: Context) -> None:
        """Record and send one alert for the task instance in `context`."""
        alert = self.alert(context)
        self.log.error("ALERT %s", alert["message"])
        channels = (
            ("alerts file", self._write),
            ("Slack", self._send_slack),
            ("e-mail", self._send_email),
        )
        for name, send in channels:
            try:
                send(alert)
            except Exception:
                self.log.exception("could not send the alert by %s", name)

    def alert(self, context: Context) -> dict[str, Any]:
        """The alert's fields: when, which task instance, which stream, and the message."""
        ti = context.get("ti")
        error = context.get("exception")
        lines = str(error).strip().splitlines() if error else []
        message = lines[0] if lines else "the task failed (no exception was recorded)"
        params = context.get("params") or {}
        match = STREAM_IN_MESSAGE.match(message)
        stream = match.group(1) if match else params.get("stream")
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "dag_id": getattr(ti, "dag_id", None),
            "task_id": getattr(ti, "task_id", None),
            "run_id": getattr(ti, "run_id", None),
            "map_index": getattr(ti, "map_index", None),
            "stream": stream,
            "message": message,
        }

    def _write(self, alert: dict[str, Any]) -> None:
        append_line(alerts_file(self.root), json.dumps(alert))

    def _connection(self, conn_id: str) -> Connection | None:
        try:
            return BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            return None

    def _provider(self, module: str, conn_id: str, package: str) -> Any:
        try:
            return importlib.import_module(module)
        except ImportError:
            self.log.warning(
                "connection %s is set but %s is not installed: alert not sent there; install the "
                "provider in the Airflow image, or delete the connection",
                conn_id,
                package,
            )
            return None

    def _send_slack(self, alert: dict[str, Any]) -> None:
        if self._connection(SLACK_CONN_ID) is None:
            return
        provider = self._provider(
            "airflow.providers.slack.hooks.slack_webhook",
            SLACK_CONN_ID,
            "apache-airflow-providers-slack",
        )
        if provider is None:
            return
        hook = provider.SlackWebhookHook(slack_webhook_conn_id=SLACK_CONN_ID)
        hook.send_text(_text(alert))
        self.log.info("alert sent to Slack (connection %s)", SLACK_CONN_ID)

    def _send_email(self, alert: dict[str, Any]) -> None:
        conn = self._connection(SMTP_CONN_ID)
        if conn is None:
            return
        provider = self._provider(
            "airflow.providers.smtp.hooks.smtp", SMTP_CONN_ID, "apache-airflow-providers-smtp"
        )
        if provider is None:
            return
        to = str(conn.extra_dejson.get("to") or "").strip()
        if not to:
            self.log.warning(
                "connection %s has no 'to' in its extra field: alert not e-mailed; set extra "
                '{"to": "oncall@example.com"}',
                SMTP_CONN_ID,
            )
            return
        subject = f"[streamops] {alert['stream'] or alert['dag_id']}: {alert['message']}"[:200]
        with provider.SmtpHook(smtp_conn_id=SMTP_CONN_ID) as hook:
            hook.send_email_smtp(
                to=[address.strip() for address in to.split(",") if address.strip()],
                subject=subject,
                html_content=f"<pre>{html.escape(_text(alert))}</pre>",
            )
        self.log.info("alert e-mailed to %s (connection %s)", to, SMTP_CONN_ID)


def _text(alert: dict[str, Any]) -> str:
    where = f"{alert['dag_id']}.{alert['task_id']}"
    if alert.get("map_index") not in (None, -1):
        where += f"[{alert['map_index']}]"
    return f"{alert['message']}\n{where}, run {alert['run_id']}, at {alert['time']}"


def ui_base_url() -> str:
    """Where people open Airflow: `[api] base_url`, else `$STREAMOPS_UI_URL`, else localhost."""
    from airflow.configuration import conf

    url = conf.get("api", "base_url", fallback=None) or os.environ.get("STREAMOPS_UI_URL")
    return (url or DEFAULT_BASE_URL).rstrip("/")


def incident_links(event: dict[str, Any]) -> dict[str, str]:
    """The runbook section of the incident's signal, and the Streams page."""
    base = ui_base_url()
    return {
        "runbook": f"{base}/streamops/runbook#{event['signal']}",
        "page": f"{base}/plugin/streams",
    }


def incident_text(event: dict[str, Any]) -> str:
    """A notification as text (Slack, e-mail, logs)."""
    links = incident_links(event)
    lines = [f"[{event['kind'].upper()}] {event['headline']}"]
    if event["kind"] != "resolved":
        lines.append(event["message"])
    if event.get("note"):
        lines.append(event["note"])
    lines += [
        f"value {event['value']} · since {event['opened_at']} · {event['checks']} checks"
        + (f" · {event['flaps']} flaps" if event["flaps"] else ""),
        f"runbook: {links['runbook']}",
        f"Streams page: {links['page']}",
        f"incident: {event['dedup_key']}",
    ]
    return "\n".join(lines)


def severity(signal: str) -> str:
    """`page` for a stream that is down or stuck, `ticket` for the rest."""
    return "page" if signal in PAGE_SIGNALS else "ticket"


def alert_labels(event: dict[str, Any]) -> dict[str, str]:
    """The labels of an incident's alert: the same in the Alertmanager channel, the webhook
    and the Prometheus rules (`deploy/prometheus/streamops-rules.yml`)."""
    return {
        "alertname": f"streamops_{event['signal']}",
        "stream": event["stream"],
        "signal": event["signal"],
        "severity": severity(event["signal"]),
    }


def alertmanager_alert(event: dict[str, Any]) -> dict[str, Any]:
    """One alert for Alertmanager's API (`POST /api/v2/alerts` takes a list of them).

    A firing alert has no `endsAt`: Alertmanager keeps it for `resolve_timeout` from each post,
    and the channel posts it at every check. A resolved one ends when the incident resolved.
    """
    links = incident_links(event)
    description = event["message"] + (f"\n{event['note']}" if event.get("note") else "")
    alert: dict[str, Any] = {
        "labels": alert_labels(event),
        "annotations": {
            "summary": event["headline"] if event["kind"] != "refresh" else event["message"],
            "description": description,
            "runbook_url": links["runbook"],
            "dedup_key": event["dedup_key"],
        },
        "generatorURL": links["page"],
        "startsAt": event["opened_at"],
    }
    if event["kind"] == "resolved":
        alert["endsAt"] = event["resolved_at"]
    return alert


def pagerduty_event(event: dict[str, Any], routing_key: str) -> dict[str, Any] | None:
    """A PagerDuty Events API v2 event: trigger (firing, flapping) or resolve, keyed by the
    incident's dedup key; None for the notifications PagerDuty needs not hear (reminders, which
    it keeps alerting on by itself, and refreshes)."""
    action = {"firing": "trigger", "flapping": "trigger", "resolved": "resolve"}.get(event["kind"])
    if action is None:
        return None
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": event["dedup_key"],
    }
    if action == "trigger":
        links = incident_links(event)
        body["payload"] = {
            "summary": event["headline"][:1024],
            "source": f"stream {event['stream']}",
            "severity": "critical" if severity(event["signal"]) == "page" else "warning",
            "timestamp": event["opened_at"],
            "component": event["stream"],
            "group": event["signal"],
            "class": event["signal"],
            "custom_details": {
                "message": event["message"],
                "value": event["value"],
                "note": event.get("note"),
                "flaps": event["flaps"],
            },
        }
        body["links"] = [
            {"href": links["runbook"], "text": "runbook"},
            {"href": links["page"], "text": "Streams page"},
        ]
        body["client"] = "streamops"
        body["client_url"] = links["page"]
    return body


def alertmanager_webhook_payload(event: dict[str, Any]) -> dict[str, Any]:
    """The body Alertmanager posts to its webhook receivers (version 4), for one notification.

    Alertmanager itself does not accept it (its API takes `alertmanager_alert`); receivers of
    Alertmanager's webhooks do."""
    links = incident_links(event)
    fingerprint = hashlib.sha256(event["dedup_key"].encode()).hexdigest()[:16]
    labels = alert_labels(event)
    annotations = {
        "summary": event["headline"],
        "description": event["message"],
        "runbook_url": links["runbook"],
        "dedup_key": event["dedup_key"],
        "kind": event["kind"],
        "flaps": str(event["flaps"]),
    }
    return {
        "version": "4",
        "groupKey": event["dedup_key"],
        "truncatedAlerts": 0,
        "status": event["status"],
        "receiver": "streamops",
        "groupLabels": {"stream": event["stream"], "signal": event["signal"]},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": links["page"],
        "alerts": [
            {
                "status": event["status"],
                "labels": labels,
                "annotations": annotations,
                "startsAt": event["opened_at"],
                "endsAt": event["resolved_at"] or "0001-01-01T00:00:00Z",
                "generatorURL": links["page"],
                "fingerprint": fingerprint,
            }
        ],
    }


#: Every channel of `IncidentChannels`: its name (in logs and in the retries an incident keeps),
#: and the name of the method that sends to it.
CHANNELS = (
    ("alerts file", "_write"),
    ("Slack", "_slack"),
    ("e-mail", "_email"),
    ("Alertmanager", "_alertmanager"),
    ("PagerDuty", "_pagerduty"),
    ("webhook", "_webhook"),
)
#: The channels that take the refreshes of open incidents.
REFRESHED = frozenset({"Alertmanager"})


class IncidentChannels:
    """Sends incident notifications; each channel's failure is reported, never raised.

    Channels: `CHANNELS` (the alerts file always; the others when their connection exists).
    Call it with a notification and, for a retry, the channels still due.
    """

    #: `streamops.incidents.update` sends this sender the refreshes of open incidents.
    refreshes_open = True

    def __init__(self, root: str | None = None) -> None:
        self.root = root
        self.helper = StreamAlertNotifier(root)
        self.log = self.helper.log

    def __call__(self, event: dict[str, Any], channels: list[str] | None = None) -> list[str]:
        failed = []
        for name, method in CHANNELS:
            if channels is not None and name not in channels:
                continue
            if event["kind"] == "refresh" and name not in REFRESHED:
                continue
            send = getattr(self, method)
            try:
                send(event)
            except Exception as err:
                self.log.warning(
                    "could not send the %s notification by %s: %s", event["kind"], name, err
                )
                failed.append(name)
        return failed

    def _write(self, event: dict[str, Any]) -> None:
        line = dict(
            event, message=event["headline"] if event["kind"] != "firing" else event["message"]
        )
        append_line(alerts_file(self.root), json.dumps(line))

    def _slack(self, event: dict[str, Any]) -> None:
        if self.helper._connection(SLACK_CONN_ID) is None:
            return
        provider = self.helper._provider(
            "airflow.providers.slack.hooks.slack_webhook",
            SLACK_CONN_ID,
            "apache-airflow-providers-slack",
        )
        if provider is not None:
            provider.SlackWebhookHook(slack_webhook_conn_id=SLACK_CONN_ID).send_text(
                incident_text(event)
            )

    def _email(self, event: dict[str, Any]) -> None:
        conn = self.helper._connection(SMTP_CONN_ID)
        if conn is None:
            return
        provider = self.helper._provider(
            "airflow.providers.smtp.hooks.smtp", SMTP_CONN_ID, "apache-airflow-providers-smtp"
        )
        to = str(conn.extra_dejson.get("to") or "").strip()
        if provider is None or not to:
            return
        with provider.SmtpHook(smtp_conn_id=SMTP_CONN_ID) as hook:
            hook.send_email_smtp(
                to=[address.strip() for address in to.split(",") if address.strip()],
                subject=f"[streamops] [{event['kind'].upper()}] {event['headline']}"[:200],
                html_content=f"<pre>{html.escape(incident_text(event))}</pre>",
            )

    def _webhook(self, event: dict[str, Any]) -> None:
        conn = self.helper._connection(WEBHOOK_CONN_ID)
        if conn is None:
            return
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method="POST", http_conn_id=WEBHOOK_CONN_ID)
        hook.run(
            endpoint=str(conn.extra_dejson.get("endpoint") or ""),
            json=alertmanager_webhook_payload(event),
            extra_options={"timeout": 10},
        )

    def _alertmanager(self, event: dict[str, Any]) -> None:
        if self.helper._connection(ALERTMANAGER_CONN_ID) is None:
            return
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method="POST", http_conn_id=ALERTMANAGER_CONN_ID)
        hook.run(
            endpoint=ALERTMANAGER_ALERTS,
            json=[alertmanager_alert(event)],
            extra_options={"timeout": 10},
        )

    def _pagerduty(self, event: dict[str, Any]) -> None:
        conn = self.helper._connection(PAGERDUTY_CONN_ID)
        if conn is None:
            return
        if not conn.password or not conn.host:
            raise ValueError(
                f"connection {PAGERDUTY_CONN_ID} needs the integration's routing key as its "
                "password and https://events.pagerduty.com as its host"
            )
        body = pagerduty_event(event, conn.password)
        if body is None:
            return
        from airflow.providers.http.hooks.http import HttpHook

        # The routing key goes in the body (HttpHook sends basic auth only with a login).
        hook = HttpHook(method="POST", http_conn_id=PAGERDUTY_CONN_ID)
        hook.run(
            endpoint=str(conn.extra_dejson.get("endpoint") or PAGERDUTY_ENQUEUE),
            json=body,
            extra_options={"timeout": 10},
        )
