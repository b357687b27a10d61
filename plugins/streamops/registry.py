"""Which streams exist and whether each should be running: the control plane's own records.

A stream's *spec* is its job, the Params that start it and the version of the code in
`spark_jobs/` (`SpecVersion`); the record keeps every version the stream ran, and which one its
driver runs now (the driver names it in its lease and status, as `--spec-version`).

`<data root>/_streamops/streams/<stream>.json` is written by the stream's operator when it starts,
restarts and stops the stream, and read by `stream_health`, the Streams page and the CLI. It also
holds the run's restart budget (`failures`) and history (`restarts`), so they survive restarts of
every Airflow process. Each driver's output goes to `driver_log(stream)`, which the stream's
trigger rotates (`rotate_driver_log`) once it reaches `driver_log_limit()` bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from spark_jobs.packaging import code_version
from spark_jobs.status import utc_now
from spark_jobs.storage import Location
from streamops.config import REPO_ROOT, data_root

Desired = Literal["running", "stopped"]

DRIVER_LOG_MAX_MB = 100.0  # default of $STREAMOPS_DRIVER_LOG_MAX_MB
DRIVER_LOG_KEEP = 3  # rotated copies kept: <log>.1 (the newest) to <log>.3


@dataclass
class SpecVersion:
    """One version of a stream's spec: what a driver of the stream runs.

    `version` is a hash of the job, the Params and the code version together, so two drivers
    started the same way from the same code run the same version.
    """

    version: str
    job: str
    params: dict[str, object]
    #: A content hash of `spark_jobs/` (`packaging.code_version`).
    code: str
    #: The git commit of the checkout the code came from, when it is one.
    commit: str | None = None
    #: When a driver first ran it.
    started_at: str = field(default_factory=utc_now)
    #: When an upgrade replaced it, by which version, and why (the changes, the verdict).
    replaced_at: str | None = None
    replaced_by: str | None = None
    replaced_why: str | None = None

    @staticmethod
    def id_of(job: str, params: Mapping[str, object], code: str) -> str:
        """The version id of a spec: 12 hex digits of a hash of its job, Params and code."""
        canonical = json.dumps(
            {"job": job, "params": dict(params), "code": code}, sort_keys=True, default=str
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @classmethod
    def of(cls, job: str, params: Mapping[str, object], commit: str | None = None) -> SpecVersion:
        """The spec of a stream of `job` started with `params` from the code of this checkout."""
        code = code_version()
        return cls(
            version=cls.id_of(job, params, code),
            job=job,
            params=dict(params),
            code=code,
            commit=commit if commit is not None else git_commit(),
        )


def git_commit(repo: str | os.PathLike[str] = REPO_ROOT) -> str | None:
    """The commit the checkout at `repo` is on (with `+dirty` when files differ), or None when it
    is not a git checkout or git is missing."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "spark_jobs"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head or None


@dataclass
class StreamRecord:
    """What the control plane knows about one stream."""

    stream: str
    job: str
    checkpoint: str
    sink: str
    input: str
    trigger_interval: str | None
    desired: Desired = "running"
    dag_id: str = ""
    run_id: str = ""
    updated_at: str = field(default_factory=utc_now)
    restarts: list[str] = field(default_factory=list)
    last_error: str | None = None
    # "hung" when the last restart was the supervisor's cure of a driver without progress (its
    # `stalled` incident reports it), "failed" for any other failure.
    last_error_kind: str | None = None
    # The restart budget's failure times (epoch s) within its window, for the run in `run_id`.
    failures: list[float] = field(default_factory=list)
    # When a failed driver is due to be started again; None when no restart is pending.
    restart_at: str | None = None
    # The Params of the run that started the stream, to start it again the same way.
    params: dict[str, object] = field(default_factory=dict)
    # The spec version its driver runs (the last of `versions` it started), and every version
    # the stream has run, oldest first.
    spec_version: str | None = None
    versions: list[SpecVersion] = field(default_factory=list)

    def run_version(self, spec: SpecVersion) -> None:
        """Record that the stream's driver runs `spec` from now on."""
        if not any(known.version == spec.version for known in self.versions):
            self.versions.append(spec)
        self.spec_version = spec.version

    def version(self, version: str | None = None) -> SpecVersion | None:
        """One of the stream's spec versions (default: the one its driver runs), or None."""
        wanted = version or self.spec_version
        return next((known for known in self.versions if known.version == wanted), None)


def registry_dir(root: str | None = None) -> Location:
    """The folder of stream records."""
    return Location.of(root or data_root()).child("_streamops", "streams")


def driver_log(stream: str, root: str | None = None) -> str:
    """The local file a stream's drivers write their output to, appended at each start.

    `$STREAMOPS_DRIVER_LOG_DIR/<stream>.log`; by default under the data root
    (`_streamops/drivers/`), or the system's temporary folder when the data root is a URI.
    """
    folder = os.environ.get("STREAMOPS_DRIVER_LOG_DIR")
    if not folder:
        base = root or data_root()
        folder = (
            os.path.join(tempfile.gettempdir(), "streamops-drivers")
            if "://" in base
            else os.path.join(os.path.abspath(base), "_streamops", "drivers")
        )
    return os.path.join(folder, f"{stream}.log")


def driver_log_limit(environ: Mapping[str, str] = os.environ) -> int:
    """The size, in bytes, at which a driver log is rotated; 0 for never.

    `$STREAMOPS_DRIVER_LOG_MAX_MB` (default 100; 0 turns rotation off), read by the stream task
    when it defers: its trigger rotates the log.
    """
    text = environ.get("STREAMOPS_DRIVER_LOG_MAX_MB", "").strip()
    try:
        megabytes = float(text) if text else DRIVER_LOG_MAX_MB
    except ValueError:
        megabytes = -1.0
    if not 0 <= megabytes <= 1e9:  # also NaN and infinity
        raise ValueError(
            f"STREAMOPS_DRIVER_LOG_MAX_MB={text!r} is not a size: give megabytes (e.g. 100), or "
            "0 to never rotate the driver logs, in the environment of the Airflow workers"
        )
    return int(megabytes * 1024 * 1024)


def rotate_driver_log(path: str, keep: int = DRIVER_LOG_KEEP) -> str:
    """Move a driver log's content to `<path>.1` (older copies move up, to `<path>.<keep>`),
    and empty the log in place; return the copy's path.

    The driver keeps its log open (it is its stdout), so the file cannot be renamed away: it is
    copied, then truncated, as logrotate's `copytruncate` does. The driver opened it in append
    mode and so writes on at the start of the emptied file. Lines it writes between the copy and
    the truncation are lost: a few lines at most, since both take milliseconds. A line written
    in two writes (Python's print under PYTHONUNBUFFERED writes its text, then its newline) can
    be split by the rotation: its text ends the copy, and the log starts with its newline.
    """
    for n in range(keep - 1, 0, -1):
        if os.path.exists(f"{path}.{n}"):
            os.replace(f"{path}.{n}", f"{path}.{n + 1}")
    rotated = f"{path}.1"
    shutil.copyfile(path, rotated)
    os.truncate(path, 0)
    return rotated


def save(record: StreamRecord, root: str | None = None) -> None:
    """Write a stream's record."""
    record.updated_at = utc_now()
    location = registry_dir(root).child(f"{record.stream}.json")
    location.write_text_atomic(json.dumps(asdict(record), indent=2) + "\n")


def load(stream: str, root: str | None = None) -> StreamRecord | None:
    """A stream's record, or None if the stream was never started."""
    location = registry_dir(root).child(f"{stream}.json")
    if not location.exists():
        return None
    return _record(json.loads(location.read_text()))


def _record(data: dict[str, object]) -> StreamRecord:
    # Records written by older versions lack the newer fields; unknown ones are ignored.
    known = StreamRecord.__dataclass_fields__
    fields = {k: v for k, v in data.items() if k in known}
    version_fields = SpecVersion.__dataclass_fields__
    fields["versions"] = [
        SpecVersion(**{k: v for k, v in item.items() if k in version_fields})
        for item in fields.get("versions") or []  # type: ignore[attr-defined]
    ]
    return StreamRecord(**fields)  # type: ignore[arg-type]


def load_all(root: str | None = None) -> list[StreamRecord]:
    """Every stream's record, by name."""
    folder = registry_dir(root)
    return [
        _record(json.loads(folder.child(info.base_name).read_text()))
        for info in folder.list()
        if info.base_name.endswith(".json") and not info.base_name.startswith(".")
    ]


class UnknownStream(LookupError):
    """A stream name that no record has: the one message for the DAGs, the page and the CLI."""

    def __init__(self, stream: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known)) or "none yet"
        super().__init__(
            f"no stream {stream!r} is registered (known: {names}); a stream is registered when "
            "its stream DAG first starts it"
        )


def select(only: str | None, root: str | None = None) -> list[StreamRecord]:
    """Every stream's record, or only the one named; `UnknownStream` if none has that name."""
    records = load_all(root)
    if not only:
        return records
    chosen = [record for record in records if record.stream == only]
    if not chosen:
        raise UnknownStream(only, (record.stream for record in records))
    return chosen
