"""When to restart a failed stream (exponential backoff inside a bounded restart budget), when a
live driver counts as hung (`stall_restart_seconds`), and which drivers have outlived their run
(`orphan_drivers`).

Defaults: at most 5 restarts in any 30 minutes; waits of 10 s, 20 s, 40 s ... capped at 5 min.
Past the budget the operator stops restarting and fails, which alerts once. Each default can be
changed for a deployment with an environment variable of the Airflow workers:
STREAMOPS_MAX_RESTARTS, STREAMOPS_RESTART_WINDOW_SECONDS, STREAMOPS_RESTART_BACKOFF_SECONDS and
STREAMOPS_RESTART_MAX_BACKOFF_SECONDS.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spark_jobs.lease import LeaseHolder
    from streamops import registry

DEFAULT_MAX_RESTARTS = 5
STALL_RESTART_ENV = "STREAMOPS_STALL_RESTART_SECONDS"
#: By default a driver is restarted after this many stall limits without progress.
STALL_RESTART_LIMITS = 3
DEFAULT_WINDOW_SECONDS = 30 * 60.0
DEFAULT_BACKOFF_SECONDS = 10.0
DEFAULT_MAX_BACKOFF_SECONDS = 300.0


def stall_restart_seconds(
    trigger_interval: str | None, environ: dict[str, str] | None = None
) -> float:
    """How long a live driver may make no progress before its supervisor kills and restarts it.

    `$STREAMOPS_STALL_RESTART_SECONDS` when set (0 turns self-healing off), else 3 stall limits
    of `stream_health` (`streamops.health`: 10 trigger intervals, at least 60 s; so 180 s for a
    1-second stream). Progress is the job's status file being written: every batch, and every
    10 s while idle. A single batch longer than this is taken for a hang: raise it for streams
    whose batches take minutes.
    """
    from streamops.health import HealthThresholds

    env = os.environ if environ is None else environ
    raw = env.get(STALL_RESTART_ENV)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{STALL_RESTART_ENV}={raw!r}: expected a number of seconds") from None
        if value < 0:
            raise ValueError(f"{STALL_RESTART_ENV}={raw!r}: must be 0 (off) or more")
        return value
    limit = HealthThresholds.from_env(dict(env)).stall_limit(trigger_interval)
    return STALL_RESTART_LIMITS * limit.total_seconds()


@dataclass
class RestartBudget:
    """Failures seen in a sliding window, and how long to wait before the next restart."""

    max_restarts: int = DEFAULT_MAX_RESTARTS
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS
    failures: list[float] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> RestartBudget:
        """The defaults, overridden by the STREAMOPS_* variables of the worker's environment."""

        def number(name: str, default: float) -> float:
            return float(os.environ.get(name, default))

        return cls(
            max_restarts=int(number("STREAMOPS_MAX_RESTARTS", DEFAULT_MAX_RESTARTS)),
            window_seconds=number("STREAMOPS_RESTART_WINDOW_SECONDS", DEFAULT_WINDOW_SECONDS),
            backoff_seconds=number("STREAMOPS_RESTART_BACKOFF_SECONDS", DEFAULT_BACKOFF_SECONDS),
            max_backoff_seconds=number(
                "STREAMOPS_RESTART_MAX_BACKOFF_SECONDS", DEFAULT_MAX_BACKOFF_SECONDS
            ),
        )

    def record_failure(self, now: float) -> None:
        """Count a failure at time `now` (seconds)."""
        self.failures = [t for t in self.failures if now - t < self.window_seconds] + [now]

    def exhausted(self) -> bool:
        """Whether restarting again would exceed `max_restarts` in the window."""
        return len(self.failures) > self.max_restarts

    def next_delay(self) -> float:
        """Seconds to wait before the next restart: doubling with each failure in the window."""
        exponent = max(len(self.failures) - 1, 0)
        return float(min(self.backoff_seconds * 2**exponent, self.max_backoff_seconds))


#: States of a stream DAG run whose driver is not an orphan.
ACTIVE_RUN_STATES = frozenset({"queued", "running"})


def dagrun_state(ti: Any, dag_id: str, run_id: str) -> str | None:
    """A DAG run's state as a plain string (`"running"`, ...), asked through a running task's
    `ti`; None when the run does not exist. Any other error is raised: never act on a guess."""
    try:
        state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    except Exception as err:
        # In a worker: AirflowRuntimeError naming 'not_found'; under dag.test(): the API
        # client's ServerResponseError, whose response says 404.
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 404 or "not_found" in repr(err):
            return None
        raise
    # The Task SDK returns its own enum, whose str() is "DagRunState.RUNNING".
    return str(getattr(state, "value", state))


def orphan_drivers(
    records: list[registry.StreamRecord], run_state: Callable[[str, str], str | None]
) -> list[tuple[registry.StreamRecord, LeaseHolder]]:
    """The live drivers started by a stream DAG run that is no longer active.

    `run_state(dag_id, run_id)` gives a run's state (None when the run does not exist). A run
    whose state cannot be read is not taken for ended. Drivers started by hand (an owner that is
    not `<dag_id>/<run_id>` of a stream DAG) are left alone.
    """
    import logging

    from spark_jobs.layout import CheckpointLayout
    from spark_jobs.lease import read_lease

    orphans = []
    for record in records:
        holder = read_lease(CheckpointLayout.of(record.checkpoint).lease_file)
        if holder is None or holder.is_gone() or "/" not in holder.owner:
            continue
        dag_id, run_id = holder.owner.split("/", 1)
        if not dag_id.endswith("_stream"):
            continue
        try:
            state = run_state(dag_id, run_id)
        except Exception as err:
            logging.getLogger(__name__).warning(
                "stream %s: cannot tell whether run %s is active (%s); left alone",
                record.stream,
                holder.owner,
                err,
            )
            continue
        if state not in ACTIVE_RUN_STATES:
            orphans.append((record, holder))
    return orphans
