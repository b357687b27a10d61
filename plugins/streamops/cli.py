"""`streamops`: the on-call command line.

    bin/streamops status [STREAM] [--json] [--local]
    bin/streamops start STREAM [--dag DAG] [--param KEY=VALUE ...]
    bin/streamops stop STREAM [--wait]
    bin/streamops restart STREAM
    bin/streamops rotate STREAM [--shuffle-partitions N]
    bin/streamops snapshot STREAM
    bin/streamops restore STREAM [--snapshot-id ID]
    bin/streamops prune STREAM [--keep-count N] [--keep-age-hours H]
    bin/streamops compact STREAM [--target-mb MB] [--grace-minutes M]
    bin/streamops upgrade STREAM --set KEY=VALUE ... [--mode auto|restart|new-checkpoint]
                  [--dry-run | --wait]

`status` prints one line per stream (state, last batch and its age, rates, backlog, checkpoint,
quality) and, under it, each health breach with what to do. It asks the Airflow api-server
(`/streamops/api/streams`, the Streams page's API); `--local` reads the data root directly, for
when Airflow itself is down. Both judge streams with `streamops.overview`, the rules of the
`stream_health` DAG.

Every action triggers a DAG run through Airflow's REST API, so it is audited, runs where Airflow
runs tasks, and shows in the UI: `start` the stream's DAG (with the Params it last ran with),
`stop` `stream_control`, the checkpoint actions `checkpoint_rotation`, `compact`
`sink_compaction`. `--wait` waits for the
outcome (`restart` always does).

`upgrade --dry-run` runs the upgrade's preflight here, against the data root (as `status
--local` reads it): the new spec runs on a copy of the stream's checkpoint, and the verdict
(`restart`, `new checkpoint` or `refused`, each reason named) is printed; nothing is written.
It exits 0 when the upgrade could go ahead, 1 when it is refused (docs/upgrades.md). Without
`--dry-run`, `upgrade` triggers the `stream_upgrade` DAG, which runs the same preflight and, if
the verdict goes ahead, cuts over.

Exit codes: 0 all streams healthy (or the action succeeded), 1 a stream is unhealthy (or the
action's run failed), 2 bad usage or configuration, 3 Airflow cannot be reached or refuses the
login.

Where Airflow is, and the login: `--url` or `$STREAMOPS_AIRFLOW_URL` (default
http://localhost:8080); `$STREAMOPS_AIRFLOW_TOKEN` (a JWT), or `$STREAMOPS_AIRFLOW_USERNAME` and
`$STREAMOPS_AIRFLOW_PASSWORD`; with none set, the admin password `make demo` generated in
`.airflow/`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from streamops import registry
from streamops.config import REPO_ROOT, data_root, stream_run_id

DEFAULT_URL = "http://localhost:8080"
STACK_PASSWORDS = REPO_ROOT / ".airflow" / "simple_auth_manager_passwords.json.generated"
CHECKPOINT_ACTIONS = ("rotate", "snapshot", "restore", "prune")
TERMINAL = ("success", "failed")
#: Retries of a request that is safe to repeat, after a server error (5xx, e.g. a locked SQLite)
#: or no answer in time (an api-server busy on a small machine): 2, 4 and 6 s apart.
RETRIES = 3
#: The status of a request the api-server took but did not answer in time, or whose connection
#: it dropped (a restart): unlike a refused connection, worth repeating.
NO_ANSWER = 0
#: While waiting for a run, how long Airflow may stay unreachable (an api-server restart)
#: before the wait gives up.
UNREACHABLE_WHILE_WAITING_SECONDS = 120.0
EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class CliError(Exception):
    """A failure the user can fix; the message says what to do. `code` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(CliError):
    """No answer from the api-server: nothing listens there, or it did not answer in time."""

    def __init__(self, url: str, reason: object, timeout: float) -> None:
        if isinstance(reason, TimeoutError):
            self.reason = f"Airflow at {url} did not answer within {timeout:.1f} s"
            hint = (
                "It is up but overloaded or stuck: check its api-server and database (`make "
                "status`, its log); `streamops status --local` reads the streams' files without "
                "Airflow."
            )
        else:
            self.reason = f"cannot reach Airflow at {url} ({reason})"
            hint = (
                "Is it running (`make status`)? Set --url or $STREAMOPS_AIRFLOW_URL to its "
                "api-server; `streamops status --local` reads the streams' files without Airflow."
            )
        super().__init__(f"{self.reason}. {hint}", EXIT_UNREACHABLE)


# --- Airflow's REST API --------------------------------------------------------------------------


def request_json(
    method: str, url: str, body: object = None, token: str | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One JSON request to an Airflow api-server: the HTTP status and the decoded answer.

    An HTTP error status is returned with its body (JSON when it is JSON); a connection failure
    raises `OSError` (`urllib.error.URLError`).
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode("utf-8", "replace")


class Airflow:
    """A small client of the api-server: Airflow's REST API and the Streams plugin's API."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token: str | None = os.environ.get("STREAMOPS_AIRFLOW_TOKEN") or None

    def _request(self, method: str, path: str, body: object, token: str | None) -> tuple[int, Any]:
        """One request: its status and answer; `(NO_ANSWER, reason)` when it timed out or the
        connection dropped. A refused connection raises at once: nothing listens there."""
        try:
            return request_json(method, f"{self.url}{path}", body, token, self.timeout)
        except OSError as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, (TimeoutError, ConnectionResetError)):
                return NO_ANSWER, reason
            raise Unreachable(self.url, reason, self.timeout) from err

    def _credentials(self) -> tuple[str, str]:
        user = os.environ.get("STREAMOPS_AIRFLOW_USERNAME")
        password = os.environ.get("STREAMOPS_AIRFLOW_PASSWORD")
        if user and password:
            return user, password
        if STACK_PASSWORDS.is_file():
            passwords = json.loads(STACK_PASSWORDS.read_text())
            if "admin" in passwords:
                return "admin", str(passwords["admin"])
        raise CliError(
            "no Airflow login: set $STREAMOPS_AIRFLOW_USERNAME and $STREAMOPS_AIRFLOW_PASSWORD "
            "(or $STREAMOPS_AIRFLOW_TOKEN to a token from POST /auth/token)",
            EXIT_UNREACHABLE,
        )

    def login(self) -> None:
        """Get a token with the username and password."""
        user, password = self._credentials()
        body = {"username": user, "password": password}
        status, answer = self._repeated("POST", "/auth/token", body, None)
        if status not in (200, 201) or not isinstance(answer, dict):
            raise CliError(
                f"Airflow at {self.url} refused the login of {user!r} (HTTP {status}): check "
                "$STREAMOPS_AIRFLOW_USERNAME and $STREAMOPS_AIRFLOW_PASSWORD",
                EXIT_UNREACHABLE,
            )
        self._token = str(answer["access_token"])

    def _repeated(self, method: str, path: str, body: object, token: str | None) -> tuple[int, Any]:
        """A request that is safe to repeat, repeated after a server error or no answer."""
        for attempt in range(RETRIES + 1):
            status, answer = self._request(method, path, body, token)
            if NO_ANSWER < status < 500 or attempt == RETRIES:
                break
            delay = 2.0 * (attempt + 1)
            what = f"no answer within {self.timeout:g} s" if status == NO_ANSWER else status
            print(
                f"  {method} {path}: {what} from Airflow; trying again in {delay:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(delay)
        if status == NO_ANSWER:
            raise Unreachable(self.url, answer, self.timeout)
        return status, answer

    def _authed(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """An authenticated request, repeated after a server error or no answer (every caller's
        request is safe to repeat: a trigger names its run), logging in again once on a 401."""
        if self._token is None:
            self.login()
        status, answer = self._repeated(method, path, body, self._token)
        if status == 401:
            self.login()
            status, answer = self._repeated(method, path, body, self._token)
        return status, answer

    def call(self, method: str, path: str, body: object = None) -> Any:
        """An authenticated call that must succeed; its JSON answer."""
        status, answer = self._authed(method, path, body)
        if status in (401, 403):
            raise CliError(
                f"Airflow refused {method} {path} (HTTP {status}): the user needs DAG read and "
                "run permissions",
                EXIT_UNREACHABLE,
            )
        if status == 404 and path.startswith("/streamops/"):
            detail = answer.get("detail") if isinstance(answer, dict) else answer
            raise CliError(f"{detail or 'not found'} ({path})", EXIT_USAGE)
        if status >= 300:
            detail = answer.get("detail") if isinstance(answer, dict) else answer
            raise CliError(f"{method} {path} failed (HTTP {status}): {detail}", EXIT_USAGE)
        return answer

    def overview(self) -> dict[str, Any]:
        """The Streams page's data."""
        answer: dict[str, Any] = self.call("GET", "/streamops/api/streams")
        return answer

    def dag(self, dag_id: str) -> dict[str, Any]:
        """A DAG's details; a clear error when Airflow does not know it."""
        status, answer = self._authed("GET", f"/api/v2/dags/{dag_id}")
        if status == 404:
            raise CliError(
                f"Airflow has no DAG {dag_id!r}: check its dag-processor for import errors "
                "(UI: Dags, or `airflow dags list-import-errors`)"
            )
        if status >= 300:
            raise CliError(f"cannot read DAG {dag_id} (HTTP {status}): {answer}")
        result: dict[str, Any] = answer
        return result

    def trigger(
        self, dag_id: str, conf: dict[str, Any], note: str, run_id: str | None = None
    ) -> str:
        """Trigger a DAG run; its run id. Refuses a paused DAG (its run would never start)."""
        if self.dag(dag_id).get("is_paused"):
            raise CliError(
                f"DAG {dag_id} is paused, so a run would wait forever: unpause it (UI toggle, or "
                f"`airflow dags unpause {dag_id}`) and run this again"
            )
        # The run id is chosen here, so that a POST repeated after a server error (Airflow on
        # SQLite answers 500 "Database error" while its database is locked) or after no answer
        # cannot make two runs: a repeat finds the run the first attempt made.
        run_id = run_id or f"manual__{datetime.now(UTC).isoformat(timespec='microseconds')}"
        path = f"/api/v2/dags/{dag_id}/dagRuns"
        body = {"logical_date": None, "conf": conf, "note": note, "dag_run_id": run_id}
        status, answer = self._authed("POST", path, body)
        if status == 409 and self._made_by(dag_id, run_id, conf, note):
            return run_id
        if status >= 300:
            detail = answer.get("detail") if isinstance(answer, dict) else answer
            raise CliError(f"POST {path} failed (HTTP {status}): {detail}", EXIT_USAGE)
        return str(answer["dag_run_id"])

    def _made_by(self, dag_id: str, run_id: str, conf: dict[str, Any], note: str) -> bool:
        """Whether the run `run_id` is the one this trigger asked for (an earlier attempt made it
        but its answer was lost), not another with the same id."""
        quoted = urllib.parse.quote(run_id, safe="")
        status, run = self._authed("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")
        return status == 200 and run.get("conf") == conf and run.get("note") == note

    def run_state(self, dag_id: str, run_id: str) -> str:
        """The state of a DAG run."""
        quoted = urllib.parse.quote(run_id, safe="")
        return str(self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")["state"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """Wait for a run to end; its final state (or the last seen one at the timeout).

        Airflow out of reach for a while (an api-server restart) does not end the wait; out of
        reach for longer than `UNREACHABLE_WHILE_WAITING_SECONDS`, it does.
        """
        deadline = time.monotonic() + timeout
        state, lost_since = self.run_state(dag_id, run_id), None
        while state not in TERMINAL and time.monotonic() < deadline:
            time.sleep(2)
            try:
                state, lost_since = self.run_state(dag_id, run_id), None
            except Unreachable as err:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > UNREACHABLE_WHILE_WAITING_SECONDS:
                    raise
                print(f"  still waiting: {err.reason}", file=sys.stderr, flush=True)
        return state

    def run_url(self, dag_id: str, run_id: str) -> str:
        """The run's page in the Airflow UI."""
        return f"{self.url}/dags/{dag_id}/runs/{urllib.parse.quote(run_id, safe='')}"


# --- status --------------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}T"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _backlog(stream: dict[str, Any]) -> str:
    """`N files`, or for a Kafka stream `N records` behind the latest offsets."""
    if stream.get("records_behind") is not None:
        return f"{sum(stream['records_behind'].values())} records"
    return "-" if stream["backlog_files"] is None else f"{stream['backlog_files']} files"


def status_table(view: dict[str, Any]) -> str:
    """The overview as a table, then one line per breach and per problem."""
    header = (
        "STREAM",
        "STATE",
        "HEALTHY",
        "LAST BATCH",
        "AGE",
        "IN ROWS/S",
        "DONE ROWS/S",
        "BACKLOG",
        "RESTARTS",
        "CHECKPOINT",
        "QUALITY",
    )
    rows = [header]
    notes: list[str] = []
    for s in view["streams"]:
        cp = s["checkpoint"]
        quality = s.get("quality")
        rows.append(
            (
                s["stream"],
                s["state"],
                "yes" if s["healthy"] else "NO",
                "-" if s["last_batch_id"] is None else str(s["last_batch_id"]),
                _age(s["last_batch_age_seconds"]),
                _rate(s["input_rows_per_second"]),
                _rate(s["processed_rows_per_second"]),
                _backlog(s),
                str(s["restarts_total"]),
                f"gen {cp['generation'] or 0}, {_size(cp['size_bytes'])}",
                "-" if not quality else ("passed" if quality["success"] else "FAILED"),
            )
        )
        notes += [f"  {b['message']}" for b in s["breaches"]]
        notes += [
            f"  stream {s['stream']}: incident {i['signal']} open for {_age(i['age_seconds'])}"
            f" since {i['opened_at']} ({i['checks']} checks"
            + (f", {i['flaps']} flaps" if i["flaps"] else "")
            + ")"
            for i in s.get("incidents", [])
        ]
        if s["state"] in ("failed", "restarting") and s.get("last_error"):
            notes.append(f"  stream {s['stream']}: last error: {s['last_error']}")
        if quality and not quality["success"]:
            notes.append(
                f"  stream {s['stream']}: quality check failed ({quality['failures']} "
                f"expectations) at {quality['time']}: see the sink_quality run's log and the "
                "Data Docs; docs/runbook.md says what each failure means"
            )
        if len(view["streams"]) == 1 and (phases := s.get("batch_time")):
            notes.append(
                f"  stream {s['stream']}: batch time by phase, last / median of "
                f"{phases[0]['batches']} batches (ms): "
                + ", ".join(
                    f"{p['phase']} {_ms(p['last_ms'])}/{_ms(p['median_ms'])}" for p in phases
                )
            )
        if len(view["streams"]) == 1 and s.get("spec_version"):
            notes.append(
                f"  stream {s['stream']}: spec version {s['spec_version']} (code "
                f"{s.get('code_version') or 'unknown'}); docs/upgrades.md"
            )
        if len(view["streams"]) == 1 and (ui := s.get("spark_ui")):
            notes.append(f"  stream {s['stream']}: Spark UI {ui['url']}")
            if ui["tunnel"]:
                notes.append(
                    f"    on {ui['driver_host']}'s loopback only: from elsewhere, {ui['tunnel']} "
                    f"then open {ui['tunneled_url']}"
                )
    notes += [f"  problem: {p}" for p in view.get("problems", [])]
    if len(rows) == 1:
        return "no stream is registered yet: trigger word_count_stream or running_total_stream"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([line.rstrip() for line in lines] + notes)


def local_overview() -> dict[str, Any]:
    """The overview read straight from the data root (no Airflow needed)."""
    from streamops.overview import overview

    result: dict[str, Any] = overview(data_root(), use_cache=False).to_dict()
    return result


def cmd_status(args: argparse.Namespace, airflow: Airflow) -> int:
    """Print the streams' states; exit 0 only when every stream is healthy."""
    view = local_overview() if args.local else airflow.overview()
    if args.stream:
        chosen = [s for s in view["streams"] if s["stream"] == args.stream]
        if not chosen:
            known = (s["stream"] for s in view["streams"])
            raise CliError(str(registry.UnknownStream(args.stream, known)))
        view = {**view, "streams": chosen}
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print(status_table(view))
    healthy = all(s["healthy"] for s in view["streams"]) and not view.get("problems")
    return EXIT_OK if healthy else EXIT_UNHEALTHY


# --- actions -------------------------------------------------------------------------------------


def _find(airflow: Airflow, stream: str) -> dict[str, Any] | None:
    return next((s for s in airflow.overview()["streams"] if s["stream"] == stream), None)


def _parse_params(pairs: Sequence[str], flag: str = "--param") -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} window=null")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def _announce(airflow: Airflow, what: str, dag_id: str, run_id: str) -> None:
    print(f"{what}: triggered {dag_id} run {run_id}")
    print(f"  {airflow.run_url(dag_id, run_id)}")


def _finish(airflow: Airflow, dag_id: str, run_id: str, wait: bool, timeout: float) -> int:
    if not wait:
        return EXIT_OK
    print(f"waiting for {dag_id} run {run_id} to end (up to {timeout:.0f} s)...", flush=True)
    state = airflow.wait_for_run(dag_id, run_id, timeout)
    if state == "success":
        print(f"{dag_id} run {run_id}: success")
        return EXIT_OK
    if state not in TERMINAL:
        raise CliError(
            f"{dag_id} run {run_id} is still {state} after {timeout:.0f} s: follow it at "
            f"{airflow.run_url(dag_id, run_id)}",
            EXIT_UNHEALTHY,
        )
    print(
        f"{dag_id} run {run_id} failed: read its task log at {airflow.run_url(dag_id, run_id)}",
        file=sys.stderr,
    )
    return EXIT_UNHEALTHY


def start(airflow: Airflow, stream: str, dag: str | None, extra: dict[str, Any]) -> tuple[str, str]:
    """Trigger the stream's DAG with its last Params (plus `extra`); the DAG id and run id."""
    known = _find(airflow, stream)
    if known is not None:
        dag_id = dag or known["dag_id"]
        conf = {**known.get("params", {}), **extra, "stream": stream}
        if known["state"] in ("running", "starting", "falling_behind", "stalled", "restarting"):
            raise CliError(
                f"stream {stream} is {known['state']} already (run {known['run_id']}); "
                f"`streamops restart {stream}` stops it first"
            )
    else:
        if not dag:
            job = stream if stream in ("word_count", "running_total") else None
            if job is None:
                raise CliError(
                    f"stream {stream!r} is not registered yet: say which DAG starts it, e.g. "
                    f"--dag word_count_stream (it is registered when it first starts)"
                )
            dag = f"{job}_stream"
        dag_id = dag
        conf = {**extra, "stream": stream}
    run_id = stream_run_id(stream)
    return dag_id, airflow.trigger(dag_id, conf, f"streamops start {stream}", run_id)


def cmd_start(args: argparse.Namespace, airflow: Airflow) -> int:
    """Start a stream with the Params it last ran with."""
    dag_id, run_id = start(airflow, args.stream, args.dag, _parse_params(args.param))
    _announce(airflow, f"start {args.stream}", dag_id, run_id)
    print("  the run lasts as long as the stream; `streamops status` shows its state")
    return EXIT_OK


def stop(airflow: Airflow, stream: str, wait: bool, timeout: float) -> int:
    """Ask a stream to stop at a batch boundary; with `wait`, until its run has ended."""
    known = _find(airflow, stream)
    if known is None:
        raise CliError(f"stream {stream!r} is not registered: nothing to stop")
    run_id = airflow.trigger(
        "stream_control", {"stream": stream, "action": "stop"}, f"streamops stop {stream}"
    )
    _announce(airflow, f"stop {stream}", "stream_control", run_id)
    code = _finish(airflow, "stream_control", run_id, wait, timeout)
    if code != EXIT_OK or not wait or not known["run_id"]:
        return code
    print(f"waiting for {known['dag_id']} run {known['run_id']} to end...", flush=True)
    state = airflow.wait_for_run(known["dag_id"], known["run_id"], timeout)
    if state not in TERMINAL:
        raise CliError(
            f"stream {stream} has not stopped within {timeout:.0f} s (its run is {state}): a "
            "batch may be stuck; see `streamops status` and the run's log",
            EXIT_UNHEALTHY,
        )
    print(f"stream {stream} stopped ({known['dag_id']} run {known['run_id']}: {state})")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace, airflow: Airflow) -> int:
    """Stop a stream at a batch boundary."""
    return stop(airflow, args.stream, args.wait, args.timeout)


def cmd_restart(args: argparse.Namespace, airflow: Airflow) -> int:
    """Stop a stream (waiting for it), then start it with the same Params."""
    known = _find(airflow, args.stream)
    if known is None:
        raise CliError(f"stream {args.stream!r} is not registered: use `streamops start`")
    if known["state"] != "stopped":
        code = stop(airflow, args.stream, True, args.timeout)
        if code != EXIT_OK:
            return code
    dag_id, run_id = start(airflow, args.stream, None, {})
    _announce(airflow, f"start {args.stream}", dag_id, run_id)
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace, airflow: Airflow) -> int:
    """Run a checkpoint action through the checkpoint_rotation DAG."""
    conf: dict[str, Any] = {"stream": args.stream, "action": args.command}
    if args.command == "rotate" and args.shuffle_partitions:
        conf["shuffle_partitions"] = args.shuffle_partitions
    if args.command == "restore" and args.snapshot_id:
        conf["snapshot_id"] = args.snapshot_id
    if args.command == "prune":
        conf["keep_count"] = args.keep_count
        conf["keep_age_hours"] = args.keep_age_hours
    if _find(airflow, args.stream) is None:
        raise CliError(f"stream {args.stream!r} is not registered: no checkpoint to act on")
    run_id = airflow.trigger("checkpoint_rotation", conf, f"streamops {args.command} {args.stream}")
    _announce(airflow, f"{args.command} {args.stream}", "checkpoint_rotation", run_id)
    if args.command in ("rotate", "restore"):
        print("  a running stream stops at a batch boundary first and is started again after")
    return _finish(airflow, "checkpoint_rotation", run_id, args.wait, args.timeout)


def cmd_compact(args: argparse.Namespace, airflow: Airflow) -> int:
    """Compact a stream's sink through the sink_compaction DAG."""
    if _find(airflow, args.stream) is None:
        raise CliError(f"stream {args.stream!r} is not registered: no sink to compact")
    conf: dict[str, Any] = {"stream": args.stream}
    if args.target_mb is not None:
        conf["target_mb"] = args.target_mb
    if args.grace_minutes is not None:
        conf["grace_minutes"] = args.grace_minutes
    run_id = airflow.trigger("sink_compaction", conf, f"streamops compact {args.stream}")
    _announce(airflow, f"compact {args.stream}", "sink_compaction", run_id)
    return _finish(airflow, "sink_compaction", run_id, args.wait, args.timeout)


def cmd_upgrade(args: argparse.Namespace, airflow: Airflow) -> int:
    """Upgrade a stream's spec: the preflight's verdict here (`--dry-run`), or the cut-over
    through the stream_upgrade DAG."""
    sets = _parse_params(args.set, flag="--set")
    if not sets:
        raise CliError("say what to change: --set KEY=VALUE (a Param of the stream's DAG)")
    if not args.dry_run:
        conf = {"stream": args.stream, "changes": sets, "mode": args.mode, "dry_run": False}
        run_id = airflow.trigger("stream_upgrade", conf, f"streamops upgrade {args.stream}")
        _announce(airflow, f"upgrade {args.stream}", "stream_upgrade", run_id)
        print("  its preflight runs first; a refused upgrade fails the run and touches nothing")
        return _finish(airflow, "stream_upgrade", run_id, args.wait, args.timeout)
    from streamops.upgrades import UpgradeError, dry_run

    try:
        verdict = dry_run(args.stream, sets, args.mode)
    except registry.UnknownStream as err:
        raise CliError(str(err)) from err
    except UpgradeError as err:
        raise CliError(f"{args.stream}: {err}") from err
    print(verdict.report())
    return EXIT_OK if verdict.goes_ahead else EXIT_UNHEALTHY


# --- Command line --------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line."""
    main = argparse.ArgumentParser(
        prog="streamops",
        description="Stream states and actions, through Airflow (see docs/runbook.md).",
        epilog="exit codes: 0 healthy / done, 1 unhealthy / run failed, 2 usage, 3 unreachable",
    )
    main.add_argument(
        "--url",
        default=os.environ.get("STREAMOPS_AIRFLOW_URL", DEFAULT_URL),
        help="the Airflow api-server (default $STREAMOPS_AIRFLOW_URL or %(default)s)",
    )
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="every stream's state; exit 1 if any is unhealthy")
    status.add_argument("stream", nargs="?", help="only this stream")
    status.add_argument("--json", action="store_true", help="the overview as JSON")
    status.add_argument(
        "--local", action="store_true", help="read the data root directly, without Airflow"
    )
    status.set_defaults(run=cmd_status)

    start_cmd = commands.add_parser("start", help="start a stream (with the Params it last had)")
    start_cmd.add_argument("stream")
    start_cmd.add_argument("--dag", help="the stream DAG, for a stream not registered yet")
    start_cmd.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a Param to change"
    )
    start_cmd.set_defaults(run=cmd_start)

    for name, run, text in (
        ("stop", cmd_stop, "stop a stream at a batch boundary"),
        ("restart", cmd_restart, "stop a stream, then start it again with the same Params"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("stream")
        if name == "stop":
            command.add_argument("--wait", action="store_true", help="until its run has ended")
        command.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
        command.set_defaults(run=run)

    helps = {
        "rotate": "start a new checkpoint generation (optionally more shuffle partitions)",
        "snapshot": "copy the checkpoint at a batch boundary",
        "restore": "put a snapshot back (default: the latest)",
        "prune": "delete old snapshots",
    }
    for name in CHECKPOINT_ACTIONS:
        command = commands.add_parser(name, help=helps[name])
        command.add_argument("stream")
        command.add_argument("--wait", action="store_true", help="until the action's run ends")
        command.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
        if name == "rotate":
            command.add_argument("--shuffle-partitions", type=positive_int)
        if name == "restore":
            command.add_argument("--snapshot-id", help="default: the latest snapshot")
        if name == "prune":
            command.add_argument("--keep-count", type=positive_int, default=10)
            command.add_argument("--keep-age-hours", type=float, default=24.0)
        command.set_defaults(run=cmd_checkpoint)

    compact_cmd = commands.add_parser(
        "compact", help="merge a stream's committed batch files (the sink_compaction DAG)"
    )
    compact_cmd.add_argument("stream")
    compact_cmd.add_argument("--target-mb", type=float, help="largest merged file (default 64)")
    compact_cmd.add_argument(
        "--grace-minutes", type=float, help="how long merged files stay for reads (default 60)"
    )
    compact_cmd.add_argument("--wait", action="store_true", help="until the run ends")
    compact_cmd.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    compact_cmd.set_defaults(run=cmd_compact)

    upgrade_cmd = commands.add_parser(
        "upgrade", help="judge a change of a stream's Params or code against its checkpoint"
    )
    upgrade_cmd.add_argument("stream")
    upgrade_cmd.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Param to change (VALUE is JSON when it parses: 4, true, null; else text)",
    )
    upgrade_cmd.add_argument(
        "--mode",
        choices=("auto", "restart", "new-checkpoint"),
        default="auto",
        help="auto: what the preflight finds (default); restart: refuse a new checkpoint; "
        "new-checkpoint: rotate even when a restart would do",
    )
    upgrade_cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="run the preflight here and print the verdict; change nothing",
    )
    upgrade_cmd.add_argument("--wait", action="store_true", help="until the upgrade's run ends")
    upgrade_cmd.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    upgrade_cmd.set_defaults(run=cmd_upgrade)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code."""
    args = parser().parse_args(argv)
    try:
        return int(args.run(args, Airflow(args.url)))
    except CliError as err:
        print(f"streamops {args.command}: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
