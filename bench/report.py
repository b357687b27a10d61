"""The performance report: every figure measured, plotted and compared in one run.

    .venv/bin/python bench/report.py --mode full                 # writes docs/performance.md
    .venv/bin/python bench/report.py --mode quick --out DIR      # small inputs, into DIR
    .venv/bin/python bench/report.py --mode smoke --out DIR      # the test suite's run, into DIR

One run measures, on this machine and in this order:

1. Throughput (`bench/throughput.py`): the pyarrow single-process count, the bare seed-style
   query, the naive Parquet-writing queries and both jobs on one corpus with `--available-now`
   (capacity on a backlog), then rounds of a rate sweep of the same queries as live streams with
   a 1-second trigger (`bench/streaming.py`): the highest input rate each keeps up with, the
   median round counting. Full mode adds the bare query with the jobs' tokenizer to both, and
   with RocksDB to the capacity runs, to say how much of a job's gap to bare each accounts for.
2. Latency: both jobs at half their sustainable rate, 1 s and 0 s triggers (quick mode: word_count
   at 1 s only), after a warm-up:
   p50, p95, p99 and max from a file's arrival in the input folder to its batch in the sink.
3. State scaling (`bench/state_scaling.py`): running_total with 1e4, 1e5 and 1e6 distinct words
   on RocksDB with and without changelog checkpointing and on the HDFS-backed store (quick
   mode: the jobs' default store only).
4. Operations: DAG parse time (`bench/control_plane.py`), rotation downtime, snapshot and
   restore (`bench/checkpoints.py`), Great Expectations validation time against sink size
   (`bench/quality.py`).
5. Tuning: each default the jobs use against its alternative, before/after in the same run.

Only ratios within one run mean anything: the machine may be shared, so the report records the
load average through the run and each throughput run's CPU use by other processes. The report is
`<out>/performance.md` with its plots in `<out>/performance/`; `--mode full` writes into `docs/`
unless `--out` says otherwise, `--mode quick` (small inputs, about ten minutes) and `--mode smoke`
(the test suite's run: each section once on the smallest inputs) need `--out`.
Each finished section is saved in the work folder: a run that failed, started again with the same
`--workdir`, measures only the sections it had not finished.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import streaming
import throughput
from state_scaling import CONFIGS, StateRun
from state_scaling import measure as measure_state
from throughput import (
    BARE_SCRIPT,
    LOG_TAIL_LINES,
    NAIVE_TARGET,
    RUNNING_TOTAL_TARGET,
    WORD_COUNT_TARGET,
    BenchFailure,
    Measurement,
    SparkQuery,
    progress,
)

ROOT = throughput.ROOT
RUN_JOB = Path(__file__).resolve().with_name("run_job.py")
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from spark_jobs.session import (  # noqa: E402 (the repository is on the path from here)
    CHECKPOINT_FILE_MANAGER_KEY,
    LOCAL_CHECKPOINT_FILE_MANAGERS,
)

# The jobs' default shuffle partitions: one per core (local[*], as `python -m` runs them).
DEFAULT_SHUFFLE_PARTITIONS = os.cpu_count() or 1
PREVIOUS_SHUFFLE_PARTITIONS = 8

LATENCY_TARGET = 2.0  # p99 at most this many trigger intervals
SWEEP_TRIGGER_SECONDS = 1.0
PLOTS_DIR = "performance"
RESULTS_FILE = "results.pickle"


@dataclass(frozen=True)
class Mode:
    """How much each section measures."""

    name: str
    lines: int
    files: int
    capacity_repeat: int  # capacity runs of each query; the median counts
    sweep_start: float  # first rate as a share of the query's available-now capacity
    sweep_factor: float
    sweep_steps: int
    sweep_rounds: int  # sweeps of each query; the median round counts
    step_seconds: float
    warmup_seconds: float
    latency_jobs: tuple[str, ...]
    latency_triggers: tuple[float, ...]  # seconds
    latency_warmup: float
    latency_seconds: float
    state_sizes: tuple[int, ...]
    state_batches: int
    state_updates: int
    state_stores: int  # how many of state_scaling.CONFIGS, the jobs' default first
    parse_repeat: int
    rotation_batches: int
    quality_sizes: tuple[int, ...]
    sink_batches: tuple[int, ...]  # sink sizes of bench/sinks.py, in batch files
    state_restart: bool  # restart each state run again (two JVM starts instead of one)
    partition_candidates: tuple[int, ...]
    files_per_trigger: tuple[int | None, ...]
    other_trials: bool  # state store, changelog and AQE trials
    # The bare query's variants one step towards the jobs (`bench/throughput.py --diagnose`):
    # `bare+tok` (the jobs' tokenizer) in the capacity runs and the sweep, `bare+rocksdb` in the
    # capacity runs. They say how much of a gap to bare is the tokenizer's or RocksDB's.
    diagnose: bool
    # Sections that need nothing of the others, measured meanwhile by a second run of this
    # script (`--only`) beside the main one: the smoke run only checks the report's shape.
    side_sections: tuple[str, ...] = ()
    # The Spark queries of a throughput step (capacity runs, a sweep round) run side by side.
    side_by_side: bool = False


MODES = {
    "quick": Mode(
        name="quick",
        lines=40_000,
        files=8,
        capacity_repeat=1,
        sweep_start=0.25,
        sweep_factor=2.0,
        sweep_steps=2,
        sweep_rounds=1,
        step_seconds=2.0,
        warmup_seconds=2.0,
        latency_jobs=("word_count",),
        latency_triggers=(1.0,),
        latency_warmup=2.0,
        latency_seconds=3.0,
        state_sizes=(10_000,),
        state_batches=2,
        state_updates=5_000,
        state_stores=1,
        parse_repeat=1,
        rotation_batches=5,
        quality_sizes=(10_000,),
        sink_batches=(500, 2_000),
        state_restart=False,
        partition_candidates=(PREVIOUS_SHUFFLE_PARTITIONS,),
        files_per_trigger=(),
        other_trials=False,
        diagnose=False,
    ),
    # The test suite's run (`tests/bench/test_report.py`): every section and table once, on the
    # smallest inputs that still give each table its rows. It checks the report's shape, never
    # its figures: one capacity run and one sweep step per query, no repeats.
    "full": Mode(
        name="full",
        lines=1_000_000,
        files=20,
        # One capacity run of a query moved by up to 25% between runs (running_total / bare
        # read 1.02 and 0.77): two runs each, taking turns, and the median.
        capacity_repeat=2,
        sweep_start=0.3,
        sweep_factor=1.15,
        # The sweep stops at a query's first step that falls behind; the bare query must fall
        # behind too, or every ratio against it is a bound (x1.15^39: 70 x its capacity).
        sweep_steps=40,
        # A single sweep moves by one or two steps (x1.15-1.32) from run to run: three
        # rounds, and the median counts.
        sweep_rounds=3,
        step_seconds=6.0,
        warmup_seconds=6.0,
        latency_jobs=("word_count", "running_total"),
        latency_triggers=(1.0, 0.0),
        # The sweep reaches a query's limit after minutes in one JVM, and the latency run's
        # rate comes from there: its fresh JVM warms up at that rate before it is measured.
        # It takes 40-60 s to catch up with what arrived while it started (both jobs at 1M
        # words/s, p99 per 20 s window: 15 s, 3-4 s, then 1.7-1.8 s from 40 s on); with a 30 s
        # warm-up the measured window held the end of that catch-up.
        latency_warmup=90.0,
        latency_seconds=20.0,
        state_sizes=(10_000, 100_000, 1_000_000),
        state_batches=6,
        state_updates=50_000,
        state_stores=len(CONFIGS),
        parse_repeat=3,
        rotation_batches=200,
        quality_sizes=(100_000, 1_000_000),
        sink_batches=(5_000, 20_000, 86_400),
        state_restart=True,
        partition_candidates=(PREVIOUS_SHUFFLE_PARTITIONS, 4),
        files_per_trigger=(5, None),
        other_trials=True,
        diagnose=True,
    ),
}
# The test suite's run (`tests/bench/test_report.py`): quick mode on the smallest inputs that still
# give every table its rows. It checks the report's shape, never its figures: one sweep step,
# each throughput step's queries side by side, the independent sections beside the rest.
MODES["smoke"] = replace(
    MODES["quick"],
    name="smoke",
    lines=8_000,
    files=4,
    sweep_steps=1,
    step_seconds=1.5,
    warmup_seconds=1.0,
    latency_warmup=1.0,
    latency_seconds=2.0,
    state_sizes=(2_000,),
    state_updates=1_000,
    rotation_batches=3,
    quality_sizes=(2_000,),
    sink_batches=(700, 1_000),
    side_sections=("state", "operations"),
    side_by_side=True,
)


# --- run bookkeeping -------------------------------------------------------------------------


def code_version() -> str:
    """The commit measured, and whether the work tree differed from it."""

    def git(*args: str) -> str:
        found = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        return found.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (" with uncommitted changes" if changed else "")


@dataclass
class Context:
    """What every section shares: the mode, folders, environment and the load record."""

    mode: Mode
    work: Path
    plots: Path
    env: dict[str, str]
    loads: list[tuple[str, float]] = field(default_factory=list)
    code: str = field(default_factory=code_version)  # the code measured
    section_wall: float = 0.0  # seconds the finished sections took

    def note_load(self, where: str) -> None:
        """Record the 1-minute load average now."""
        self.loads.append((where, os.getloadavg()[0]))


def spark_env() -> dict[str, str]:
    """Every Spark process: the jobs' Java, local[*] (all cores), no UI."""
    env = throughput.child_env()
    env["PYSPARK_SUBMIT_ARGS"] = "--conf spark.ui.enabled=false pyspark-shell"
    return env


def job_command(
    name: str, run: Path, shared: Sequence[str], conf: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """A job's command line through `bench/run_job.py` (with optional setting overrides)."""
    command = [sys.executable, str(RUN_JOB), name]
    for key, value in conf:
        command += ["--conf", f"{key}={value}"]
    return [
        *command,
        "--",
        *shared,
        "--sink",
        str(run / "sink"),
        "--checkpoint",
        str(run / "checkpoint"),
    ]


def bare_command(run: Path, shared: Sequence[str]) -> list[str]:
    """The bare seed-style query's command line."""
    return [sys.executable, str(BARE_SCRIPT), *shared, "--checkpoint", str(run / "checkpoint")]


# --- 1. throughput ---------------------------------------------------------------------------


@dataclass
class ThroughputResult:
    """Capacity on a backlog and the sweep's sustainable rates (every round of each query)."""

    corpus: throughput.Corpus
    measurements: dict[str, Measurement]
    sweeps: dict[str, list[streaming.Sweep]]  # a query's rounds, in the order they ran
    problems: list[str]

    def capacity(self, name: str) -> float:
        """Words/s of a query on the backlog."""
        return self.measurements[name].words_per_second(self.corpus.words)

    def sweep(self, name: str) -> streaming.Sweep:
        """The query's median round (the lower middle one of an even count): what it sustains."""
        rounds = sorted(self.sweeps[name], key=lambda found: found.sustainable)
        return rounds[(len(rounds) - 1) // 2]

    def median_sweeps(self) -> dict[str, streaming.Sweep]:
        """Every query's median round, in sweep order."""
        return {name: self.sweep(name) for name in self.sweeps}


SWEEP_QUERIES = ("bare", "naive_wc", "naive_rt", "word_count", "running_total")
# With `Mode.diagnose`: the bare query with the jobs' tokenizer, swept like the others.
TOKENIZER_REFERENCE = throughput.TOKENIZER_REFERENCE


def run_throughput(ctx: Context) -> ThroughputResult:
    """Section 1: capacity (bench/throughput.py) and the live rate sweep, in rounds.

    One sweep of a query moves by a ladder step or two from run to run (a fresh JVM, the
    machine's drift), so each query is swept `sweep_rounds` times, the queries taking turns in
    every round and each round starting with a different one, and the median round counts.
    Every round climbs the whole ladder: the minutes a query's JVM spends on the lower steps
    are part of what it sustains. Later rounds that started 4 steps (x1.75) below the first
    round's result, after the 6 s warm-up, fell behind at or just above their first step.
    """
    args = throughput.parse_args(
        [
            *("--lines", str(ctx.mode.lines), "--files", str(ctx.mode.files)),
            *("--repeat", str(ctx.mode.capacity_repeat)),
            *(["--diagnose"] if ctx.mode.diagnose else []),
            *(["--side-by-side"] if ctx.mode.side_by_side else []),
        ]
    )
    progress("throughput: capacity on a backlog (bench/throughput.py)")
    corpus, measurements, problems = throughput.measure(args, ctx.work / "throughput")
    ctx.note_load("throughput, capacity")
    queries = (*SWEEP_QUERIES, *([TOKENIZER_REFERENCE] if ctx.mode.diagnose else []))
    result = ThroughputResult(corpus, measurements, {name: [] for name in queries}, problems)

    templates = streaming.Templates(ctx.work / "templates")
    trigger = ["--trigger-interval", f"{SWEEP_TRIGGER_SECONDS:.0f} second"]
    # One ladder for every query, from the bare query's capacity: same rates, comparable steps.
    start = ctx.mode.sweep_start * result.capacity("bare")
    rates = streaming.rate_ladder(start, ctx.mode.sweep_factor, ctx.mode.sweep_steps)
    for round_ in range(ctx.mode.sweep_rounds):
        progress(
            f"throughput: rate sweep, {SWEEP_TRIGGER_SECONDS:.0f} s trigger, "
            f"round {round_ + 1} of {ctx.mode.sweep_rounds}"
        )
        turn = round_ % len(queries)
        ordered = (*queries[turn:], *queries[:turn])
        one = functools.partial(
            sweep_one, ctx, round_=round_, templates=templates, rates=rates, trigger=trigger
        )
        if not ctx.mode.side_by_side:
            for name in ordered:
                result.sweeps[name].append(one(name))
            continue
        # Every template file first: the sweeps side by side then only read them.
        for rate in [rates[0] / 2, *rates]:
            templates.of(round(rate * SWEEP_TICK_SECONDS))
        with ThreadPoolExecutor(len(ordered)) as pool:
            for name, found in zip(ordered, list(pool.map(one, ordered)), strict=True):
                result.sweeps[name].append(found)
    ctx.note_load("throughput, sweep")
    return result


SWEEP_TICK_SECONDS = 0.25


def sweep_one(
    ctx: Context,
    name: str,
    *,
    round_: int,
    templates: streaming.Templates,
    rates: list[float],
    trigger: list[str],
) -> streaming.Sweep:
    """One round of the rate sweep of one query."""
    naive = {"naive_wc": ["--per-batch"], "naive_rt": []}
    run = ctx.work / "sweep" / f"{name}-{round_ + 1}"
    run.mkdir(parents=True)
    shared = ["--input", str(run / "input"), *trigger]
    partitions = ["--shuffle-partitions", str(DEFAULT_SHUFFLE_PARTITIONS)]
    if name == "bare":
        command = bare_command(run, [*shared, *partitions])
    elif name == TOKENIZER_REFERENCE:
        command = bare_command(run, [*shared, *partitions, "--tokenizer", "jobs"])
    elif name in naive:
        parquet = ["--parquet", str(run / "sink"), *naive[name]]
        command = bare_command(run, [*shared, *partitions, *parquet])
    else:
        command = job_command(name, run, shared)
    found = streaming.sweep(
        streaming.LiveQuery(name, command, run, ctx.env),
        templates,
        rates=rates,
        step_seconds=ctx.mode.step_seconds,
        trigger_seconds=SWEEP_TRIGGER_SECONDS,
        tick=SWEEP_TICK_SECONDS,
        warmup_seconds=ctx.mode.warmup_seconds,
    )
    steps = len(found.steps)
    bound = "" if found.fell_behind else f" or more: kept up at all {steps} steps"
    progress(f"  {name}: sustainable {found.sustainable:,.0f} words/s{bound}")
    shutil.rmtree(run / "input", ignore_errors=True)  # up to a few GB; the logs stay
    return found


# --- 2. latency ------------------------------------------------------------------------------


def run_latency(ctx: Context, tp: ThroughputResult) -> list[streaming.Latency]:
    """Section 2: end-to-end latency at half the sustainable rate, 1 s and 0 s triggers."""
    results = []
    templates = streaming.Templates(ctx.work / "templates-latency", seed=3)
    for name in ctx.mode.latency_jobs:
        swept = tp.sweep(name)
        sustainable = swept.sustainable or swept.steps[0].rate
        rate = sustainable / 2
        for trigger in ctx.mode.latency_triggers:
            progress(f"latency: {name}, {trigger:.0f} s trigger, {rate:,.0f} words/s")
            run = ctx.work / "latency" / f"{name}-{trigger:.0f}s"
            run.mkdir(parents=True)
            shared = ["--input", str(run / "input"), "--trigger-interval", f"{trigger:.0f} seconds"]
            query = streaming.LiveQuery(name, job_command(name, run, shared), run, ctx.env)
            found = streaming.latency(
                query,
                templates,
                rate=rate,
                trigger_seconds=trigger,
                warmup_seconds=ctx.mode.latency_warmup,
                measure_seconds=ctx.mode.latency_seconds,
                tick=0.1,
            )
            progress(
                f"  p50 {found.median:.2f} s, p99 {found.percentile(99):.2f} s over "
                f"{len(found.samples)} files"
            )
            results.append(found)
    ctx.note_load("latency")
    return results


# --- 3. state scaling ------------------------------------------------------------------------


def run_state(ctx: Context) -> list[StateRun]:
    """Section 3: running_total's state stores against state size."""
    results = []
    for distinct in ctx.mode.state_sizes:
        for config in CONFIGS[: ctx.mode.state_stores]:
            progress(f"state: {config.name}, {distinct:,} distinct words")
            run = ctx.work / "state" / f"{distinct}-{config.store}-{len(config.conf)}"
            run.mkdir(parents=True)
            results.append(
                measure_state(
                    config,
                    distinct=distinct,
                    batches=ctx.mode.state_batches,
                    updates=ctx.mode.state_updates,
                    run_dir=run,
                    env=ctx.env,
                    restart=ctx.mode.state_restart,
                )
            )
    ctx.note_load("state scaling")
    return results


# --- 4. operations ---------------------------------------------------------------------------


@dataclass
class Operations:
    """Control-plane and lifecycle figures."""

    parse: dict[str, float]
    rotation: Any  # checkpoints.RotationFigures
    quality: list[tuple[int, dict[str, Any]]]
    sinks: list[Any]  # sinks.SinkFigures


def run_operations(ctx: Context) -> Operations:
    """Section 4: DAG parse time, rotation, snapshot and restore, GX validation time."""
    import checkpoints
    import control_plane
    import quality

    progress("operations: DAG parse time per file (bench/control_plane.py)")
    home, data = ctx.work / "airflow-home", ctx.work / "airflow-data"
    parse = control_plane.parse_times(control_plane.airflow_env(home, data), ctx.mode.parse_repeat)
    progress(f"operations: rotation of a {ctx.mode.rotation_batches}-batch running_total")
    rotation = checkpoints.measure_rotation(
        ctx.work / "rotation", ctx.mode.rotation_batches, env=ctx.env
    )
    if not rotation.correct:
        raise BenchFailure("rotation: the totals after rotation do not equal the input")
    results = []
    for rows in ctx.mode.quality_sizes:
        folder = ctx.work / "quality" / f"rows-{rows}"
        per_file = max(rows // 1000, 100)
        progress(f"operations: GX validation of two sinks of {rows:,} rows (bench/quality.py)")
        quality.write_sinks(folder, rows, per_file)
        results.append((rows, quality.run_step("pandas full", folder, rows)))
    import sinks

    progress(f"operations: sinks of {ctx.mode.sink_batches} batch files (bench/sinks.py)")
    sink_figures = sinks.measure(ctx.work / "sinks", list(ctx.mode.sink_batches))
    ctx.note_load("operations")
    return Operations(parse, rotation, results, sink_figures)


# --- 5. tuning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One setting of one job on the throughput corpus: its label and how to run it."""

    label: str
    command: Callable[[Path], list[str]]


@dataclass(frozen=True)
class Comparison:
    """A default against an alternative, both measured in this run."""

    setting: str
    job: str
    default: str
    alternative: str
    default_rate: float
    alternative_rate: float

    @property
    def ratio(self) -> float:
        """Alternative over default."""
        return self.alternative_rate / self.default_rate


def run_tuning(ctx: Context, tp: ThroughputResult) -> list[Comparison]:
    """Section 5: each default against its alternatives on the throughput corpus.

    Each alternative runs right after its default, so both see the same machine: a default's
    figure from the capacity step, measured minutes earlier, would carry the machine's drift
    into every ratio.
    """
    corpus = tp.corpus
    per_trigger = ["--max-files-per-trigger", "2"]
    numbers = itertools.count(1)

    def job(
        name: str, extra: Sequence[str] = (), conf: Sequence[tuple[str, str]] = ()
    ) -> Callable[[Path], list[str]]:
        shared = ["--input", str(corpus.folder), "--available-now", *extra]
        return lambda run: job_command(name, run, shared, conf)

    def rate(setting: str, name: str, value: str, command: Callable[[Path], list[str]]) -> float:
        """The run's words/s (NaN, reported, when the run failed)."""
        measurement = Measurement(f"{name} {setting}={value}")
        label = f"{next(numbers):02d}-{name}-{setting}-{value}"  # a default runs more than once
        run = ctx.work / "tuning" / label.replace(" ", "_")
        progress(f"tuning: {name}, {setting} = {value}")
        query = SparkQuery(measurement.name, command, sink=True)
        try:
            throughput.measure_spark(measurement, query, run, ctx.env)
        except BenchFailure as failure:
            progress(f"  FAILED, left out of the figures: {failure}")
            return math.nan
        return measurement.words_per_second(corpus.words)

    def compare(setting: str, name: str, default: Trial, alternative: Trial) -> Comparison:
        """The default, then the alternative, back to back."""
        return Comparison(
            setting,
            name,
            default.label,
            alternative.label,
            rate(setting, name, f"{default.label} (baseline)", default.command),
            rate(setting, name, alternative.label, alternative.command),
        )

    comparisons = []
    rt_default = Trial(
        f"{DEFAULT_SHUFFLE_PARTITIONS} (one per core)", job("running_total", per_trigger)
    )

    def parts_label(parts: int) -> str:
        return f"{parts} (previous default)" if parts == PREVIOUS_SHUFFLE_PARTITIONS else str(parts)

    for parts in ctx.mode.partition_candidates:
        if parts == DEFAULT_SHUFFLE_PARTITIONS:
            continue
        alternative = Trial(
            parts_label(parts),
            job("running_total", [*per_trigger, "--shuffle-partitions", str(parts)]),
        )
        comparisons.append(compare("shuffle partitions", "running_total", rt_default, alternative))
    if ctx.mode.other_trials:
        try:
            comparisons += small_batch_partitions(ctx, rt_default.label, parts_label)
        except BenchFailure as failure:
            progress(f"  FAILED, left out of the figures: {failure}")
        comparisons += other_trials(compare, job, per_trigger)
    wc_default = Trial("2", job("word_count", per_trigger))
    for files in ctx.mode.files_per_trigger:
        extra = [] if files is None else ["--max-files-per-trigger", str(files)]
        label = "all new files" if files is None else str(files)
        alternative = Trial(label, job("word_count", extra))
        comparisons.append(compare("max files per trigger", "word_count", wc_default, alternative))
    ctx.note_load("tuning")
    return comparisons


def small_batch_partitions(
    ctx: Context, default_parts: str, parts_label: Callable[[int], str]
) -> list[Comparison]:
    """Shuffle partitions on small batches: state scaling's shape at 1e5 words, 50,000 a batch.

    The backlog runs above read 1,000,000 words a batch; a live stream's batches are smaller,
    and the fixed cost of each partition's state store weighs more.
    """
    config, distinct, updates = CONFIGS[0], 100_000, 50_000

    def words_per_second(parts: int | None) -> float:
        label = "default" if parts is None else str(parts)
        progress(f"tuning: running_total on small batches, shuffle partitions = {label}")
        run = ctx.work / "tuning" / f"small-batches-{label}"
        run.mkdir(parents=True)
        extra = [] if parts is None else ["--shuffle-partitions", str(parts)]
        found = measure_state(
            config,
            distinct=distinct,
            batches=ctx.mode.state_batches,
            updates=updates,
            run_dir=run,
            env=ctx.env,
            restart=False,
            extra_args=extra,
        )
        return updates / (found.batch_ms / 1000)

    default = words_per_second(None)
    return [
        Comparison(
            "shuffle partitions, 50,000-word batches",
            "running_total",
            default_parts,
            parts_label(parts),
            default,
            words_per_second(parts),
        )
        for parts in ctx.mode.partition_candidates
    ]


def other_trials(
    compare: Callable[[str, str, Trial, Trial], Comparison],
    job: Callable[..., Callable[[Path], list[str]]],
    per_trigger: list[str],
) -> list[Comparison]:
    """The state store, changelog checkpointing and AQE trials (full mode)."""
    rt = "running_total"
    hdfs = Trial("hdfs", job(rt, [*per_trigger, "--state-store", "hdfs"]))
    no_changelog = Trial("off", job(rt, per_trigger, [(state_changelog(), "false")]))
    with_aqe = Trial("on", job("word_count", per_trigger, [("spark.sql.adaptive.enabled", "true")]))
    file_context = [(CHECKPOINT_FILE_MANAGER_KEY, spark_default_checkpoint_file_manager())]
    return [
        *(
            compare(
                "checkpoint file manager",
                name,
                Trial("FileSystem", job(name, per_trigger)),
                Trial("FileContext (Spark's default)", job(name, per_trigger, file_context)),
            )
            for name in (rt, "word_count")
        ),
        compare("state store", rt, Trial("rocksdb", job(rt, per_trigger)), hdfs),
        compare(
            "RocksDB changelog checkpointing", rt, Trial("on", job(rt, per_trigger)), no_changelog
        ),
        compare("AQE", "word_count", Trial("off", job("word_count", per_trigger)), with_aqe),
    ]


def spark_default_checkpoint_file_manager() -> str:
    """The checkpoint file manager Spark uses unless told otherwise (FileContext-based)."""
    return LOCAL_CHECKPOINT_FILE_MANAGERS[0].replace("FileSystemBased", "FileContextBased")


def state_changelog() -> str:
    """The RocksDB changelog checkpointing setting."""
    from state_scaling import CHANGELOG

    return CHANGELOG


# --- plots -----------------------------------------------------------------------------------


def plot_all(ctx: Context, report: Report) -> dict[str, str]:  # noqa: PLR0915
    """Write the PNGs; returns section -> relative path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        path = ctx.plots / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out[name.removesuffix(".png")] = f"{PLOTS_DIR}/{name}"

    tp = report.throughput
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = 0.0
    for name, sw in tp.median_sweeps().items():
        xs = [s.rate for s in sw.steps]
        ys = [s.processed for s in sw.steps]
        top = max([top, *xs, *ys])
        ax.plot(xs, ys, marker="o", label=f"{name} (sustainable {sw.sustainable:,.0f})")
    ax.plot([0, top], [0, top], color="grey", linestyle=":", label="processed = input")
    ax.set_xlabel("input rate, words/s")
    ax.set_ylabel("words/s processed (committed, one trigger later)")
    ax.set_title("Rate sweep, 1 s trigger: each query's median round")
    ax.legend(fontsize=8)
    save(fig, "throughput_sweep.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(tp.measurements)
    bare = tp.capacity("bare")
    ax.barh(names, [tp.capacity(n) / bare for n in names], color="tab:blue")
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("words/s relative to the bare query (available-now, log scale)")
    ax.set_title("Capacity on a backlog")
    save(fig, "throughput_capacity.png")

    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [f"{lat.name}\n{lat.trigger_seconds:.0f} s trigger" for lat in report.latency]
    for i, p in enumerate((50, 95, 99)):
        ax.bar(
            [x + (i - 1) * 0.25 for x in range(len(labels))],
            [lat.percentile(p) for lat in report.latency],
            width=0.25,
            label=f"p{p}",
        )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("seconds, input file to sink")
    ax.set_title("End-to-end latency at half the sustainable rate")
    ax.legend()
    save(fig, "latency.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    for config in CONFIGS:
        runs = [r for r in report.state if r.config == config.name]
        sizes = [r.distinct for r in runs]
        left.plot(sizes, [r.batch_ms for r in runs], marker="o", label=config.name)
        right.plot(sizes, [r.checkpoint_bytes / 2**20 for r in runs], marker="o", label=config.name)
    for ax, what in ((left, "batch ms (median)"), (right, "checkpoint MiB")):
        ax.set_xscale("log")
        ax.set_xlabel("distinct words in state")
        ax.set_ylabel(what)
    left.legend(fontsize=8)
    fig.suptitle("running_total: state stores against state size")
    save(fig, "state_scaling.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    rows = [r for r, _ in report.operations.quality]
    ax.plot(rows, [q["seconds"] for _, q in report.operations.quality], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("rows per sink (two sinks)")
    ax.set_ylabel("validation seconds")
    ax.set_title("Great Expectations validation time against sink size")
    save(fig, "quality.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{c.job}: {c.setting}\n{c.default} -> {c.alternative}" for c in report.tuning]
    ax.barh(labels, [c.ratio for c in report.tuning], color="tab:green")
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.set_xlabel("alternative / default, words/s")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("Tuning: each alternative against the default")
    save(fig, "tuning.png")
    return out


# --- the markdown ----------------------------------------------------------------------------


@dataclass
class Report:
    """Everything measured in the run."""

    throughput: ThroughputResult
    latency: list[streaming.Latency]
    state: list[StateRun]
    operations: Operations
    tuning: list[Comparison]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def num(value: float, digits: int = 2) -> str:
    """A number cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:,.{digits}f}"


def reading(ratio: float) -> str:
    """What an alternative / default ratio says, with 5% taken as noise."""
    if math.isnan(ratio):
        return "not measured"
    if ratio > 1.05:
        return "alternative faster"
    if ratio < 0.95:
        return "default faster"
    return "within 5%"


def verdict(ok: bool) -> str:
    """Met or missed."""
    return "met" if ok else "missed"


def markdown(ctx: Context, report: Report, plots: dict[str, str], wall: float) -> str:  # noqa: PLR0915
    """The whole report."""
    tp = report.throughput
    bare_sus = tp.sweep("bare").sustainable
    limit = tp.capacity("pyarrow")
    loads = [load for _, load in ctx.loads]
    parts: list[str] = []
    add = parts.append
    add("# Performance\n")
    add(
        "Every figure below comes from one run of `bench/report.py "
        f"--mode {ctx.mode.name}`"
        + (" (`make bench`)" if ctx.mode.name == "full" else "")
        + ", compared with references measured in the same run. Absolute times depend on the "
        "machine and on what else ran on it; the ratios are what to read. The methods are "
        "described in each section and in the docstrings of `bench/`.\n"
    )
    add(
        table(
            ["run", "value"],
            [
                ["date (UTC)", datetime.now(UTC).strftime("%Y-%m-%d %H:%M")],
                ["mode", ctx.mode.name],
                ["code", ctx.code],
                [
                    "machine",
                    f"{os.cpu_count()} cores, {platform.machine()}, "
                    f"Python {platform.python_version()}",
                ],
                ["wall time", f"{wall / 60:.1f} min"],
                [
                    "load average (1 min) through the run",
                    f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
                    f"max {max(loads):.2f}",
                ],
            ],
        )
        + "\n"
    )
    add(
        "\nThe machine is shared: the 1-minute load average at the end of each step of the run "
        "(2 cores; above 2 other work was competing with the measurement):\n"
    )
    add(table(["step", "load average"], [[where, num(load)] for where, load in ctx.loads]) + "\n")
    add("\n## Targets\n")
    wc_ratio = tp.sweep("word_count").sustainable / bare_sus if bare_sus else math.nan
    rt_ratio = tp.sweep("running_total").sustainable / bare_sus if bare_sus else math.nan
    rounds = len(tp.sweeps["bare"])
    median = f" (median of {rounds} sweeps)" if rounds > 1 else ""
    lat_rows = []
    for lat in report.latency:
        if lat.trigger_seconds > 0:
            ratio = lat.percentile(99) / lat.trigger_seconds
            lat_rows.append(
                [
                    f"{lat.name} p99 latency / trigger interval (1 s trigger)",
                    num(ratio),
                    f"<= {LATENCY_TARGET:.1f}",
                    verdict(ratio <= LATENCY_TARGET),
                ]
            )
    add(
        table(
            ["target", "ratio", "goal", "result"],
            [
                [
                    f"word_count / bare, sustainable words/s{median}",
                    num(wc_ratio),
                    f">= {WORD_COUNT_TARGET:.2f}",
                    verdict(wc_ratio >= WORD_COUNT_TARGET),
                ],
                [
                    f"running_total / bare, sustainable words/s{median}",
                    num(rt_ratio),
                    f">= {RUNNING_TOTAL_TARGET:.2f}",
                    verdict(rt_ratio >= RUNNING_TOTAL_TARGET),
                ],
                [
                    "word_count / bare, capacity on a backlog",
                    num(tp.capacity("word_count") / tp.capacity("bare")),
                    f">= {WORD_COUNT_TARGET:.2f}",
                    verdict(tp.capacity("word_count") / tp.capacity("bare") >= WORD_COUNT_TARGET),
                ],
                [
                    "running_total / bare, capacity on a backlog",
                    num(tp.capacity("running_total") / tp.capacity("bare")),
                    f">= {RUNNING_TOTAL_TARGET:.2f}",
                    verdict(
                        tp.capacity("running_total") / tp.capacity("bare") >= RUNNING_TOTAL_TARGET
                    ),
                ],
                *[
                    [
                        f"{name} / {naive} (the naive Parquet-writing query), capacity on a "
                        "backlog",
                        num(tp.capacity(name) / tp.capacity(naive)),
                        f">= {NAIVE_TARGET:.2f}",
                        verdict(tp.capacity(name) / tp.capacity(naive) >= NAIVE_TARGET),
                    ]
                    for name, naive in (("word_count", "naive_wc"), ("running_total", "naive_rt"))
                ],
                *[
                    [
                        f"{name} / {naive}, sustainable words/s{median}",
                        num(tp.sweep(name).sustainable / tp.sweep(naive).sustainable),
                        f">= {NAIVE_TARGET:.2f}",
                        verdict(tp.sweep(name).sustainable >= tp.sweep(naive).sustainable),
                    ]
                    for name, naive in (("word_count", "naive_wc"), ("running_total", "naive_rt"))
                    if tp.sweep(naive).sustainable
                ],
                *lat_rows,
            ],
        )
        + "\n"
    )
    add(
        "\nThe sweep's ratios have the resolution of its steps (each rate is "
        f"{ctx.mode.sweep_factor:.2f} times the one before); the capacity ratios are finer. The "
        "two measure different things: a capacity run is a few large batches in a fresh JVM, "
        "seconds long; the sweep keeps each query running for minutes, so its JVM is warm and "
        "the bare query gets several times faster (`vs own capacity` below), while what the "
        "jobs add to every micro-batch (the tokenizer, the `foreachBatch` Parquet write, the "
        "status listener) weighs more. The sustainable rate is what a live stream can take.\n"
    )
    if TOKENIZER_REFERENCE in tp.sweeps and bare_sus:
        add("\n" + tokenizer_reading(tp, bare_sus) + "\n")

    add("\n## Throughput\n")
    corpus = tp.corpus
    add(
        f"**Capacity on a backlog.** {corpus.lines:,} lines, {corpus.words:,} words "
        f"({len(corpus.counts):,} distinct) in {corpus.files} files, read with "
        "`--available-now` and 2 files per micro-batch by every Spark query, each in a fresh "
        f"process{capacity_runs(ctx.mode.capacity_repeat)}, jobs with their default settings "
        f"({DEFAULT_SHUFFLE_PARTITIONS} shuffle "
        "partitions, RocksDB with changelog checkpointing for running_total) and the bare "
        "query with the same partitions and Spark's default state store. `seconds` runs from "
        "the first batch's start to the last commit (JVM start-up left out); `cpu vs bare` "
        "compares words per CPU second, which other processes disturb less; `others` is the "
        "cores other processes used meanwhile. Both sinks were checked word by word against "
        "the corpus"
        + (": every count matched.\n" if not tp.problems else f": PROBLEMS: {tp.problems}.\n")
    )
    bare_cpu = tp.measurements["bare"].median_cpu
    rows = []
    for name, m in tp.measurements.items():
        cpu = m.median_cpu
        rows.append(
            [
                name,
                "0" if m.batches is None else str(m.batches),
                num(m.median_seconds),
                ", ".join(num(r.seconds) for r in m.runs),
                num(tp.capacity(name), 0),
                num(tp.capacity(name) / tp.capacity("bare")),
                num(tp.capacity(name) / limit, 3),
                num(bare_cpu / cpu) if bare_cpu and cpu else "nan",
                num(m.worst_others or 0.0),
            ]
        )
    add(
        table(
            [
                "query",
                "batches",
                "seconds",
                "runs s",
                "words/s",
                "vs bare",
                "vs pyarrow",
                "cpu vs bare",
                "others",
            ],
            rows,
        )
        + "\n"
    )
    add(f"\n![capacity]({plots['throughput_capacity']})\n")
    timed = {name: m.median_phases for name, m in tp.measurements.items() if m.median_phases}
    if timed:
        phases = list(dict.fromkeys(p for found in timed.values() for p in found))
        add(
            "\n**Where batch time goes** in the same runs: mean milliseconds per micro-batch "
            "in each of Spark's phases (`StreamingQueryProgress.durationMs`) over each query's "
            "last 30 batches; the jobs' own parts of `addBatch` come from their status "
            "(`prepare`: reading the batch's time from the offset log; `result`: computing the "
            "batch's result and collecting it as Arrow, one Spark "
            "action; `write`: the sink file); `other` is the batch time outside Spark's phases.\n"
        )
        add(
            table(
                ["phase", *timed],
                [
                    [p] + [num(found[p], 1) if p in found else "-" for found in timed.values()]
                    for p in phases
                ],
            )
            + "\n"
        )
    add(
        "\n**Sustainable rate.** Each query runs as a live stream with a "
        f"{SWEEP_TRIGGER_SECONDS:.0f}-second trigger while files arrive every 0.25 s; the input "
        f"rate starts at {ctx.mode.sweep_start:.0%} of the bare query's capacity above (the same "
        "rates for every query) and rises "
        f"by x{ctx.mode.sweep_factor:.2f} every {ctx.mode.step_seconds:.0f} s after a "
        f"{ctx.mode.warmup_seconds:.0f} s warm-up. A step keeps up when the backlog at its end "
        "(words written but not in a committed batch) is under 2 trigger intervals plus 1.5 s "
        "of input. A lone step over that line that the next step recovers from (a slow batch, "
        "not a query falling behind) is counted as a spike and the sweep goes on; it ends "
        f"after {streaming.CONFIRM_STEPS} steps in a row over the line, and the sustainable rate "
        "is the last step that kept up before them "
        f"(`bench/streaming.py`). Each query is swept {ctx.mode.sweep_rounds} "
        f"time{'s' if ctx.mode.sweep_rounds > 1 else ''}, the queries taking turns in every "
        "round and each round starting with the next query, every round over the whole "
        "ladder. The median round counts (the lower middle one of an even count); the other "
        "columns are that round's.\n"
    )
    rows = []
    for name, sw in tp.median_sweeps().items():
        last = sw.steps[-1]
        sustained = ", ".join(f"{found.sustainable / 1e6:.2f}M" for found in tp.sweeps[name])
        rows.append(
            [
                name,
                num(sw.sustainable, 0),
                sustained,
                num(sw.sustainable / bare_sus if bare_sus else math.nan),
                num(sw.sustainable / limit, 3),
                num(sw.sustainable / tp.capacity(name) if name in tp.measurements else math.nan),
                str(len(sw.steps)),
                num(last.rate, 0),
                num(last.backlog_seconds, 1),
                "fell behind" if sw.fell_behind else "step limit (a lower bound)",
                str(sw.spikes),
            ]
        )
    add(
        table(
            [
                "query",
                "sustainable words/s",
                "rounds",
                "vs bare",
                "vs pyarrow",
                "vs own capacity",
                "steps",
                "last rate",
                "last backlog s",
                "ended",
                "spikes",
            ],
            rows,
        )
        + "\n"
    )
    medians = tp.median_sweeps()
    unknown = [n for n, sw in medians.items() if any(math.isnan(st.processed) for st in sw.steps)]
    if unknown:
        add(
            f"\nThe plot leaves out the first steps of {', '.join(unknown)}: Spark keeps the "
            "commit files of the last 100 batches only, and theirs had been deleted by the time "
            "the processing rates were computed. Every step's keep-up verdict was taken while "
            "it ran.\n"
        )
    capped = [name for name, sw in tp.median_sweeps().items() if all(sw.kept_up)]
    if capped:
        add(
            f"\n{', '.join(capped)} kept up at every step of the ladder: "
            f"for {'them' if len(capped) > 1 else 'it'} the sustainable rate is a lower bound.\n"
        )
    add(f"\n![sweep]({plots['throughput_sweep']})\n")

    add("\n## Latency\n")
    add(
        "Each job runs at half its sustainable rate (from the sweep above), files of input "
        f"arriving every 0.1 s. After a {ctx.mode.latency_warmup:.0f} s warm-up, every file "
        f"written during {ctx.mode.latency_seconds:.0f} s is one sample: from its rename into the "
        "input folder to the moment its micro-batch's `part-<batch_id>.parquet` was renamed into "
        "the sink (the file's change time); the file source's log in the checkpoint says which "
        "batch read which file. The target is p99 at most twice the trigger interval. The "
        "warm-up is long because the query's JVM starts cold, at a rate the sweep reached "
        "only after minutes of warming up: `warm-up max s` is the worst latency of a file "
        "written during the warm-up, the catch-up that follows a stream's restart.\n"
    )
    rows = []
    for lat in report.latency:
        p99 = lat.percentile(99)
        rows.append(
            [
                lat.name,
                num(lat.trigger_seconds, 0),
                num(lat.rate, 0),
                str(len(lat.samples)),
                num(lat.median),
                num(lat.percentile(95)),
                num(p99),
                num(max(lat.samples) if lat.samples else math.nan),
                num(p99 / lat.trigger_seconds) if lat.trigger_seconds else "-",
                num(max(lat.warmup) if lat.warmup else math.nan),
            ]
        )
    add(
        table(
            [
                "job",
                "trigger s",
                "words/s",
                "samples",
                "p50 s",
                "p95 s",
                "p99 s",
                "max s",
                "p99 / trigger",
                "warm-up max s",
            ],
            rows,
        )
        + "\n"
    )
    add(f"\n![latency]({plots['latency']})\n")

    add("\n## State scaling\n")
    add(
        "running_total with a state of N distinct words: batch 0 puts every word in the state "
        f"(`load ms`), then {ctx.mode.state_batches} batches of {ctx.mode.state_updates:,} words "
        "drawn from the N (`batch ms`, median of Spark's batch durations). `checkpoint MiB` is "
        "the checkpoint folder after those batches; `restart s` runs from the restarted "
        "process's start to its first batch's commit, JVM start-up included, and `restart batch "
        "ms` is that batch alone"
        + ("" if ctx.mode.state_restart else " (`-`: not measured in quick mode)")
        + ". `vs default` divides batch ms by RocksDB with changelog "
        "checkpointing (the jobs' default) at the same size (`bench/state_scaling.py`).\n"
    )
    defaults = {r.distinct: r for r in report.state if r.config == CONFIGS[0].name}
    rows = [
        [
            r.config,
            f"{r.distinct:,}",
            num(r.batch_ms, 0),
            num(r.batch_ms / defaults[r.distinct].batch_ms),
            num(r.load_ms, 0),
            num(r.checkpoint_bytes / 2**20),
            "-" if r.restart_s is None else num(r.restart_s),
            "-" if r.restart_batch_ms is None else num(r.restart_batch_ms, 0),
        ]
        for r in report.state
    ]
    add(
        table(
            [
                "state store",
                "distinct words",
                "batch ms",
                "vs default",
                "load ms",
                "checkpoint MiB",
                "restart s",
                "restart batch ms",
            ],
            rows,
        )
        + "\n"
    )
    add(f"\n![state scaling]({plots['state_scaling']})\n")

    add("\n## Operations\n")
    ops = report.operations
    add(
        f"**DAG parse time** per file: Airflow's `DagBag` on one file in a fresh interpreter that "
        f"has already imported Airflow, median of {ctx.mode.parse_repeat} "
        "(`bench/control_plane.py`). Target: under 0.3 s.\n"
    )
    add(
        table(
            ["DAG file", "parse s", "vs 0.3 s target"],
            [[name, num(sec, 3), num(sec / 0.3)] for name, sec in ops.parse.items()],
        )
        + "\n"
    )
    rot = ops.rotation
    add(
        f"\n**Checkpoint lifecycle** (`bench/checkpoints.py`): running_total after "
        f"{rot.batches} one-file batches is stopped, rotated (snapshot, input archival, base "
        "totals, new generation) and restarted; then a snapshot of the new generation and a "
        "restore of the rotation's snapshot. The totals after rotation equal the input.\n"
    )
    mib = 2**20
    add(
        table(
            ["step", "seconds", "share of downtime"],
            [
                ["stop at a batch boundary", num(rot.stop_s), num(rot.stop_s / rot.downtime_s)],
                [
                    "rotate (includes the snapshot)",
                    num(rot.rotate_s),
                    num(rot.rotate_s / rot.downtime_s),
                ],
                ["start and first batch", num(rot.start_s), num(rot.start_s / rot.downtime_s)],
                ["rotation downtime", num(rot.downtime_s), num(1.0)],
                [
                    "snapshot (new generation)",
                    num(rot.snapshot_s),
                    num(rot.snapshot_s / rot.downtime_s),
                ],
                [
                    "restore of the old generation",
                    num(rot.restore_s),
                    num(rot.restore_s / rot.downtime_s),
                ],
            ],
        )
        + "\n"
    )
    add(
        f"\nCheckpoint size: {rot.size_before / mib:.2f} MiB before rotation, "
        f"{rot.size_after / mib:.2f} MiB right after; the snapshot holds "
        f"{rot.snapshot_size / mib:.2f} MiB.\n"
    )
    add(
        "\n**Great Expectations validation** of both sinks, every batch (the production path, "
        "`QualityRunner.validate_stream(revalidate_all=True)`, pandas), against sink size "
        "(`bench/quality.py`, each size in a fresh process).\n"
    )
    first_rate = None
    rows = []
    for size, q in ops.quality:
        rate = q["rows"] / q["seconds"]
        first_rate = first_rate or rate
        rows.append(
            [
                f"{size:,}",
                num(q["seconds"]),
                num(rate, 0),
                num(rate / first_rate),
                num(q.get("docs_seconds", math.nan)),
                num(q["peak_mb"], 0),
            ]
        )
    add(
        table(
            ["rows per sink", "seconds", "rows/s", "rows/s vs smallest", "Data Docs s", "peak MB"],
            rows,
        )
        + "\n"
    )
    add(f"\n![quality]({plots['quality']})\n")
    add(sinks_section(ops.sinks))

    add("\n## Tuning\n")
    add(
        "**Changed default, before and after** (same run): shuffle partitions, now one per core "
        f"({DEFAULT_SHUFFLE_PARTITIONS} here), were {PREVIOUS_SHUFFLE_PARTITIONS}. On the "
        "backlog (1,000,000-word batches in full mode) and on the small batches of a live stream "
        "(50,000 words a batch against a state of 100,000 words; full mode only).\n"
    )
    changed = [c for c in report.tuning if "previous default" in c.alternative]
    add(
        table(
            [
                "job",
                "workload",
                "before",
                "after",
                "before words/s",
                "after words/s",
                "after / before",
            ],
            [
                [
                    c.job,
                    c.setting,
                    c.alternative.removesuffix(" (previous default)"),
                    c.default,
                    num(c.alternative_rate, 0),
                    num(c.default_rate, 0),
                    num(c.default_rate / c.alternative_rate),
                ]
                for c in changed
            ],
        )
        + "\n"
    )
    add(
        "\n**Each default against its alternatives** on the throughput corpus (`--available-now`, "
        "2 files per micro-batch unless the setting is the batch size, where 2 is the baseline "
        "and the jobs' own default is all new files), in the same run. Each alternative runs "
        "right after its own run of the default, so both meet the same machine. "
        "`alternative / default` above 1 means the alternative was faster.\n"
    )
    add(
        table(
            [
                "job",
                "setting",
                "default",
                "alternative",
                "default words/s",
                "alternative words/s",
                "alternative / default",
                "reading",
            ],
            [
                [
                    c.job,
                    c.setting,
                    c.default,
                    c.alternative,
                    num(c.default_rate, 0),
                    num(c.alternative_rate, 0),
                    num(c.ratio),
                    reading(c.ratio),
                ]
                for c in report.tuning
            ],
        )
        + "\n"
    )
    add(f"\n![tuning]({plots['tuning']})\n")
    add(tuning_notes(report))
    add(
        "\n## Reproduce\n\n```bash\nmake bench                                   # this report "
        "(docs/performance.md)\n.venv/bin/python bench/report.py --mode quick --out /tmp/perf  "
        "# small inputs, about ten minutes\n```\n"
    )
    return "\n".join(parts)


def capacity_runs(repeat: int) -> str:
    """How the capacity runs were repeated, for the text under its heading."""
    if repeat == 1:
        return ""
    return (
        f", {repeat} times each with the queries taking turns; the median counts (of clean runs "
        "when there is one, see `others`), `runs s` lists every run"
    )


def sinks_section(figures: list[Any]) -> str:
    """Sinks over time (`bench/sinks.py`): reads and size before and after compaction."""
    import sinks

    rows = [
        [
            f"{f.batches:,}",
            num(f.read_before),
            num(f.read_after, 3),
            num(f.read_one_file, 3),
            num(f.read_ratio),
            f"{f.disk_before / 2**20:.1f}",
            f"{f.disk_after / 2**20:.2f}",
            num(f.size_ratio),
            num(f.compaction_seconds, 1),
            num(f.quality_seconds),
            num(f.quality_peak_mib, 0),
        ]
        for f in figures
    ]
    header = [
        "batch files",
        "read before s",
        "read after s",
        "one file s",
        "read vs one file",
        "MiB before",
        "MiB after",
        "size vs one file",
        "compaction s",
        "quality on 600 new s",
        "quality peak MiB",
    ]
    return (
        "\n**Sinks over time** (`bench/sinks.py`, docs/sinks.md): a trickle stream's sink of 20 "
        "rows a batch, read with pandas through the reader contract before and after compaction, "
        "against the same rows in one file; a `sink_quality` run on the 600 new batches of 10 "
        "minutes, in a fresh process. Goals: read within "
        f"x{sinks.READ_GOAL:g} and size within x{sinks.SIZE_GOAL:g} of one file; quality flat "
        "as the sink grows.\n\n"
        + table(header, rows)
        + "\n\n"
        + "\n".join(f"- {line}" for line in sinks.summary(figures))
        + "\n"
    )


def state_summary(runs: list[StateRun]) -> str:
    """One sentence on the largest state size of the state scaling section."""
    if not runs:
        return ""
    size = max(r.distinct for r in runs)
    at = {r.config: r for r in runs if r.distinct == size}
    default = at.get(CONFIGS[0].name)
    if default is None:
        return ""
    parts = []
    for config in CONFIGS[1:]:
        other = at.get(config.name)
        if other is None:
            continue
        restart = (
            ""
            if other.restart_s is None or default.restart_s is None
            else f", restart {other.restart_s:.0f} s against {default.restart_s:.0f} s"
        )
        parts.append(
            f"{config.name} {other.batch_ms / default.batch_ms:.2f}x the batch time{restart}"
        )
    return f"At {size:,} distinct words: " + "; ".join(parts) + "."


def tuning_notes(report: Report) -> str:
    """Why each default is what it is, with this run's figures."""

    def ratio_of(setting: str, alternative: str = "", job: str = "") -> str:
        found = [
            c.ratio
            for c in report.tuning
            if c.setting == setting
            and c.alternative.startswith(alternative)
            and c.job.startswith(job)
        ]
        return "not measured in this mode" if not found else f"{found[0]:.2f}x the default"

    changed = [c for c in report.tuning if "previous default" in c.alternative]
    before_after = "; ".join(
        f"{c.setting}: after / before {c.default_rate / c.alternative_rate:.2f}" for c in changed
    )
    notes = [
        "\nWhat the jobs' defaults are, and why:\n",
        f"- **Shuffle partitions: one per core** (Spark's default parallelism; it was "
        f"{PREVIOUS_SHUFFLE_PARTITIONS}). Every partition of a stateful aggregation is a state "
        "store that loads, updates and commits on every micro-batch however few words it holds, "
        f"and on {DEFAULT_SHUFFLE_PARTITIONS} cores {PREVIOUS_SHUFFLE_PARTITIONS} partitions run "
        f"in waves. This run: {before_after or 'not measured'}. A stateful query keeps the "
        "number its checkpoint started with (Spark records it in the offset log and restores it "
        "on restart; `tests/spark_jobs/test_streaming.py` checks it), so the new default applies "
        "to new checkpoints only, and `checkpoint_rotation` with `shuffle_partitions` changes a "
        "running stream's.",
        f"- **State store: RocksDB with changelog checkpointing**, unchanged in this round. On "
        f"the backlog, HDFS gave {ratio_of('state store')} and RocksDB without changelog "
        f"{ratio_of('RocksDB changelog checkpointing')}. {state_summary(report.state)} With "
        "changelog checkpointing a restart replays the changelogs written since the last "
        "snapshot, which is what `restart batch ms` shows; the HDFS store keeps every key on "
        "the JVM heap. These figures come from a shared machine (see the load table) and do "
        "not settle the choice either way; a change waits for a rerun on a quiet one.",
        f"- **AQE off for word_count's per-batch count** (`spark.sql.adaptive.enabled` in "
        f"the job's settings): on gave word_count {ratio_of('AQE')}. Spark keeps AQE off for "
        "the stateful part of a streaming query anyway; word_count's count runs as a batch "
        "query inside `foreachBatch`, where AQE splits it into stages and re-plans between "
        "them, and with one shuffle partition per core it has nothing to coalesce. On a "
        "cluster with many more partitions than cores, its coalescing may pay: measure there "
        "with `bench/run_job.py --conf spark.sql.adaptive.enabled=true`.",
        "- **Checkpoint file manager: Hadoop's FileSystem API** for a checkpoint on the local "
        "filesystem (`spark_jobs/session.py`, `checkpoint_conf`; other filesystems keep Spark's "
        "default). Spark's default, FileContext, runs `readlink` as a subprocess for every path "
        "it checks when it renames a checkpoint file into place, some 45 processes per "
        "micro-batch on the stream's critical path. Spark's default gave running_total "
        f"{ratio_of('checkpoint file manager', job='running_total')} and word_count "
        f"{ratio_of('checkpoint file manager', job='word_count')}. "
        "The bare and naive queries run with Spark's default.",
        "- **Batch size** (`--max-files-per-trigger`): every new file by default, kept; against "
        "a baseline of 2 files a batch, all new files gave "
        f"{ratio_of('max files per trigger', 'all').replace('the default', 'the baseline')}: "
        "larger batches spread the fixed cost of a micro-batch. The setting stays "
        "available to bound a batch after a long outage.",
    ]
    return "\n".join(notes) + "\n"


def tokenizer_reading(tp: ThroughputResult, bare_sus: float) -> str:
    """What the jobs' tokenizer alone costs the bare query, against what the jobs lose to bare."""
    tok_sus = tp.sweep(TOKENIZER_REFERENCE).sustainable
    capacity = (
        f" (capacity on a backlog: {num(tp.capacity(TOKENIZER_REFERENCE) / tp.capacity('bare'))})"
        if TOKENIZER_REFERENCE in tp.measurements
        else ""
    )
    jobs = ", ".join(
        f"{name} {num(tp.sweep(name).sustainable / tok_sus)}"
        for name in ("word_count", "running_total")
    )
    return (
        f"**The tokenizer's share.** `{TOKENIZER_REFERENCE}` is the bare query with the jobs' "
        'tokenizer (`spark_jobs/tokenizer.py`) in place of `split(value, " ")`, nothing else '
        f"changed. It sustains {num(tok_sus / bare_sus)} x bare{capacity}: the price of the "
        "tokenizer's rules (every line is checked for separators other than the space, and "
        "empty words are dropped), which `split` does not follow. Against it, sustained "
        f"words/s: {jobs}. A job's ratio to bare that is no lower than "
        f"`{TOKENIZER_REFERENCE}`'s is a gap the tokenizer accounts for."
    )


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="report", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for performance.md and its plots (default docs/ in full mode; required in "
        "the other modes, so a small run never overwrites the published report)",
    )
    parser.add_argument("--workdir", type=Path, help="where the runs go (kept); default a temp dir")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="WORKDIR",
        help=f"measure nothing: write the report from the {RESULTS_FILE} a kept run left there",
    )
    parser.add_argument(
        "--only",
        choices=sorted(INDEPENDENT),
        help="measure this one section into --workdir and stop; a later run with the same "
        "--workdir keeps it",
    )
    args = parser.parse_args(argv)
    if args.only and not args.workdir:
        parser.error("argument --only: needs --workdir, where the section is kept")
    if args.out is None:
        if args.mode != "full":
            parser.error(f"argument --out: required with --mode {args.mode}")
        args.out = ROOT / "docs"
    return args


T = TypeVar("T")

# Each section's folders in the work folder: cleared before the section runs.
SECTION_FOLDERS = {
    "throughput": ("throughput", "templates", "sweep"),
    "latency": ("templates-latency", "latency"),
    "state": ("state",),
    "operations": ("airflow-home", "airflow-data", "rotation", "quality", "sinks"),
    "tuning": ("tuning",),
}


def section(ctx: Context, name: str, measure: Callable[[], T]) -> T:
    """A section's results: measured now, or kept from an earlier run of this code and mode.

    Each finished section is saved in the work folder with the load figures it recorded and its
    wall time, so a failure late in a run, rerun with the same `--workdir`, measures only the
    sections that had not finished.
    """
    saved = ctx.work / "sections" / f"{ctx.mode.name}-{name}.pickle"
    if saved.exists():
        with saved.open("rb") as file:
            code, loads, wall, result = pickle.load(file)
        if code == ctx.code:
            progress(f"{name}: kept from an earlier run in this work folder ({saved.name})")
            ctx.loads += loads
            ctx.section_wall += wall
            return result
        progress(f"{name}: the saved results are of {code}, not {ctx.code}: measuring again")
    for folder in SECTION_FOLDERS[name]:
        shutil.rmtree(ctx.work / folder, ignore_errors=True)
    first_load, started = len(ctx.loads), time.monotonic()
    result = measure()
    wall = time.monotonic() - started
    ctx.section_wall += wall
    saved.parent.mkdir(exist_ok=True)
    with saved.open("wb") as file:
        pickle.dump((ctx.code, ctx.loads[first_load:], wall, result), file)
    return result


# The sections that need no other section's results: `--only` and `Mode.side_sections`.
INDEPENDENT: dict[str, Callable[[Context], Callable[[], Any]]] = {
    "state": lambda ctx: lambda: run_state(ctx),
    "operations": lambda ctx: lambda: run_operations(ctx),
}


class SideSections:
    """Sections measured by `--only` runs of this script beside the main run, into its work
    folder, where the main run's `section()` then finds them kept."""

    def __init__(self, ctx: Context, mode: str, names: list[str]) -> None:
        self.runs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for name in names:
            log = ctx.work / f"{name}-alone.log"
            progress(f"{name}: measured meanwhile by a second run (log {log})")
            command = [sys.executable, str(Path(__file__).resolve()), "--mode", mode]
            command += ["--workdir", str(ctx.work), "--only", name, "--out", str(ctx.plots)]
            with log.open("wb") as out:
                child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            self.runs[name] = (child, log)

    def wait(self) -> None:
        """Wait for every side run; a failed one fails the report with its log's end."""
        for name, (child, log) in self.runs.items():
            if child.wait() != 0:
                tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                raise BenchFailure(f"{name} (measured alone, log {log}):\n" + "\n".join(tail))
        self.runs = {}

    def stop(self) -> None:
        """End the side runs that are still going."""
        for child, _log in self.runs.values():
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    """Run every section, then write the report and its plots."""
    args = parse_args(argv)
    if args.render:
        with (args.render / RESULTS_FILE).open("rb") as saved:
            name, loads, wall, report, code = pickle.load(saved)
        out = args.out.resolve()
        (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
        ctx = Context(MODES[name], args.render, out / PLOTS_DIR, {}, loads, code)
        return write_report(ctx, report, wall, args.render, keep=True)
    mode = MODES[args.mode]
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="streamops-report-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    plots = out / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    ctx = Context(mode, work, plots, spark_env())
    ctx.note_load("start")
    if args.only:
        progress(f"{args.only}: measured alone into the work folder {work}")
        try:
            section(ctx, args.only, INDEPENDENT[args.only](ctx))
        except BenchFailure as failure:
            print(f"\nFAIL: {failure}", flush=True)
            return 1
        return 0
    progress(f"performance report, {mode.name} mode, work folder {work}")
    beside = SideSections(ctx, args.mode, [n for n in mode.side_sections if n in INDEPENDENT])
    try:
        tp = section(ctx, "throughput", lambda: run_throughput(ctx))
        lat = section(ctx, "latency", lambda: run_latency(ctx, tp))
        tuning = section(ctx, "tuning", lambda: run_tuning(ctx, tp))
        beside.wait()
        state = section(ctx, "state", lambda: run_state(ctx))
        ops = section(ctx, "operations", lambda: run_operations(ctx))
    except BenchFailure as failure:
        beside.stop()
        print(
            f"\nFAIL: {failure}\n  The work folder {work} keeps every finished section: run "
            f"again with --workdir {work} to measure only the rest.",
            flush=True,
        )
        return 1
    report = Report(tp, lat, state, ops, tuning)
    ctx.note_load("end")
    wall = ctx.section_wall  # the sections' own times, whichever run measured them
    # Keep the measurements: `--render` writes the report again from them without measuring.
    with (work / RESULTS_FILE).open("wb") as saved:
        pickle.dump((ctx.mode.name, ctx.loads, wall, report, ctx.code), saved)
    return write_report(ctx, report, wall, work, keep=args.workdir is not None)


def write_report(ctx: Context, report: Report, wall: float, work: Path, keep: bool) -> int:
    """The plots and the markdown; exit code 1 when the sinks were wrong."""
    tp = report.throughput
    out = ctx.plots.parent
    plot_paths = plot_all(ctx, report)
    (out / "performance.md").write_text(markdown(ctx, report, plot_paths, wall), encoding="utf-8")
    progress(f"wrote {out / 'performance.md'} and {len(plot_paths)} plots in {wall / 60:.1f} min")
    if tp.problems:
        print("FAIL: wrong results:\n  " + "\n  ".join(tp.problems), flush=True)
        return 1
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
