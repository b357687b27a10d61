"""Reconciliation of a word_count sink against a running_total sink that read the same input.

The invariant: wherever both jobs have read exactly the same input files, a word's word_count
counts summed over every batch so far equal its running_total total at that point (its row with
the largest batch id so far; 0 before its first row).

**Aligning the two jobs.** Batch ids mean nothing across jobs: each job groups the files it finds
into micro-batches itself. So the check does not assume that batch N of one job is batch N of
the other; it reads, from each checkpoint's file-source log (`sources/0/`), which input files
every committed batch read, and finds the *common points*: a word_count batch and a
running_total batch after which both jobs had read the same set of files (by file name, since
each stream has an input folder of its own). Every common point is a place where the invariant
must hold.

- When both jobs batch identically (the same files per batch: `--max-files-per-trigger 1` and
  files with increasing mtimes, or both started before the first file arrived and fed slowly),
  every batch is a common point: the check is batch by batch.
- Otherwise the common points are the moments both had caught up on the same files, at the
  latest "all input processed" by both. Batches after the last common point are not compared
  yet (one job is ahead); they are compared by a later run.

What it catches: a batch missing from either sink, a batch counted twice (a duplicated file's
rows, a batch replayed into another batch id), a wrong count or total - wherever a common point
follows it. Limits (see docs/quality.md): nothing after the last common point is compared; a
running_total row that restates an unchanged total is not seen (it breaks no sum); batches
before a checkpoint rotation are compared only through the rotation point, assumed common when
both checkpoints were rotated, and the pair is skipped when only one was.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import posixpath
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from expectations import suites
from expectations.results import quality_dir
from expectations.suites import ReconcilePair
from expectations.validate import (
    Failure,
    QualityRunner,
    Report,
    SavedState,
    StreamSink,
    format_batches,
    merge_failures,
    part_files,
    read_rows,
    read_schemas,
    sink_location,
    to_pandas,
    with_element_count,
)
from spark_jobs.layout import CheckpointLayout, Generation, expired_before, list_sink_files
from spark_jobs.storage import Location


@dataclass(frozen=True)
class InputBatch:
    """A committed batch (by its sink batch id) and the names of the input files it read."""

    batch_id: int
    files: frozenset[str]


@dataclass(frozen=True)
class CommonPoint:
    """The last batch of each job at a moment both had read exactly the same files."""

    word_count_batch: int
    running_total_batch: int
    files: int


@dataclass(frozen=True)
class CheckpointInputs:
    """What a checkpoint says its job has read."""

    batches: list[InputBatch]
    generation: Generation


def committed_inputs(checkpoint: str) -> CheckpointInputs:
    """The input files of every committed batch of a checkpoint's current generation."""
    from streamops.health import source_log_files

    layout = CheckpointLayout.of(checkpoint)
    generation = Generation.read(layout) or Generation(0)
    commits = layout.batch_ids(layout.commits)
    if not commits:
        return CheckpointInputs([], generation)
    last = commits[-1]
    files: dict[int, set[str]] = {}
    for log_file in source_log_files(layout):
        lines = log_file.read_text().splitlines()
        if not lines or not lines[0].startswith("v"):
            continue
        for line in lines[1:]:
            if not line.strip():
                continue
            entry = json.loads(line)
            spark_batch = int(entry["batchId"])
            if spark_batch <= last:
                name = posixpath.basename(unquote(urlsplit(entry["path"]).path))
                files.setdefault(spark_batch, set()).add(name)
    batches = [
        InputBatch(generation.sink_batch_id(b), frozenset(names))
        for b, names in sorted(files.items())
    ]
    return CheckpointInputs(batches, generation)


def common_points(
    word_count: Sequence[InputBatch], running_total: Sequence[InputBatch]
) -> list[CommonPoint]:
    """Every (word_count batch, running_total batch) after which both had read the same files.

    Walks both logs at once, always advancing the job that has read fewer files, and records a
    point whenever the two sets of files read so far are equal.
    """
    read_wc: set[str] = set()
    read_rt: set[str] = set()
    i = j = 0
    points: list[CommonPoint] = []
    while i < len(word_count) or j < len(running_total):
        if j >= len(running_total) or (i < len(word_count) and len(read_wc) <= len(read_rt)):
            read_wc |= word_count[i].files
            i += 1
        else:
            read_rt |= running_total[j].files
            j += 1
        if i and j and len(read_wc) == len(read_rt) and read_wc == read_rt:
            points.append(
                CommonPoint(word_count[i - 1].batch_id, running_total[j - 1].batch_id, len(read_wc))
            )
    return points


def reconciliation_view(
    word_counts: pd.DataFrame,
    running_totals: pd.DataFrame,
    points: Sequence[CommonPoint],
    base: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per word and common point where either sink has rows for the word.

    `base` (`word, cumulative_count, running_total`) is where each word stood at the point
    before `points`, when the rows given are only those after it (an incremental run, or a chunk
    of a run); the view is then the part of a whole run's view at `points`.

    Columns: `point` (index in `points`), `word_count_batch`, `running_total_batch`, `word`,
    `cumulative_count` (the word's counts summed over word_count batches up to the point),
    `running_total` (its latest total in running_total batches up to the point, 0 before its
    first row) and `difference`. Rows of batches after the last point are left out.
    """
    columns = [
        "point",
        "word_count_batch",
        "running_total_batch",
        "word",
        "cumulative_count",
        "running_total",
        "difference",
    ]
    if not points:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in columns}).astype({"word": object})
    wc_bounds = np.array([p.word_count_batch for p in points], dtype=np.int64)
    rt_bounds = np.array([p.running_total_batch for p in points], dtype=np.int64)

    def segment(frame: pd.DataFrame, bounds: np.ndarray) -> pd.DataFrame:
        frame = frame.dropna()
        point = np.searchsorted(bounds, frame["batch_id"].to_numpy(dtype=np.int64), side="left")
        return frame.assign(point=point)[point < len(bounds)]

    wc_rows = word_counts[["batch_id", "word", "count"]]
    rt_rows = running_totals[["batch_id", "word", "total"]]
    if base is not None and len(base):
        # The base stands before every row given: batch id -1, in the first point's segment
        before = np.full(len(base), -1, dtype=np.int64)
        wc_rows = pd.concat(
            [
                pd.DataFrame(
                    {"batch_id": before, "word": base["word"], "count": base["cumulative_count"]}
                ),
                wc_rows,
            ]
        )
        rt_rows = pd.concat(
            [
                pd.DataFrame(
                    {"batch_id": before, "word": base["word"], "total": base["running_total"]}
                ),
                rt_rows,
            ]
        )
    wc = segment(wc_rows, wc_bounds)
    rt = segment(rt_rows, rt_bounds)
    counts = wc.groupby(["word", "point"], sort=False)["count"].sum()
    totals = (
        rt.sort_values("batch_id", kind="stable")
        .groupby(["word", "point"], sort=False)["total"]
        .last()
    )
    merged = pd.concat([counts, totals], axis=1).reset_index()
    merged = merged.sort_values(["word", "point"], kind="stable").reset_index(drop=True)
    by_word = merged.groupby("word", sort=False)
    merged["cumulative_count"] = merged["count"].fillna(0).groupby(merged["word"]).cumsum()
    merged["running_total"] = by_word["total"].ffill().fillna(0)
    merged = merged.astype({"cumulative_count": "int64", "running_total": "int64"})
    merged["difference"] = merged["cumulative_count"] - merged["running_total"]
    if base is not None and len(base):
        # The base only sets where words start: like a whole run, the view has a word at a point
        # only where either sink has rows for it.
        seen = pd.concat(
            [
                segment(word_counts[["batch_id", "word"]], wc_bounds),
                segment(running_totals[["batch_id", "word"]], rt_bounds),
            ]
        )[["word", "point"]].drop_duplicates()
        merged = merged.merge(seen, on=["word", "point"], how="inner").reset_index(drop=True)
    merged["word_count_batch"] = wc_bounds[merged["point"].to_numpy()]
    merged["running_total_batch"] = rt_bounds[merged["point"].to_numpy()]
    return merged[columns]


@dataclass
class ReconcileState:
    """The last common point a run reconciled, in `<data root>/_streamops/quality/<pair>.json`."""

    pair: str
    word_count_batch: int | None = None
    running_total_batch: int | None = None
    run: str = ""

    @staticmethod
    def location(root: str, pair: str) -> Location:
        """Where the state of a pair lives."""
        return quality_dir(root).child(f"{pair}.reconcile.json")

    @classmethod
    def load(cls, root: str, pair: str) -> ReconcileState | None:
        """A pair's state, or None before its first reconciliation."""
        location = cls.location(root, pair)
        if not location.exists():
            return None
        return cls(**json.loads(location.read_text()))

    def save(self, root: str) -> None:
        """Write the state atomically."""
        self.location(root, self.pair).write_text_atomic(json.dumps(asdict(self), indent=2) + "\n")


def standing_location(root: str, pair: str) -> Location:
    """`<data root>/_streamops/quality/<pair>.reconcile.parquet`: where each word stood."""
    return quality_dir(root).child(f"{pair}.reconcile.parquet")


@dataclass
class Standing:
    """Each word's cumulative count and running total at a reconciled common point: the next
    run starts from it and reads only the batches after that point."""

    pair: str
    point: tuple[int, int]
    words: pd.DataFrame  # word, cumulative_count, running_total

    def save(self, root: str) -> None:
        """Write it atomically, the point in the file's metadata."""
        table = pa.Table.from_pandas(
            self.words[["word", "cumulative_count", "running_total"]], preserve_index=False
        ).replace_schema_metadata({"point": json.dumps(list(self.point))})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        standing_location(root, self.pair).write_bytes_atomic(buffer.getvalue())

    @classmethod
    def load(cls, root: str, pair: str, point: tuple[int, int]) -> Standing | None:
        """The standing saved at `point`, else None (the caller reads both sinks whole)."""
        location = standing_location(root, pair)
        if not location.exists():
            return None
        table = pq.read_table(io.BytesIO(location.read_bytes()))
        saved = json.loads((table.schema.metadata or {}).get(b"point", b"null"))
        if saved is None or tuple(saved) != point:
            return None
        return cls(pair, point, table.to_pandas())

    def advance(self, view: pd.DataFrame, point: CommonPoint) -> Standing:
        """The standing at `point`, from this one and the view of the points up to it."""
        last = view.sort_values("point", kind="stable").groupby("word", sort=False).last()
        words = self.words.set_index("word")[["cumulative_count", "running_total"]]
        words = last[["cumulative_count", "running_total"]].combine_first(words)
        return Standing(
            self.pair,
            (point.word_count_batch, point.running_total_batch),
            words.reset_index().astype({"cumulative_count": "int64", "running_total": "int64"}),
        )


def empty_standing(pair: str) -> Standing:
    """Before any batch: no word."""
    words = pd.DataFrame(
        {
            "word": pd.Series(dtype=object),
            "cumulative_count": pd.Series(dtype="int64"),
            "running_total": pd.Series(dtype="int64"),
        }
    )
    return Standing(pair, (-1, -1), words)


def read_sink(
    target: StreamSink, contract: suites.SinkContract, after: int = -1, through: int | None = None
) -> tuple[pd.DataFrame, list[int]]:
    """The batch id, word and value columns of the batches after `after` (through `through`) in
    every file with the contract's schema, and the batch ids read."""
    sink = sink_location(target.sink)
    files = [
        f for f in part_files(sink) if f.last > after and (through is None or f.first <= through)
    ]
    schemas = read_schemas(sink, files)
    good = [
        f for f, s in zip(files, schemas, strict=True) if suites.schema_matches(s.schema, contract)
    ]
    table, rows_per_batch = read_rows(
        sink,
        good,
        contract.schema,
        ["batch_id", "word", contract.value_column],
        from_batch=after + 1,
        before_batch=None if through is None else through + 1,
    )
    return to_pandas(table).drop(columns=["file_batch_id"]), sorted(rows_per_batch)


class RowsThrough:
    """About how many rows a sink holds from its first batch through a given one (footers only:
    a compacted row group counts at its last batch)."""

    def __init__(self, target: StreamSink, after: int) -> None:
        sink = sink_location(target.sink)
        files = [f for f in part_files(sink) if f.last > after]
        groups = sorted(
            (last, rows) for s in read_schemas(sink, files) for _, last, rows in s.row_groups
        )
        self.lasts = [last for last, _ in groups]
        self.cumulative = list(itertools.accumulate((rows for _, rows in groups), initial=0))

    def __call__(self, batch_id: int) -> int:
        return self.cumulative[bisect.bisect_right(self.lasts, batch_id)]


def point_groups(
    points: Sequence[CommonPoint],
    after: tuple[int, int],
    rows: tuple[RowsThrough, RowsThrough],
    chunk_rows: int,
) -> list[list[CommonPoint]]:
    """Consecutive common points whose batches, after the previous group's, hold about
    `chunk_rows` rows in both sinks together (one point with more is a group of its own)."""
    word_count, running_total = rows

    def upto(wc_batch: int, rt_batch: int) -> int:
        return word_count(wc_batch) + running_total(rt_batch)

    groups: list[list[CommonPoint]] = []
    current: list[CommonPoint] = []
    base = upto(*after)
    for point in points:
        if current and upto(point.word_count_batch, point.running_total_batch) - base > chunk_rows:
            groups.append(current)
            base = upto(current[-1].word_count_batch, current[-1].running_total_batch)
            current = []
        current.append(point)
    if current:
        groups.append(current)
    return groups


@dataclass
class Alignment:
    """The common points of a pair, from both checkpoints' logs of the files they read."""

    word_count: CheckpointInputs
    running_total: CheckpointInputs
    points: list[CommonPoint]
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def batch_aligned(self) -> bool:
        """Whether every committed batch of both jobs is a common point, with equal ids."""
        return len(self.points) == len(self.word_count.batches) == len(
            self.running_total.batches
        ) and all(p.word_count_batch == p.running_total_batch for p in self.points)

    def describe(self) -> str:
        """How the two jobs line up, in a few words."""
        if self.batch_aligned:
            return f"batch-aligned ({len(self.points)} batches)"
        return f"{len(self.points)} common points (the jobs grouped files into batches differently)"

    def pending(self) -> str | None:
        """The batches after the last common point (one job is ahead), if any."""
        last = self.points[-1] if self.points else CommonPoint(-1, -1, 0)
        wc = [b.batch_id for b in self.word_count.batches if b.batch_id > last.word_count_batch]
        rt = [
            b.batch_id for b in self.running_total.batches if b.batch_id > last.running_total_batch
        ]
        if not wc and not rt:
            return None
        return (
            "not compared yet (after the last common point): word_count batches "
            f"{format_batches(wc) or 'none'}, running_total batches {format_batches(rt) or 'none'}"
        )


def align(word_count_checkpoint: str, running_total_checkpoint: str) -> Alignment:
    """Read both checkpoints' file-source logs and find the pair's common points."""
    wc = committed_inputs(word_count_checkpoint)
    rt = committed_inputs(running_total_checkpoint)
    wc_rotated = wc.generation.first_sink_batch_id > 0
    rt_rotated = rt.generation.first_sink_batch_id > 0
    if wc_rotated != rt_rotated:
        return Alignment(
            wc,
            rt,
            [],
            skipped="not reconciled: only one of the two checkpoints was rotated, so the files "
            "read before the rotation are unknown for one job; rotate both at the same input point",
        )
    alignment = Alignment(wc, rt, common_points(wc.batches, rt.batches))
    if wc_rotated:
        # The files read before a rotation left the log: take the rotation as a common point.
        base = CommonPoint(
            wc.generation.first_sink_batch_id - 1, rt.generation.first_sink_batch_id - 1, 0
        )
        alignment.points.insert(0, base)
        alignment.notes.append(
            f"checkpoints rotated at batches {base.word_count_batch + 1} (word_count) and "
            f"{base.running_total_batch + 1} (running_total): taken as a common point"
        )
    if not alignment.points:
        alignment.skipped = (
            "no common point yet: the two jobs have not read the same set of input files at any "
            f"batch boundary ({len(wc.batches)} word_count and {len(rt.batches)} running_total "
            "batches committed)"
        )
    return alignment


def lost_batch_notes(
    name: str, inputs: CheckpointInputs, present: Sequence[int], after: int = -1
) -> list[str]:
    """A note when the checkpoint committed batches (after `after`) that have no sink rows."""
    missing = sorted({b.batch_id for b in inputs.batches if b.batch_id > after} - set(present))
    if not missing:
        return []
    return [
        f"{name}: committed batches {format_batches(missing)} have no sink file (a batch whose "
        "input held no words writes none; otherwise the batch is lost)"
    ]


def first_new_point(
    state: ReconcileState | None, points: Sequence[CommonPoint], revalidate_all: bool
) -> tuple[int, str | None]:
    """The index of the first point not reconciled by an earlier run, and a note if all are."""
    if revalidate_all or state is None or state.word_count_batch is None:
        return 0, None
    previous = (state.word_count_batch, state.running_total_batch)
    known = [(p.word_count_batch, p.running_total_batch) for p in points]
    if previous in known:
        return known.index(previous) + 1, None
    return 0, (
        f"the last reconciled point {previous} is gone (a checkpoint restore or rotation): "
        "re-checking every common point"
    )


def reconcile_pair(
    runner: QualityRunner,
    pair: ReconcilePair,
    word_count: StreamSink,
    running_total: StreamSink,
    revalidate_all: bool = False,
) -> Report:
    """Reconcile one pair: validate the common points new since the last run (or all)."""
    report = Report(
        subject=f"streams {pair.word_count} and {pair.running_total}",
        sink=f"{word_count.sink} and {running_total.sink}",
        checked="",
    )
    wc_sink = sink_location(word_count.sink)
    first = read_schemas(wc_sink, part_files(wc_sink)[:1])
    wc_contract = suites.contract_for("word_count", first[0].schema if first else None)
    if wc_contract is suites.WINDOWED_WORD_COUNT:
        report.checked = "not reconciled: windowed counts are per window, not per batch"
        runner.defer(report)
        return report
    alignment = align(word_count.checkpoint, running_total.checkpoint)
    report.notes += alignment.notes
    if alignment.skipped:
        report.checked = alignment.skipped
        runner.defer(report)
        return report
    points = alignment.points
    start, note = first_new_point(
        ReconcileState.load(runner.root, pair.name), points, revalidate_all
    )
    if note:
        report.notes.append(note)
    # From where the last run left each word, reading only the batches after its point; or,
    # the first time (and after a restore or rotation), both sinks whole
    standing = None
    if start > 0:
        previous = points[start - 1]
        standing = Standing.load(
            runner.root, pair.name, (previous.word_count_batch, previous.running_total_batch)
        )
        if standing is None:
            start = 0
            report.notes.append("no saved standing at the last point: reading both sinks whole")
    expired = None if standing is not None else _expired_sinks(pair, word_count, running_total)
    if expired:
        report.checked = expired
        runner.defer(report)
        return report
    base = standing or empty_standing(pair.name)
    wc_after, rt_after = base.point
    todo = points[start:]
    # A group of points at a time, so that memory stays bounded however much there is to read
    groups = (
        point_groups(
            todo,
            base.point,
            (RowsThrough(word_count, wc_after), RowsThrough(running_total, rt_after)),
            runner.config.chunk_rows,
        )
        if todo
        else [[]]
    )
    base, wc_read, rt_read = _reconcile_groups(
        runner,
        pair,
        (word_count, running_total),
        wc_contract,
        groups=groups,
        base=base,
        report=report,
    )
    report.notes += lost_batch_notes(pair.word_count, alignment.word_count, wc_read, wc_after)
    report.notes += lost_batch_notes(pair.running_total, alignment.running_total, rt_read, rt_after)
    pending = alignment.pending()
    if pending:
        report.notes.append(pending)

    last = points[-1]
    report.batches = [p.word_count_batch for p in todo]
    report.checked = (
        f"{alignment.describe()}; common points through word_count batch "
        f"{last.word_count_batch} / running_total batch {last.running_total_batch}, "
        f"{len(points) - start} new"
        + (f", reconciled in {len(groups)} chunks" if len(groups) > 1 else "")
    )
    states: list[SavedState] = [base] if todo else []
    runner.defer(
        report,
        *states,
        ReconcileState(pair.name, last.word_count_batch, last.running_total_batch, runner.run),
    )
    return report


def _reconcile_groups(
    runner: QualityRunner,
    pair: ReconcilePair,
    targets: tuple[StreamSink, StreamSink],
    wc_contract: suites.SinkContract,
    *,
    groups: list[list[CommonPoint]],
    base: Standing,
    report: Report,
) -> tuple[Standing, list[int], list[int]]:
    """Validate each group of points, reading only its batches; the standing after the last,
    and the batch ids read from each sink."""
    word_count, running_total = targets
    wc_read: list[int] = []
    rt_read: list[int] = []
    failures: list[Failure] = []
    for number, group in enumerate(groups):
        # The last group reads on to the end: batches after the last point are "not yet"
        final = number == len(groups) - 1
        wc_rows, wc_files = read_sink(
            word_count,
            wc_contract,
            after=base.point[0],
            through=None if final else group[-1].word_count_batch,
        )
        rt_rows, rt_files = read_sink(
            running_total,
            suites.RUNNING_TOTAL,
            after=base.point[1],
            through=None if final else group[-1].running_total_batch,
        )
        wc_read += wc_files
        rt_read += rt_files
        if not group:
            continue
        view = reconciliation_view(wc_rows, rt_rows, group, base.words)
        report.rows = (report.rows or 0) + len(view)
        ok, found = runner.validate_view(
            suites.reconcile_suite(pair.name),
            view,
            ["word_count_batch", "running_total_batch", "word"],
            "word and point rows",
            part=(
                None
                if len(groups) == 1
                else f"points {group[0].word_count_batch}-{group[-1].word_count_batch}"
            ),
        )
        report.checks["reconcile"] = report.checks.get("reconcile", True) and ok
        failures = merge_failures(failures, found, runner.config.sample_values)
        base = base.advance(view, group[-1])
        del wc_rows, rt_rows, view
    report.failures += with_element_count(failures, report.rows or 0)
    return base, wc_read, rt_read


def _expired_sinks(pair: ReconcilePair, word_count: StreamSink, running_total: StreamSink) -> str:
    """Why a run that reads both sinks whole cannot reconcile them: batches that retention
    expired (empty when none did)."""
    expired = {
        name: expired_before(list_sink_files(Location.of(target.sink)))
        for name, target in ((pair.word_count, word_count), (pair.running_total, running_total))
    }
    if not any(expired.values()):
        return ""
    return (
        "not reconciled: sink retention expired batches of "
        + ", ".join(f"{n} (before batch {b})" for n, b in expired.items() if b)
        + ", and no saved standing lets a run resume after them (a first run, a restore, "
        "a rotation or revalidate_all reads both sinks whole); see docs/quality.md"
    )
