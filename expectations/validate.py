"""Incremental validation of the sinks: only the batches new since the last run, with history.

For each stream, a run:

1. lists the sink's live files (the reader contract, `spark_jobs.layout.live_files`) and picks
   the batches to check (`plan_batches`): those with a batch id above the stream's watermark,
   `last_validated_batch_id` in `<data root>/_streamops/quality/<stream>.json`, plus any batch
   rewritten since: a batch file newer than the newest one the last run saw (a replayed batch),
   or batches a restore or rotation truncated (the sink's history says so). A rewritten batch
   makes the run re-check from that batch on. A compacted file holds batches already checked
   and is not new: only its batches above the watermark are read. `revalidate_all` checks
   everything.
2. validates them with the stream's suites (`suites.py`) on pandas views, a chunk of whole
   batches of about `chunk_rows` rows at a time (`batch_chunks`), through a Great
   Expectations file context whose Data Docs live in `<data root>/_streamops/quality/data_docs/`
   (or `$STREAMOPS_QUALITY_DOCS_DIR` when the data root is not a local folder);
3. appends a summary to `<data root>/_streamops/quality/history.jsonl` and moves the watermark
   past the checked batches, whether they passed or not: a failing batch is reported once (by the
   run that found it), not by every later run. Freshness is the exception: it describes the sink
   now, so it is checked on every run. If a run dies before step 3 (an error, not a failed
   expectation), the watermark stays and the next run checks the same batches again.

Sinks are only read, never written: a quality failure cannot stop or change a stream.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from expectations import suites
from expectations.results import (
    append_history,
    docs_home,
    quality_dir,
)
from expectations.suites import QualityConfig
from spark_jobs.compaction import SinkHistory
from spark_jobs.layout import SinkFile, SinkLayout, list_sink_files, live_files
from spark_jobs.storage import Location

if TYPE_CHECKING:
    import great_expectations as gx
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.data_context.data_context.abstract_data_context import (
        AbstractDataContext,
    )

log = logging.getLogger(__name__)

DATASOURCE = "streamops_sinks"
DOCS_SITE = "streamops"
MAX_BATCHES_LISTED = 20
READ_THREADS = 8


# ---------------------------------------------------------------------------------------------
# Streams, part files and the watermark


@dataclass(frozen=True)
class StreamSink:
    """What the quality checks need to know about one stream."""

    stream: str
    job: str
    sink: str
    checkpoint: str = ""
    running: bool = True

    @classmethod
    def from_record(cls, record: Any) -> StreamSink:
        """From a `streamops.registry.StreamRecord`."""
        return cls(
            stream=record.stream,
            job=record.job,
            sink=record.sink,
            checkpoint=record.checkpoint,
            running=record.desired == "running",
        )


#: One file of a sink: a micro-batch's, or a compacted range of batches.
PartFile = SinkFile


def sink_location(sink: str) -> Location:
    """A sink's folder as the reader contract reads it: a listed file that a compaction moved to
    `_superseded/` since is still opened (`SinkLayout.reader`)."""
    return SinkLayout.of(sink).reader()


def part_files(sink: Location) -> list[PartFile]:
    """The sink's live files (`live_files`), by batch id; hidden files being written are not
    listed, nor files a compaction merged."""
    return live_files(list_sink_files(sink))


def batch_files_mtime(files: Iterable[PartFile]) -> int | None:
    """The newest mtime among micro-batch files (a compacted file is no new output)."""
    return max((f.mtime_ns for f in files if not f.is_range), default=None)


class SavedState(Protocol):
    """A watermark a run saves once its results are recorded."""

    def save(self, root: str) -> None:
        """Write the state under the data root."""


@dataclass
class ValidationState:
    """How far a stream's sink has been validated."""

    stream: str
    sink: str
    last_validated_batch_id: int | None = None
    # The newest mtime among the batch files the last run saw (file-system clock, not the
    # worker's).
    last_validated_mtime_ns: int | None = None
    # The time of the newest truncation in the sink's history the last run saw.
    last_truncation: str | None = None
    updated_at: str = ""
    run: str = ""

    @staticmethod
    def location(root: str, stream: str) -> Location:
        """`<data root>/_streamops/quality/<stream>.json`."""
        return quality_dir(root).child(f"{stream}.json")

    @classmethod
    def load(cls, root: str, stream: str) -> ValidationState | None:
        """A stream's state, or None before its first validation."""
        location = cls.location(root, stream)
        if not location.exists():
            return None
        data = json.loads(location.read_text())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, root: str) -> None:
        """Write the state atomically."""
        self.location(root, self.stream).write_text_atomic(
            json.dumps(asdict(self), indent=2) + "\n"
        )


@dataclass(frozen=True)
class Plan:
    """Which batches a run validates, and why."""

    files: list[PartFile]
    # Batches below this id are history: their totals come from the snapshot or are re-read.
    start_batch_id: int | None
    reason: str
    from_watermark: bool


def plan_batches(
    files: Sequence[PartFile],
    state: ValidationState | None,
    sink: str,
    revalidate_all: bool,
    truncations: Sequence[Mapping[str, Any]] = (),
) -> Plan:
    """The batches to validate: new since the watermark, or rewritten since the last run.

    `truncations` are the sink history's (`SinkHistory.truncations`), oldest first.
    """
    if not files:
        return Plan([], None, "the sink has no batches yet", from_watermark=False)
    if revalidate_all:
        return Plan(list(files), None, "revalidate_all: every batch", from_watermark=False)
    if state is None or state.last_validated_batch_id is None:
        return Plan(list(files), None, "first validation of this sink: every batch", False)
    if state.sink != sink:
        return Plan(
            list(files),
            None,
            f"the stream's sink moved from {state.sink} to {sink}: every batch",
            from_watermark=False,
        )
    watermark = state.last_validated_batch_id
    seen_mtime = state.last_validated_mtime_ns or 0
    rewritten = [
        f.first
        for f in files
        if not f.is_range and f.first <= watermark and f.mtime_ns > seen_mtime
    ]
    cuts = [
        int(t["after"]) + 1 if t.get("after") is not None else 0
        for t in truncations
        if str(t.get("time", "")) > (state.last_truncation or "")
    ]
    if cuts and min(cuts) <= watermark:
        rewritten.append(min(cuts))
    if rewritten:
        start = min(rewritten)
        return Plan(
            [f for f in files if f.last >= start],
            start,
            f"batches {format_batches(rewritten)} were rewritten since the last validation "
            f"(a checkpoint restore or a replayed batch): from batch {start} on",
            from_watermark=False,
        )
    new = [f for f in files if f.last > watermark]
    reason = f"batches after {watermark}" if new else f"no new batches since batch {watermark}"
    return Plan(new, watermark + 1, reason, from_watermark=True)


def format_batches(ids: Iterable[int], limit: int = MAX_BATCHES_LISTED) -> str:
    """`3-5, 9, 12` for [3, 4, 5, 9, 12], at most `limit` ranges."""
    ordered = sorted(set(ids))
    ranges: list[tuple[int, int]] = []
    for i in ordered:
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"... ({len(ranges) - limit} more ranges)")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Reading the sink


def read_schemas(sink: Location, files: Sequence[PartFile]) -> list[suites.PartFileSchema]:
    """The Arrow schema and row groups of each file (footers only)."""

    def one(f: PartFile) -> suites.PartFileSchema:
        try:
            with sink.filesystem.open_input_file(f.path) as handle:
                parquet = pq.ParquetFile(handle)
                schema = parquet.schema_arrow
                groups = _row_groups(f, parquet.metadata)
        except (OSError, pa.ArrowInvalid) as err:
            # An unreadable file fails the schema suite (every column "<missing>").
            log.warning("cannot read the footer of %s: %s", f.path, err)
            schema, groups = pa.schema([]), ()
        return suites.PartFileSchema(f.first, f.name, schema, groups)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(one, files))


def _row_groups(f: PartFile, metadata: pq.FileMetaData) -> tuple[tuple[int, int, int], ...]:
    """(first batch id, last batch id, rows) of each row group of a file, from its statistics."""
    if not f.is_range:
        return ((f.first, f.last, metadata.num_rows),)
    names = metadata.schema.names
    column = names.index("batch_id") if "batch_id" in names else None
    groups = []
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        first, last = f.first, f.last
        stats = group.column(column).statistics if column is not None else None
        if stats is not None and stats.has_min_max:
            first, last = int(cast("int", stats.min)), int(cast("int", stats.max))
        groups.append((first, last, group.num_rows))
    return tuple(groups)


def batch_chunks(
    schemas: Sequence[suites.PartFileSchema], chunk_rows: int, start: int | None = None
) -> list[tuple[int | None, int | None]]:
    """Batch-id ranges `[from, before)` of about `chunk_rows` rows each, covering the files.

    A range ends only between batches (never inside one, even across row groups), so the first
    starts at `start` and the last is open-ended: rows with an unexpected batch id are still read.
    """
    groups = sorted(
        (g for s in schemas for g in s.row_groups if start is None or g[1] >= start),
        key=lambda g: (g[0], g[1]),
    )
    cuts: list[int] = []
    rows, reach = 0, None
    for first, last, count in groups:
        if rows >= chunk_rows and reach is not None and first > reach:
            cuts.append(first)
            rows = 0
        rows += count
        reach = last if reach is None else max(reach, last)
    bounds: list[int | None] = [start, *cuts, None]
    return list(itertools.pairwise(bounds))


def chunked(
    files: Sequence[PartFile],
    schemas: Sequence[suites.PartFileSchema],
    chunk_rows: int,
    start: int | None = None,
) -> Iterator[tuple[int | None, int | None, list[PartFile]]]:
    """Each chunk of `batch_chunks` with the files that hold its batches."""
    for first, before in batch_chunks(schemas, chunk_rows, start):
        part = [
            f
            for f in files
            if (first is None or f.last >= first) and (before is None or f.first < before)
        ]
        yield first, before, part


def merge_failures(found: list[Failure], more: list[Failure], samples: int) -> list[Failure]:
    """The failures of one check over several chunks: one per expectation, counts added up.

    Each failure's `element_count` is then that of the chunks that failed; the caller sets the
    whole run's (`with_element_count`)."""
    merged = list(found)
    for failure in more:
        key = (failure.expectation, json.dumps(failure.arguments, sort_keys=True, default=str))
        same = next(
            (
                f
                for f in merged
                if (f.expectation, json.dumps(f.arguments, sort_keys=True, default=str)) == key
            ),
            None,
        )
        if same is None:
            merged.append(failure)
            continue
        same.unexpected_count = _add(same.unexpected_count, failure.unexpected_count)
        same.element_count = _add(same.element_count, failure.element_count)
        same.batches = sorted(set(same.batches) | set(failure.batches))
        same.batches_complete = same.batches_complete and failure.batches_complete
        same.samples = (same.samples + failure.samples)[:samples]
        same.observed = same.observed or failure.observed
    return merged


def with_element_count(failures: list[Failure], rows: int) -> list[Failure]:
    """Failures of chunks whose views held `rows` rows in all, counted against all of them."""
    for failure in failures:
        if failure.element_count is not None:
            failure.element_count = rows
    return failures


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


def read_rows(
    sink: Location,
    files: Sequence[PartFile],
    schema: pa.Schema,
    columns: Sequence[str] | None = None,
    *,
    from_batch: int | None = None,
    before_batch: int | None = None,
) -> tuple[pa.Table, dict[int, int]]:
    """The rows of `files` (which must have `schema`) with `file_batch_id`, and rows per batch.

    `file_batch_id` is the batch a row's file holds: its batch id for a micro-batch file; for a
    compacted file, the row's `batch_id` when the file's range holds it, else the range's nearer
    end (so a row in the wrong file is seen). Compacted files keep only the rows of batches in
    `[from_batch, before_batch)`, and only their row groups that may hold such rows are read; a
    micro-batch file is read whole.
    """
    import pyarrow.compute as pc

    rows_per_batch = {f.first: 0 for f in files if not f.is_range}
    names = list(columns or schema.names)
    if not files:
        return schema.empty_table().select(names).append_column(
            "file_batch_id", pa.array([], pa.int64())
        ), rows_per_batch
    by_path = {f.path: f for f in files}
    read = names if "batch_id" in names else [*names, "batch_id"]
    wanted = None
    if from_batch is not None:
        wanted = ds.field("batch_id") >= from_batch
    if before_batch is not None:
        below = ds.field("batch_id") < before_batch
        wanted = below if wanted is None else wanted & below

    def scan(group: list[PartFile], compacted: bool) -> Iterable[ds.TaggedRecordBatch]:
        dataset = ds.dataset(
            [f.path for f in group], schema=schema, format="parquet", filesystem=sink.filesystem
        )
        # The filter skips row groups whose batch_id statistics lie outside the range.
        return dataset.scanner(columns=read, filter=wanted if compacted else None).scan_batches()

    chunks: list[pa.RecordBatch] = []
    origin: list[pa.Array[Any]] = []
    # Consecutive files of one kind are scanned together, in file order.
    scans = [scan(list(g), k) for k, g in itertools.groupby(files, key=lambda f: f.is_range)]
    for tagged in itertools.chain.from_iterable(scans):
        f = by_path[cast("ds.FileFragment", tagged.fragment).path]
        chunk = tagged.record_batch
        if f.is_range:
            ids = chunk.column("batch_id")
            held = pc.min_element_wise(
                pc.max_element_wise(ids, pa.scalar(f.first, pa.int64())),
                pa.scalar(f.last, pa.int64()),
            )
            for item in pc.value_counts(held).to_pylist():
                batch_id, count = item["values"], item["counts"]
                rows_per_batch[batch_id] = rows_per_batch.get(batch_id, 0) + count
            origin.append(held.cast(pa.int64()))
        else:
            rows_per_batch[f.first] += chunk.num_rows
            origin.append(pa.array([f.first] * chunk.num_rows, pa.int64()))
        chunks.append(chunk.select(names))
    table = pa.Table.from_batches(chunks, schema=schema.empty_table().select(names).schema)
    file_batch_id = pa.chunked_array(origin, pa.int64()) if origin else pa.array([], pa.int64())
    return table.append_column("file_batch_id", file_batch_id), dict(sorted(rows_per_batch.items()))


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """A table as the pandas frame GX validates (nullable ints become floats with NaN)."""
    return table.to_pandas()


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Failure:
    """One failed expectation: which, on what, where, and sample values."""

    check: str
    expectation: str
    description: str | None
    arguments: dict[str, Any]
    unexpected_count: int | None
    element_count: int | None
    unit: str
    batches: list[int]
    batches_complete: bool
    samples: list[str]
    observed: str | None = None

    def describe(self) -> str:
        """One line: `<suite>: <expectation>(<arguments>) [description]: <what failed>`."""
        args = ", ".join(f"{k}={_number(v)}" for k, v in self.arguments.items())
        text = f"{self.check}: {self.expectation}({args})"
        if self.description:
            text += f" [{self.description}]"
        if self.unexpected_count is not None:
            text += f": {self.unexpected_count} of {self.element_count} {self.unit} fail"
        if self.batches:
            text += f", in {_batches_label(self.batches)} {format_batches(self.batches)}"
            if not self.batches_complete:
                text += " and others (too many failing rows to locate them all)"
        if self.samples:
            text += f"; samples: {'; '.join(self.samples)}"
        elif self.observed is not None:
            text += f"; observed: {self.observed}"
        return text


@dataclass
class Report:
    """What one validation (of a stream, or of a pair) found."""

    subject: str
    sink: str
    checked: str
    batches: list[int] = field(default_factory=list)
    rows: int = 0
    checks: dict[str, bool] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data_docs: str | None = None

    @property
    def success(self) -> bool:
        """Whether every check passed."""
        return not self.failures

    def message(self) -> str:
        """The failure message: a first line that stands alone (alerts show only it), then one
        line per failed expectation."""
        if self.success:
            return f"{self.subject}: sink {self.sink} passed {len(self.checks)} checks"
        first = self.failures[0]
        batches = sorted({b for f in self.failures for b in f.batches})
        head = (
            f"{self.subject}: {len(self.failures)} quality expectation(s) failed on {self.sink}"
            f" (first: {first.check} {first.expectation}"
            + (f" on {_target(first)}" if _target(first) else "")
            + ")"
            + (f" in {_batches_label(batches)} {format_batches(batches, 8)}" if batches else "")
        )
        lines = [head, *(f"- {f.describe()}" for f in self.failures)]
        if self.data_docs:
            lines.append(f"Data Docs: {self.data_docs}")
        lines.append("The stream is not affected: quality checks only read its sink.")
        return "\n".join(lines)

    def summary(self, run: str, time: str) -> dict[str, Any]:
        """The history line of this validation."""
        return {
            "time": time,
            "run": run,
            "subject": self.subject,
            "sink": self.sink,
            "checked": self.checked,
            "batches": {
                "count": len(self.batches),
                "first": self.batches[0] if self.batches else None,
                "last": self.batches[-1] if self.batches else None,
            },
            "rows": self.rows,
            "success": self.success,
            "checks": self.checks,
            "failures": [asdict(f) for f in self.failures],
            "notes": self.notes,
            "data_docs": self.data_docs,
        }


def _number(value: object) -> object:
    """1 for 1.0 (GX stores bounds as floats)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _batches_label(batches: Sequence[int]) -> str:
    return "batch" if len(batches) == 1 else "batches"


def _target(failure: Failure) -> str:
    args = failure.arguments
    for key in ("column", "column_list"):
        if key in args:
            return str(args[key])
    if "column_A" in args:
        return f"{args['column_A']} = {args['column_B']}"
    return ""


def _short(value: object, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# The arguments an expectation is named with in messages (the regex is in its description).
SHOWN_ARGUMENTS = (
    "column",
    "column_A",
    "column_B",
    "column_list",
    "value_set",
    "min_value",
    "max_value",
)


# ---------------------------------------------------------------------------------------------
# The runner


class QualityRunner:
    """Validates streams' sinks and records the results; one instance per run.

    :param root: the data root (in Airflow, `streamops.config.data_root()`).
    :param run: names this run in Data Docs and the history (e.g. the Airflow run id).
    """

    def __init__(
        self,
        root: str,
        config: QualityConfig | None = None,
        run: str | None = None,
        now: datetime | None = None,
    ) -> None:
        self.root = root
        self.config = config or QualityConfig.load()
        self.now = now or datetime.now(UTC)
        self.run = run or f"manual__{self.now.isoformat(timespec='seconds')}"
        self._context: AbstractDataContext | None = None
        # Recorded by `commit()`, so that a run that dies half-way leaves the watermarks alone.
        self._pending_history: list[Report] = []
        self._pending_states: list[SavedState] = []

    # --- Great Expectations -------------------------------------------------------------------

    @property
    def context(self) -> AbstractDataContext:
        """The file-backed GX context under `docs_home` (created on first use)."""
        if self._context is None:
            self._context = open_context(docs_home(self.root))
        return self._context

    def validate_view(
        self,
        suite: gx.ExpectationSuite,
        frame: pd.DataFrame,
        index_columns: Sequence[str],
        unit: str = "rows",
        part: str | None = None,
    ) -> tuple[bool, list[Failure]]:
        """Validate one view with one suite, store the result for Data Docs, return failures.

        `index_columns` identify a row in messages; the first one is the batch id. `part` names
        the chunk of a run that validates its rows in several (each its own Data Docs result).
        """
        import great_expectations as gx
        from great_expectations.core.run_identifier import RunIdentifier

        context = self.context
        suite = context.suites.add_or_update(suite)
        batch_definition = _batch_definition(context, suite.name)
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=batch_definition, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": list(index_columns),
                "partial_unexpected_count": max(self.config.sample_values, 20),
            },
            run_id=RunIdentifier(
                run_name=_safe(self.run if part is None else f"{self.run} {part}"),
                run_time=self.now,
            ),
        )
        failures = self._failures(result, batch_definition, frame, index_columns, unit)
        return bool(result.success), failures

    def _failures(
        self,
        result: ExpectationSuiteValidationResult,
        batch_definition: Any,
        frame: pd.DataFrame,
        index_columns: Sequence[str],
        unit: str,
    ) -> list[Failure]:
        failures = []
        batch = None
        batch_column = index_columns[0] if index_columns else None
        for item in result.results:
            if item.success:
                continue
            config = item.expectation_config
            assert config is not None
            outcome = dict(item.result or {})
            count = outcome.get("unexpected_count")
            values = list(outcome.get("partial_unexpected_list") or [])
            sample_rows = list(outcome.get("partial_unexpected_index_list") or [])
            batches = _batch_ids(sample_rows, batch_column)
            complete = count is not None and len(sample_rows) >= count
            if (
                batch_column
                and count is not None
                and not complete
                and count <= self.config.max_rows_to_locate
            ):
                # Locate every failing row's batch: the stored (SUMMARY) result keeps samples.
                if batch is None:
                    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
                full = batch.validate(
                    config.to_domain_obj(),
                    result_format={
                        "result_format": "COMPLETE",
                        "unexpected_index_column_names": list(index_columns),
                    },
                )
                batches = _batch_ids(full.result.get("unexpected_index_list") or [], batch_column)
                complete = True
            failures.append(
                Failure(
                    check=result.suite_name,
                    expectation=config.type,
                    description=config.description,
                    arguments={k: config.kwargs[k] for k in SHOWN_ARGUMENTS if k in config.kwargs},
                    unexpected_count=count,
                    element_count=outcome.get("element_count"),
                    unit=unit,
                    batches=batches,
                    batches_complete=complete,
                    samples=_samples(
                        [_plain(v, config.kwargs) for v in values],
                        sample_rows,
                        index_columns,
                        self.config.sample_values,
                    ),
                    observed=(
                        None
                        if outcome.get("observed_value") is None
                        else _short(outcome["observed_value"])
                    ),
                )
            )
        return failures

    def build_docs(self) -> str:
        """Prune old results, rebuild the Data Docs, and return the index page's URL."""
        home = docs_home(self.root)
        prune_results(home, self.config.keep_results_per_check)
        self.context.build_data_docs(site_names=[DOCS_SITE])
        url = (home / "data_docs" / "index.html").as_uri()
        for report in self._pending_history:
            report.data_docs = url
        return url

    # --- One stream ---------------------------------------------------------------------------

    def validate_stream(self, target: StreamSink, revalidate_all: bool = False) -> Report:
        """Validate a stream's batches new since its last validation (or all), record it."""
        sink = sink_location(target.sink)
        files = part_files(sink)
        state = ValidationState.load(self.root, target.stream)
        truncations = SinkHistory.read(SinkLayout(sink)).truncations
        plan = plan_batches(files, state, sink.path, revalidate_all, truncations)
        first_schema = read_schemas(sink, files[:1])[0].schema if files else None
        contract = suites.contract_for(target.job, first_schema)
        thresholds = self.config.thresholds(target.stream, target.job)
        report = Report(
            subject=f"stream {target.stream}",
            sink=sink.path,
            checked=plan.reason,
            batches=[f.first for f in plan.files if not f.is_range],
        )
        log.info("stream %s (%s sink %s): %s", target.stream, contract.kind, sink.path, plan.reason)

        totals: dict[str, int] | None = None
        if plan.files:
            schemas = read_schemas(sink, plan.files)
            ok, failures = self.validate_view(
                suites.schema_suite(target.stream, contract),
                suites.schema_view(schemas, contract),
                ["batch_id"],
                "files",
            )
            report.checks["schema"] = ok
            report.failures += failures
            good = [
                f
                for f, s in zip(plan.files, schemas, strict=True)
                if suites.schema_matches(s.schema, contract)
            ]
            if len(good) < len(plan.files):
                report.notes.append(
                    f"{len(plan.files) - len(good)} file(s) with another schema were not "
                    "row-checked (see the schema failures)"
                )
            previous: dict[str, int] = {}
            if contract is suites.RUNNING_TOTAL:
                previous = self._previous_totals(target, sink, files, plan=plan, state=state)
            good_schemas = [s for s in schemas if suites.schema_matches(s.schema, contract)]
            rows_per_batch, previous = self._validate_rows(
                target,
                sink,
                contract,
                (good, good_schemas),
                start=plan.start_batch_id,
                previous=previous,
                report=report,
            )
            ok, failures = self.validate_view(
                suites.volume_suite(target.stream, thresholds),
                suites.volume_view(rows_per_batch),
                ["batch_id"],
                "batches",
            )
            report.checks["volume"] = ok
            report.failures += failures
            if contract is suites.RUNNING_TOTAL:
                totals = previous

        self._check_freshness(target, sink, files, thresholds, report)

        # The watermark moves past what this run saw, passed or not (see the module docstring).
        new_state = ValidationState(
            stream=target.stream,
            sink=sink.path,
            last_validated_batch_id=files[-1].last if files else None,
            last_validated_mtime_ns=batch_files_mtime(files),
            last_truncation=str(truncations[-1]["time"]) if truncations else None,
            updated_at=self.now.isoformat(),
            run=self.run,
        )
        states: list[SavedState] = []
        if totals is not None:
            states.append(TotalsSnapshot(target.stream, totals, files[-1].last))
        self.defer(report, *states, new_state)
        return report

    def _validate_rows(
        self,
        target: StreamSink,
        sink: Location,
        contract: suites.SinkContract,
        good: tuple[list[PartFile], list[suites.PartFileSchema]],
        *,
        start: int | None,
        previous: dict[str, int],
        report: Report,
    ) -> tuple[dict[int, int], dict[str, int]]:
        """Validate the rows of `good` files from batch `start` on, a chunk of whole batches at a
        time so that memory stays bounded at any size; return rows per batch and (running_total)
        each word's latest total."""
        chunks = list(chunked(*good, self.config.chunk_rows, start))
        rows_per_batch: dict[int, int] = {}
        report.rows = 0
        report.checks["rows"] = True
        failures: list[Failure] = []
        for first, before, part in chunks:
            table, counts = read_rows(
                sink, part, contract.schema, from_batch=first, before_batch=before
            )
            for batch_id, count in counts.items():
                rows_per_batch[batch_id] = rows_per_batch.get(batch_id, 0) + count
            rows = to_pandas(table)
            del table
            report.rows += len(rows)
            view = suites.rows_view(rows, contract, previous)
            ok, found = self.validate_view(
                suites.rows_suite(target.stream, contract),
                view,
                ["file_batch_id", "word"],
                part=None if len(chunks) == 1 else f"batches {first}-{before}",
            )
            report.checks["rows"] &= ok
            failures = merge_failures(failures, found, self.config.sample_values)
            if contract is suites.RUNNING_TOTAL:
                previous = suites.latest_totals(view, previous)
            del rows, view
        if len(chunks) > 1:
            log.info(
                "stream %s: validated %d rows in %d chunks", target.stream, report.rows, len(chunks)
            )
        report.failures += with_element_count(failures, report.rows)
        report.batches = sorted(set(report.batches) | set(rows_per_batch))
        return rows_per_batch, previous

    def _previous_totals(
        self,
        target: StreamSink,
        sink: Location,
        files: Sequence[PartFile],
        *,
        plan: Plan,
        state: ValidationState | None,
    ) -> dict[str, int]:
        """Each word's latest total before the first batch being validated."""
        if plan.start_batch_id is None:
            return {}
        if plan.from_watermark and state is not None:
            snapshot = load_totals(self.root, target.stream, state.last_validated_batch_id)
            if snapshot is not None:
                return snapshot
        earlier = [f for f in files if f.first < plan.start_batch_id]
        schemas = read_schemas(sink, earlier)
        contract = suites.RUNNING_TOTAL
        readable = [
            (f, s)
            for f, s in zip(earlier, schemas, strict=True)
            if suites.schema_matches(s.schema, contract)
        ]
        totals: dict[str, int] = {}
        for first, before, part in chunked(
            [f for f, _ in readable], [s for _, s in readable], self.config.chunk_rows
        ):
            end = plan.start_batch_id if before is None else min(before, plan.start_batch_id)
            table, _ = read_rows(
                sink,
                part,
                contract.schema,
                ["batch_id", "word", "total"],
                from_batch=first,
                before_batch=end,
            )
            totals = suites.latest_totals(to_pandas(table), totals)
        return totals

    def _check_freshness(
        self,
        target: StreamSink,
        sink: Location,
        files: Sequence[PartFile],
        thresholds: suites.Thresholds,
        report: Report,
    ) -> None:
        max_age = thresholds.freshness_max_age_seconds
        if max_age is None:
            report.notes.append("freshness not checked (freshness_max_age_seconds: null)")
            return
        if not target.running:
            report.notes.append("freshness not checked: the stream is stopped")
            return
        newest = _newest_batch_time(sink, files)
        if newest is None:
            report.notes.append("freshness not checked: the sink has no readable batch yet")
            return
        batch_id, batch_time = newest
        ok, failures = self.validate_view(
            suites.freshness_suite(target.stream, max_age),
            suites.freshness_view(batch_id, batch_time, self.now),
            ["batch_id"],
            "batches",
        )
        report.checks["freshness"] = ok
        report.failures += failures

    def defer(self, report: Report, *states: SavedState) -> None:
        """Record `report` in the history and save `states`, in order, at `commit()`."""
        self._pending_history.append(report)
        self._pending_states.extend(states)

    def commit(self) -> None:
        """Record this run: a history line per report, then the new watermarks."""
        append_history(
            self.root, (r.summary(self.run, self.now.isoformat()) for r in self._pending_history)
        )
        for state in self._pending_states:
            state.save(self.root)
        self._pending_history = []
        self._pending_states = []


def _newest_batch_time(
    sink: Location, files: Sequence[PartFile], tries: int = 10
) -> tuple[int, datetime] | None:
    """The newest readable batch's id and largest batch_time."""
    for f in reversed(files[-tries:]):
        try:
            column = pq.read_table(f.path, columns=["batch_time"], filesystem=sink.filesystem)[
                "batch_time"
            ]
        except (OSError, pa.ArrowInvalid, KeyError):
            continue
        if not pa.types.is_timestamp(column.type) or column.null_count == len(column):
            continue
        value = pa.compute.max(column).as_py()
        if value is None:
            continue
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return f.last, value
    return None


def _plain(value: Any, kwargs: Mapping[str, Any]) -> Any:
    """A sample value without numpy wrappers; a column pair's values as `A=a, B=b`."""
    if pd.api.types.is_scalar(value) and pd.isna(value):  # NaN, NaT: how pandas shows nulls
        return None
    if isinstance(value, list | tuple):
        plain = [_plain(v, {}) for v in value]
        if "column_A" in kwargs and len(plain) == 2:
            return _Raw(f"{kwargs['column_A']}={plain[0]!r}, {kwargs['column_B']}={plain[1]!r}")
        return plain
    return value.item() if hasattr(value, "item") else value


class _Raw(str):
    """Text shown as it is in samples (not quoted)."""

    def __repr__(self) -> str:
        return str(self)


def _samples(
    values: Sequence[Any],
    rows: Sequence[Mapping[str, Any]],
    index_columns: Sequence[str],
    limit: int,
) -> list[str]:
    """`value (batch_id=3, word='x')` for the first `limit` failing rows."""
    samples = []
    for number, value in enumerate(values[:limit]):
        row = rows[number] if number < len(rows) else {}
        where = ", ".join(
            f"{c}={row[c]}" if c.endswith("batch_id") or c.endswith("_batch") else f"{c}={row[c]!r}"
            for c in index_columns
            if c in row
        )
        samples.append(f"{_short(value)} ({where})" if where else _short(value))
    return samples


def _batch_ids(rows: Iterable[Mapping[str, Any]], column: str | None) -> list[int]:
    found = set()
    for row in rows:
        value = row.get(column) if column else None
        if value is None:
            continue
        try:
            found.add(int(float(value)))  # GX reports index values as strings
        except (TypeError, ValueError):
            continue
    return sorted(found)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:120]


# ---------------------------------------------------------------------------------------------
# running_total snapshots


def totals_location(root: str, stream: str) -> Location:
    """`<data root>/_streamops/quality/<stream>.totals.parquet`."""
    return quality_dir(root).child(f"{stream}.totals.parquet")


@dataclass
class TotalsSnapshot:
    """Each word's latest validated total, up to a batch: the next run's previous totals."""

    stream: str
    totals: Mapping[str, int]
    through_batch_id: int

    def save(self, root: str) -> None:
        """Write `<stream>.totals.parquet`, recording the batch it is at in its metadata."""
        table = pa.table(
            {
                "word": pa.array(list(self.totals), pa.string()),
                "total": pa.array(list(self.totals.values()), pa.int64()),
            }
        ).replace_schema_metadata({"through_batch_id": str(self.through_batch_id)})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        totals_location(root, self.stream).write_bytes_atomic(buffer.getvalue())


def load_totals(root: str, stream: str, through_batch_id: int | None) -> dict[str, int] | None:
    """The snapshot if it is at `through_batch_id` (else None: the caller re-reads the sink)."""
    location = totals_location(root, stream)
    if through_batch_id is None or not location.exists():
        return None
    table = pq.read_table(io.BytesIO(location.read_bytes()))
    metadata = table.schema.metadata or {}
    if metadata.get(b"through_batch_id") != str(through_batch_id).encode():
        return None
    words = table["word"].to_pylist()
    totals = table["total"].to_pylist()
    return {
        str(w): int(t)
        for w, t in zip(words, totals, strict=True)
        if w is not None and t is not None
    }


# ---------------------------------------------------------------------------------------------
# The GX project


def open_context(home: Path) -> AbstractDataContext:
    """The file-backed GX context in `home/gx`, with Data Docs in `home/data_docs`."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX logs every config save and asset at INFO: keep task logs to what matters.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    home.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(home))
    changed = False
    sites = context.variables.data_docs_sites or {}
    if DOCS_SITE not in sites:
        context.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(home / "data_docs"),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    if "local_site" in (context.variables.data_docs_sites or {}):
        context.delete_data_docs_site("local_site")
    bars: Any = context.variables.progress_bars
    globally = bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)
    if globally is not False:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        changed = True
    if context.config.analytics_enabled is not False:
        context.config.analytics_enabled = False
        changed = True
    if changed:
        context.variables.save()
    return context


def _batch_definition(context: AbstractDataContext, name: str) -> Any:
    """The whole-dataframe batch definition of the asset named after a suite."""
    sources = context.data_sources
    source: Any
    if DATASOURCE in sources.all():
        source = sources.get(DATASOURCE)
    else:
        source = sources.add_pandas(DATASOURCE)
    if name in {asset.name for asset in source.assets}:
        asset = source.get_asset(name)
    else:
        asset = source.add_dataframe_asset(name)
    for definition in asset.batch_definitions:
        if definition.name == "checked batches":
            return definition
    return asset.add_batch_definition_whole_dataframe("checked batches")


def prune_results(home: Path, keep: int) -> int:
    """Delete all but the `keep` newest stored results of each suite (and their pages).

    GX stores a result as `validations/<suite, dots as folders>/<run>/<run time>/<batch>.json`
    and renders it to the same path under `data_docs/validations/`, as `.html`.
    """
    store = home / "gx" / "uncommitted" / "validations"
    pages = home / "data_docs" / "validations"
    if not store.is_dir():
        return 0
    by_suite: dict[tuple[str, ...], list[Path]] = {}
    for result in store.rglob("*.json"):
        relative = result.relative_to(store)
        if len(relative.parts) >= 4:
            by_suite.setdefault(relative.parts[:-3], []).append(relative)
    removed = 0
    for results in by_suite.values():
        results.sort(key=lambda r: (r.parts[-2], r.parts[-3]))
        for old in results[: max(len(results) - keep, 0)]:
            for path in (store / old, (pages / old).with_suffix(".html")):
                path.unlink(missing_ok=True)
                for folder in (path.parent, path.parent.parent):
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()
            removed += 1
    return removed
