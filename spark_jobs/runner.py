"""What both jobs do around their query: checks, session, status, sink and a graceful stop."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import pyarrow as pa
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming.query import StreamingQuery

from spark_jobs.checkpoints import CheckpointCorrupt
from spark_jobs.checkpoints import validate as validate_checkpoint
from spark_jobs.jars import JarUnavailable, needs_s3a
from spark_jobs.layout import CheckpointLayout, Generation
from spark_jobs.lease import Lease, LeaseHeld, LeaseHolder, LeaseUnsupported
from spark_jobs.listener import StatusListener
from spark_jobs.session import build_session, checkpoint_conf, s3a_conf, ui_url
from spark_jobs.sinks import ParquetBatchSink, batch_time_of, format_batch, with_batch_columns
from spark_jobs.sources import jars_for, job_paths, read_lines
from spark_jobs.status import StreamStatus
from spark_jobs.storage import Location

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STREAM_FAILED = 1
EXIT_REFUSED = 2
# How long a stop request waits for the running micro-batch to finish before stopping anyway.
STOP_GRACE_SECONDS = 600.0


class RefusedToStart(Exception):
    """The job cannot start safely; the message says why and what to do."""


@dataclass(frozen=True)
class JobSpec:
    """What makes one job different from the other."""

    name: str
    schema: pa.Schema
    value_column: str
    output_mode: str
    # Streaming lines -> the streaming DataFrame whose micro-batches go to `batch_result`.
    build_stream: Callable[[DataFrame, argparse.Namespace], DataFrame]
    # One micro-batch of that stream -> the rows to write: `word`, the value column and,
    # for windowed counts, `window_start` and `window_end`.
    batch_result: Callable[[DataFrame], DataFrame]
    spark_conf: dict[str, str] = field(default_factory=dict)


def resolve_generation(
    layout: CheckpointLayout, sink: ParquetBatchSink, args: argparse.Namespace
) -> Generation:
    """The checkpoint's generation, recorded on the first start of a new checkpoint."""
    generation = Generation.read(layout)
    if generation is not None:
        return generation
    if not layout.is_new():
        # A checkpoint Spark started without us: its batch ids are the sink's.
        return Generation(first_sink_batch_id=0)
    last = sink.last_batch_id()
    if last is not None and args.source == "kafka" and not args.allow_new_checkpoint:
        raise RefusedToStart(
            f"--checkpoint {args.checkpoint} is new but --sink {args.sink} already holds batches "
            f"up to {last}: a new checkpoint would read the topics from --kafka-starting-offsets "
            f"({args.kafka_starting_offsets}) and could count records twice. Resume with the "
            "checkpoint that wrote this sink, point --sink at an empty folder, or pass "
            "--allow-new-checkpoint with --kafka-starting-offsets naming the first offsets never "
            "counted."
        )
    if last is not None and args.source == "file" and not args.allow_new_checkpoint:
        raise RefusedToStart(
            f"--checkpoint {args.checkpoint} is new but --sink {args.sink} already holds batches "
            f"up to {last}: a new checkpoint would read every file in --input again and count it "
            "twice. Resume with the checkpoint that wrote this sink, point --sink at an empty "
            "folder, or pass --allow-new-checkpoint if --input holds only files never counted."
        )
    generation = Generation(first_sink_batch_id=0 if last is None else last + 1)
    generation.write(layout)
    return generation


class StopRequest:
    """Stop the query once its running micro-batch has finished; a second signal stops at once.

    Asked for by SIGTERM, SIGINT (Ctrl+C), or a `stop-request` file in the checkpoint (how the
    control plane asks, wherever the driver runs). A second SIGINT or SIGTERM ends the driver at
    once, as a shell user expects of a second Ctrl+C: the interrupted micro-batch is replayed from
    the checkpoint at the next start (the sink is idempotent), and the lease is taken over since
    its pid is gone.
    """

    def __init__(self, layout: CheckpointLayout | None = None, name: str = "job") -> None:
        self.event = threading.Event()
        self.layout = layout
        self.name = name
        self.signal: str | None = None
        self._announced = False

    def is_set(self) -> bool:
        """Whether a stop has been asked for (says why, once, from the caller's thread)."""
        if not self.event.is_set() and self.layout and self.layout.stop_request.exists():
            log.warning("found %s: stopping after this micro-batch", self.layout.stop_request)
            self._announced = True
            self.event.set()
        if self.event.is_set() and self.signal and not self._announced:
            self._announced = True
            log.warning(
                "received %s: stopping after the running micro-batch (again to stop at once)",
                self.signal,
            )
        return self.event.is_set()

    def install(self) -> None:
        """Route SIGTERM and SIGINT here (main thread only).

        Called again once the SparkSession is up: PySpark's SparkContext replaces the SIGINT
        handler with one that cancels every job and raises KeyboardInterrupt wherever the main
        thread is, which prints tracebacks and interrupts the micro-batch.
        """
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # No buffered I/O here: the handler may interrupt the main thread inside a write to the
        # same stream ("reentrant call"). The first signal is reported by `is_set`.
        if not self.event.is_set() or self.signal is None:
            self.signal = signal.Signals(signum).name
            self.event.set()
            return
        message = (
            f"{self.name}: {signal.Signals(signum).name} again: stopping now, without finishing "
            "the micro-batch; the next start replays it from the checkpoint\n"
        )
        os.write(sys.stderr.fileno(), message.encode())
        # The JVM of a `python -m` driver ends when its stdin (this process) closes.
        os._exit(128 + signum)


_PYTHON_ERROR = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?$")


def failure_reason(message: str) -> str:
    """The one line of a query's failure that says why: Spark's error line (`[ERROR_CLASS]
    ...`), or the exception line of the Python traceback a `foreachBatch` function raised (which
    Spark wraps in "An exception was raised by the Python Proxy")."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "the query failed without a message"
    if "Python Proxy" in lines[0]:
        raised = [line.strip() for line in lines if _PYTHON_ERROR.match(line)]
        if raised:
            return raised[-1]
    return lines[0].strip()


# Spark's Kafka source when offsets it must read are gone from the topic (`failOnDataLoss`).
_KAFKA_DATA_LOSS = re.compile(
    r"Some data may have been lost because they are not available in Kafka any more"
)
_LOST_RANGE = re.compile(
    r"Could not read records in offset \[(\d+), (\d+)\) for topic partition (\S+)"
)


def kafka_data_loss(message: str) -> str | None:
    """What a query's failure says when Kafka records expired before the stream read them: which
    partition, which offsets, how many, and the choices. None for any other failure."""
    if not _KAFKA_DATA_LOSS.search(message):
        return None
    ranges = sorted(set(_LOST_RANGE.findall(message)), key=lambda r: (r[2], int(r[0])))
    lost = (
        "; ".join(
            f"{partition} offsets {start} to {int(end) - 1} (up to {int(end) - int(start)} "
            "records lost)"
            for start, end, partition in ranges
        )
        or "offsets Spark's message does not name"
    )
    return (
        "Kafka records expired (or were deleted) before the stream read them; the batch could "
        f"not read {lost} (Spark names the first partitions it met). Starting again fails the "
        "same way. Either "
        "accept the loss knowingly: start with --kafka-accept-data-loss (the stream DAGs' Param "
        "kafka_accept_data_loss), which reads on from the earliest records still in the topic; "
        "or restore the records into the topic first. docs/runbook.md, 'kafka_data_loss'"
    )


def stop_at_batch_boundary(
    query: StreamingQuery, grace_seconds: float = STOP_GRACE_SECONDS
) -> None:
    """Stop a query between micro-batches.

    A batch that starts in the instant between the check and the stop is interrupted; that
    costs nothing but time, because the sink is idempotent and Spark replays it on restart.
    """
    deadline = time.monotonic() + grace_seconds
    while query.isActive and query.status["isTriggerActive"] and time.monotonic() < deadline:
        time.sleep(0.05)
    query.stop()


def supervise(
    query: StreamingQuery,
    stop: StopRequest,
    grace_seconds: Callable[[], float] = lambda: STOP_GRACE_SECONDS,
) -> None:
    """Wait for the query to end: by itself (available-now), by a stop request, or by failing."""
    while not query.awaitTermination(1):
        if stop.is_set():
            stop_at_batch_boundary(query, grace_seconds())
    query.awaitTermination()  # raises StreamingQueryException if the query failed


class PartClock:
    """Milliseconds spent in each named part of a micro-batch, in order."""

    def __init__(self) -> None:
        self.laps: dict[str, int] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        """The time since the previous lap (or the start) was spent in `name`."""
        now = time.perf_counter()
        self.laps[name] = round((now - self._last) * 1000)
        self._last = now


@dataclass
class StartedJob:
    """A job whose query is running."""

    query: StreamingQuery
    listener: StatusListener
    layout: CheckpointLayout
    sink: ParquetBatchSink
    generation: Generation


def file_in_place_of_a_folder(args: argparse.Namespace) -> str | None:
    """What is wrong when `--checkpoint` or `--sink` names a file: each is a folder (created
    when missing). (`--input` is checked with the other arguments.)"""
    for flag, path in (("--checkpoint", args.checkpoint), ("--sink", args.sink)):
        if path and (where := Location.of(path)).exists() and not where.is_dir():
            return (
                f"{flag} {path} is a file, not a folder: give the path of a folder (created if "
                "missing), or move the file away"
            )
    return None


def start(spark: SparkSession, spec: JobSpec, args: argparse.Namespace) -> StartedJob:
    """Check the checkpoint and sink, then start the job's query in `spark`.

    Raises `RefusedToStart` when starting would lose or duplicate data.
    """
    layout = CheckpointLayout.of(args.checkpoint)
    sink = ParquetBatchSink(args.sink, spec.schema)
    try:
        validate_checkpoint(layout)
    except CheckpointCorrupt as corrupt:
        raise RefusedToStart(str(corrupt)) from corrupt
    generation = resolve_generation(layout, sink, args)
    if removed := sink.remove_incomplete():
        log.info("removed %d partly written batch file(s) from %s", removed, args.sink)
    # One partition per core by default: each partition of a stateful aggregation is a state
    # store that loads and commits on every micro-batch, so partitions beyond the cores only add
    # that fixed cost (docs/performance.md, Tuning). A restarted stateful query keeps the number
    # recorded in its checkpoint whatever this says.
    partitions = args.shuffle_partitions or spark.sparkContext.defaultParallelism
    for key, value in {
        "spark.sql.shuffle.partitions": str(partitions),
        **checkpoint_conf(spark, args.checkpoint),
        **spec.spark_conf,
    }.items():
        spark.conf.set(key, value)

    status = StreamStatus(
        job=spec.name,
        checkpoint=args.checkpoint,
        sink=args.sink,
        trigger_interval=None if args.available_now else args.trigger_interval,
        spec_version=getattr(args, "spec_version", None),
        app_id=spark.sparkContext.applicationId,
        ui_url=ui_url(spark),
    )
    job_timings: dict[int, dict[str, int]] = {}
    listener = StatusListener(status, generation.first_sink_batch_id, job_timings)
    spark.streams.addListener(listener)

    def write_batch(batch: DataFrame, spark_batch_id: int) -> None:
        clock = PartClock()
        batch_id = generation.sink_batch_id(spark_batch_id)
        batch_time = batch_time_of(layout.batch_timestamp_ms(spark_batch_id))
        clock.lap("prepare")
        result = spec.batch_result(batch).toArrow()
        clock.lap("result")
        if result.num_rows:
            sink.write(batch_id, with_batch_columns(result, batch_id, batch_time))
        clock.lap("write")
        if args.console:
            print(format_batch(batch_time, result, spec.value_column), end="", flush=True)
            clock.lap("console")
        # Read by the listener when the batch's progress arrives; kept small if one never does.
        job_timings[spark_batch_id] = clock.laps
        for stale in [b for b in job_timings if b < spark_batch_id - 10]:
            job_timings.pop(stale, None)

    writer = (
        spec.build_stream(read_lines(spark, args), args)
        .writeStream.queryName(spec.name)
        .outputMode(spec.output_mode)
        .option("checkpointLocation", args.checkpoint)
        .foreachBatch(write_batch)
    )
    if args.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=args.trigger_interval)
    log.info(
        "starting %s: source=%s sink=%s checkpoint=%s first sink batch id=%d",
        spec.name,
        args.source,
        args.sink,
        args.checkpoint,
        generation.first_sink_batch_id,
    )
    return StartedJob(writer.start(), listener, layout, sink, generation)


def run(spec: JobSpec, args: argparse.Namespace) -> int:
    """Run a job to its end in its own SparkSession. Returns the process exit code.

    The driver holds the checkpoint's lease (`lease.py`) from before its session starts until
    after it has stopped: a second driver on the checkpoint exits 2 naming this one.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for quiet in ("py4j", "botocore", "boto3"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    if not_a_folder := file_in_place_of_a_folder(args):
        sys.stderr.write(f"{spec.name}: error: {not_a_folder}\n")
        return EXIT_REFUSED
    layout = CheckpointLayout.of(args.checkpoint)
    stop = StopRequest(layout, spec.name)
    stop.install()
    version = getattr(args, "spec_version", None)
    lease = Lease(layout.lease_file, args.stream, args.owner, spec_version=version)
    try:
        lease.acquire()
    except (LeaseHeld, LeaseUnsupported) as held:
        sys.stderr.write(f"{spec.name}: error: --checkpoint {args.checkpoint}: {held}\n")
        return EXIT_REFUSED
    lost: list[LeaseHolder | None] = []

    def on_lost(holder: LeaseHolder | None) -> None:
        # Another driver took the checkpoint over (this one froze past the TTL): stop now,
        # without finishing the batch, so that only one driver writes the checkpoint.
        lost.append(holder)
        log.error(
            "lost the lease of %s to %s: stopping at once",
            args.checkpoint,
            holder.describe() if holder else "nobody",
        )
        stop.event.set()

    lease.start_renewing(on_lost)
    try:
        return _run_leased(spec, args, stop, lost)
    finally:
        lease.release()


def _run_leased(
    spec: JobSpec, args: argparse.Namespace, stop: StopRequest, lost: list[LeaseHolder | None]
) -> int:
    try:
        jars = jars_for(args)
    except JarUnavailable as missing:
        sys.stderr.write(f"{spec.name}: error: {missing}\n")
        return EXIT_REFUSED
    conf = s3a_conf() if needs_s3a(job_paths(args)) else {}
    spark = build_session(f"streamops-{spec.name}", jars, conf)
    stop.install()  # again: the SparkContext replaced the SIGINT handler
    try:
        job = start(spark, spec, args)
        supervise(job.query, stop, grace_seconds=lambda: 0.0 if lost else STOP_GRACE_SECONDS)
    except RefusedToStart as refusal:
        sys.stderr.write(f"{spec.name}: error: {refusal}\n")
        return EXIT_REFUSED
    except StreamingQueryException as failure:
        if lost_records := kafka_data_loss(str(failure)):
            sys.stderr.write(f"{spec.name}: error: {lost_records}\n")
            return EXIT_REFUSED
        reason = failure_reason(str(failure))
        sys.stderr.write(
            f"{spec.name}: error: the stream failed: {reason}\n"
            f"  status: {CheckpointLayout.of(args.checkpoint).status_file}\n"
            "  The checkpoint is intact: start the job again to resume from the last committed "
            "batch.\n"
        )
        return EXIT_STREAM_FAILED
    finally:
        # Let the listener record the termination before the JVM goes away.
        time.sleep(0.5)
        spark.stop()
    if lost:
        sys.stderr.write(
            f"{spec.name}: error: another driver took over --checkpoint {args.checkpoint} "
            "while this one did not renew its lease; this one stopped\n"
        )
        return EXIT_STREAM_FAILED
    log.info("%s stopped after sink batch %s", spec.name, job.sink.last_batch_id())
    return EXIT_OK
