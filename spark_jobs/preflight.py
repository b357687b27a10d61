"""Preflight of an upgrade: does a new spec run on a stream's checkpoint, and with what state?

The new spec runs against a *copy* of the checkpoint: the copy's last batch is uncommitted, so
Spark runs that batch again with the new code and settings, exactly as it would after a crash,
and reads no new input (the batch's offsets are in the offset log). The copy's sink is a
temporary folder; nothing of the stream itself is written. Spark's state data source
(`state-metadata`, `statestore`) then reads the operators, key and value schemas and state
partitions of the checkpoint before the run and of the copy after it, and the findings name
every difference that a new checkpoint would be needed for.

    python -m spark_jobs.preflight word_count --input ... --sink ... --checkpoint ... [--window ...]

prints the trial as JSON (the control plane's `streamops.upgrades` turns it into a verdict).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pyspark.sql import SparkSession

from spark_jobs.layout import CONTROL_FILES, STREAMOPS_DIR, CheckpointLayout
from spark_jobs.runner import JobSpec, RefusedToStart, failure_reason, start
from spark_jobs.storage import Location

log = logging.getLogger(__name__)

JOBS = ("word_count", "running_total")
#: How long the new spec may take to run the checkpoint's last batch again.
TRIAL_TIMEOUT_SECONDS = 300.0
#: The Spark setting that names the state store provider; a checkpoint keeps its first one.
PROVIDER_KEY = "spark.sql.streaming.stateStore.providerClass"
SHUFFLE_PARTITIONS_KEY = "spark.sql.shuffle.partitions"
IGNORE_MISSING_FILES_KEY = "spark.sql.files.ignoreMissingFiles"
COPY_ATTEMPTS = 3
# Spark's error classes that say the checkpoint's state does not fit the query: a new checkpoint
# is the cure. Any other failure of the new spec is its own, and a new checkpoint would not help.
STATE_ERROR_PREFIXES = (
    "[STREAMING_STATEFUL_OPERATOR",
    "[STATE_STORE_",
    "[STDS_",
    "[STREAMING_STATE_",
    "[STATEFUL_PROCESSOR",
)

Requirement = Literal["restart", "new checkpoint", "refused"]


@dataclass(frozen=True)
class StateOperator:
    """One stateful operator of a checkpoint, as Spark's state data source reads it."""

    operator_id: int
    name: str
    store: str
    partitions: int
    key_schema: str
    value_schema: str


@dataclass(frozen=True)
class CheckpointState:
    """What a checkpoint's state is: its operators, and the settings its offset log pins."""

    operators: list[StateOperator]
    #: The SQL settings Spark restores from the last offset file on every restart.
    pinned_conf: dict[str, str]
    last_batch: int | None


@dataclass(frozen=True)
class Finding:
    """One difference the preflight found, and what it requires."""

    requires: Requirement
    text: str


@dataclass
class Trial:
    """The new spec's run on a copy of the checkpoint, and what it found."""

    job: str
    checkpoint: str
    before: CheckpointState
    after: CheckpointState | None = None
    #: The Spark batch run again, or None when there was none to run (see `skipped`).
    replayed_batch: int | None = None
    #: Spark's first line, when the new spec failed on the copy.
    error: str | None = None
    skipped: str | None = None
    asked_partitions: int | None = None
    asked_provider: str | None = None
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> str:
        """The trial as JSON, for the control plane."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Trial:
        """Parse `to_json`'s output."""
        data = json.loads(text)

        def state(part: dict[str, Any] | None) -> CheckpointState | None:
            if part is None:
                return None
            operators = [StateOperator(**op) for op in part["operators"]]
            return CheckpointState(operators, part["pinned_conf"], part["last_batch"])

        before = state(data.pop("before"))
        assert before is not None
        after = state(data.pop("after"))
        findings = [Finding(**f) for f in data.pop("findings")]
        return cls(before=before, after=after, findings=findings, **data)


def read_state(spark: SparkSession, checkpoint: str) -> CheckpointState:
    """The state of a checkpoint, read with Spark's state data source (nothing is written)."""
    layout = CheckpointLayout.of(checkpoint)
    offsets = layout.batch_ids(layout.offsets)
    if not offsets:
        return CheckpointState([], {}, None)
    # Line 2 of an offset file is its metadata: the batch's watermark, time and pinned settings.
    lines = layout.offsets.child(str(offsets[-1])).read_text().splitlines()
    pinned = json.loads(lines[1]).get("conf", {}) if len(lines) > 1 else {}
    operators = []
    for row in spark.read.format("state-metadata").load(checkpoint).collect():
        schema = (
            spark.read.format("statestore")
            .option("operatorId", row.operatorId)
            .option("storeName", row.stateStoreName)
            .load(checkpoint)
            .schema
        )
        operators.append(
            StateOperator(
                operator_id=int(row.operatorId),
                name=str(row.operatorName),
                store=str(row.stateStoreName),
                partitions=int(row.numPartitions),
                key_schema=schema["key"].dataType.simpleString(),
                value_schema=schema["value"].dataType.simpleString(),
            )
        )
    return CheckpointState(
        sorted(operators, key=lambda o: (o.operator_id, o.store)), pinned, offsets[-1]
    )


def copy_checkpoint(checkpoint: str, target: Path) -> CheckpointLayout:
    """Copy a checkpoint to a local folder, without the files of its running driver.

    The copy may be taken while the driver runs: Spark writes its logs' files whole (a rename),
    and a batch that was running is uncommitted in the copy anyway (`uncommit_last_batch`)."""
    from pyarrow import fs as pafs

    source = Location.of(checkpoint)
    for attempt in range(COPY_ATTEMPTS):
        # A live driver's state store maintenance may delete an old file under the copy: copy
        # again, a moment later.
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        try:
            pafs.copy_files(
                source.path,
                str(target),
                source_filesystem=source.filesystem,
                destination_filesystem=pafs.LocalFileSystem(),
            )
            break
        except (FileNotFoundError, OSError):
            if attempt == COPY_ATTEMPTS - 1:
                raise
            time.sleep(1.0)
    for name in CONTROL_FILES:
        (target / STREAMOPS_DIR / name).unlink(missing_ok=True)
    return CheckpointLayout.of(str(target))


def uncommit_last_batch(layout: CheckpointLayout) -> int | None:
    """Make Spark run the copy's last batch again: drop its commit. Returns the batch id."""
    offsets = layout.batch_ids(layout.offsets)
    if not offsets:
        return None
    last = offsets[-1]
    for name in (str(last), f".{last}.crc"):
        commit = layout.commits.child(name)
        if commit.exists():
            commit.filesystem.delete_file(commit.path)
    return last


@contextmanager
def _session_settings(spark: SparkSession, keys: list[str]) -> Iterator[None]:
    """Put the session's settings `keys` back as they were after the block."""
    before: dict[str, str | None] = {key: spark.conf.get(key, None) for key in keys}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def trial_run(
    spark: SparkSession,
    job: ModuleType,
    argv: list[str],
    timeout: float = TRIAL_TIMEOUT_SECONDS,
) -> Trial:
    """Run the new spec (`argv`, the job's command line naming the stream's own checkpoint) on a
    copy of that checkpoint, and compare its state before and after. Writes only below a
    temporary folder, which is removed."""
    started_at = time.monotonic()
    args = job.parse_args(argv)
    spec = job.spec_for(args)
    name = job.__name__.rsplit(".", 1)[-1]
    original = CheckpointLayout.of(args.checkpoint)
    if not original.batch_ids(original.offsets):
        trial = Trial(name, args.checkpoint, CheckpointState([], {}, None))
        trial.skipped = "the checkpoint has no batch yet: the new spec starts it afresh"
        return trial
    workdir = Path(tempfile.mkdtemp(prefix="streamops-preflight-"))
    try:
        # Everything is read from the copy: the state data source never opens the stream's own
        # checkpoint.
        layout = copy_checkpoint(args.checkpoint, workdir / "checkpoint")
        trial = Trial(
            job=name,
            checkpoint=args.checkpoint,
            before=read_state(spark, str(layout.root.path)),
            asked_partitions=args.shuffle_partitions,
            asked_provider=spec.spark_conf.get(PROVIDER_KEY),
        )
        if args.source == "socket":
            trial.skipped = "the socket source cannot run a batch again: the rules alone apply"
        else:
            _replay_last_batch(
                spark,
                job=job,
                args=args,
                layout=layout,
                workdir=workdir,
                trial=trial,
                timeout=timeout,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    trial.findings = findings(trial)
    trial.seconds = round(time.monotonic() - started_at, 3)
    return trial


def _replay_last_batch(
    spark: SparkSession,
    *,
    job: ModuleType,
    args: argparse.Namespace,
    layout: CheckpointLayout,
    workdir: Path,
    trial: Trial,
    timeout: float,
) -> None:
    """Run the copy's last batch again with the new spec; record Spark's error or the state."""
    replayed = uncommit_last_batch(layout)
    assert replayed is not None  # the copy has the checkpoint's batches
    trial.replayed_batch = replayed
    trial_args = argparse.Namespace(**vars(args))
    trial_args.checkpoint = str(layout.root.path)
    trial_args.sink = str(workdir / "sink")
    trial_args.available_now = False
    # The batch run again starts at once; the next would start an hour later: none does.
    trial_args.trigger_interval = "1 hour"
    trial_args.console = False
    trial_spec = job.spec_for(trial_args)
    # The job sets these for its query; a session shared with others gets them back. An input
    # file gone since the batch ran is skipped: the trial is about the state.
    keys = [SHUFFLE_PARTITIONS_KEY, IGNORE_MISSING_FILES_KEY, *trial_spec.spark_conf]
    with _session_settings(spark, keys):
        spark.conf.set(IGNORE_MISSING_FILES_KEY, "true")
        trial.error = _run_batch(spark, trial_spec, trial_args, replayed, timeout)
    if trial.error is None:
        trial.after = read_state(spark, trial_args.checkpoint)


def _run_batch(
    spark: SparkSession, spec: JobSpec, args: argparse.Namespace, batch: int, timeout: float
) -> str | None:
    """Start the query on the copy, wait for the batch run again; Spark's error, or None."""
    try:
        started = start(spark, spec, args)
    except RefusedToStart as refused:
        return str(refused)
    query = started.query
    deadline = time.monotonic() + timeout
    try:
        while query.isActive and time.monotonic() < deadline:
            progress = query.lastProgress
            if progress and int(progress["batchId"]) >= batch:
                break
            time.sleep(0.1)
        failure = query.exception()
        if failure is not None:
            return failure_reason(str(failure))
        if query.isActive and time.monotonic() >= deadline:
            return f"the new spec did not finish the batch within {timeout:.0f} s"
        return None
    finally:
        query.stop()
        spark.streams.removeListener(started.listener)


def _carried(job: str) -> str:
    return (
        "a new checkpoint carries the totals"
        if job == "running_total"
        else ("a new checkpoint carries the input position")
    )


def findings(trial: Trial) -> list[Finding]:
    """Every difference between the checkpoint and what the new spec needs, each named."""
    carried = _carried(trial.job)
    return [
        *_error_findings(trial, carried),
        *_operator_findings(trial, carried),
        *_setting_findings(trial, carried),
    ]


def _error_findings(trial: Trial, carried: str) -> list[Finding]:
    found: list[Finding] = []
    if trial.error is not None:
        if trial.error.startswith(STATE_ERROR_PREFIXES):
            found.append(
                Finding(
                    "new checkpoint",
                    f"the checkpoint cannot run the new spec (Spark: {trial.error}); {carried}",
                )
            )
        else:
            found.append(
                Finding(
                    "refused",
                    f"the new spec failed on the checkpoint's last batch "
                    f"(batch {trial.replayed_batch}): {trial.error}; fix it, then try again",
                )
            )
    return found


def _operator_findings(trial: Trial, carried: str) -> list[Finding]:
    found: list[Finding] = []
    before = {(op.operator_id, op.store): op for op in trial.before.operators}
    if trial.after is not None:
        after = {(op.operator_id, op.store): op for op in trial.after.operators}
        for key in sorted(set(before) | set(after)):
            old, new = before.get(key), after.get(key)
            label = f"state of operator {key[0]}" + (f" ({key[1]})" if key[1] != "default" else "")
            if new is None:
                found.append(Finding("new checkpoint", f"{label}: no longer used; {carried}"))
            elif old is None:
                found.append(Finding("new checkpoint", f"{label} ({new.name}): new; {carried}"))
            else:
                for what, was, now in (
                    ("operator", old.name, new.name),
                    ("key schema", old.key_schema, new.key_schema),
                    ("value schema", old.value_schema, new.value_schema),
                ):
                    if was != now:
                        found.append(
                            Finding(
                                "new checkpoint",
                                f"{label}: {what} {was} in the checkpoint, {now} asked; {carried}",
                            )
                        )
    return found


def _setting_findings(trial: Trial, carried: str) -> list[Finding]:
    found: list[Finding] = []
    if trial.asked_partitions is not None:
        for op in trial.before.operators:
            if op.partitions != trial.asked_partitions:
                found.append(
                    Finding(
                        "new checkpoint",
                        f"state of operator {op.operator_id}: {op.partitions} partitions in the "
                        f"checkpoint, {trial.asked_partitions} asked; {carried}",
                    )
                )
    pinned = trial.before.pinned_conf.get(PROVIDER_KEY)
    if (
        trial.before.operators
        and trial.asked_provider
        and pinned
        and pinned != trial.asked_provider
    ):
        found.append(
            Finding(
                "new checkpoint",
                f"state store: {pinned.rsplit('.', 1)[-1]} in the checkpoint, "
                f"{trial.asked_provider.rsplit('.', 1)[-1]} asked (Spark keeps the checkpoint's); "
                f"{carried}",
            )
        )
    return found


def main(argv: list[str] | None = None) -> int:
    """`python -m spark_jobs.preflight JOB ARGS...`: print the trial of the new spec as JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in JOBS:
        sys.stderr.write(
            f"preflight: error: the first argument must be a job ({', '.join(JOBS)})\n"
        )
        return 2
    job = import_module(f"spark_jobs.{argv[0]}")
    logging.basicConfig(level=logging.WARNING)
    from spark_jobs.session import build_session
    from spark_jobs.sources import jars_for

    args = job.parse_args(argv[1:])  # exits 2 naming a bad argument
    spark = build_session(f"streamops-preflight-{argv[0]}", jars_for(args))
    try:
        trial = trial_run(spark, job, argv[1:])
    finally:
        spark.stop()
    print(trial.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
