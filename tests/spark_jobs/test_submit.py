"""The jobs run the cluster way: `spark-submit` with the shared code as a `--py-files` archive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from spark_jobs.java_runtime import java_home
from spark_jobs.packaging import build_py_files
from tests.conftest import ROOT, drop_file

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_spark_submit_runs_word_count_from_the_archive(tmp_path: Path) -> None:
    # Given the package as an archive, and a working folder where `spark_jobs` is not importable
    archive = build_py_files(tmp_path / "dist")
    drop_file(tmp_path / "in", "1.txt", "hello world spark streaming\nhello spark\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_SUBMIT_ARGS")}
    env["PYSPARK_PYTHON"] = sys.executable
    if home := java_home():
        env["JAVA_HOME"] = home
    # When spark-submit runs the job file with the archive
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "spark-submit"),
            "--master",
            "local[2]",
            "--py-files",
            str(archive),
            str(ROOT / "spark_jobs" / "word_count.py"),
            "--input",
            str(tmp_path / "in"),
            "--sink",
            str(tmp_path / "sink"),
            "--checkpoint",
            str(tmp_path / "ck"),
            "--available-now",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Then it exits 0 and the sink holds the counts
    assert done.returncode == 0, done.stderr[-3000:]
    counts = pd.read_parquet(tmp_path / "sink").set_index("word")["count"].to_dict()
    assert counts == {"hello": 2, "spark": 2, "world": 1, "streaming": 1}


def test_bad_arguments_through_spark_submit_still_give_one_line(tmp_path: Path) -> None:
    archive = build_py_files(tmp_path / "dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYSPARK_PYTHON"] = sys.executable
    if home := java_home():
        env["JAVA_HOME"] = home
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "spark-submit"),
            "--py-files",
            str(archive),
            str(ROOT / "spark_jobs" / "running_total.py"),
            "--source",
            "rate",
            "--sink",
            "s",
            "--checkpoint",
            "c",
            "--shuffle-partitions",
            "0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # spark-submit passes the job's exit code through and merges its stderr into stdout.
    assert done.returncode == 2
    assert (
        "running_total: error: argument --shuffle-partitions: must be a whole number" in done.stdout
    )
