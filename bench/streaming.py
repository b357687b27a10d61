"""Live streams under a controlled input rate: the rate sweep and the end-to-end latency.

A query runs as a live stream (processing-time trigger) on the file source. Once its query has
started (its checkpoint holds `metadata`), this process feeds the input folder on a schedule: every
`tick` seconds one file of `rate * tick` words, copied from a pre-generated template under a hidden
name and renamed in, and the time of each rename is recorded. Afterwards the checkpoint says which
micro-batch read each file (the file source's log, `sources/0/*`), and when that batch was done:

- committed: the modification time of `commits/<batch>` (every query, the bare one included);
- visible in the sink: the change time of the sink's `part-<batch>.parquet`, i.e. when the sink
  renamed it into place (the jobs only).

Sweep: after a warm-up at half the first rate (and until the warm-up input is committed), the
rate steps upward by a constant factor; each step lasts `step_seconds`. A step keeps up when
the backlog at its end (words written but not yet in a committed batch) is under
`2 * trigger + 1.5` seconds of input: a query whose processing rate is below the input rate
accumulates backlog from step to step and crosses that line, while one that keeps up never holds
more than about one trigger interval and one batch of input. One step over the line does not end
the sweep: a single slow batch (a GC pause, another process taking a core for a second) can
push the backlog at one step's end over it while the query keeps up. The sweep ends at the
second step in a row over the line (`CONFIRM_STEPS`): a query that falls behind crosses it at
every step from then on, a slow batch at one step only, which the report counts as a `spike`.
The sustainable rate is the last step that kept up before the two that ended the sweep. Each
step's processing rate, `processed`, is the words committed during the step's window shifted by
one trigger interval (so the batch in flight at the step's end counts), over the step's length;
a step holds only a few batches, so it moves by up to a batch with where the edges fall, which is
why the backlog and not this rate decides.

Latency: a constant rate, a warm-up left out (and waited for until committed), then every file
written in the measuring window gives one sample: from its rename into the input folder to its
batch's file in the sink.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from throughput import ROOT, VOCABULARY_SIZE, ZIPF_EXPONENT, BenchFailure, progress, vocabulary

WORDS_PER_LINE = 10
# A step keeps up when the backlog at its end is under (2 * trigger + this) seconds of input.
BACKLOG_SLACK_SECONDS = 1.5
# The sweep ends at this many steps in a row over the backlog line (module doc).
CONFIRM_STEPS = 2
# A JVM's start: 20-30 s on an idle 2-core machine; over 3 min with five starting side by side
# beside a busy neighbour (the report's smoke run within the test suite).
START_TIMEOUT_SECONDS = 300.0
WARMUP_TIMEOUT_SECONDS = 60.0


# --- input -----------------------------------------------------------------------------------


class Templates:
    """Files of an exact number of words, drawn like the throughput corpus (Zipf, fixed seed)."""

    def __init__(self, folder: Path, seed: int = 7) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed)
        self._vocab = vocabulary(rng, VOCABULARY_SIZE)
        self._weights = list(
            itertools.accumulate(1.0 / r**ZIPF_EXPONENT for r in range(1, len(self._vocab) + 1))
        )
        self._rng = rng
        self._made: dict[int, Path] = {}

    def of(self, words: int) -> Path:
        """A file of `words` words, `WORDS_PER_LINE` to a line (made once per size)."""
        words = max(1, words)
        if words not in self._made:
            drawn = self._rng.choices(self._vocab, cum_weights=self._weights, k=words)
            lines = [
                " ".join(drawn[i : i + WORDS_PER_LINE]) for i in range(0, words, WORDS_PER_LINE)
            ]
            path = self.folder / f"template-{words}.txt"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            self._made[words] = path
        return self._made[words]


@dataclass(frozen=True)
class Written:
    """One input file: its name, its words and when it was renamed into the input folder."""

    name: str
    words: int
    at: float


class Feeder:
    """Drops template copies into the input folder on a schedule and remembers when."""

    def __init__(self, folder: Path, templates: Templates) -> None:
        self.folder = folder
        self.templates = templates
        self.written: list[Written] = []
        folder.mkdir(parents=True, exist_ok=True)

    def feed(self, rate: float, seconds: float, tick: float) -> tuple[float, float]:
        """Write `rate` words/s for `seconds`, one file every `tick`. Returns (start, end)."""
        template = self.templates.of(round(rate * tick))
        words = round(rate * tick)
        start = time.time()
        for n in range(max(1, round(seconds / tick))):
            delay = start + n * tick - time.time()
            if delay > 0:
                time.sleep(delay)
            index = len(self.written)
            name = f"f{index:07d}.txt"
            hidden = self.folder / f".{name}.tmp"
            shutil.copyfile(template, hidden)
            hidden.rename(self.folder / name)
            self.written.append(Written(name, words, time.time()))
        end = start + max(1, round(seconds / tick)) * tick
        delay = end - time.time()
        if delay > 0:
            time.sleep(delay)
        return start, end


# --- what the checkpoint and the sink say ----------------------------------------------------


def file_batches(checkpoint: Path) -> dict[str, int]:
    """Input file name -> the Spark batch id that read it (file source log, compacted or not)."""
    found: dict[str, int] = {}
    folder = checkpoint / "sources" / "0"
    if not folder.is_dir():
        return found
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        try:
            lines = entry.read_text(encoding="utf-8").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a log file being written
            found[record["path"].rsplit("/", 1)[-1]] = int(record["batchId"])
    return found


def commit_times(checkpoint: Path) -> dict[int, float]:
    """Spark batch id -> when its commit file was written."""
    folder = checkpoint / "commits"
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.iterdir():
        if p.name.isdigit():
            try:
                found[int(p.name)] = p.stat().st_mtime
            except FileNotFoundError:
                continue  # Spark's log cleanup removed it between the listing and the stat
    return found


def sink_times(sink: Path) -> dict[int, float]:
    """Sink batch id -> when its file was renamed into the sink (its change time)."""
    if not sink.is_dir():
        return {}
    found = {}
    for p in sink.iterdir():
        if p.name.startswith("part-") and p.name.endswith(".parquet"):
            found[int(p.name[5:-8])] = p.stat().st_ctime
    return found


# --- a live query ----------------------------------------------------------------------------


@dataclass
class LiveQuery:
    """A query running as its own process on the input folder of `run_dir`."""

    name: str
    command: list[str]
    run_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def checkpoint(self) -> Path:
        """Where the query keeps its checkpoint."""
        return self.run_dir / "checkpoint"

    @property
    def sink(self) -> Path:
        """Where a job writes its sink."""
        return self.run_dir / "sink"

    @property
    def input(self) -> Path:
        """The folder the query watches."""
        return self.run_dir / "input"

    def start(self) -> None:
        """Start the process and wait until its query has started."""
        self.input.mkdir(parents=True, exist_ok=True)
        log = (self.run_dir / "log.txt").open("wb")
        self.started_at = time.time()
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not (self.checkpoint / "metadata").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchFailure(f"{self.name}: the query did not start; see {log.name}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Ask the process to stop (SIGTERM: at a batch boundary) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def wait_until_committed(self, written: list[Written], timeout: float) -> None:
        """Wait until every written file is in a committed batch, or `timeout` seconds."""
        deadline = time.monotonic() + timeout
        names = {w.name for w in written}
        while time.monotonic() < deadline:
            batches = file_batches(self.checkpoint)
            commits = commit_times(self.checkpoint)
            if all(n in batches and batches[n] in commits for n in names):
                return
            time.sleep(0.2)


def committed_by(
    written: list[Written], batches: dict[str, int], done: dict[int, float], when: float
) -> int:
    """Words of the written files whose batch was done at `when`."""
    return sum(
        w.words
        for w in written
        if w.name in batches and done.get(batches[w.name], math.inf) <= when
    )


# --- the sweep -------------------------------------------------------------------------------


@dataclass
class Step:
    """One rate step of a sweep."""

    rate: float  # words/s written
    start: float  # epoch seconds
    end: float
    backlog_seconds: float  # input not yet committed at the step's end, in seconds of input
    load: float  # the machine's 1-minute load average at the step's end
    processed: float = math.nan  # words/s committed, the step's window shifted by one trigger

    @property
    def ratio(self) -> float:
        """Processing rate over input rate."""
        return self.processed / self.rate if self.rate else 0.0


@dataclass
class Sweep:
    """A query's sweep: its steps and the highest rate it kept up with."""

    name: str
    trigger_seconds: float
    steps: list[Step] = field(default_factory=list)
    kept_up: list[bool] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether the last `CONFIRM_STEPS` steps all fell behind: the sweep ends there."""
        last = self.kept_up[-CONFIRM_STEPS:]
        return len(last) == CONFIRM_STEPS and not any(last)

    @property
    def fell_behind(self) -> bool:
        """Whether the sweep ended at a step that did not keep up (not at its last rate)."""
        return bool(self.kept_up) and not self.kept_up[-1]

    @property
    def sustainable(self) -> float:
        """The rate of the last step that kept up before the steps that ended the sweep
        (0 when none did)."""
        best = 0.0
        for step, ok in zip(self.steps, self.kept_up, strict=True):
            if ok:
                best = step.rate
        return best

    @property
    def spikes(self) -> int:
        """Steps over the backlog line that the next step recovered from."""
        return sum(1 for ok, next_ok in itertools.pairwise(self.kept_up) if not ok and next_ok)


def sweep(
    query: LiveQuery,
    templates: Templates,
    *,
    rates: list[float],
    step_seconds: float,
    trigger_seconds: float,
    tick: float,
    warmup_seconds: float,
) -> Sweep:
    """Run `query` through rising rates until `CONFIRM_STEPS` steps in a row do not keep up
    (see the module doc)."""
    result = Sweep(query.name, trigger_seconds)
    feeder = Feeder(query.input, templates)
    seen: dict[int, float] = {}
    query.start()
    try:
        feeder.feed(rates[0] / 2, warmup_seconds, tick)
        # The first micro-batches of a fresh JVM are slow: let them finish before measuring.
        query.wait_until_committed(feeder.written, timeout=WARMUP_TIMEOUT_SECONDS)
        for rate in rates:
            start, end = feeder.feed(rate, step_seconds, tick)
            time.sleep(0.05)
            batches = file_batches(query.checkpoint)
            # Spark deletes old commit files (it keeps the last 100 batches): remember them.
            seen.update(commit_times(query.checkpoint))
            done = seen
            written_words = sum(w.words for w in feeder.written if start <= w.at < end)
            backlog = sum(w.words for w in feeder.written) - committed_by(
                feeder.written, batches, done, end
            )
            input_rate = written_words / (end - start)
            step = Step(input_rate, start, end, backlog / input_rate, os.getloadavg()[0])
            ok = step.backlog_seconds <= 2 * trigger_seconds + BACKLOG_SLACK_SECONDS
            result.steps.append(step)
            result.kept_up.append(ok)
            progress(
                f"    {query.name}: {input_rate:>10,.0f} words/s in, backlog "
                f"{step.backlog_seconds:4.1f} s: {'keeps up' if ok else 'falls behind'}"
            )
            if result.done:
                break
        # What each step's input became one trigger interval later (the batch in flight at
        # the step's end included): the processing rate plotted against the input rate.
        lag = max(trigger_seconds, 0.5)
        time.sleep(lag + 0.5)
        batches = file_batches(query.checkpoint)
        seen.update(commit_times(query.checkpoint))
        done = seen
        for step in result.steps:
            step.processed = (
                committed_by(feeder.written, batches, done, step.end + lag)
                - committed_by(feeder.written, batches, done, step.start + lag)
            ) / (step.end - step.start)
    finally:
        query.stop()
    return result


def rate_ladder(start: float, factor: float, steps: int) -> list[float]:
    """`steps` rates from `start`, each `factor` times the one before."""
    return [start * factor**i for i in range(steps)]


# --- latency ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """End-to-end latency samples of one query at one trigger and rate."""

    name: str
    trigger_seconds: float
    rate: float
    samples: list[float]
    missing: int  # measured files never seen in the sink
    # The warm-up's files: a fresh JVM at this rate, catching up with what arrived meanwhile.
    warmup: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """The p-th percentile (nearest rank) of the samples, in seconds."""
        ordered = sorted(self.samples)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]

    @property
    def median(self) -> float:
        """p50."""
        return statistics.median(self.samples) if self.samples else math.nan


def latency(
    query: LiveQuery,
    templates: Templates,
    *,
    rate: float,
    trigger_seconds: float,
    warmup_seconds: float,
    measure_seconds: float,
    tick: float,
) -> Latency:
    """Feed `rate` words/s; latency of every file written after the warm-up (module doc)."""
    feeder = Feeder(query.input, templates)
    query.start()
    try:
        feeder.feed(rate, warmup_seconds, tick)
        query.wait_until_committed(feeder.written, timeout=WARMUP_TIMEOUT_SECONDS)
        first = len(feeder.written)
        feeder.feed(rate, measure_seconds, tick)
        measured = feeder.written[first:]
        query.wait_until_committed(measured, timeout=max(30.0, 10 * trigger_seconds))
    finally:
        query.stop()
    batches = file_batches(query.checkpoint)
    visible = sink_times(query.sink)

    def seen(files: list[Written]) -> list[float]:
        return [
            visible[batches[w.name]] - w.at
            for w in files
            if w.name in batches and batches[w.name] in visible
        ]

    samples = seen(measured)
    return Latency(
        query.name,
        trigger_seconds,
        rate,
        samples,
        len(measured) - len(samples),
        seen(feeder.written[:first]),
    )
