"""Throughput of the streaming jobs in words/s, as ratios against references from the same run.

What is measured
----------------
A deterministic corpus (default 1,000,000 lines of ~10 words, drawn from a Zipf-like vocabulary
of 10,000 words with a fixed seed) is written into a folder as `--files` files, each written
under a hidden name and renamed in. Python counts every word as it writes them. Then, on that
same folder:

1. `pyarrow`       one process, no Spark: `pyarrow.csv` reads every file as one string column,
                   `utf8_split_whitespace` + `list_flatten` + `value_counts` count the words.
2. `bare`          `bench/bare_word_count.py`: the seed-style query (text source, `split(" ")`,
                   `explode`, `groupBy(word).count()`, `noop` sink in update mode, Spark's default
                   state store), with no sink guarantees.
3. `naive_wc`      the query a user would write instead of word_count: bare's query counting
                   each micro-batch inside `foreachBatch` and writing it with `df.write.parquet`
                   (append; not exactly-once: a replayed batch is appended twice).
4. `naive_rt`      the same for running_total: bare's stateful counts, each batch's updated
                   rows written with `foreachBatch` and `df.write.parquet`.
5. `word_count`    `python -m spark_jobs.word_count ... --available-now`
6. `running_total` `python -m spark_jobs.running_total ... --available-now` (RocksDB state)

All Spark queries get the same `--max-files-per-trigger` and `--shuffle-partitions`, each its own
checkpoint, and each runs in a fresh subprocess (same interpreter, environment and Java), so JVM
start-up costs the same for all. It is also left out of the figure: a Spark query's time runs from
its first batch's start, the `batchTimestampMs` Spark records in `<checkpoint>/offsets/0`, to its
last batch's end, the modification time of `<checkpoint>/commits/<last>`. The pyarrow reference
is timed in-process around reading and counting.

`--diagnose` adds two variants of `bare` that each take one step towards the jobs: `bare+tok`
uses the jobs' tokenizer instead of `split(" ")`, `bare+rocksdb` the RocksDB state store.

After the runs the two jobs' sinks are checked against the words Python wrote: every word's
count (the sum of `count` over word_count's batches; the row with the largest `batch_id` per word
in running_total) must match, and so must the total. Any mismatch prints FAIL and exits 1.

How to read the figures
-----------------------
- `seconds`: processing time as defined above (median over the runs, see `clean`); `words/s` is the
  corpus's word total divided by it. `busy s` is the sum of Spark's per-batch durations (so
  `seconds - busy s` is time spent between batches); `wall s` includes JVM start-up and stop.
- `cpu s`: CPU seconds the query's processes (Python driver and JVM) used in that same window,
  sampled from `/proc` every 0.25 s and interpolated; for pyarrow, this process's CPU time.
  `cpu vs bare` compares words per CPU second. It is much less sensitive than `seconds` to other
  processes on the machine, so prefer it when the run was disturbed.
- `others`: cores that processes other than the measured ones kept busy during the step (from
  `/proc`; the worst of the counted runs). On a 2-core machine anything above 0.2 distorts the
  figures, so such a run is "disturbed": the medians leave disturbed runs out when at least one
  clean run exists (`clean` = clean runs / runs), and a query with no clean run is named in a
  WARNING. `--wait-idle` waits for a quiet machine before each step; `--repeat` gives more
  chances of clean runs.
- `word_count / bare` is what the jobs' machinery (tokenizer rules, `foreachBatch` with an
  exactly-once Parquet sink, status listener) costs against plain Spark; the target is >= 0.90.
  The shapes are not identical: word_count counts each micro-batch on its own (stateless), while
  the seed-style query keeps its counts in the state store, so word_count does less per batch
  and the ratio can exceed 1. `running_total / bare` has the same shape as bare (stateful, update
  mode) but RocksDB instead of the default state store; >= 0.80 is the reference target.
- `word_count / naive_wc` and `running_total / naive_rt` compare the jobs with what a user would
  write without them, Parquet included: what exactly-once and the jobs' rules cost on top of
  it. The target is >= 1.00 for both.
- `vs pyarrow` compares with a single-process columnar count: roughly the most this machine can
  do for the corpus without any streaming machinery. It is context, not a target.
- Only ratios within one run mean anything: absolute words/s depend on the machine and its load.

    .venv/bin/python bench/throughput.py [--quick] [--repeat 3] [--workdir DIR] [--diagnose]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BARE_SCRIPT = Path(__file__).resolve().with_name("bare_word_count.py")

SEED = 20_240_601
VOCABULARY_SIZE = 10_000
ZIPF_EXPONENT = 1.07
WORDS_PER_LINE = (5, 15)  # uniform, so ~10 on average
DEFAULT_LINES = 1_000_000
QUICK_LINES = 100_000
WORD_COUNT_TARGET = 0.90
RUNNING_TOTAL_TARGET = 0.80
# `--diagnose`: the bare query with the jobs' tokenizer, the one change from bare (also swept by
# `bench/report.py`).
TOKENIZER_REFERENCE = "bare+tok"
# The jobs against the same query written the naive way, Parquet included (naive_wc, naive_rt).
NAIVE_TARGET = 1.0
ROCKSDB_PROVIDER = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
# A field delimiter that never occurs in the corpus, so pyarrow.csv reads each line whole.
NO_DELIMITER = "\x1f"
# Cores used by other processes above which a step's figures are flagged as unreliable.
BUSY_MACHINE_CORES = 0.2
# How often the measured process tree's CPU time is sampled.
POLL_SECONDS = 0.25
LOG_TAIL_LINES = 30


def progress(message: str) -> None:
    """One progress line, flushed at once (the steps take tens of seconds)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """The generated input folder and what Python counted while writing it."""

    folder: Path
    files: int
    lines: int
    words: int
    size_bytes: int
    counts: dict[str, int]


def vocabulary(rng: random.Random, size: int = VOCABULARY_SIZE) -> list[str]:
    """`size` distinct lower-case ASCII words of 2 to 10 letters, in rank order."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def generate_corpus(folder: Path, lines: int, files: int, seed: int = SEED) -> Corpus:
    """Write `lines` lines of single-space separated words into `files` files in `folder`.

    Word `r` (from 1) of the vocabulary is drawn with a weight of `1 / r**ZIPF_EXPONENT`. Every
    file is written under a hidden name and then renamed in, in order, so the file source sees
    whole files, oldest first. Same arguments, same bytes.
    """
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    cum_weights = list(
        itertools.accumulate(1.0 / rank**ZIPF_EXPONENT for rank in range(1, len(vocab) + 1))
    )
    folder.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    total_words = 0
    size_bytes = 0
    base, extra = divmod(lines, files)
    for index in range(files):
        n_lines = base + (1 if index < extra else 0)
        lengths = [rng.randint(*WORDS_PER_LINE) for _ in range(n_lines)]
        drawn = rng.choices(vocab, cum_weights=cum_weights, k=sum(lengths))
        counts.update(drawn)
        total_words += len(drawn)
        out: list[str] = []
        start = 0
        for length in lengths:
            out.append(" ".join(drawn[start : start + length]))
            start += length
        data = ("\n".join(out) + "\n").encode("utf-8")
        size_bytes += len(data)
        name = f"part-{index:05d}.txt"
        hidden = folder / f".{name}.tmp"
        hidden.write_bytes(data)
        hidden.rename(folder / name)
    return Corpus(folder, files, lines, total_words, size_bytes, dict(counts))


# --- other processes' CPU use ---------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _system_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (Linux `/proc/stat`), or None."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _process_table() -> dict[int, tuple[int, float]]:
    """`pid -> (parent pid, CPU seconds)` of every process (Linux `/proc`)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / CLOCK_TICKS)
    return table


class OtherLoad:
    """How many cores processes outside the measured ones kept busy during a step.

    System busy time from `/proc/stat`, minus the CPU time of the measured process tree (polled
    while it runs, so the JVM that PySpark starts is counted too) and of this process. A figure
    well above zero means someone else used the machine and the step's time is not reliable.
    """

    def __init__(self) -> None:
        self._start_busy = _system_busy_seconds()
        self._start_wall = time.perf_counter()
        self._start_self = time.process_time()
        self._tree_cpu: dict[int, float] = {}
        # (epoch seconds, CPU seconds of the measured tree so far), one entry per poll.
        self._timeline: list[tuple[float, float]] = []

    def _record(self, table: dict[int, tuple[int, float]], pids: set[int]) -> None:
        for pid in pids & table.keys():
            self._tree_cpu[pid] = table[pid][1]
        self._timeline.append((time.time(), sum(self._tree_cpu.values())))

    def poll(self, root: int) -> None:
        """Record the CPU time of `root` and of all its descendants."""
        if self._start_busy is None:
            return
        table = _process_table()
        tree = {root}
        grew = True
        while grew:
            grew = False
            for pid, (parent, _cpu) in table.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        self._record(table, tree)

    def wait_for_exit(self, max_seconds: float = 30.0) -> None:
        """Wait until every process seen in the tree has exited, recording their CPU time.

        PySpark's JVM can outlive the Python process that started it by a second or two; its
        CPU time belongs to this step, not to the next one.
        """
        if self._start_busy is None:
            return
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            table = _process_table()
            alive = self._tree_cpu.keys() & table.keys()
            if not alive:
                return
            self._record(table, alive)
            time.sleep(0.1)

    def _tree_cpu_at(self, epoch: float) -> float:
        times = [t for t, _ in self._timeline]
        i = bisect.bisect_left(times, epoch)
        if i == 0:
            return self._timeline[0][1]
        if i == len(times):
            return self._timeline[-1][1]
        (t0, c0), (t1, c1) = self._timeline[i - 1], self._timeline[i]
        return c0 + (c1 - c0) * (epoch - t0) / (t1 - t0) if t1 > t0 else c1

    def tree_cpu_between(self, start: float, end: float) -> float | None:
        """CPU seconds the measured tree used between two epoch times (linear between polls)."""
        if len(self._timeline) < 2:
            return None
        return self._tree_cpu_at(end) - self._tree_cpu_at(start)

    def cores(self, min_window: float = 1.0) -> float | None:
        """Average cores used by others since this object was made.

        A step shorter than `min_window` seconds is measured over `min_window` (waiting for the
        rest), because `/proc` counts in clock ticks of 10 ms.
        """
        if self._start_busy is None:
            return None
        time.sleep(max(0.0, min_window - (time.perf_counter() - self._start_wall)))
        end_busy = _system_busy_seconds()
        if end_busy is None:
            return None
        wall = time.perf_counter() - self._start_wall
        ours = sum(self._tree_cpu.values()) + (time.process_time() - self._start_self)
        return max(0.0, (end_busy - self._start_busy - ours) / wall)


def wait_for_quiet(max_seconds: float) -> None:
    """Wait up to `max_seconds` until others use less than `BUSY_MACHINE_CORES` over 2 s."""
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        load = OtherLoad()
        time.sleep(2.0)
        cores = load.cores()
        if cores is None or cores < BUSY_MACHINE_CORES:
            return
        progress(f"  waiting for a quiet machine: other processes use {cores:.1f} cores")


# --- measurements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run of one query."""

    seconds: float
    cpu: float | None = None
    busy: float | None = None
    wall: float | None = None
    others: float | None = None
    # Mean milliseconds per batch in each phase (`phases_of`), over its last 30 batches.
    phases: dict[str, float] | None = None

    @property
    def clean(self) -> bool:
        """Whether other processes left the machine alone during the run (or it is unknown)."""
        return self.others is None or self.others <= BUSY_MACHINE_CORES


def _median(values: list[float | None]) -> float | None:
    """The median, or None when a value is missing."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


@dataclass
class Measurement:
    """One query's figures over the repeats.

    The figures are medians over the clean runs (see `Run.clean`) when there is at least one,
    otherwise over all runs, and then `disturbed` is true.
    """

    name: str
    runs: list[Run] = field(default_factory=list)
    batches: int | None = None
    note: str = ""

    @property
    def counted(self) -> list[Run]:
        """The runs the figures come from."""
        return [r for r in self.runs if r.clean] or self.runs

    @property
    def disturbed(self) -> bool:
        """True when no run was clean."""
        return not any(r.clean for r in self.runs)

    @property
    def median_seconds(self) -> float:
        """The median processing time."""
        return statistics.median(r.seconds for r in self.counted)

    def words_per_second(self, words: int) -> float:
        """Throughput at the median processing time."""
        return words / self.median_seconds

    @property
    def median_cpu(self) -> float | None:
        """The median CPU seconds used while processing, when every counted run reported it."""
        return _median([r.cpu for r in self.counted])

    @property
    def median_busy(self) -> float | None:
        """The median sum of batch durations, when every counted run reported it."""
        return _median([r.busy for r in self.counted])

    @property
    def median_wall(self) -> float | None:
        """The median wall time of the subprocess."""
        return _median([r.wall for r in self.counted])

    @property
    def median_phases(self) -> dict[str, float]:
        """Each phase's median over the counted runs that timed it."""
        timed = [r.phases for r in self.counted if r.phases]
        names = list(dict.fromkeys(name for phases in timed for name in phases))
        return {n: statistics.median(p.get(n, 0.0) for p in timed) for n in names}

    @property
    def worst_others(self) -> float | None:
        """The most cores other processes used during a counted run."""
        known = [r.others for r in self.counted if r.others is not None]
        return max(known) if known else None

    @property
    def clean_text(self) -> str:
        """`clean runs/runs`."""
        return f"{sum(r.clean for r in self.runs)}/{len(self.runs)}"


@dataclass(frozen=True)
class CheckpointTiming:
    """What a finished query's checkpoint says about its batches."""

    batches: int
    start: float  # epoch seconds
    end: float
    stateful: bool
    state_store: str | None

    @property
    def seconds(self) -> float:
        """From the first batch's start to the last batch's commit."""
        return self.end - self.start


class BenchFailure(Exception):
    """A run failed or could not be timed; the message says which."""


def checkpoint_timing(checkpoint: Path) -> CheckpointTiming:
    """First batch's `batchTimestampMs` to the last commit file's mtime."""
    commits = sorted(int(p.name) for p in (checkpoint / "commits").iterdir() if p.name.isdigit())
    if not commits:
        raise BenchFailure(f"{checkpoint}: no committed batch")
    first, last = commits[0], commits[-1]
    offsets = (checkpoint / "offsets" / str(first)).read_text(encoding="utf-8").splitlines()
    metadata = json.loads(offsets[1])
    start_ms = int(metadata["batchTimestampMs"])
    end_s = (checkpoint / "commits" / str(last)).stat().st_mtime
    provider = metadata.get("conf", {}).get("spark.sql.streaming.stateStore.providerClass")
    stateful = (checkpoint / "state").is_dir()
    return CheckpointTiming(len(commits), start_ms / 1000, end_s, stateful, provider)


def busy_from_status(checkpoint: Path, batches: int) -> float | None:
    """Sum of a job's per-batch durations from its status file, if that holds every batch."""
    path = checkpoint / "_streamops" / "status.json"
    if not path.exists():
        return None
    recent = json.loads(path.read_text(encoding="utf-8")).get("recent_batches", [])
    if len(recent) != batches:
        return None
    return sum(int(b["duration_ms"]) for b in recent) / 1000


def phases_of(batches: list[dict[str, Any]]) -> dict[str, float] | None:
    """Mean milliseconds per batch in each of Spark's phases and the jobs' parts of addBatch
    (`spark_jobs.status`), and `other`: the batch time outside Spark's phases."""
    from spark_jobs.status import JOB_PARTS, SPARK_PHASES

    timed = [b for b in batches if b.get("phases_ms")]
    if not timed:
        return None
    means: dict[str, float] = {}
    for phase in SPARK_PHASES:
        means[phase] = statistics.fmean(b["phases_ms"].get(phase, 0) for b in timed)
        if phase == "addBatch":
            for part in JOB_PARTS:
                if any(part in b.get("job_ms", {}) for b in timed):
                    means[f"addBatch.{part}"] = statistics.fmean(
                        b.get("job_ms", {}).get(part, 0) for b in timed
                    )
    means["other"] = statistics.fmean(
        b["duration_ms"] - sum(b["phases_ms"].get(p, 0) for p in SPARK_PHASES) for b in timed
    )
    means["total"] = statistics.fmean(b["duration_ms"] for b in timed)
    return means


def phases_from_status(checkpoint: Path) -> dict[str, float] | None:
    """A job's phase means over the batches its status keeps (the last 30)."""
    path = checkpoint / "_streamops" / "status.json"
    if not path.exists():
        return None
    return phases_of(json.loads(path.read_text(encoding="utf-8")).get("recent_batches", []))


def phases_from_progress(path: Path) -> dict[str, float] | None:
    """The bare query's phase means over its last 30 batches, as for the jobs."""
    if not path.exists():
        return None
    return phases_of(json.loads(path.read_text(encoding="utf-8"))[-30:])


def busy_from_progress(path: Path, batches: int) -> float | None:
    """Sum of the bare query's per-batch durations from the progress file it wrote."""
    if not path.exists():
        return None
    reports = json.loads(path.read_text(encoding="utf-8"))
    if len(reports) != batches:
        return None
    return sum(int(r["duration_ms"]) for r in reports) / 1000


def child_env() -> dict[str, str]:
    """The environment every Spark subprocess gets: the repo importable, the jobs' Java."""
    sys.path.insert(0, str(ROOT))
    from spark_jobs.java_runtime import java_home

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    home = java_home()
    if home:
        env["JAVA_HOME"] = home
    return env


def run_subprocess(command: list[str], log: Path, env: dict[str, str]) -> tuple[float, OtherLoad]:
    """Run one query to its end, output to `log`. Returns the wall seconds and others' load."""
    load = OtherLoad()
    started = time.perf_counter()
    with log.open("wb") as out:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while child.poll() is None:
            load.poll(child.pid)
            time.sleep(POLL_SECONDS)
    wall = time.perf_counter() - started
    load.wait_for_exit()
    if child.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        raise BenchFailure(
            f"exit code {child.returncode} from: {' '.join(command)}\n  log: {log}\n"
            + "\n".join(f"    {line}" for line in tail)
        )
    return wall, load


def short_provider(provider: str | None) -> str:
    """`...RocksDBStateStoreProvider` -> `RocksDB state store`."""
    name = (provider or "").rsplit(".", 1)[-1].removesuffix("StateStoreProvider")
    return f"{name or 'default'} state store"


@dataclass(frozen=True)
class SparkQuery:
    """One Spark query to measure: its name and how to build its command line."""

    name: str
    command: Callable[[Path], list[str]]  # run folder -> command line
    sink: bool = False


def spark_queries(corpus: Corpus, args: argparse.Namespace) -> list[SparkQuery]:
    """The Spark queries of this run, in the order they run."""
    shared = [
        "--input",
        str(corpus.folder),
        "--max-files-per-trigger",
        str(args.max_files_per_trigger),
        "--shuffle-partitions",
        str(args.shuffle_partitions),
    ]

    def bare(*extra: str, parquet: bool = False) -> Callable[[Path], list[str]]:
        return lambda run: [
            sys.executable,
            str(BARE_SCRIPT),
            *shared,
            "--checkpoint",
            str(run / "checkpoint"),
            "--progress",
            str(run / "progress.json"),
            *(["--parquet", str(run / "sink")] if parquet else []),
            *extra,
        ]

    def job(name: str) -> Callable[[Path], list[str]]:
        return lambda run: [
            sys.executable,
            "-m",
            f"spark_jobs.{name}",
            *shared,
            "--sink",
            str(run / "sink"),
            "--checkpoint",
            str(run / "checkpoint"),
            "--available-now",
        ]

    queries = [SparkQuery("bare", bare())]
    if args.diagnose:
        queries += [
            SparkQuery(TOKENIZER_REFERENCE, bare("--tokenizer", "jobs")),
            SparkQuery("bare+rocksdb", bare("--state-store-provider", ROCKSDB_PROVIDER)),
        ]
    return [
        *queries,
        SparkQuery("naive_wc", bare("--per-batch", parquet=True)),
        SparkQuery("naive_rt", bare(parquet=True)),
        SparkQuery("word_count", job("word_count"), sink=True),
        SparkQuery("running_total", job("running_total"), sink=True),
    ]


def measure_spark(
    measurement: Measurement, query: SparkQuery, run_dir: Path, env: dict[str, str]
) -> None:
    """Run one Spark query in a fresh process and record its figures."""
    run_dir.mkdir(parents=True)
    wall, load = run_subprocess(query.command(run_dir), run_dir / "log.txt", env)
    others = load.cores()
    timing = checkpoint_timing(run_dir / "checkpoint")
    if query.sink:
        busy = busy_from_status(run_dir / "checkpoint", timing.batches)
        phases = phases_from_status(run_dir / "checkpoint")
    else:
        busy = busy_from_progress(run_dir / "progress.json", timing.batches)
        phases = phases_from_progress(run_dir / "progress.json")
    cpu = load.tree_cpu_between(timing.start, timing.end)
    measurement.runs.append(Run(timing.seconds, cpu, busy, wall, others, phases))
    measurement.batches = timing.batches
    measurement.note = short_provider(timing.state_store) if timing.stateful else "stateless"
    cpu_text = "" if cpu is None else f", cpu {cpu:.2f} s"
    busy_text = "" if busy is None else f", busy {busy:.2f} s"
    others_text = "" if others is None else f", others {others:.2f} cores"
    progress(
        f"  {query.name}: {timing.batches} batches in {timing.seconds:.2f} s{cpu_text}"
        f"{busy_text} (wall {wall:.1f} s{others_text})"
    )


def pyarrow_count(folder: Path) -> tuple[float, float, int, int]:
    """Read and count every word in the folder with pyarrow.

    Returns (seconds, CPU seconds of this process, words, distinct words).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    paths = sorted(p for p in folder.iterdir() if not p.name.startswith((".", "_")))
    read_options = csv.ReadOptions(column_names=["value"], block_size=16 << 20)
    parse_options = csv.ParseOptions(
        delimiter=NO_DELIMITER, quote_char=False, double_quote=False, escape_char=False
    )
    convert_options = csv.ConvertOptions(column_types={"value": pa.string()})
    started, started_cpu = time.perf_counter(), time.process_time()
    tables = [
        csv.read_csv(
            path,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
        for path in paths
    ]
    values = pa.concat_tables(tables).column("value").combine_chunks()
    counts = pc.value_counts(pc.list_flatten(pc.utf8_split_whitespace(values)))
    seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return seconds, cpu, int(pc.sum(counts.field("counts")).as_py()), len(counts)


def measure_pyarrow(measurement: Measurement, corpus: Corpus) -> list[str]:
    """Time the pyarrow reference in this process. Returns problems with its result."""
    load = OtherLoad()
    seconds, cpu, words, distinct = pyarrow_count(corpus.folder)
    others = load.cores()
    measurement.runs.append(Run(seconds, cpu, others=others))
    others_text = "" if others is None else f", others {others:.2f} cores"
    progress(f"  pyarrow: {seconds:.2f} s (cpu {cpu:.2f} s{others_text})")
    if words != corpus.words or distinct != len(corpus.counts):
        return [
            f"pyarrow: {words:,} words / {distinct:,} distinct, expected "
            f"{corpus.words:,} / {len(corpus.counts):,}"
        ]
    return []


# --- verification ----------------------------------------------------------------------------


def compare_counts(job: str, found: dict[str, int], corpus: Corpus) -> list[str]:
    """Differences between a job's per-word figures and the corpus's."""
    problems: list[str] = []
    total = sum(found.values())
    if total != corpus.words:
        problems.append(f"{job}: {total:,} words in the sink, {corpus.words:,} written")
    if found != corpus.counts:
        expected = corpus.counts
        wrong = sorted(w for w in expected.keys() | found.keys() if found.get(w) != expected.get(w))
        sample = ", ".join(f"{w!r}: {found.get(w, 0)} vs {expected.get(w, 0)}" for w in wrong[:5])
        problems.append(f"{job}: {len(wrong)} word(s) with a wrong count, e.g. {sample}")
    return problems


def verify_word_count(sink: Path, corpus: Corpus) -> list[str]:
    """Per-word sums of `count` over all batches must be the corpus's counts."""
    import pandas as pd

    frame = pd.read_parquet(sink, columns=["word", "count"])
    sums = frame.groupby("word")["count"].sum()
    return compare_counts("word_count", {str(w): int(c) for w, c in sums.items()}, corpus)


def verify_running_total(sink: Path, corpus: Corpus) -> list[str]:
    """Each word's row with the largest `batch_id` must hold the corpus's count."""
    import pandas as pd

    frame = pd.read_parquet(sink, columns=["batch_id", "word", "total"])
    problems: list[str] = []
    duplicates = int(frame.duplicated(["batch_id", "word"]).sum())
    if duplicates:
        problems.append(f"running_total: {duplicates} duplicate (batch_id, word) row(s)")
    last = frame.loc[frame.groupby("word")["batch_id"].idxmax()]
    found = {str(w): int(t) for w, t in zip(last["word"], last["total"], strict=True)}
    return problems + compare_counts("running_total", found, corpus)


# --- report ----------------------------------------------------------------------------------


def figure(value: float | None, digits: int = 2) -> str:
    """A number for the table, or `-`."""
    return "-" if value is None else f"{value:.{digits}f}"


def print_phases(measurements: list[Measurement]) -> None:
    """Where each query's batch time goes: mean ms per batch in each phase, side by side."""
    if not measurements:
        return
    names = list(dict.fromkeys(n for m in measurements for n in m.median_phases))
    print("\nbatch time by phase, mean ms per batch over the last 30 batches of each query")
    header = f"{'phase':<18}" + "".join(f"{m.name:>15}" for m in measurements)
    print(header)
    print("-" * len(header))
    for name in names:
        cells = "".join(
            f"{m.median_phases[name]:>15,.1f}" if name in m.median_phases else f"{'-':>15}"
            for m in measurements
        )
        print(f"{name:<18}{cells}")


def print_report(corpus: Corpus, measurements: list[Measurement], args: argparse.Namespace) -> None:
    """The table, the ratios and a warning when other processes disturbed the run."""
    by_name = {m.name: m for m in measurements}
    bare = by_name["bare"].words_per_second(corpus.words)
    limit = by_name["pyarrow"].words_per_second(corpus.words)
    bare_cpu = by_name["bare"].median_cpu

    def cpu_vs_bare(m: Measurement) -> float | None:
        cpu = m.median_cpu
        return bare_cpu / cpu if bare_cpu and cpu else None

    runs = f"medians of {args.repeat} runs" if args.repeat > 1 else "1 run"
    print()
    print(
        f"corpus: {corpus.lines:,} lines, {corpus.words:,} words "
        f"({len(corpus.counts):,} distinct), {corpus.size_bytes / 1e6:.1f} MB in {corpus.files} "
        f"files; maxFilesPerTrigger={args.max_files_per_trigger}, "
        f"shuffle partitions={args.shuffle_partitions}; {runs}; {os.cpu_count()} cores"
    )
    header = (
        f"{'query':<14} {'batches':>7} {'seconds':>8} {'words/s':>12} {'vs bare':>7} "
        f"{'vs pyarrow':>10} {'cpu s':>6} {'cpu vs bare':>11} {'busy s':>7} {'wall s':>7} "
        f"{'others':>6} {'clean':>5}  note"
    )
    print(header)
    print("-" * len(header))
    for m in measurements:
        rate = m.words_per_second(corpus.words)
        batches = "-" if m.batches is None else str(m.batches)
        print(
            f"{m.name:<14} {batches:>7} {m.median_seconds:>8.2f} {rate:>12,.0f} "
            f"{rate / bare:>7.2f} {rate / limit:>10.3f} {figure(m.median_cpu):>6} "
            f"{figure(cpu_vs_bare(m)):>11} {figure(m.median_busy):>7} {figure(m.median_wall):>7} "
            f"{figure(m.worst_others):>6} {m.clean_text:>5}  {m.note}"
        )
    print()
    for name, target, kind in (
        ("word_count", WORD_COUNT_TARGET, "target"),
        ("running_total", RUNNING_TOTAL_TARGET, "reference target"),
    ):
        rate = by_name[name].words_per_second(corpus.words)
        ratio = rate / bare
        verdict = "ok" if ratio >= target else "BELOW"
        print(
            f"{name + ' / bare':<22} {ratio:5.2f}  ({kind} >= {target:.2f}: {verdict});  "
            f"by CPU time {figure(cpu_vs_bare(by_name[name]))};  "
            f"{name} / pyarrow {rate / limit:.3f}"
        )
    for name, naive in (("word_count", "naive_wc"), ("running_total", "naive_rt")):
        ratio = by_name[name].words_per_second(corpus.words) / by_name[naive].words_per_second(
            corpus.words
        )
        verdict = "ok" if ratio >= NAIVE_TARGET else "BELOW"
        print(f"{name + ' / ' + naive:<22} {ratio:5.2f}  (target >= {NAIVE_TARGET:.2f}: {verdict})")
    print(f"{'bare / pyarrow':<22} {bare / limit:5.3f}")
    print_phases([m for m in measurements if m.median_phases])
    disturbed = [m.name for m in measurements if m.disturbed]
    if disturbed:
        print(
            f"\nWARNING: other processes used more than {BUSY_MACHINE_CORES} cores during every "
            f"run of {', '.join(disturbed)}: those figures are not reliable. Rerun on a quiet "
            "machine, with --repeat N (disturbed runs are left out of the medians when a clean "
            "one exists) or --wait-idle SECONDS."
        )


# --- main ------------------------------------------------------------------------------------


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1 (underscores allowed)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="throughput",
        description=__doc__.splitlines()[0],
        epilog="The module docstring of bench/throughput.py explains how to read the figures.",
    )
    parser.add_argument("--lines", type=positive, help=f"corpus lines (default {DEFAULT_LINES:,})")
    parser.add_argument("--files", type=positive, default=20, help="corpus files (default 20)")
    parser.add_argument(
        "--max-files-per-trigger",
        type=positive,
        default=2,
        metavar="K",
        help="files per micro-batch for every Spark query (default 2)",
    )
    parser.add_argument(
        "--shuffle-partitions",
        type=positive,
        default=os.cpu_count() or 1,
        metavar="P",
        help="shuffle partitions for every Spark query (default: the cores, the jobs' own "
        "default in local[*])",
    )
    parser.add_argument(
        "--repeat", type=positive, default=1, help="runs of each query; >1 reports the median"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where to put the corpus and the runs (kept); default a temporary folder, removed "
        "after a successful run",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke test: {QUICK_LINES:,} lines (unless --lines)"
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also run bare with the jobs' tokenizer and bare with RocksDB state",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="run the Spark queries at the same time, not one after another: a smoke run of "
        "the report's code, whose figures then mean nothing",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each step, wait up to SECONDS for other processes to go quiet (default 0)",
    )
    args = parser.parse_args(argv)
    if args.lines is None:
        args.lines = QUICK_LINES if args.quick else DEFAULT_LINES
    if args.files > args.lines:
        parser.error(f"--files {args.files} is more than --lines {args.lines}")
    return args


def measure(
    args: argparse.Namespace, workdir: Path
) -> tuple[Corpus, dict[str, Measurement], list[str]]:
    """Generate the corpus, measure every query and verify the sinks.

    Returns the corpus, the measurements by query name (pyarrow first) and the verification
    problems. `bench/report.py` builds its throughput table from this.
    """
    corpus_dir, runs_dir = workdir / "corpus", workdir / "runs"
    for owned in (corpus_dir, runs_dir):
        shutil.rmtree(owned, ignore_errors=True)

    progress(f"generating {args.lines:,} lines in {args.files} files under {corpus_dir}")
    started = time.perf_counter()
    corpus = generate_corpus(corpus_dir, args.lines, args.files)
    progress(
        f"  {corpus.words:,} words, {len(corpus.counts):,} distinct, "
        f"{corpus.size_bytes / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s"
    )

    env = child_env()
    queries = spark_queries(corpus, args)
    measurements = {"pyarrow": Measurement("pyarrow", note="in-process, no Spark")}
    measurements.update({q.name: Measurement(q.name) for q in queries})
    problems: list[str] = []
    for rep in range(1, args.repeat + 1):
        tag = f" (run {rep}/{args.repeat})" if args.repeat > 1 else ""
        wait_for_quiet(args.wait_idle)
        progress(f"pyarrow reference{tag}")
        problems += measure_pyarrow(measurements["pyarrow"], corpus)
        if args.side_by_side:
            from concurrent.futures import ThreadPoolExecutor

            progress(f"{', '.join(q.name for q in queries)} side by side{tag}")
            with ThreadPoolExecutor(len(queries)) as pool:
                runs = [
                    pool.submit(
                        measure_spark,
                        measurements[q.name],
                        q,
                        runs_dir / f"run-{rep}" / q.name,
                        env,
                    )
                    for q in queries
                ]
                for run in runs:
                    run.result()
        for query in [] if args.side_by_side else queries:
            wait_for_quiet(args.wait_idle)
            progress(f"{query.name}{tag}")
            measure_spark(
                measurements[query.name], query, runs_dir / f"run-{rep}" / query.name, env
            )
        progress(f"verifying the sinks{tag}")
        problems += verify_word_count(runs_dir / f"run-{rep}" / "word_count" / "sink", corpus)
        problems += verify_running_total(runs_dir / f"run-{rep}" / "running_total" / "sink", corpus)
    return corpus, measurements, problems


def benchmark(args: argparse.Namespace, workdir: Path) -> list[str]:
    """Generate, measure, verify and report. Returns the verification problems."""
    corpus, measurements, problems = measure(args, workdir)
    print_report(corpus, list(measurements.values()), args)
    return problems


def run_benchmark(
    args: argparse.Namespace,
    benchmark: Callable[[argparse.Namespace, Path], list[str]],
    prefix: str,
    verified: str,
) -> int:
    """Run `benchmark` in `--workdir` (or a temporary folder) and report its verification.

    The work folder is kept when something failed, so it can be inspected, and removed otherwise
    unless the user chose it. Returns the exit code: 1 on a failure or a wrong result.
    """
    if args.workdir:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        problems = benchmark(args, workdir)
    except BenchFailure as failure:
        problems = [str(failure)]
        print(f"\nFAIL: {failure}", flush=True)
    else:
        if problems:
            print("\nFAIL: wrong results:")
            for problem in problems:
                print(f"  {problem}")
        else:
            print(f"\nverified: {verified}")
    if problems:
        print(f"  (work folder kept for inspection: {workdir})")
    elif args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return run_benchmark(
        parse_args(argv),
        benchmark,
        "streamops-bench-",
        "both sinks hold exactly the corpus's per-word counts",
    )


if __name__ == "__main__":
    sys.exit(main())
