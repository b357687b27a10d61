"""Airflow on a real PostgreSQL, as in the compose deployment, instead of the tests' SQLite.

A throw-away PostgreSQL cluster (initdb in a temporary folder, a free port, a user and a
database for Airflow), `airflow db migrate` on it, then one stream DAG run end to end. About
1 to 1.5 min on 2 cores. Skipped when the PostgreSQL server binaries are not installed
(`make system-deps` installs them).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import drop_file, free_port
from tests.dags.conftest import BIN, airflow_env, dags_test, run_state

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow, pytest.mark.integration]

SEED = "hello world spark streaming\nhello spark\n"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian layout), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


def is_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server and the Airflow database on it."""

    port: int
    user: str
    password: str
    database: str
    data_dir: Path

    @property
    def sqlalchemy_url(self) -> str:
        """`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN` for this database."""
        return (
            f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/"
            f"{self.database}"
        )

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        """Rows of one query, run as the Airflow user."""
        import psycopg2

        with (
            psycopg2.connect(
                host="127.0.0.1",
                port=self.port,
                user=self.user,
                password=self.password,
                dbname=self.database,
            ) as conn,
            conn.cursor() as cursor,
        ):
            cursor.execute(sql, args)
            return list(cursor.fetchall())


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server on a free port with an `airflow` user and database; stopped after."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/postgres)")
    # PostgreSQL refuses to run as root: run it as the `postgres` system user then.
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        prefix = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp_path: the `postgres` user cannot enter root's 0700 folders.
    root = Path(tempfile.mkdtemp(prefix="streamops-pg-"))
    if prefix:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data_dir, log = root / "data", root / "postgres.log"

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, *command], check=True, capture_output=True, text=True, timeout=120
        )

    port = free_port()
    password = secrets.token_hex(12)
    run(
        str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
    )
    # Password authentication over TCP for everyone, as a deployment has it.
    with (data_dir / "pg_hba.conf").open("w") as hba:
        hba.write("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "start", "-w", "-D", str(data_dir), "-l", str(log), "-o", options)
    try:
        psql = [str(bin_dir / "psql"), "-h", str(root), "-p", str(port), "-U", "postgres", "-c"]
        run(*psql, f"CREATE USER airflow PASSWORD '{password}'")
        run(*psql, "CREATE DATABASE airflow OWNER airflow")
        yield Postgres(port, "airflow", password, "airflow", data_dir)
    finally:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        run(str(bin_dir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(data_dir))
        # pg_ctl returns once the pid file is gone, a moment before the process itself.
        deadline = time.monotonic() + 10
        while is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped = not is_running(pid)
        if stopped:
            shutil.rmtree(root, ignore_errors=True)
        assert stopped, f"postgres (pid {pid}) still running after pg_ctl stop; data: {root}"


def test_a_stream_dag_runs_on_airflow_with_postgres(postgres: Postgres, tmp_path: Path) -> None:
    # Given an Airflow whose metadata database is PostgreSQL, migrated with `airflow db migrate`
    data = tmp_path / "data"
    env = airflow_env(
        tmp_path / "airflow-home",
        data,
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres.sqlalchemy_url,
    )
    migrate = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    assert postgres.query("SELECT count(*) FROM alembic_version") == [(1,)]
    assert not (tmp_path / "airflow-home" / "airflow.db").exists()
    # And input for the word_count stream
    drop_file(data / "streams/word_count/input", "1.txt", SEED)
    # When the stream DAG runs a bounded run
    result = dags_test("word_count_stream", {"available_now": True, "shuffle_partitions": 2}, env)
    # Then it succeeds and fills the sink
    assert run_state(result) == "success", result.stdout[-3000:] + result.stderr[-3000:]
    counts = pd.read_parquet(data / "streams/word_count/sink")
    assert dict(zip(counts.word, counts["count"], strict=True)) == {
        "hello": 2, "spark": 2, "world": 1, "streaming": 1,
    }  # fmt: skip
    # And PostgreSQL holds the run and its task, both successful
    assert postgres.query("SELECT state FROM dag_run WHERE dag_id = %s", "word_count_stream") == [
        ("success",)
    ]
    assert postgres.query(
        "SELECT task_id, state FROM task_instance WHERE dag_id = %s", "word_count_stream"
    ) == [("run_stream", "success")]
