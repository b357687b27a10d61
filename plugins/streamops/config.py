"""How a stream is configured: its data root, its paths and the job arguments they become.

Every path a user gives (in a trigger form, the API or the CLI) is relative to the data root,
`$STREAMOPS_DATA_ROOT` (default: `data/` in the repository). The same check runs twice: as the
Params' JSON schema, so the trigger form refuses a bad value before anything starts, and in the
operator, for runs created some other way.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from spark_jobs.cli import DAG_SOURCES as SOURCES

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = ("word_count", "running_total")

# Relative, made of safe characters only (no shell metacharacters, no spaces), no `..` segment.
RELATIVE_PATH_PATTERN = r"^(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,254}$"
STREAM_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,252}[A-Za-z0-9])?$"
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
        )

    def application_args(self) -> list[str]:
        """The job's command-line arguments (the contract in `spark_jobs/cli.py`)."""
        args = ["--source", self.source]
        if self.source == "file":
            args += ["--input", self.input]
        elif self.source == "socket":
            args += ["--host", self.socket_host, "--port", str(self.socket_port)]
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
