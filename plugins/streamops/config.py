"""How a stream is configured: its data root, its paths and the job arguments they become.

Every path a user gives (in a trigger form, the API or the CLI) is relative to the data root,
`$STREAMOPS_DATA_ROOT` (default: `data/` in the repository). The same check runs twice: as the
Params' JSON schema, so the trigger form refuses a bad value before anything starts, and in the
operator, for runs created some other way.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spark_jobs import cli as job_cli
from spark_jobs.cli import SOURCES

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = ("word_count", "running_total")

# Relative, made of safe characters only (no shell metacharacters, no spaces), no `..` segment.
RELATIVE_PATH_PATTERN = r"^(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,254}$"
STREAM_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,252}[A-Za-z0-9])?$"
_HOST_PORT = r"[A-Za-z0-9]([A-Za-z0-9.\-]{0,252}[A-Za-z0-9])?:[0-9]{1,5}"
BOOTSTRAP_SERVERS_PATTERN = rf"^{_HOST_PORT}( *, *{_HOST_PORT})*$"
# One or more Kafka topic names, comma-separated (Kafka's own rule for a name).
KAFKA_TOPICS_PATTERN = r"^[A-Za-z0-9._-]{1,249}( *, *[A-Za-z0-9._-]{1,249})*$"
CONNECTION_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,250}$"
INTERVAL_PATTERN = r"^[0-9]+ ?(milliseconds?|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|h)$"


class StreamConfigError(ValueError):
    """A stream setting is invalid; the message names the setting and what to do."""


DEFAULT_STREAMS_PER_JOB = 32


def streams_per_job() -> int:
    """How many streams of one job (concurrent runs of its DAG) may run at once:
    `$STREAMOPS_MAX_STREAMS_PER_JOB`, default 32. Read when a DAG file is parsed."""
    return int(os.environ.get("STREAMOPS_MAX_STREAMS_PER_JOB", DEFAULT_STREAMS_PER_JOB))


def stream_run_id(stream: str, when: datetime | None = None) -> str:
    """The DAG run id the project's own triggers give a stream's run: `<stream>__<UTC time>`, so
    the grid and the run list of a job's DAG read as a list of its streams. (A run triggered
    from the UI form gets Airflow's `manual__<time>` unless its *Run ID* field is filled in.)"""
    when = when or datetime.now(UTC)
    return f"{stream}__{when.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def data_root() -> str:
    """Where inputs, sinks and checkpoints live: a local folder or a URI (`s3://bucket/x`)."""
    return os.environ.get("STREAMOPS_DATA_ROOT", str(REPO_ROOT / "data")).rstrip("/")


def resolve(setting: str, relative: str, root: str | None = None) -> str:
    """A setting's path under the data root. Raises `StreamConfigError` for paths outside it."""
    if not re.match(RELATIVE_PATH_PATTERN, relative):
        raise StreamConfigError(
            f"{setting} {relative!r} is not a path inside the data root: give a relative path of "
            "letters, digits and _ . - / without '..', e.g. 'streams/word_count/input'"
        )
    return posixpath.join(root or data_root(), posixpath.normpath(relative))


@dataclass(frozen=True)
class StreamSpec:
    """One stream: a job, where it reads and writes, and how it runs."""

    stream: str
    job: str
    source: str = "file"
    input: str = ""
    sink: str = ""
    checkpoint: str = ""
    socket_host: str = "localhost"
    socket_port: int = 9999
    trigger_interval: str = "1 second"
    available_now: bool = False
    max_files_per_trigger: int | None = None
    shuffle_partitions: int | None = None  # None: the job's default, one per core
    window: str | None = None
    slide: str | None = None
    console: bool = False
    # The Kafka source (`streamops.kafka`: the brokers and client settings are resolved from
    # the connection when the stream starts).
    kafka_topics: tuple[str, ...] = ()
    kafka_topic_pattern: str | None = None
    kafka_starting_offsets: str = "earliest"
    max_offsets_per_trigger: int | None = None
    kafka_bootstrap_servers: str | None = None
    kafka_connection: str = "kafka_default"
    kafka_accept_data_loss: bool = False

    @classmethod
    def from_params(
        cls, job: str, params: dict[str, object], root: str | None = None
    ) -> StreamSpec:
        """A stream from a DAG run's Params, with every path resolved under the data root."""
        stream = str(params["stream"])
        if not re.match(STREAM_NAME_PATTERN, stream):
            raise StreamConfigError(
                f"stream {stream!r}: use lower-case letters, digits and _, starting with a letter"
            )
        if job not in JOBS:
            raise StreamConfigError(f"job {job!r}: expected one of {', '.join(JOBS)}")
        source = str(params.get("source", "file"))
        if source not in SOURCES:
            raise StreamConfigError(f"source {source!r}: expected one of {', '.join(SOURCES)}")

        def path(name: str) -> str:
            value = params.get(name) or f"streams/{stream}/{name}"
            return resolve(name, str(value), root)

        def positive(name: str) -> int | None:
            value = params.get(name)
            if value is None:
                return None
            if not isinstance(value, int) or value < 1:
                raise StreamConfigError(f"{name} {value!r}: must be a whole number of at least 1")
            return value

        host = str(params.get("socket_host") or "localhost")
        if not re.match(HOST_PATTERN, host):
            raise StreamConfigError(f"socket_host {host!r}: expected a host name or IP address")
        port = positive("socket_port") or 9999
        if port > 65535:
            raise StreamConfigError(f"socket_port {port}: expected a TCP port from 1 to 65535")
        for name in ("trigger_interval", "window", "slide"):
            value = params.get(name)
            if value and not re.match(INTERVAL_PATTERN, str(value)):
                raise StreamConfigError(f"{name} {value!r}: expected an interval like '10 seconds'")
        kafka = _kafka_fields(params) if source == "kafka" else {}
        return cls(
            stream=stream,
            job=job,
            source=source,
            input=path("input") if source == "file" else "",
            sink=path("sink"),
            checkpoint=path("checkpoint"),
            socket_host=host,
            socket_port=port,
            trigger_interval=str(params.get("trigger_interval") or "1 second"),
            available_now=bool(params.get("available_now", False)),
            max_files_per_trigger=positive("max_files_per_trigger"),
            shuffle_partitions=positive("shuffle_partitions"),
            window=(str(params["window"]) if params.get("window") else None),
            slide=(str(params["slide"]) if params.get("slide") else None),
            console=bool(params.get("console", False)),
            **kafka,
        )

    def _kafka_args(self) -> list[str]:
        if self.kafka_topic_pattern:
            args = ["--kafka-topic-pattern", self.kafka_topic_pattern]
        else:
            args = ["--kafka-topic", *self.kafka_topics]
        args += ["--kafka-starting-offsets", self.kafka_starting_offsets]
        if self.max_offsets_per_trigger:
            args += ["--max-offsets-per-trigger", str(self.max_offsets_per_trigger)]
        if self.kafka_accept_data_loss:
            args.append("--kafka-accept-data-loss")
        return args

    def application_args(self) -> list[str]:
        """The job's command-line arguments (the contract in `spark_jobs/cli.py`). A Kafka
        stream's brokers and client settings are added by the operator (`streamops.kafka`)."""
        args = ["--source", self.source]
        if self.source == "file":
            args += ["--input", self.input]
        elif self.source == "socket":
            args += ["--host", self.socket_host, "--port", str(self.socket_port)]
        elif self.source == "kafka":
            args += self._kafka_args()
        args += ["--sink", self.sink, "--checkpoint", self.checkpoint]
        if self.available_now:
            args.append("--available-now")
        else:
            args += ["--trigger-interval", self.trigger_interval]
        if self.max_files_per_trigger:
            args += ["--max-files-per-trigger", str(self.max_files_per_trigger)]
        if self.shuffle_partitions:
            args += ["--shuffle-partitions", str(self.shuffle_partitions)]
        if self.console:
            args.append("--console")
        if self.job == "word_count" and self.window:
            args += ["--window", self.window]
            if self.slide:
                args += ["--slide", self.slide]
        return args


def _kafka_fields(params: dict[str, object]) -> dict[str, Any]:
    """The Kafka source's settings from a run's Params, checked by the job's own argument
    types (`spark_jobs.cli`), so a bad value fails before a driver starts, with the same words."""

    def checked(name: str, value: str, check: Callable[[str], str]) -> str:
        try:
            return check(value)
        except argparse.ArgumentTypeError as err:
            raise StreamConfigError(f"{name}: {err}") from err

    topics = [t.strip() for t in str(params.get("kafka_topic") or "").split(",") if t.strip()]
    pattern = params.get("kafka_topic_pattern") or None
    if bool(topics) == bool(pattern):
        raise StreamConfigError(
            "source 'kafka' reads kafka_topic (one or more names, comma-separated) or "
            "kafka_topic_pattern (a regular expression): give exactly one of them"
        )
    servers = params.get("kafka_bootstrap_servers") or None
    if servers and not re.match(BOOTSTRAP_SERVERS_PATTERN, str(servers)):
        raise StreamConfigError(
            f"kafka_bootstrap_servers {servers!r}: expected HOST:PORT[,HOST:PORT...]"
        )
    max_offsets = params.get("max_offsets_per_trigger")
    if max_offsets is not None and (not isinstance(max_offsets, int) or max_offsets < 1):
        raise StreamConfigError(
            f"max_offsets_per_trigger {max_offsets!r}: must be a whole number of at least 1"
        )
    connection = str(params.get("kafka_connection") or "kafka_default")
    if not re.match(CONNECTION_ID_PATTERN, connection):
        raise StreamConfigError(
            f"kafka_connection {connection!r}: expected an Airflow connection id "
            "(letters, digits, _ . -)"
        )
    return {
        "kafka_topics": tuple(checked("kafka_topic", t, job_cli.kafka_topic) for t in topics),
        "kafka_topic_pattern": (
            checked("kafka_topic_pattern", str(pattern), job_cli.kafka_topic_pattern)
            if pattern
            else None
        ),
        "kafka_starting_offsets": checked(
            "kafka_starting_offsets",
            str(params.get("kafka_starting_offsets") or "earliest"),
            job_cli.kafka_starting_offsets,
        ),
        "max_offsets_per_trigger": max_offsets,
        "kafka_bootstrap_servers": str(servers).replace(" ", "") if servers else None,
        "kafka_connection": connection,
        "kafka_accept_data_loss": bool(params.get("kafka_accept_data_loss", False)),
    }
