"""`StreamSubmitOperator`: the provider's `SparkSubmitOperator`, made fit for long-running streams.

What it adds to `spark-submit` on the `spark_default` connection:
- one stream, one query: a lock beside the checkpoint (`locks.py`); a second run is refused with
  a message naming the running one;
- supervision: a failed job restarts from its checkpoint with backoff, within a restart budget
  (`supervision.py`); past the budget the task fails (and alerts, once);
- a graceful stop: `stream_control` writes a stop request into the checkpoint; the job stops at
  the next batch boundary and the task ends as a success;
- no orphan driver: marking the task failed or killing it kills spark-submit and the driver.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from spark_jobs.java_runtime import java_home
from spark_jobs.packaging import build_py_files
from streamops.config import REPO_ROOT, StreamConfigError, StreamSpec
from streamops.supervision import RestartBudget

if TYPE_CHECKING:
    from airflow.sdk import Context

    from spark_jobs.layout import CheckpointLayout
    from streamops import registry
    from streamops.locks import StreamLock

# The checkpoint, status and lock modules use pyarrow's filesystems: they are imported when a
# task runs, not when the dag-processor parses a DAG file.


class StreamSubmitOperator(SparkSubmitOperator):
    """Run one streaming job (`word_count` or `running_total`) for as long as it should run.

    The stream's settings come from the DAG run's Params (see `streamops.params`). Every other
    argument is `SparkSubmitOperator`'s; the master and deploy mode come from the connection.
    """

    ui_color = "#d8f0e3"

    def __init__(
        self,
        *,
        job: str,
        restart_budget: RestartBudget | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", f"streamops-{job}")
        # Spark's start-up INFO lines would drown the job's own log lines in the task log.
        kwargs.setdefault("conf", {"spark.log.level": "WARN"})
        kwargs.setdefault("application", str(REPO_ROOT / "spark_jobs" / f"{job}.py"))
        super().__init__(**kwargs)
        self.job = job
        self.restart_budget = restart_budget
        self._spec: StreamSpec | None = None
        self._lock: StreamLock | None = None
        # Set by on_kill: the task was marked failed or killed, so never restart the job.
        self._killed = threading.Event()

    def _prepare(self, context: Context) -> StreamSpec:
        try:
            spec = StreamSpec.from_params(self.job, dict(context["params"]))
        except StreamConfigError as err:
            raise AirflowFailException(f"invalid stream settings: {err}") from err
        self.application_args = spec.application_args()
        self.py_files = str(build_py_files(Path(tempfile.mkdtemp(prefix="streamops-"))))
        env = dict(self.env_vars or {})
        env.setdefault("PYSPARK_PYTHON", sys.executable)
        if home := java_home():
            env.setdefault("JAVA_HOME", home)
        self.env_vars = env
        return spec

    def execute(self, context: Context) -> None:
        """Take the stream's lock, then run the job until it ends, restarting it on failure."""
        from spark_jobs.layout import CheckpointLayout
        from streamops import registry
        from streamops.locks import StreamLock, StreamLocked

        spec = self._spec = self._prepare(context)
        layout = CheckpointLayout.of(spec.checkpoint)
        ti = context["ti"]
        owner = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}#{ti.try_number}"
        self._lock = StreamLock(layout.lock_file, owner)
        try:
            self._lock.acquire()
        except StreamLocked as locked:
            raise AirflowFailException(f"stream {spec.stream}: {locked}") from locked
        record = registry.StreamRecord(
            stream=spec.stream,
            job=spec.job,
            checkpoint=spec.checkpoint,
            sink=spec.sink,
            input=spec.input,
            trigger_interval=None if spec.available_now else spec.trigger_interval,
            desired="stopped" if spec.available_now else "running",
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            params=dict(context["params"]),
        )
        try:
            if layout.stop_request.exists():  # left over from an earlier stop
                layout.stop_request.filesystem.delete_file(layout.stop_request.path)
            registry.save(record)
            self._supervise(context, spec, layout, record)
        finally:
            self._lock.release()

    def _supervise(
        self,
        context: Context,
        spec: StreamSpec,
        layout: CheckpointLayout,
        record: registry.StreamRecord,
    ) -> None:
        from streamops import registry

        budget = replace(self.restart_budget, failures=[]) if self.restart_budget else None
        budget = budget or RestartBudget.from_env()
        while not self._killed.is_set():
            self.log.info(
                "stream %s: submitting %s %s", spec.stream, self.job, self.application_args
            )
            try:
                super().execute(context)
                failure = None
            except AirflowException as err:
                failure = err
            if self._killed.is_set():
                raise AirflowException(
                    f"stream {spec.stream}: the task was killed or marked failed; its driver was "
                    "stopped. Trigger the DAG again to resume from the checkpoint."
                )
            if layout.stop_request.exists():
                layout.stop_request.filesystem.delete_file(layout.stop_request.path)
                record.desired = "stopped"
                registry.save(record)
                self.log.info("stream %s stopped at a batch boundary, as requested", spec.stream)
                return
            if failure is None:
                self.log.info("stream %s: the job ended by itself", spec.stream)
                if not spec.available_now:
                    record.desired = "stopped"
                    registry.save(record)
                return
            reason = self._failure_reason(spec, failure)
            budget.record_failure(time.time())
            record.restarts = [*record.restarts, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())]
            record.last_error = reason
            registry.save(record)
            if budget.exhausted():
                raise AirflowFailException(
                    f"stream {spec.stream}: failed {len(budget.failures)} times in "
                    f"{budget.window_seconds / 60:.0f} min, restart budget "
                    f"({budget.max_restarts}) used up; last error: {reason}. Fix the cause, then "
                    "trigger the DAG again: the job resumes from its checkpoint."
                )
            delay = budget.next_delay()
            self.log.warning(
                "stream %s failed (%s); restart %d of %d in %.0f s, from the checkpoint",
                spec.stream,
                reason,
                len(budget.failures),
                budget.max_restarts,
                delay,
            )
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self._killed.is_set():
                if layout.stop_request.exists():
                    break
                time.sleep(1)
        raise AirflowException(
            f"stream {spec.stream}: the task was killed while waiting to restart"
        )

    def _failure_reason(self, spec: StreamSpec, failure: Exception) -> str:
        from spark_jobs.status import read_status

        status = read_status(spec.checkpoint)
        if status is not None and status.exception:
            return status.exception
        return str(failure).splitlines()[0]

    def on_kill(self) -> None:
        """Kill spark-submit, then the driver if it outlived it, and give the lock back."""
        from spark_jobs.status import read_status

        self._killed.set()
        super().on_kill()
        spec = self._spec
        if spec is not None:
            status = read_status(spec.checkpoint)
            if (
                status is not None
                and status.host == socket.gethostname()
                and status.state in ("starting", "running")
            ):
                try:
                    os.kill(status.pid, signal.SIGKILL)
                    self.log.info("killed driver pid %d of stream %s", status.pid, spec.stream)
                except ProcessLookupError:
                    pass
        if self._lock is not None:
            self._lock.release()
