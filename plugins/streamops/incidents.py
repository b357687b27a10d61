"""Incidents: one per (stream, signal), so that on-call gets one message when a stream breaks and
one when it recovers, not one per failed check.

`stream_health` checks each stream every minute and hands its breaches to `update`, which keeps
one incident per (stream, signal) under the data root and decides what to notify:

| check of (stream, signal) | incident before | becomes | notification |
| --- | --- | --- | --- |
| fails | none, or closed | firing | **firing** |
| fails | firing | firing (value, last seen) | none; a **reminder** each `repeat` |
| passes | firing | resolved | **resolved**, with how long it lasted |
| fails | resolved within the flap window | firing, a flap counted | one **flapping** notice |
| passes | firing after a flap | resolved | **resolved** after a quiet flap window |

Files (`<data root>/_streamops/incidents/`): `<stream>~<signal>.json`, the incident of that key
until it is closed; `history.jsonl`, one line per closed incident. Every notification is also one
line of `<data root>/_streamops/alerts.jsonl`. Updates hold an exclusive lock (`fcntl.flock` on
`.lock` in that folder, where the data root is a local or mounted file system), so two health
runs at once, or a retried check, see each other's incidents and never open a second one.

A notification that a channel could not deliver stays with its incident and is sent again to
that channel at the next check of the stream; the incident is closed only once everything is
delivered.

Some receivers forget an alert that is not sent again: Alertmanager resolves one by itself
after its `resolve_timeout` (5 min by default). A sender that says so (`refreshes_open = True`,
as `streamops.notifiers.IncidentChannels` does) also gets a **refresh** of every open incident
at every check that sent it nothing else: the incident as it is, for those receivers only. A
refresh that fails is not kept: the next check sends a new one.

Settings (environment of the workers, read at each check): `STREAMOPS_ALERT_REPEAT_SECONDS`
(default 14400, 4 h, Alertmanager's `repeat_interval`), `STREAMOPS_ALERT_FLAP_SECONDS` (default
900).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from streamops.config import data_root
from streamops.health import parse_time

if TYPE_CHECKING:
    from spark_jobs.storage import Location
    from streamops.health import Breach

REPEAT_ENV = "STREAMOPS_ALERT_REPEAT_SECONDS"
FLAP_ENV = "STREAMOPS_ALERT_FLAP_SECONDS"
DEFAULT_REPEAT_SECONDS = 4 * 3600
DEFAULT_FLAP_SECONDS = 900

Kind = Literal["firing", "reminder", "flapping", "resolved", "refresh"]
#: Sends one notification to every channel (or to the channels named); returns those that failed.
#: A sender with a true `refreshes_open` attribute also gets the refreshes of open incidents.
Send = Callable[[dict[str, Any], list[str] | None], list[str]]


@dataclass(frozen=True)
class AlertSettings:
    """How often to remind, and how long a resolved incident may reopen as the same incident."""

    repeat: timedelta = timedelta(seconds=DEFAULT_REPEAT_SECONDS)
    flap_window: timedelta = timedelta(seconds=DEFAULT_FLAP_SECONDS)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AlertSettings:
        """From `STREAMOPS_ALERT_REPEAT_SECONDS` and `STREAMOPS_ALERT_FLAP_SECONDS`."""
        env = os.environ if environ is None else environ

        def seconds(name: str, default: int) -> timedelta:
            raw = env.get(name) or str(default)
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: expected a number of seconds") from None
            if value <= 0:
                raise ValueError(f"{name}={raw!r}: must be greater than 0")
            return timedelta(seconds=value)

        return cls(
            seconds(REPEAT_ENV, DEFAULT_REPEAT_SECONDS), seconds(FLAP_ENV, DEFAULT_FLAP_SECONDS)
        )


@dataclass
class Incident:
    """One (stream, signal) that broke, from its first failed check until it is closed."""

    stream: str
    signal: str
    opened_at: str
    last_seen_at: str
    value: str
    message: str
    state: Literal["firing", "resolved"] = "firing"
    checks: int = 1
    flaps: int = 0
    flapping_notified: bool = False
    resolved_at: str | None = None
    resolve_notified: bool = False
    last_notified_at: str | None = None
    reminders: int = 0
    # When the supervisor restarted the stream's driver during the incident, and why.
    restarted: str | None = None
    # Notifications not yet delivered: {"event": {...}, "channels": [names]}.
    undelivered: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        """`<stream>~<signal>`: the file name of the incident, one per (stream, signal)."""
        return f"{self.stream}~{self.signal}"

    @property
    def dedup_key(self) -> str:
        """The same for every notification of this incident (PagerDuty's `dedup_key`)."""
        return f"streamops/{self.stream}/{self.signal}/{self.opened_at}"

    def duration(self, now: datetime) -> timedelta:
        """How long it has lasted: until it resolved, or until `now`."""
        end = parse_time(self.resolved_at) if self.resolved_at else now
        return end - parse_time(self.opened_at)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def human(delta: timedelta) -> str:
    """`45 s`, `12 min`, `3 h 05 min`."""
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _record(data: dict[str, Any]) -> Incident:
    known = Incident.__dataclass_fields__
    return Incident(**{k: v for k, v in data.items() if k in known})


class IncidentStore:
    """The incidents folder of a data root."""

    def __init__(self, root: str | None = None) -> None:
        from spark_jobs.storage import Location

        self.root = root or data_root()
        self.folder: Location = Location.of(self.root).child("_streamops", "incidents")

    @property
    def history(self) -> Location:
        """One JSON line per closed incident."""
        return self.folder.child("history.jsonl")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the incidents' lock: an exclusive `flock` where the data root is a file system."""
        from pyarrow.fs import LocalFileSystem

        self.folder.mkdirs()
        if not isinstance(self.folder.filesystem, LocalFileSystem):
            # Object stores have no lock: stream_health runs one at a time (max_active_runs=1)
            # and its checks are not retried, which keeps one writer per stream.
            yield
            return
        with open(os.path.join(self.folder.path, ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def all(self, stream: str | None = None) -> list[Incident]:
        """The incidents not closed yet (firing, or resolved within the flap window)."""
        if not self.folder.exists():
            return []
        found = []
        for info in self.folder.list():
            name = info.base_name
            if not name.endswith(".json") or name.startswith("."):
                continue
            if stream is not None and not name.startswith(f"{stream}~"):
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append(_record(json.loads(self.folder.child(name).read_text())))
        return sorted(found, key=lambda i: (i.stream, i.opened_at))

    def save(self, incident: Incident) -> None:
        self.folder.child(f"{incident.key}.json").write_text_atomic(
            json.dumps(asdict(incident), indent=2) + "\n"
        )

    def close(self, incident: Incident) -> None:
        """Move an incident into the history."""
        from streamops.notifiers import append_line

        append_line(self.history, json.dumps(asdict(incident)))
        location = self.folder.child(f"{incident.key}.json")
        with contextlib.suppress(FileNotFoundError):
            location.filesystem.delete_file(location.path)

    def recent_closed(self, limit: int = 10) -> list[Incident]:
        """The newest closed incidents, newest first."""
        if not self.history.exists():
            return []
        lines = self.history.read_text().splitlines()[-limit:]
        closed = []
        for line in reversed(lines):
            with contextlib.suppress(ValueError, TypeError):
                closed.append(_record(json.loads(line)))
        return closed


def event(incident: Incident, kind: Kind, now: datetime, note: str | None = None) -> dict[str, Any]:
    """One notification of an incident: what every channel sends."""
    lasted = human(incident.duration(now))
    headline = {
        "firing": f"stream {incident.stream}: {incident.signal} since {incident.opened_at}",
        "reminder": f"stream {incident.stream}: {incident.signal} still firing after {lasted}",
        "flapping": (
            f"stream {incident.stream}: {incident.signal} is flapping (broke again "
            f"{incident.flaps} time{'s' if incident.flaps != 1 else ''} after recovering): one "
            "incident until it stays resolved"
        ),
        "resolved": f"stream {incident.stream}: {incident.signal} resolved after {lasted}"
        + (f" ({incident.flaps} flaps)" if incident.flaps else ""),
        "refresh": f"stream {incident.stream}: {incident.signal} since {incident.opened_at}",
    }[kind]
    return {
        "time": _iso(now),
        "kind": kind,
        "status": "resolved" if kind == "resolved" else "firing",
        "stream": incident.stream,
        "signal": incident.signal,
        "value": incident.value,
        "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at,
        "duration_seconds": round(incident.duration(now).total_seconds()),
        "flaps": incident.flaps,
        "checks": incident.checks,
        "dedup_key": incident.dedup_key,
        "headline": headline,
        "message": incident.message if kind != "resolved" else headline,
        "note": note,
    }


def update(  # noqa: PLR0917
    stream: str,
    breaches: Sequence[Breach],
    now: datetime,
    send: Send,
    settings: AlertSettings | None = None,
    store: IncidentStore | None = None,
    log: Callable[[str], None] = print,
    restart: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Apply one check of `stream` (its breaches; none when it passed) to its incidents.

    `restart` is the stream's last restart by its supervisor (when, why): an incident open at
    that time says so in its record and in its notifications from then on. Returns the
    notifications it sent (or tried to send); each goes through `send`, and what a channel
    failed to deliver is retried at the next call for this stream.
    """
    store = store or IncidentStore()
    with store.locked():
        check = _Check(stream, now, settings or AlertSettings.from_env(), store, log)
        if restart is not None:
            check.restarted(*restart)
        for breach in breaches:
            check.failed(breach)
        check.passed_the_rest()
        return check.finish(send)


class _Check:
    """One check of one stream, applied to its incidents (under the store's lock)."""

    def __init__(
        self,
        stream: str,
        now: datetime,
        settings: AlertSettings,
        store: IncidentStore,
        log: Callable[[str], None],
    ) -> None:
        self.stream, self.now, self.settings, self.store, self.log = (
            stream,
            now,
            settings,
            store,
            log,
        )
        self.current = {i.signal: i for i in store.all(stream)}
        self.seen: set[str] = set()
        # What to send: (incident, notification, the channels it is still due to; None: all).
        self.outbox: list[tuple[Incident, dict[str, Any], list[str] | None]] = []
        for incident in self.current.values():
            for pending in incident.undelivered:
                self.outbox.append((incident, pending["event"], list(pending["channels"])))
            incident.undelivered = []

    def restarted(self, when: str, why: str) -> None:
        """Note a restart of the driver on every incident that was open at that time."""
        moment = parse_time(when)
        for incident in self.current.values():
            if parse_time(incident.opened_at) <= moment and (
                incident.resolved_at is None or moment <= parse_time(incident.resolved_at)
            ):
                incident.restarted = f"its driver was restarted at {_iso(moment)}: {why}"

    def notify(self, incident: Incident, kind: Kind) -> None:
        incident.last_notified_at = _iso(self.now)
        self.outbox.append((incident, event(incident, kind, self.now, incident.restarted), None))

    def since(self, text: str | None) -> timedelta:
        return self.now - parse_time(text) if text else timedelta(0)

    def failed(self, breach: Breach) -> None:
        """A failed check of one signal: open, reopen (a flap), or update its incident."""
        if breach.signal in self.seen:
            return
        self.seen.add(breach.signal)
        incident = self.current.get(breach.signal)
        if incident is not None and incident.state == "resolved":
            if self.since(incident.resolved_at) <= self.settings.flap_window:
                incident.state, incident.resolved_at = "firing", None
                incident.resolve_notified = False
                incident.flaps += 1
                if not incident.flapping_notified:
                    incident.flapping_notified = True
                    self.notify(incident, "flapping")
            else:
                _close(self.store, incident, self.log)
                incident = None
        if incident is None:
            incident = Incident(
                stream=self.stream,
                signal=breach.signal,
                opened_at=_iso(self.now),
                last_seen_at=_iso(self.now),
                value=str(breach.value),
                message=breach.message,
            )
            self.current[breach.signal] = incident
            self.notify(incident, "firing")
        else:
            incident.checks += 1
            if self.since(incident.last_notified_at or incident.opened_at) >= self.settings.repeat:
                incident.reminders += 1
                self.notify(incident, "reminder")
        incident.last_seen_at, incident.value = _iso(self.now), str(breach.value)
        incident.message = breach.message

    def passed_the_rest(self) -> None:
        """Every signal with an incident and no breach in this check passed: resolve."""
        for signal, incident in self.current.items():
            if signal in self.seen:
                continue
            if incident.state == "firing":
                incident.state, incident.resolved_at = "resolved", _iso(self.now)
                if not incident.flaps:
                    incident.resolve_notified = True
                    self.notify(incident, "resolved")
            elif (
                not incident.resolve_notified
                and self.since(incident.resolved_at) >= self.settings.flap_window
            ):
                # A flapping incident resolves once it has stayed resolved for a flap window.
                incident.resolve_notified = True
                self.notify(incident, "resolved")

    def finish(self, send: Send) -> list[dict[str, Any]]:
        """Send what is due, keep what failed for the next check, save or close each incident;
        refresh the open incidents this check sent nothing, for the senders that want it."""
        sent = []
        for incident, note, channels in self.outbox:
            failed = _deliver(send, note, channels, self.log)
            if failed:
                incident.undelivered.append({"event": note, "channels": failed})
            sent.append(note)
        if getattr(send, "refreshes_open", False):
            notified = {id(incident) for incident, *_ in self.outbox}
            for incident in self.current.values():
                if id(incident) not in notified and not incident.resolve_notified:
                    # Open: firing, or resolved within a flap window (not notified as resolved).
                    self._refresh(send, incident)
        for incident in self.current.values():
            # A resolved incident is kept for a flap window, so that it can reopen as the same
            # incident, and until every notification of it is delivered.
            done = incident.state == "resolved" and incident.resolve_notified
            quiet = self.since(incident.resolved_at) >= self.settings.flap_window
            if done and quiet and not incident.undelivered:
                _close(self.store, incident, self.log)
            else:
                self.store.save(incident)
        return sent

    def _refresh(self, send: Send, incident: Incident) -> None:
        note = event(incident, "refresh", self.now, incident.restarted)
        failed = send(note, None)
        if failed:
            self.log(
                f"stream {incident.stream}: could not refresh {incident.signal} in "
                f"{', '.join(failed)}: sent again at the next check"
            )


def _close(store: IncidentStore, incident: Incident, log: Callable[[str], None]) -> None:
    store.close(incident)
    log(f"stream {incident.stream}: incident {incident.signal} closed ({incident.dedup_key})")


def _deliver(
    send: Send, note: dict[str, Any], channels: list[str] | None, log: Callable[[str], None]
) -> list[str]:
    failed = send(note, channels)
    retry = " (a retry)" if channels is not None else ""
    log(f"{note['kind'].upper()}{retry}: {note['headline']}")
    if failed:
        log(
            f"stream {note['stream']}: could not notify {', '.join(failed)} of {note['kind']} "
            f"{note['signal']}: retried at the next check"
        )
    return failed
