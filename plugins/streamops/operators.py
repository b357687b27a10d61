"""`StreamSubmitOperator`: the provider's `SparkSubmitOperator`, made fit for long-running streams.

The stream outlives every Airflow process. The task:

1. **adopts or starts** a driver. It reads the checkpoint's lease (`spark_jobs/lease.py`): a live
   driver started by this same DAG run (a retry, a task the scheduler reset, a resumed deferral)
   is adopted, never started twice; a live driver of any other run or of a hand-started job is
   refused with a message naming it. Otherwise it builds the spark-submit command with the
   provider's `SparkSubmitHook` on `spark_default` and starts it **detached**: in a session of its
   own, its output appended to `registry.driver_log(stream)`. It returns once the driver holds
   the lease.
2. **defers** to `StreamDriverTrigger`, which watches the driver from the triggerer and copies its
   log into the task log. No worker or pool slot is held while the stream runs; restarting,
   killing or redeploying the scheduler, workers, triggerer, api-server or dag-processor leaves
   the driver running.
3. **resumes** when the driver has ended: a stop it was asked for (`stream_control`, rotation,
   SIGTERM to the driver) or the end of an available-now run is a success; a failure restarts the
   driver from its checkpoint after a backoff (a deferral too), within the restart budget kept in
   the stream's registry record; past the budget the task fails with the last error.

Marking the task failed or success, or clearing it, stops the driver
(`StreamDriverTrigger.on_kill`).

Cluster deploy mode (the driver runs inside the cluster: Kubernetes, YARN, standalone cluster)
keeps the provider's own path: the task blocks in `SparkSubmitOperator.execute`, whose durable
driver tracking reattaches to the driver after a retry; the driver still holds the lease.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk.exceptions import AirflowFailException

from spark_jobs import jars
from spark_jobs.java_runtime import java_home
from spark_jobs.packaging import build_py_files, code_version
from spark_jobs.session import driver_environment, unreachable_driver_warning
from streamops import kafka
from streamops.config import REPO_ROOT, StreamConfigError, StreamSpec
from streamops.supervision import RestartBudget

if TYPE_CHECKING:
    from airflow.sdk import Context

    from spark_jobs.lease import LeaseHolder
    from streamops import registry

# The checkpoint, status and lease modules use pyarrow's filesystems: they are imported when a
# task runs, not when the dag-processor parses a DAG file.

#: How long a new driver may take to start its JVM and take the lease.
DRIVER_START_TIMEOUT_SECONDS = 180.0
#: How long a cleared task waits for the driver it is replacing to stop.
REPLACE_TIMEOUT_SECONDS = 60.0
#: Airflow retries of a stream task: for a try that failed outside the stream, e.g. its worker
#: could not reach the api-server (a scheduler back before the api-server after an outage) or
#: died. The next try adopts the running driver. A failure of the stream itself raises
#: `AirflowFailException`, which is never retried: the restart budget governs the driver. Delays:
#: 30 s, then doubling up to 5 min (about 12 minutes of control-plane trouble in all).
CONTROL_PLANE_RETRIES = 5
CONTROL_PLANE_RETRY_DELAY = timedelta(seconds=30)
CONTROL_PLANE_MAX_RETRY_DELAY = timedelta(minutes=5)


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
        kwargs.setdefault("retries", CONTROL_PLANE_RETRIES)
        kwargs.setdefault("retry_delay", CONTROL_PLANE_RETRY_DELAY)
        kwargs.setdefault("retry_exponential_backoff", 2.0)
        kwargs.setdefault("max_retry_delay", CONTROL_PLANE_MAX_RETRY_DELAY)
        super().__init__(**kwargs)
        self.job = job
        self.restart_budget = restart_budget

    # -- settings ---------------------------------------------------------------------------

    def _spec(self, context: Context) -> StreamSpec:
        try:
            return StreamSpec.from_params(self.job, dict(context["params"]))
        except StreamConfigError as err:
            raise AirflowFailException(f"invalid stream settings: {err}") from err

    @staticmethod
    def _owner(context: Context) -> str:
        ti = context["ti"]
        return f"{ti.dag_id}/{ti.run_id}"

    def _budget(self, record: registry.StreamRecord) -> RestartBudget:
        budget = self.restart_budget or RestartBudget.from_env()
        return RestartBudget(
            max_restarts=budget.max_restarts,
            window_seconds=budget.window_seconds,
            backoff_seconds=budget.backoff_seconds,
            max_backoff_seconds=budget.max_backoff_seconds,
            failures=list(record.failures),
        )

    # -- entry points -----------------------------------------------------------------------

    def execute(self, context: Context) -> None:
        """Adopt this run's live driver, or start one; then defer until it ends."""
        from spark_jobs.layout import CheckpointLayout
        from spark_jobs.lease import LeaseHeld, read_lease
        from streamops import registry

        spec = self._spec(context)
        owner = self._owner(context)
        layout = CheckpointLayout.of(spec.checkpoint)
        holder = read_lease(layout.lease_file)
        if holder is not None and not holder.is_gone():
            if holder.stream != spec.stream or holder.owner != owner:
                raise AirflowFailException(
                    f"stream {spec.stream}: {LeaseHeld(holder, layout.lease_file)}"
                )
            if not layout.stop_request.exists():
                self.log.info("stream %s: adopting its driver, %s", spec.stream, holder.describe())
                self._watch(context, spec, holder)
            # A clear of this run stopped its driver: wait for it to end, then start afresh.
            self._wait_for_end(layout, holder.token, REPLACE_TIMEOUT_SECONDS)

        ti = context["ti"]
        old = registry.load(spec.stream)
        same_run = old is not None and old.run_id == ti.run_id and old.dag_id == ti.dag_id
        if old is not None and not same_run and old.run_id and self._run_active(ti, old):
            raise AirflowFailException(
                f"stream {spec.stream} is already run by {old.dag_id}/{old.run_id}; stop it first "
                "(stream_control), or give this stream another name"
            )
        version = registry.SpecVersion.of(spec.job, dict(context["params"]))
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
            # A retry or reset of the same run keeps its budget and history; a new run starts
            # with a fresh budget.
            restarts=old.restarts if old and same_run else [],
            failures=old.failures if old and same_run else [],
            last_error=old.last_error if old and same_run else None,
            last_error_kind=old.last_error_kind if old and same_run else None,
            # Every version the stream ran, whichever run started it.
            versions=old.versions if old else [],
        )
        record.run_version(version)
        if layout.stop_request.exists():  # left over from an earlier stop
            layout.stop_request.filesystem.delete_file(layout.stop_request.path)
        registry.save(record)
        self._start_and_watch(context, spec, record)

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        pid: int = -1,
        driver_log: str = "",
        start_offset: int = 0,
    ) -> None:
        """The driver has ended: succeed on a requested stop, restart on a failure."""
        from spark_jobs.layout import CheckpointLayout
        from spark_jobs.lease import read_lease
        from spark_jobs.status import read_status
        from streamops import registry
        from streamops.triggers import kill_driver

        if pid == -1 and event:  # resumed with the trigger's event alone (`airflow dags test`)
            pid = int(event.get("pid", -1))
            driver_log = driver_log or str(event.get("driver_log", ""))
            start_offset = start_offset or int(event.get("log_offset", 0))
        spec = self._spec(context)
        layout = CheckpointLayout.of(spec.checkpoint)
        holder = read_lease(layout.lease_file)
        hung = (event or {}).get("hung")
        own_lease = holder is not None and holder.owner == self._owner(context)
        if own_lease and holder is not None and holder.is_gone() and holder.process_alive():
            # Frozen past the lease's TTL (SIGSTOP, a stuck host): it would fence itself if it
            # ever woke up; end it now rather than leave it holding memory.
            self.log.warning(
                "stream %s: its driver stopped renewing its lease but its process lives "
                "(frozen): %s",
                spec.stream,
                kill_driver(holder),
            )
            hung = hung or f"the driver (pid {holder.pid}) froze: it stopped renewing its lease"
        elif (
            holder is not None
            and not hung
            and not holder.is_gone()
            and own_lease
            and not layout.stop_request.exists()
        ):
            # The trigger took a slow renewal for the driver's end: it still runs, watch it again.
            self.log.info("stream %s: its driver still runs, %s", spec.stream, holder.describe())
            self._watch(context, spec, holder)
        record = registry.load(spec.stream)
        if record is None:
            raise AirflowFailException(
                f"stream {spec.stream}: its registry record is gone; trigger the DAG again"
            )
        status = read_status(spec.checkpoint)
        ours = status is not None and status.pid == pid
        stop_requested = layout.stop_request.exists()
        if stop_requested or (ours and status is not None and status.state == "stopped"):
            if stop_requested:
                layout.stop_request.filesystem.delete_file(layout.stop_request.path)
                record.desired = "stopped"
                self.log.info("stream %s stopped at a batch boundary, as requested", spec.stream)
            else:
                record.desired = "stopped"
                self.log.info("stream %s: the job ended by itself", spec.stream)
            record.restart_at = None
            registry.save(record)
            return
        reason = hung or (
            status.exception
            if ours and status is not None and status.exception
            else last_error(driver_log, start_offset)
            or f"the driver (pid {pid}) ended without saying why: killed?"
        )
        self._failed(context, spec, record, reason, kind="hung" if hung else "failed")

    def restart(self, context: Context, event: Any = None) -> None:
        """The backoff is over: start the driver again, unless the stream was stopped meanwhile."""
        from spark_jobs.layout import CheckpointLayout
        from streamops import registry

        spec = self._spec(context)
        layout = CheckpointLayout.of(spec.checkpoint)
        record = registry.load(spec.stream)
        # A bounded (available-now) run is recorded as not expected to run on from its start:
        # only a stop request stops it, and until it has read everything it restarts.
        stopped = layout.stop_request.exists() or (
            record is not None and record.desired == "stopped" and not spec.available_now
        )
        if record is None or stopped:
            if layout.stop_request.exists():
                layout.stop_request.filesystem.delete_file(layout.stop_request.path)
            if record is not None:
                record.restart_at = None
                record.desired = "stopped"
                registry.save(record)
            self.log.info("stream %s was stopped while waiting to restart", spec.stream)
            return
        self.execute(context)

    @staticmethod
    def _run_active(ti: Any, record: registry.StreamRecord) -> bool:
        from streamops.supervision import ACTIVE_RUN_STATES, dagrun_state

        try:
            return dagrun_state(ti, record.dag_id, record.run_id) in ACTIVE_RUN_STATES
        except Exception:  # cannot tell: the lease still guards the checkpoint
            return False

    # -- the driver -------------------------------------------------------------------------

    def _start_and_watch(
        self, context: Context, spec: StreamSpec, record: registry.StreamRecord
    ) -> None:
        from streamops import registry

        hook = self._get_hook()
        if hook._connection["deploy_mode"] == "cluster":
            self._run_in_cluster(context, spec, record)
            return
        log_path = registry.driver_log(spec.stream)
        try:
            holder, start_offset = self._start_driver(context, spec, log_path)
        except DriverExited as exited:
            if exited.code == 2:  # refused: starting again would not help
                raise AirflowFailException(f"stream {spec.stream}: {exited.reason}") from exited
            self._failed(context, spec, record, exited.reason)
            return
        record.restart_at = None
        registry.save(record)
        self._watch(context, spec, holder, start_offset=start_offset)

    def _application_args(self, context: Context, spec: StreamSpec) -> list[str]:
        from streamops.registry import SpecVersion

        return [
            *spec.application_args(),
            "--stream",
            spec.stream,
            "--owner",
            self._owner(context),
            "--spec-version",
            SpecVersion.id_of(spec.job, dict(context.get("params") or {}), code_version()),
        ]

    def _prepare_submit(self, context: Context, spec: StreamSpec) -> None:
        self.application_args = self._application_args(context, spec)
        # Credentials for the driver: put in spark-submit's own environment when it starts, never
        # in the hook's env_vars (which YARN and Kubernetes turn into --conf arguments).
        self._driver_secrets: dict[str, str] = {}
        if spec.source == "kafka":
            # The brokers and security settings, from the Params or the Kafka connection.
            try:
                client = kafka.client_settings(
                    spec.kafka_connection, spec.kafka_bootstrap_servers, kafka.connection_extra
                )
            except kafka.KafkaConnectionError as err:
                raise AirflowFailException(f"stream {spec.stream}: {err}") from err
            kafka.mask_secrets(client)
            self.application_args += client.application_args()
            self._driver_secrets = dict(client.secrets)
        self.py_files = str(build_py_files(Path(tempfile.mkdtemp(prefix="streamops-"))))
        # The jars the stream needs beyond pyspark's (the Kafka source's, S3A's for paths on
        # S3), as spark-submit's --jars: local paths from the pinned cache, which spark-submit
        # ships to the cluster.
        paths = [spec.checkpoint, spec.sink, spec.input]
        try:
            self.jars = ",".join(jars.for_source(spec.source, paths)) or None
        except jars.JarUnavailable as err:
            raise AirflowFailException(f"stream {spec.stream}: {err}") from err
        env = dict(self.env_vars or {})
        env.setdefault("PYSPARK_PYTHON", sys.executable)
        if home := java_home():
            env.setdefault("JAVA_HOME", home)
        self.env_vars = env
        self._hook = None  # rebuilt from the settings above

    def _start_driver(
        self, context: Context, spec: StreamSpec, log_path: str
    ) -> tuple[LeaseHolder, int]:
        """Start spark-submit detached; return the driver's lease once it holds it."""
        from spark_jobs.layout import CheckpointLayout
        from spark_jobs.lease import read_lease

        self._prepare_submit(context, spec)
        hook = self._get_hook()
        command = hook._build_spark_submit_command(self.application)
        env = {**os.environ, **(hook._env or {}), **self._driver_secrets}
        # A client-mode driver runs here: its ports on loopback unless the deployment set
        # SPARK_LOCAL_IP (spark_jobs/session.py).
        if warning := unreachable_driver_warning(str(hook._connection["master"]), env):
            self.log.warning("stream %s: %s", spec.stream, warning)
        env.update(driver_environment(env))
        layout = CheckpointLayout.of(spec.checkpoint)
        before = read_lease(layout.lease_file)
        stale_token = before.token if before else None
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "ab") as log_file:
            start_offset = log_file.tell()
            log_file.write(
                f"==== {datetime.now(UTC).isoformat(timespec='seconds')} starting the driver of "
                f"stream {spec.stream} for {self._owner(context)}: "
                f"{hook._mask_cmd(command)}\n".encode()
            )
            log_file.flush()
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: no signal sent to the task's process group reaches it, and
                # it keeps running when the task process exits.
                start_new_session=True,
            )
        self.log.info(
            "stream %s: started spark-submit (pid %d), output in %s",
            spec.stream,
            process.pid,
            log_path,
        )
        deadline = time.monotonic() + DRIVER_START_TIMEOUT_SECONDS
        while True:
            holder = read_lease(layout.lease_file)
            if (
                holder is not None
                and holder.token != stale_token
                and holder.owner == self._owner(context)
                and not holder.is_gone()
            ):
                self.log.info("stream %s: the driver runs, %s", spec.stream, holder.describe())
                return holder, start_offset
            code = process.poll()
            if code is not None:
                reason = last_error(log_path, start_offset) or f"spark-submit exited {code}"
                raise DriverExited(code, reason)
            if time.monotonic() > deadline:
                process.kill()
                raise DriverExited(
                    1,
                    f"the driver did not take its lease within {DRIVER_START_TIMEOUT_SECONDS:.0f}"
                    f" s; see {log_path}",
                )
            time.sleep(0.5)

    def _watch(
        self,
        context: Context,
        spec: StreamSpec,
        holder: LeaseHolder,
        start_offset: int | None = None,
    ) -> None:
        from streamops import registry
        from streamops.supervision import stall_restart_seconds
        from streamops.triggers import StreamDriverTrigger

        log_path = registry.driver_log(spec.stream)
        if start_offset is None:
            start_offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        try:
            stall_restart = stall_restart_seconds(
                None if spec.available_now else spec.trigger_interval
            )
        except ValueError as err:
            self.log.warning("stream %s: self-healing off: %s", spec.stream, err)
            stall_restart = 0.0
        try:
            log_max_bytes = registry.driver_log_limit()
        except ValueError as err:
            self.log.warning("stream %s: driver log rotation off: %s", spec.stream, err)
            log_max_bytes = 0
        self.defer(
            trigger=StreamDriverTrigger(
                stream=spec.stream,
                checkpoint=spec.checkpoint,
                token=holder.token,
                driver_log=log_path,
                log_offset=start_offset,
                stall_restart_seconds=stall_restart,
                log_max_bytes=log_max_bytes,
                pid=holder.pid,
            ),
            method_name="execute_complete",
            kwargs={"pid": holder.pid, "driver_log": log_path, "start_offset": start_offset},
        )

    def _wait_for_end(self, layout: Any, token: str, timeout: float) -> None:
        from spark_jobs.lease import read_lease

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holder = read_lease(layout.lease_file)
            if holder is None or holder.token != token or holder.is_gone():
                return
            time.sleep(1)
        raise AirflowFailException(
            f"the driver on {layout.root} did not stop within {timeout:.0f} s of its stop "
            "request; see its log, then try again"
        )

    def _run_in_cluster(
        self, context: Context, spec: StreamSpec, record: registry.StreamRecord
    ) -> None:
        """Cluster deploy mode: the provider's blocking, durable submission, then the same
        outcome as a detached driver's (success on a stop, a backoff and restart on a failure)."""
        from airflow.sdk.exceptions import AirflowException

        from spark_jobs.layout import CheckpointLayout
        from streamops import registry

        self._prepare_submit(context, spec)
        if self._driver_secrets:
            raise AirflowFailException(
                f"stream {spec.stream}: its Kafka connection {spec.kafka_connection!r} holds "
                "credentials, which reach a driver only through the environment of a client-mode "
                "spark-submit; run this stream in client deploy mode (the Spark connection's "
                "deploy-mode), or give the driver the Java client's settings through the "
                "cluster's own secret mechanism"
            )
        try:
            super().execute(context)
        except AirflowException as err:
            self._failed(context, spec, record, str(err).splitlines()[0])
            return
        layout = CheckpointLayout.of(spec.checkpoint)
        if layout.stop_request.exists():
            layout.stop_request.filesystem.delete_file(layout.stop_request.path)
        record.desired = "stopped"
        record.restart_at = None
        registry.save(record)
        self.log.info("stream %s: its driver ended as asked, or by itself", spec.stream)

    # -- failures ---------------------------------------------------------------------------

    def _failed(
        self,
        context: Context,
        spec: StreamSpec,
        record: registry.StreamRecord,
        reason: str,
        kind: str = "failed",
    ) -> None:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        from streamops import registry

        budget = self._budget(record)
        now = time.time()
        budget.record_failure(now)
        record.failures = budget.failures
        record.restarts = [*record.restarts, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))]
        record.last_error = reason
        record.last_error_kind = kind
        if budget.exhausted():
            record.restart_at = None
            registry.save(record)
            raise AirflowFailException(
                f"stream {spec.stream}: failed {len(budget.failures)} times in "
                f"{budget.window_seconds / 60:.0f} min, restart budget "
                f"({budget.max_restarts}) used up; last error: {reason}. Fix the cause, then "
                "trigger the DAG again: the job resumes from its checkpoint."
            )
        from streamops.triggers import MIN_DEFERRAL_SECONDS

        delay = max(budget.next_delay(), MIN_DEFERRAL_SECONDS)
        moment = datetime.now(UTC) + timedelta(seconds=delay)
        record.restart_at = moment.isoformat(timespec="seconds")
        registry.save(record)
        self.log.warning(
            "stream %s failed (%s); restart %d of %d in %.0f s, from the checkpoint",
            spec.stream,
            reason,
            len(budget.failures),
            budget.max_restarts,
            delay,
        )
        self.defer(trigger=DateTimeTrigger(moment=moment), method_name="restart")


class DriverExited(Exception):
    """spark-submit exited before its driver took the checkpoint's lease."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def last_error(log_path: str, offset: int = 0) -> str | None:
    """The last `<job>: error: ...` line a driver wrote to its log after `offset`, if any."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    errors = [line for line in text.splitlines() if ": error: " in line]
    return errors[-1].split(": error: ", 1)[1].strip() if errors else None
