"""Real sinks for the quality tests: written once per session by the real jobs, run as a user
runs them (`python -m spark_jobs.<job> ... --available-now`), then copied and damaged per test."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs.layout import sink_file_name
from tests.conftest import ROOT, build_once, drop_file, job_command

# Six input files, read one per batch (increasing mtimes): the jobs' batches line up.
INPUT_FILES = [
    "hello world spark streaming\nhello spark\n",
    "spark streaming again\nhello airflow\n",
    "great expectations checks sinks\nhello spark\n",
    "airflow schedules spark\nstreaming never stops\n",
    "hello hello hello\nworld\n",
    "the end of the input\nspark\n",
]
JOB_TIMEOUT = 300


@dataclass(frozen=True)
class RealSinks:
    """Sinks and checkpoints the real jobs wrote from `INPUT_FILES`."""

    root: Path

    def sink(self, name: str) -> Path:
        """`word_count`, `running_total` (one file per batch) or `running_total_by2` (two)."""
        return self.root / name / "sink"

    def checkpoint(self, name: str) -> Path:
        """The checkpoint of one of the sinks."""
        return self.root / name / "checkpoint"

    def copy(self, name: str, target: Path, with_checkpoint: bool = True) -> Path:
        """A copy of a sink (and its checkpoint, beside it) to damage; returns the sink."""
        shutil.copytree(self.sink(name), target / "sink")
        if with_checkpoint:
            shutil.copytree(self.checkpoint(name), target / "checkpoint")
        return target / "sink"


def _run_jobs(base: Path) -> None:
    """Run word_count and running_total (one file per batch) and running_total (two files per
    batch) on the same input, in parallel subprocesses."""
    start = 1_700_000_000
    for number, text in enumerate(INPUT_FILES):
        drop_file(base / "input", f"part-{number}.txt", text, mtime=start + number)
    runs = {
        "word_count": ("word_count", "1"),
        "running_total": ("running_total", "1"),
        "running_total_by2": ("running_total", "2"),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {}
    for name, (job, per_trigger) in runs.items():
        argv = [
            "--input", str(base / "input"),
            "--sink", str(base / name / "sink"),
            "--checkpoint", str(base / name / "checkpoint"),
            "--available-now",
            "--shuffle-partitions", "2",
            "--max-files-per-trigger", per_trigger,
        ]  # fmt: skip
        log = (base / f"{name}.log").open("w")
        procs[name] = (
            subprocess.Popen(job_command(job, *argv), cwd=ROOT, env=env, stdout=log, stderr=log),
            log,
        )
    for name, (proc, log) in procs.items():
        code = proc.wait(timeout=JOB_TIMEOUT)
        log.close()
        if code != 0:
            raise AssertionError(f"{name} exited {code}:\n{(base / f'{name}.log').read_text()}")


@pytest.fixture(scope="session")
def real_sinks(tmp_path_factory: pytest.TempPathFactory) -> RealSinks:
    """The sinks of both real jobs on `INPUT_FILES`, written once per test run (also reached
    from tests/dags, and from every worker of a parallel run) and only ever copied."""
    return RealSinks(build_once(tmp_path_factory, "quality-real-sinks", _run_jobs))


def rewrite_part(
    sink: Path,
    batch_id: int,
    change: Callable[[pd.DataFrame], pd.DataFrame],
    schema: pa.Schema | None = None,
) -> None:
    """Rewrite one part file with pyarrow after `change` (keeping its mtime newer)."""
    path = sink / sink_file_name(batch_id)
    frame = change(pq.read_table(path).to_pandas())
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, path)


def nullable(schema: pa.Schema) -> pa.Schema:
    """The schema with every field nullable (to write nulls into a contract column)."""
    return pa.schema([field.with_nullable(True) for field in schema])
