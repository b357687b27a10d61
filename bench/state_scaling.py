"""How running_total's per-batch cost, checkpoint size and restart time grow with its state.

For each size N (distinct words) and each state store configuration, a fresh running_total
(`--available-now`, one file per micro-batch) reads:

- batch 0: N distinct words `k0000000` ... once each, in random order: the state grows to N keys;
- batches 1 .. B: `updates` words each, drawn uniformly from the N keys.

Then (unless `restart=False`) one more file of `updates` words is dropped in and the job is
started again on the same checkpoint. Reported per run:

- `batch ms`: median duration of batches 1 .. B (Spark's own, from the job's status file): the
  steady-state cost of a batch that touches `updates` keys of a state of N;
- `load ms`: batch 0, which builds the state;
- `checkpoint MiB`: the checkpoint folder after batch B (state, logs and all);
- `restart s`: from the restarted process's start to its first batch's commit (JVM start-up,
  state load and the batch), and `restart batch ms`, that first batch alone.

The configurations go through `bench/run_job.py`, the job's own code with one setting changed.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from throughput import ROOT, BenchFailure, progress

RUN_JOB = Path(__file__).resolve().with_name("run_job.py")
CHANGELOG = "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled"
WORDS_PER_LINE = 10


@dataclass(frozen=True)
class StoreConfig:
    """A state store configuration of running_total."""

    name: str
    store: str  # --state-store
    conf: tuple[tuple[str, str], ...] = ()


CONFIGS = (
    StoreConfig("rocksdb + changelog", "rocksdb"),
    StoreConfig("rocksdb, no changelog", "rocksdb", ((CHANGELOG, "false"),)),
    StoreConfig("hdfs", "hdfs"),
)


@dataclass(frozen=True)
class StateRun:
    """The figures of one configuration at one state size."""

    config: str
    distinct: int
    batch_ms: float
    load_ms: float
    checkpoint_bytes: int
    restart_s: float | None  # None: not measured
    restart_batch_ms: float | None


def _write(path: Path, words: list[str]) -> None:
    hidden = path.with_name(f".{path.name}.tmp")
    lines = (" ".join(words[i : i + WORDS_PER_LINE]) for i in range(0, len(words), WORDS_PER_LINE))
    hidden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hidden.rename(path)


def keys_of(distinct: int) -> list[str]:
    """The state's keys."""
    return [f"k{i:07d}" for i in range(distinct)]


def write_input(folder: Path, distinct: int, batches: int, updates: int, seed: int = 11) -> None:
    """Batch 0 with every key once, then `batches` files of `updates` random keys."""
    rng = random.Random(seed)
    keys = keys_of(distinct)
    folder.mkdir(parents=True, exist_ok=True)
    shuffled = keys[:]
    rng.shuffle(shuffled)
    _write(folder / "b00000.txt", shuffled)
    for index in range(1, batches + 1):
        time.sleep(0.01)  # distinct modification times: the file source reads oldest first
        _write(folder / f"b{index:05d}.txt", rng.choices(keys, k=updates))


def _durations(checkpoint: Path) -> list[int]:
    status = json.loads((checkpoint / "_streamops" / "status.json").read_text(encoding="utf-8"))
    recent = sorted(status["recent_batches"], key=lambda b: int(b["batch_id"]))
    return [int(b["duration_ms"]) for b in recent]


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _run(command: list[str], env: dict[str, str], log: Path) -> float:
    started = time.time()
    with log.open("ab") as out:
        done = subprocess.run(
            command, check=False, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise BenchFailure(f"exit code {done.returncode} from {' '.join(command)}; see {log}")
    return started


def measure(
    config: StoreConfig,
    *,
    distinct: int,
    batches: int,
    updates: int,
    run_dir: Path,
    env: dict[str, str],
    restart: bool = True,
    extra_args: Sequence[str] = (),
) -> StateRun:
    """One configuration at one state size (module doc)."""
    source, checkpoint = run_dir / "input", run_dir / "checkpoint"
    write_input(source, distinct, batches, updates)
    command = [sys.executable, str(RUN_JOB), "running_total"]
    for key, value in config.conf:
        command += ["--conf", f"{key}={value}"]
    command += [
        "--",
        "--input",
        str(source),
        "--sink",
        str(run_dir / "sink"),
        "--checkpoint",
        str(checkpoint),
        "--state-store",
        config.store,
        "--max-files-per-trigger",
        "1",
        "--available-now",
        *extra_args,
    ]
    log = run_dir / "log.txt"
    _run(command, env, log)
    durations = _durations(checkpoint)
    if len(durations) != batches + 1:
        raise BenchFailure(f"{run_dir}: {len(durations)} batches, expected {batches + 1}")
    size = _tree_bytes(checkpoint)
    restart_s = restart_batch_ms = None
    if restart:
        rng = random.Random(distinct)
        _write(source / f"b{batches + 1:05d}.txt", rng.choices(keys_of(distinct), k=updates))
        started = _run(command, env, log)
        restart_batch_ms = _durations(checkpoint)[-1]
        restart_s = (checkpoint / "commits" / str(batches + 1)).stat().st_mtime - started
    result = StateRun(
        config=config.name,
        distinct=distinct,
        batch_ms=statistics.median(durations[1:]),
        load_ms=durations[0],
        checkpoint_bytes=size,
        restart_s=restart_s,
        restart_batch_ms=restart_batch_ms,
    )
    restart_text = (
        "" if restart_s is None else f", restart {restart_s:.1f} s ({restart_batch_ms} ms)"
    )
    progress(
        f"    {config.name}, {distinct:,} words: batch {result.batch_ms:.0f} ms, load "
        f"{result.load_ms:.0f} ms, checkpoint {size / 2**20:.1f} MiB{restart_text}"
    )
    return result
