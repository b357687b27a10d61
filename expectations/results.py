"""Where the quality checks keep their results, and how they are read back.

Kept free of Great Expectations and pandas so that readers (the Streams page in the Airflow
api-server, the on-call CLI) can import it cheaply. `validate.py` writes what this module reads.

    <data root>/_streamops/quality/
        <stream>.json           the stream's watermark (last validated batch)
        history.jsonl           one summary per stream (or pair) and run, oldest first
        data_docs/index.html    the Data Docs ($STREAMOPS_QUALITY_DOCS_DIR/data_docs elsewhere)
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spark_jobs.storage import Location

QUALITY_DIR = ("_streamops", "quality")
DOCS_DIR_ENV = "STREAMOPS_QUALITY_DOCS_DIR"


class QualityConfigError(ValueError):
    """The quality set-up is invalid; the message names the file or setting and the fix."""


def quality_dir(root: str) -> Location:
    """`<data root>/_streamops/quality`: watermarks, history and running_total snapshots."""
    return Location.of(root).child(*QUALITY_DIR)


def history_file(root: str) -> Location:
    """The JSONL of validation summaries, one line per stream (or pair) and run."""
    return quality_dir(root).child("history.jsonl")


def docs_home(root: str) -> Path:
    """The local folder of the Great Expectations project and its Data Docs."""
    configured = os.environ.get(DOCS_DIR_ENV)
    if configured:
        return Path(configured)
    if "://" in root and not root.startswith("file://"):
        raise QualityConfigError(
            f"the data root {root} is not a local folder, and Great Expectations writes Data Docs "
            f"to local files: set ${DOCS_DIR_ENV} on the Airflow workers to a local folder (one "
            "a web server publishes, for people to read them)"
        )
    return Path(quality_dir(root).path)


def data_docs_dir(root: str) -> Path:
    """The folder of the built Data Docs site (its `index.html` is the entry page)."""
    return docs_home(root) / "data_docs"


def append_history(root: str, lines: Iterable[dict[str, Any]]) -> None:
    """Append summaries to the history file (rewritten whole on stores that cannot append)."""
    data = "".join(json.dumps(line, default=str) + "\n" for line in lines).encode("utf-8")
    if not data:
        return
    location = history_file(root)
    Location(location.filesystem, posixpath.dirname(location.path)).mkdirs()
    try:
        with location.filesystem.open_append_stream(location.path) as stream:
            stream.write(data)
    except NotImplementedError:
        old = location.read_bytes() if location.exists() else b""
        location.write_bytes_atomic(old + data)


def read_history(root: str) -> list[dict[str, Any]]:
    """Every summary in the history file, oldest first."""
    location = history_file(root)
    if not location.exists():
        return []
    return [json.loads(line) for line in location.read_text().splitlines() if line.strip()]


def latest_results(root: str) -> dict[str, dict[str, Any]]:
    """The newest summary of each subject (`stream <name>` or a reconciled pair)."""
    latest: dict[str, dict[str, Any]] = {}
    for line in read_history(root):
        subject = line.get("subject")
        if isinstance(subject, str):
            latest[subject] = line
    return latest
