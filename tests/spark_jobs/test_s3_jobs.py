"""Both jobs with their checkpoint and sink on S3 (a real S3-compatible server, Spark's S3A),
SIGKILLed mid-stream again and again: each sink stays exact.

The oracle is `test_exactly_once`'s: each job's committed batches are mapped to the input files
they read from its own checkpoint (copied from S3 to a local folder once the jobs are done), and
the checks are exact per batch. One kill at least is aimed between a batch's sink write and
Spark's commit of it, so a restart replays a batch whose file is already in the bucket. Each
restart takes over the lease of the killed driver (same host, dead pid) with a conditional
write.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from pyarrow import fs as pafs

from spark_jobs.sinks import read_sink
from spark_jobs.status import read_status
from spark_jobs.storage import Location
from tests.conftest import S3, S3_SERVER, drop_file, job_command
from tests.spark_jobs.test_exactly_once import JOBS, files_per_batch, make_text

pytestmark = [pytest.mark.spark, pytest.mark.slow, S3_SERVER]

ROUNDS = 2
FILES_PER_ROUND = 5
AIM_SECONDS = 30.0


def job_argv(tmp_path: Path, s3: S3, job: str) -> list[str]:
    return [
        "--input", str(tmp_path / "in"),
        "--sink", s3.uri(f"{job}-sink"),
        "--checkpoint", s3.uri(f"{job}-ck"),
        "--max-files-per-trigger", "1",
        "--shuffle-partitions", "2",
    ]  # fmt: skip


def last_batch(s3: S3, job: str) -> int:
    status = read_status(s3.uri(f"{job}-ck"))
    return -1 if status is None or status.last_batch is None else status.last_batch.batch_id


def uncommitted_output(s3: S3, job: str) -> bool:
    """True while the sink holds a batch that the checkpoint has not committed yet."""
    sink = Location.of(s3.uri(f"{job}-sink"))
    written = [int(i.base_name[5:17]) for i in sink.list() if i.base_name.startswith("part-")]
    commits = Location.of(s3.uri(f"{job}-ck", "commits")).list()
    committed = [int(i.base_name) for i in commits if i.base_name.isdigit()]
    return bool(written) and max(written) > max(committed, default=-1)


def assert_ui_shows_no_credential(s3: S3, job: str) -> None:
    """The running driver's Spark UI environment names the endpoint, not the credentials."""
    status = read_status(s3.uri(f"{job}-ck"))
    assert status is not None
    assert status.ui_url is not None
    api = f"{status.ui_url.rstrip('/')}/api/v1/applications/{status.app_id}"
    environment = urllib.request.urlopen(f"{api}/environment", timeout=30).read().decode()
    assert s3.env["AWS_ENDPOINT_URL"] in environment  # S3A's settings are there
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in environment
    assert s3.env["AWS_ACCESS_KEY_ID"] not in environment


def kill_mid_stream(
    tmp_path: Path, s3: S3, rng: random.Random, aimed: bool, check_ui: bool = False
) -> int:
    """Start both jobs, wait until both make progress, then SIGKILL them (aimed: between a
    sink write and its commit). Returns how many kills landed so."""
    before = {job: last_batch(s3, job) for job in JOBS}
    procs = {
        job: subprocess.Popen(
            job_command(job, *job_argv(tmp_path, s3, job), "--trigger-interval", "0 seconds"),
            start_new_session=True,  # its own process group: the JVM dies with the driver
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{job}.log").open("ab"),
        )
        for job in JOBS
    }
    aimed_kills = 0
    try:
        deadline = time.monotonic() + 180
        while any(last_batch(s3, job) <= before[job] for job in JOBS):
            assert time.monotonic() < deadline, "the jobs made no progress in 180 s"
            assert all(p.poll() is None for p in procs.values()), "a job exited on its own"
            time.sleep(0.2)
        if check_ui:
            for job in JOBS:
                assert_ui_shows_no_credential(s3, job)
        if not aimed:
            time.sleep(rng.uniform(0.0, 1.5))
        # A job that has read all its input has no window left: aim for AIM_SECONDS at most
        pending = list(JOBS)
        aim_deadline = time.monotonic() + AIM_SECONDS
        while aimed and pending and time.monotonic() < aim_deadline:
            for job in list(pending):
                if uncommitted_output(s3, job):
                    os.killpg(procs[job].pid, signal.SIGKILL)
                    aimed_kills += uncommitted_output(s3, job)
                    pending.remove(job)
            time.sleep(0.005)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return aimed_kills


def sink_rows(s3: S3, job: str) -> pd.DataFrame:
    """A sink on S3 as the reader contract reads it (`sinks.read_sink`), sorted."""
    frame = read_sink(s3.uri(f"{job}-sink")).to_pandas()
    return frame.sort_values(["batch_id", "word"]).reset_index(drop=True)


def local_copy(uri: str, target: Path) -> Path:
    """A checkpoint on S3 copied to a local folder, for `files_per_batch`."""
    source = Location.of(uri)
    pafs.copy_files(
        source.path, str(target), source_filesystem=source.filesystem, use_threads=False
    )
    return target


def test_both_jobs_on_s3_stay_exact_through_repeated_sigkills(s3: S3, tmp_path: Path) -> None:
    rng = random.Random(20261204)
    expected: Counter[str] = Counter()
    mtime = time.time() - 3600
    files = 0
    aimed_kills = 0
    # Given input arriving in rounds, both drivers (checkpoint and sink on S3) killed mid-stream
    # in every round: a random kill, then aimed ones until one lands between a write and commit
    round_ = 0
    while round_ < ROUNDS or (aimed_kills == 0 and round_ < ROUNDS + 2):
        for _ in range(FILES_PER_ROUND):
            text = make_text(rng)
            expected.update(text.split())
            files += 1
            mtime += 1
            drop_file(tmp_path / "in", f"{files:04d}.txt", text, mtime=mtime)
        aimed_kills += kill_mid_stream(tmp_path, s3, rng, aimed=round_ > 0, check_ui=round_ == 0)
        round_ += 1
    assert aimed_kills >= 1, "no kill landed between a sink write and its commit"

    # When both jobs are started again, side by side, to finish what is left
    finishing = {
        job: subprocess.Popen(
            job_command(job, *job_argv(tmp_path, s3, job), "--available-now"),
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{job}.log").open("ab"),
        )
        for job in JOBS
    }
    for job, proc in finishing.items():
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{job}.log").read_text()[-3000:]

    # Then every input file was read by exactly one committed batch of each job
    words_of = {p.name: Counter(p.read_text().split()) for p in (tmp_path / "in").glob("*.txt")}
    assert len(words_of) == files
    for job in JOBS:
        batches = files_per_batch(local_copy(s3.uri(f"{job}-ck"), tmp_path / f"{job}-ck"))
        read = [name for names in batches.values() for name in names]
        assert sorted(read) == sorted(words_of), job
        sink = sink_rows(s3, job)
        # And the sink holds exactly the committed batches, each once per word
        assert sorted(sink.batch_id.unique()) == sorted(batches), job
        assert not sink.duplicated(["batch_id", "word"]).any(), job
        value = "count" if job == "word_count" else "total"
        seen: Counter[str] = Counter()
        for batch_id in sorted(batches):
            batch_words: Counter[str] = Counter()
            for name in batches[batch_id]:
                batch_words.update(words_of[name])
            seen.update(batch_words)
            rows = sink[sink.batch_id == batch_id].set_index("word")[value].to_dict()
            if job == "word_count":
                assert rows == dict(batch_words), (job, batch_id)
            else:
                assert rows == {word: seen[word] for word in batch_words}, (job, batch_id)
        # And both end at the input's totals
        assert seen == expected, job
        # And the last driver gave its lease back, and left no partly written batch file
        assert not Location.of(s3.uri(f"{job}-ck", "_streamops", "lease.json")).exists()
        names = [i.base_name for i in Location.of(s3.uri(f"{job}-sink")).list()]
        assert not [n for n in names if n.startswith(".")], job
    # And the credentials are in no log or checkpoint file (nor, while they ran, in the Spark
    # UI's environment of either driver)
    secret = s3.env["AWS_SECRET_ACCESS_KEY"]
    for job in JOBS:
        assert secret not in (tmp_path / f"{job}.log").read_text()
        for path in (tmp_path / f"{job}-ck").rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path
