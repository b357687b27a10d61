"""Exactly-once under crashes: SIGKILL both drivers mid-stream again and again, restart each time,
and compact their sinks while they run (a compaction is SIGKILLed midway every other round).

Files carry increasing modification times and `--max-files-per-trigger 1`, so a batch usually
reads one file. Not always: a kill after the file source has logged the files of its next batch
but before Spark wrote that batch's offsets makes the restarted query take those files together
with the next new one. So each job's batches are mapped to the files they read from its own
checkpoint (the offset log's source offsets, and the file-source log), and the checks are exact
per batch: every input file is read by exactly one batch of each job; each word_count batch holds
exactly the word counts of its files; each running_total batch holds, for every word it changed,
the total over all files read up to and including that batch; and both end at the input's totals.

Half the kills are aimed: they land after a batch's sink file is written and before Spark has
committed the batch, so the restart must replay a batch whose output is already in the sink.

The sinks are read the way the reader contract says (`spark_jobs.sinks.sink_files`), and the
quality checks and reconciliation run incrementally after the first round and at the end: they
pass without checking every batch again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from expectations.reconcile import reconcile_pair
from expectations.suites import QualityConfig, ReconcilePair
from expectations.validate import QualityRunner, StreamSink
from spark_jobs.status import read_status
from tests.conftest import ROOT, drop_file, job_command, read_sink
from tests.spark_jobs.test_compaction import KILL_AFTER

pytestmark = [pytest.mark.slow, pytest.mark.spark]

JOBS = ("word_count", "running_total")
VOCABULARY = [f"word{i}" for i in range(40)]
ROUNDS = 4
FILES_PER_ROUND = 5


def make_text(rng: random.Random) -> str:
    lines = (" ".join(rng.choices(VOCABULARY, k=rng.randint(1, 12))) for _ in range(200))
    return "\n".join(lines) + "\n"


def job_argv(tmp_path: Path, job: str) -> list[str]:
    return [
        "--input", str(tmp_path / "in"),
        "--sink", str(tmp_path / f"{job}-sink"),
        "--checkpoint", str(tmp_path / f"{job}-ck"),
        "--max-files-per-trigger", "1",
        "--shuffle-partitions", "2",
    ]  # fmt: skip


def last_batch(tmp_path: Path, job: str) -> int:
    status = read_status(str(tmp_path / f"{job}-ck"))
    return -1 if status is None or status.last_batch is None else status.last_batch.batch_id


def uncommitted_output(tmp_path: Path, job: str) -> bool:
    """True while the sink holds a batch that the checkpoint has not committed yet."""
    written = [int(p.name[5:17]) for p in (tmp_path / f"{job}-sink").glob("part-*.parquet")]
    commits = tmp_path / f"{job}-ck" / "commits"
    committed = (
        [int(p.name) for p in commits.iterdir() if p.name.isdigit()] if commits.exists() else []
    )
    return bool(written) and max(written) > max(committed, default=-1)


def files_per_batch(checkpoint: Path) -> dict[int, list[str]]:
    """Each committed batch id of a checkpoint and the names of the input files it read.

    Batch N read the file-source log's entries after batch N-1's source offset up to its own
    (`offsets/N`, last line: `{"logOffset": K}`); the log keeps them in `sources/0/<K>` and
    `<K>.compact` files (each compact file repeats the entries before it).
    """
    source_batches: dict[int, list[str]] = {}
    for log_file in (checkpoint / "sources" / "0").iterdir():
        if not log_file.name.removesuffix(".compact").isdigit():
            continue  # Hadoop's hidden .crc files
        for line in log_file.read_text().splitlines()[1:]:
            entry = json.loads(line)
            names = source_batches.setdefault(entry["batchId"], [])
            name = Path(entry["path"]).name
            if name not in names:
                names.append(name)
    committed = {int(p.name) for p in (checkpoint / "commits").iterdir() if p.name.isdigit()}
    batches: dict[int, list[str]] = {}
    previous = -1
    offsets = checkpoint / "offsets"
    for batch_id in sorted(int(p.name) for p in offsets.iterdir() if p.name.isdigit()):
        offset = json.loads((offsets / str(batch_id)).read_text().splitlines()[-1])
        log_offset = int(offset["logOffset"])
        if batch_id in committed:
            batches[batch_id] = [
                name for k in range(previous + 1, log_offset + 1) for name in source_batches[k]
            ]
        previous = log_offset
    return batches


def compact_sinks(tmp_path: Path, kill_midway: bool) -> None:
    """Compact both sinks (`python -m spark_jobs.compaction`, no grace period); with
    `kill_midway`, SIGKILL the first compaction right after it renamed its file into place."""
    for number, job in enumerate(JOBS):
        argv = [
            "--sink", str(tmp_path / f"{job}-sink"),
            "--checkpoint", str(tmp_path / f"{job}-ck"),
            "--grace-seconds", "0",
        ]  # fmt: skip
        killed = kill_midway and number == 0
        code = (
            ["-c", KILL_AFTER.format(method="commit")]
            if killed
            else ["-m", "spark_jobs.compaction"]
        )
        done = subprocess.run(
            [sys.executable, *code, *argv],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if killed:
            # Killed, unless there was nothing new to merge (then it ended normally)
            assert done.returncode in (-signal.SIGKILL, 0), done.stdout + done.stderr
        else:
            assert done.returncode == 0, done.stdout + done.stderr


def check_quality(tmp_path: Path, first: bool) -> None:
    """Validate both sinks and reconcile them, as `sink_quality` does; all must pass, and after
    the first run only new (or replayed) batches are checked."""
    runner = QualityRunner(str(tmp_path / "quality"), QualityConfig.load(), run="test")
    sinks = {
        job: StreamSink(job, job, str(tmp_path / f"{job}-sink"), str(tmp_path / f"{job}-ck"), False)
        for job in JOBS
    }
    reports = [runner.validate_stream(sinks[job]) for job in JOBS]
    reports.append(
        reconcile_pair(runner, ReconcilePair(*JOBS), sinks["word_count"], sinks["running_total"])
    )
    runner.commit()
    for report in reports:
        assert report.success, report.message()
        if not first:
            assert "every batch" not in report.checked, report.checked
    if not first:
        # And the incremental reconciliation stands where a full one over both sinks does
        full = QualityRunner(str(tmp_path / "quality-full"), QualityConfig.load(), run="full")
        assert reconcile_pair(
            full, ReconcilePair(*JOBS), sinks["word_count"], sinks["running_total"], True
        ).success
        full.commit()
        incremental, whole = (
            pd.read_parquet(root / "_streamops/quality/word_count~running_total.reconcile.parquet")
            .sort_values("word")
            .reset_index(drop=True)
            for root in (tmp_path / "quality", tmp_path / "quality-full")
        )
        pd.testing.assert_frame_equal(incremental, whole)
        assert len(whole) > 0


def kill_mid_stream(
    tmp_path: Path, rng: random.Random, aimed: bool, compaction: str | None = None
) -> int:
    """Start both jobs, wait until they make progress, then SIGKILL them.

    With `compaction` ("whole" or "killed"), both sinks are compacted while the jobs run, the
    first compaction SIGKILLed midway if "killed". Returns how many jobs were killed with
    written but uncommitted output.
    """
    before = {job: last_batch(tmp_path, job) for job in JOBS}
    procs = {
        job: subprocess.Popen(
            job_command(job, *job_argv(tmp_path, job), "--trigger-interval", "0 seconds"),
            start_new_session=True,  # its own process group: the JVM dies with the driver
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{job}.log").open("ab"),
        )
        for job in JOBS
    }
    try:
        deadline = time.monotonic() + 120
        while any(last_batch(tmp_path, job) <= before[job] for job in JOBS):
            assert time.monotonic() < deadline, "the jobs made no progress in 120 s"
            assert all(p.poll() is None for p in procs.values()), "a job exited on its own"
            time.sleep(0.1)
        if compaction:
            compact_sinks(tmp_path, kill_midway=compaction == "killed")
        if not aimed:
            time.sleep(rng.uniform(0.0, 1.5))
        aimed_kills = 0
        pending = list(JOBS)
        while aimed and pending and time.monotonic() < deadline:
            for job in list(pending):
                if uncommitted_output(tmp_path, job):
                    os.killpg(procs[job].pid, signal.SIGKILL)
                    aimed_kills += uncommitted_output(tmp_path, job)
                    pending.remove(job)
            time.sleep(0.002)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return aimed_kills


def test_both_sinks_stay_exact_through_repeated_sigkills(tmp_path: Path) -> None:
    rng = random.Random(20251027)
    expected: Counter[str] = Counter()
    mtime = time.time() - 3600
    files = 0
    aimed_kills = 0
    # Given input arriving in rounds, with both drivers killed mid-stream in every round
    round_ = 0
    # Alternate random and aimed kills; an aimed kill can miss the short window between a sink
    # write and Spark's commit, so go on (a few rounds at most) until one has landed in it.
    while round_ < ROUNDS or (aimed_kills == 0 and round_ < ROUNDS + 4):
        for _ in range(FILES_PER_ROUND):
            text = make_text(rng)
            expected.update(text.split())
            files += 1
            mtime += 1
            drop_file(tmp_path / "in", f"{files:04d}.txt", text, mtime=mtime)
        aimed = round_ % 2 == 1 or round_ >= ROUNDS
        # The rounds with a random kill compact the sinks while the jobs run: whole in the
        # first, killed midway in the next (an aimed kill needs the jobs busy, not compacting)
        compaction = None if aimed else ("whole" if round_ == 0 else "killed")
        aimed_kills += kill_mid_stream(tmp_path, rng, aimed, compaction)
        if round_ == 0:
            check_quality(tmp_path, first=True)
        round_ += 1
    assert aimed_kills >= 1, "no kill landed between a sink write and its commit"

    # When both jobs are restarted to finish what is left
    for job in JOBS:
        done = subprocess.run(
            job_command(job, *job_argv(tmp_path, job), "--available-now"),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    compact_sinks(tmp_path, kill_midway=False)

    # Then every input file was read by exactly one batch of each job
    words_of = {p.name: Counter(p.read_text().split()) for p in (tmp_path / "in").glob("*.txt")}
    assert len(words_of) == files
    for job in JOBS:
        batches = files_per_batch(tmp_path / f"{job}-ck")
        read = [name for names in batches.values() for name in names]
        assert sorted(read) == sorted(words_of), job
        sink = read_sink(tmp_path / f"{job}-sink")
        # And the sink holds exactly the batches the checkpoint committed, each once per word
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
                # And each word_count batch is exactly its files' word counts
                assert rows == dict(batch_words), (job, batch_id)
            else:
                # And each running_total batch is the total so far of every word it changed
                assert rows == {word: seen[word] for word in batch_words}, (job, batch_id)
        # And both end at the input's totals
        assert seen == expected, job
    counts = read_sink(tmp_path / "word_count-sink")
    assert counts.groupby("word")["count"].sum().to_dict() == dict(expected)
    totals = read_sink(tmp_path / "running_total-sink")
    final = totals.sort_values("batch_id").groupby("word")["total"].last()
    assert final.to_dict() == dict(expected)
    # And no partly written batch file is left behind
    assert not list((tmp_path / "word_count-sink").glob(".*"))
    # And the quality checks and reconciliation pass, checking only what is new
    check_quality(tmp_path, first=False)
