"""Upgrades of a running stream: what a change of its spec needs, found before it is touched.

An upgrade changes some of a stream's Params, its code (`spark_jobs/`), or both. Its verdict:

- `restart`: stop at a batch boundary, start the new spec on the same checkpoint;
- `new checkpoint`: rotate the checkpoint (the input position is carried, and a running_total's
  totals), then start the new spec on the new generation;
- `refused`: not done, with every reason named.

It comes from two sources: the change table (`streamops.params.CHANGES`), and the preflight
(`spark_jobs.preflight`), which runs the new spec on a copy of the stream's checkpoint and names
what Spark's state data source finds different. The mode says what the caller accepts: `auto`
takes the verdict; `restart` refuses an upgrade that needs a new checkpoint; `new-checkpoint`
rotates even when a restart would do. A dry run (`dry_run`) gives the verdict and writes nothing:
not the stream's record, checkpoint or sink.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from spark_jobs.packaging import code_version
from spark_jobs.preflight import Finding, Trial
from streamops import registry
from streamops.config import REPO_ROOT, StreamConfigError, StreamSpec
from streamops.params import (
    CHANGES,
    CODE_VERSION,
    REQUIREMENTS,
    Change,
    Requirement,
    changes,
    stream_params,
)

Mode = Literal["auto", "restart", "new-checkpoint"]
MODES: tuple[Mode, ...] = ("auto", "restart", "new-checkpoint")
#: How long the preflight's own Spark session may take, start to end.
PREFLIGHT_TIMEOUT_SECONDS = 600.0

#: Runs the new spec's trial: (job, the job's command line) -> the trial.
TrialRunner = Callable[[str, list[str]], Trial]


class UpgradeError(ValueError):
    """An upgrade that cannot be judged as asked; the message says what to change."""


@dataclass
class Verdict:
    """What an upgrade needs, and why."""

    stream: str
    mode: Mode
    action: Requirement
    #: What decides the action, each a sentence naming the difference.
    reasons: list[str]
    changes: list[Change]
    findings: list[Finding] = field(default_factory=list)
    current_version: str | None = None
    new_version: str = ""
    params: dict[str, object] = field(default_factory=dict)
    trial: Trial | None = None

    @property
    def advice(self) -> str | None:
        """What to do about a refusal that another mode would not refuse."""
        needs = [c.requires for c in self.changes] + [f.requires for f in self.findings]
        if self.mode == "restart" and self.action == "refused" and "refused" not in needs:
            return (
                "upgrade with mode auto (or new-checkpoint) to move the stream to a new "
                "checkpoint: its position is carried"
            )
        return None

    @property
    def goes_ahead(self) -> bool:
        """Whether the upgrade may be done."""
        return self.action != "refused"

    def report(self) -> str:
        """The verdict for a person: the action, its reasons, every change and finding."""
        lines = [
            f"upgrade of {self.stream} (mode {self.mode}): {self.action}",
            f"  spec version {self.current_version or 'unknown'} -> {self.new_version}",
        ]
        lines += [f"  because {reason}" for reason in self.reasons]
        if self.advice:
            lines.append(f"  {self.advice}")
        if self.changes:
            lines.append("  changes:")
            lines += [f"    {change.describe()}" for change in self.changes]
        if self.trial is not None:
            trial = self.trial
            if trial.skipped:
                lines.append(f"  preflight: skipped: {trial.skipped}")
            else:
                lines.append(
                    f"  preflight: batch {trial.replayed_batch} run again on a copy of the "
                    f"checkpoint in {trial.seconds:.1f} s; "
                    + (
                        f"{len(trial.findings)} difference(s)"
                        if trial.findings
                        else "no difference"
                    )
                )
            lines += [f"    {f.requires}: {f.text}" for f in trial.findings]
        return "\n".join(lines)


def typed_sets(job: str, sets: Mapping[str, object]) -> dict[str, object]:
    """The changed Params, checked against the stream DAG's own Params (their JSON schema)."""
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    declared = stream_params(job)
    checked: dict[str, object] = {}
    for key, value in sets.items():
        if key not in declared:
            hint = (
                "it is a job argument the stream DAGs do not offer as a Param yet"
                if key in CHANGES
                else f"the Params of {job}_stream are {', '.join(sorted(declared))}"
            )
            raise UpgradeError(f"{key}: not a Param of a {job} stream; {hint}")
        try:
            checked[key] = Param(value, **declared[key].schema).resolve()
        except ParamValidationError as err:
            raise UpgradeError(f"{key}={value!r}: {str(err).splitlines()[0]}") from err
    return checked


def decide(
    mode: Mode, found: list[Change], findings: list[Finding]
) -> tuple[Requirement, list[str]]:
    """The action an upgrade takes in `mode`, and the reasons that decide it."""
    needs: list[tuple[Requirement, str]] = [
        *((c.requires, f"{c.key}: {c.why}") for c in found),
        *((f.requires, f.text) for f in findings),
    ]
    needed: Requirement = max((r for r, _ in needs), key=REQUIREMENTS.index, default="restart")
    reasons = [text for requires, text in needs if requires == needed]
    if needed == "refused":
        return "refused", reasons
    if needed == "new checkpoint" and mode == "restart":
        return "refused", [f"mode restart was asked, but {text}" for text in reasons]
    if mode == "new-checkpoint" and needed == "restart":
        return "new checkpoint", ["mode new-checkpoint was asked (a restart would do)"]
    return needed, reasons or ["nothing in the change needs more than a restart"]


def subprocess_trial(job: str, argv: list[str]) -> Trial:
    """The trial, run by `python -m spark_jobs.preflight` in a Spark session of its own."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "spark_jobs.preflight", job, *argv],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=PREFLIGHT_TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as err:
        raise UpgradeError(
            f"the preflight of {job} did not end within {PREFLIGHT_TIMEOUT_SECONDS:.0f} s; "
            "try again when the machine is less busy"
        ) from err
    start = done.stdout.find("{")
    if done.returncode != 0 or start < 0:
        errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
        last = (errors or done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UpgradeError(f"the preflight of {job} failed (exit {done.returncode}): {last}")
    return Trial.from_json(done.stdout[start:])


def dry_run(
    stream: str,
    sets: Mapping[str, object],
    mode: Mode = "auto",
    root: str | None = None,
    trial_runner: TrialRunner = subprocess_trial,
) -> Verdict:
    """The verdict of changing `sets` (Param -> new value) on `stream`, in `mode`.

    Runs the preflight unless the change table already refuses the change. Writes nothing.
    Raises `registry.UnknownStream` for a stream never started, `UpgradeError` for Params that
    are not the stream DAG's or values its schema refuses.
    """
    if mode not in MODES:
        raise UpgradeError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    record = registry.load(stream, root)
    if record is None:
        raise registry.UnknownStream(stream, (r.stream for r in registry.load_all(root)))
    old_params = dict(record.params)
    new_params: dict[str, Any] = {**old_params, **typed_sets(record.job, sets), "stream": stream}
    try:
        spec = StreamSpec.from_params(record.job, new_params, root)
    except StreamConfigError as err:
        raise UpgradeError(str(err)) from err
    found = changes(record.job, old_params, new_params)
    running = record.version()
    code = code_version()
    if running is None or running.code != code:
        rule = CHANGES[CODE_VERSION]
        found.append(
            Change(CODE_VERSION, running.code if running else None, code, rule.requires, rule.why)
        )
    new_version = registry.SpecVersion.id_of(record.job, new_params, code)
    if not found:
        return Verdict(
            stream=stream,
            mode=mode,
            action="refused",
            reasons=[
                f"nothing changes: the stream runs spec version {record.spec_version} (these "
                "Params, this code) already"
            ],
            changes=[],
            current_version=record.spec_version,
            new_version=new_version,
            params=new_params,
        )
    trial = None
    if not any(change.requires == "refused" for change in found):
        trial = trial_runner(record.job, [*spec.application_args(), "--stream", stream])
    action, reasons = decide(mode, found, trial.findings if trial else [])
    return Verdict(
        stream=stream,
        mode=mode,
        action=action,
        reasons=reasons,
        changes=found,
        findings=trial.findings if trial else [],
        current_version=record.spec_version,
        new_version=new_version,
        params=new_params,
        trial=trial,
    )


def verdict_json(verdict: Verdict) -> dict[str, object]:
    """The verdict as a JSON-ready dict (the stream_upgrade task's XCom `verdict`)."""
    data: dict[str, object] = json.loads(
        json.dumps(
            {
                "stream": verdict.stream,
                "mode": verdict.mode,
                "action": verdict.action,
                "reasons": verdict.reasons,
                "advice": verdict.advice,
                "changes": [c.__dict__ for c in verdict.changes],
                "findings": [f.__dict__ for f in verdict.findings],
                "current_version": verdict.current_version,
                "new_version": verdict.new_version,
                "preflight_seconds": verdict.trial.seconds if verdict.trial else None,
            },
            default=str,
        )
    )
    return data


def cut_over(verdict: Verdict, owner: str, root: str | None = None) -> dict[str, object]:
    """Apply a verdict that goes ahead, up to the start of the new spec.

    The stream is stopped at a batch boundary (if it runs) while `owner` takes its checkpoint's
    lease; then, for `restart`, the checkpoint is snapshotted (reason `upgrade to <version>`),
    for `new checkpoint` it is rotated (which snapshots the old generation). Returns what starts
    the new spec (a `TriggerDagRunOperator`'s arguments: the stream's DAG with the new Params),
    or an empty dict when the stream was not running.
    """
    from streamops import lifecycle
    from streamops.config import stream_run_id

    if not verdict.goes_ahead:
        raise UpgradeError(f"upgrade of {verdict.stream} refused: {'; '.join(verdict.reasons)}")
    record = registry.load(verdict.stream, root)
    if record is None:
        raise registry.UnknownStream(verdict.stream, (r.stream for r in registry.load_all(root)))
    # Recorded before the stop: the stream's task saves the record when its driver has stopped.
    _mark_replaced(record, verdict, root)
    try:
        outcome = lifecycle.run_action(
            record,
            "snapshot" if verdict.action == "restart" else "rotate",
            owner=owner,
            reason=f"upgrade to {verdict.new_version}",
        )
    except Exception:
        _mark_replaced(record, None, root)
        raise
    print(f"stream {verdict.stream}: {outcome.summary}")
    if not outcome.restart_dag_id:
        print(
            f"stream {verdict.stream} was not running: start it with the new Params to run "
            f"spec version {verdict.new_version}"
        )
        return {}
    return {
        "trigger_dag_id": outcome.restart_dag_id,
        "trigger_run_id": stream_run_id(verdict.stream),
        "conf": dict(verdict.params),
    }


def _mark_replaced(
    record: registry.StreamRecord, verdict: Verdict | None, root: str | None
) -> None:
    """Record in the running version that `verdict` replaces it (None: that it does not)."""
    from spark_jobs.status import utc_now

    fresh = registry.load(record.stream, root) or record
    running = fresh.version()
    if running is None:
        return
    running.replaced_at = utc_now() if verdict else None
    running.replaced_by = verdict.new_version if verdict else None
    running.replaced_why = (
        f"upgrade ({verdict.action}): " + ", ".join(c.key for c in verdict.changes)
        if verdict
        else None
    )
    registry.save(fresh, root)


def upgrade_task(
    params: Mapping[str, Any],
    ti: Any,
    owner: str = "stream_upgrade",
    trial_runner: TrialRunner = subprocess_trial,
) -> list[dict[str, object]]:
    """The `stream_upgrade` DAG's task: the verdict, logged and pushed as XCom `verdict`; unless
    it is a dry run, the cut-over (`cut_over`). Returns the starts of the new spec: none for a
    dry run or a stream that was not running, else one (the DAG's next task triggers it).

    A refused upgrade fails the task with its reasons; so do an unknown stream and a bad change.
    """
    from airflow.sdk.exceptions import AirflowFailException

    stream = str(params["stream"])
    changes_asked = params.get("changes") or {}
    mode = params.get("mode", "auto")
    try:
        verdict = dry_run(stream, changes_asked, mode, trial_runner=trial_runner)
    except (registry.UnknownStream, UpgradeError) as err:
        raise AirflowFailException(f"stream {stream}: {err}") from err
    print(verdict.report())
    ti.xcom_push(key="verdict", value=verdict_json(verdict))
    if not verdict.goes_ahead:
        raise AirflowFailException(f"upgrade of {stream} refused: " + "; ".join(verdict.reasons))
    if params.get("dry_run", True):
        print(f"dry run: stream {stream} was not touched")
        return []
    start = cut_over(verdict, owner)
    return [start] if start else []
