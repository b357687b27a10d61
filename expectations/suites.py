"""What every sink must satisfy: the expectation suites, as code, and the views they check.

A sink is a folder of Parquet files, one per micro-batch (`spark_jobs/sinks.py`). Each stream's
sink gets four suites, named `<stream>.<aspect>`, each validating one pandas view of the batches
being checked:

| aspect      | view (one row per ...)              | expectations                              |
| ----------- | ----------------------------------- | ----------------------------------------- |
| `schema`    | part file: each contract column's   | every column has its contract type, no    |
|             | Arrow type in that file             | other column                              |
| `rows`      | sink row, plus derived columns      | `batch_id`, `batch_time`, `word` and the  |
|             |                                     | value not null; `word` not empty, no      |
|             |                                     | separator; `count` / `total` >= 1; rows   |
|             |                                     | in the file of their batch; key unique;   |
|             |                                     | running_total: no total ever decreases    |
| `volume`    | batch: its row count                | rows per batch within the thresholds      |
| `freshness` | the newest batch: its age           | at most the configured age                |

GX has no expectation for "per word, `total` never decreases as `batch_id` grows", so the rows
view carries a derived boolean `total_not_decreasing`, computed in pandas against each word's
previous total (also from batches validated in earlier runs), and the suite expects it to be
True: the failing rows then name the word and batch like any other expectation.

Thresholds come from `thresholds.yaml` (or `$STREAMOPS_QUALITY_CONFIG`), never from code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
import pyarrow as pa
import yaml  # type: ignore[import-untyped]
from great_expectations.expectations.core.expect_column_pair_values_to_be_equal import (
    ExpectColumnPairValuesToBeEqual,
)
from great_expectations.expectations.core.expect_column_value_lengths_to_be_between import (
    ExpectColumnValueLengthsToBeBetween,
)
from great_expectations.expectations.core.expect_column_values_to_be_between import (
    ExpectColumnValuesToBeBetween,
)
from great_expectations.expectations.core.expect_column_values_to_be_in_set import (
    ExpectColumnValuesToBeInSet,
)
from great_expectations.expectations.core.expect_column_values_to_not_be_null import (
    ExpectColumnValuesToNotBeNull,
)
from great_expectations.expectations.core.expect_column_values_to_not_match_regex import (
    ExpectColumnValuesToNotMatchRegex,
)
from great_expectations.expectations.core.expect_compound_columns_to_be_unique import (
    ExpectCompoundColumnsToBeUnique,
)
from great_expectations.expectations.expectation import Expectation

from expectations.results import QualityConfigError
from spark_jobs.sinks import RUNNING_TOTAL_SCHEMA, WINDOWED_WORD_COUNT_SCHEMA, WORD_COUNT_SCHEMA

CONFIG_ENV = "STREAMOPS_QUALITY_CONFIG"
DEFAULT_CONFIG = Path(__file__).with_name("thresholds.yaml")
ASPECTS = ("schema", "rows", "volume", "freshness")

# What separates words (see spark_jobs/tokenizer.py): whitespace, control characters, the
# zero-width space, the byte-order mark and U+FFFD. Written with explicit code points so that it
# means the same in Python (pandas) and Java (Spark) regular expressions.
WORD_SEPARATOR = (
    r"[\s\x00-\x1f\x7f-\x9f\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff\ufffd]"
)
MISSING = "<missing>"


# ---------------------------------------------------------------------------------------------
# Sink contracts


@dataclass(frozen=True)
class SinkContract:
    """The columns, types and key of one kind of sink."""

    kind: str
    job: str
    schema: pa.Schema
    value_column: str
    key_columns: tuple[str, ...]

    @property
    def type_names(self) -> dict[str, str]:
        """Each contract column's Arrow type, as `str(pa.DataType)` spells it."""
        return {f.name: str(f.type) for f in self.schema}


WORD_COUNT = SinkContract(
    "word_count", "word_count", WORD_COUNT_SCHEMA, "count", ("batch_id", "word")
)
WINDOWED_WORD_COUNT = SinkContract(
    "windowed_word_count",
    "word_count",
    WINDOWED_WORD_COUNT_SCHEMA,
    "count",
    ("batch_id", "window_start", "word"),
)
RUNNING_TOTAL = SinkContract(
    "running_total", "running_total", RUNNING_TOTAL_SCHEMA, "total", ("batch_id", "word")
)


def contract_for(job: str, first_file_schema: pa.Schema | None = None) -> SinkContract:
    """The contract of a job's sink. A word_count sink is windowed when its first batch is.

    A sink keeps one layout for its whole life, so its oldest file tells which word_count
    variant the stream runs (the registry does not record `--window`).
    """
    if job == "running_total":
        return RUNNING_TOTAL
    if job == "word_count":
        windowed = first_file_schema is not None and "window_start" in first_file_schema.names
        return WINDOWED_WORD_COUNT if windowed else WORD_COUNT
    raise QualityConfigError(
        f"job {job!r}: no quality suites for it (known: word_count, running_total)"
    )


# ---------------------------------------------------------------------------------------------
# Thresholds


@dataclass(frozen=True)
class Thresholds:
    """The limits of one stream's volume and freshness checks."""

    min_rows_per_batch: int = 1
    max_rows_per_batch: int = 5_000_000
    freshness_max_age_seconds: float | None = 900.0


@dataclass(frozen=True)
class ReconcilePair:
    """Two streams that read the same input files."""

    word_count: str
    running_total: str

    @property
    def name(self) -> str:
        """How the pair is named in suites, logs and history."""
        return f"{self.word_count}~{self.running_total}"


@dataclass(frozen=True)
class QualityConfig:
    """Everything `thresholds.yaml` sets."""

    source: str
    jobs: Mapping[str, Thresholds] = field(default_factory=dict)
    streams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pairs: tuple[ReconcilePair, ...] = ()
    sample_values: int = 5
    max_rows_to_locate: int = 1_000_000
    keep_results_per_check: int = 100
    chunk_rows: int = 1_000_000

    def thresholds(self, stream: str, job: str) -> Thresholds:
        """A stream's thresholds: its job's, with the stream's own overrides applied."""
        base = self.jobs.get(job, Thresholds())
        override = self.streams.get(stream)
        if not override:
            return base
        return _thresholds(override, f"streams.{stream}", self.source, base)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> QualityConfig:
        """Read and check the thresholds file (default: `$STREAMOPS_QUALITY_CONFIG`, else the
        `thresholds.yaml` beside this module)."""
        chosen = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
        try:
            raw = yaml.safe_load(chosen.read_text(encoding="utf-8")) or {}
        except OSError as err:
            raise QualityConfigError(
                f"cannot read the quality thresholds file {chosen}: {err.strerror}; "
                f"fix ${CONFIG_ENV} or restore expectations/thresholds.yaml"
            ) from err
        except yaml.YAMLError as err:
            raise QualityConfigError(f"{chosen} is not valid YAML: {err}") from err
        source = str(chosen)
        if not isinstance(raw, dict):
            raise QualityConfigError(f"{source}: expected a mapping at the top level")
        jobs = {
            job: _thresholds(values or {}, f"jobs.{job}", source, Thresholds())
            for job, values in _mapping(raw.get("jobs"), "jobs", source).items()
        }
        streams = _mapping(raw.get("streams"), "streams", source)
        for stream, values in streams.items():
            _thresholds(values or {}, f"streams.{stream}", source, Thresholds())
        reconcile = _mapping(raw.get("reconcile"), "reconcile", source)
        pairs = []
        for number, item in enumerate(reconcile.get("pairs") or []):
            if not isinstance(item, dict) or set(item) != {"word_count", "running_total"}:
                raise QualityConfigError(
                    f"{source}: reconcile.pairs[{number}] must be a mapping with exactly the keys "
                    f"word_count and running_total (stream names), got {item!r}"
                )
            pairs.append(ReconcilePair(str(item["word_count"]), str(item["running_total"])))
        report = _mapping(raw.get("report"), "report", source)
        docs = _mapping(raw.get("data_docs"), "data_docs", source)
        return cls(
            source=source,
            jobs=jobs,
            streams=streams,
            pairs=tuple(pairs),
            sample_values=_whole(report.get("sample_values", 5), "report.sample_values", source, 1),
            max_rows_to_locate=_whole(
                report.get("max_rows_to_locate", 1_000_000), "report.max_rows_to_locate", source, 0
            ),
            keep_results_per_check=_whole(
                docs.get("keep_results_per_check", 100),
                "data_docs.keep_results_per_check",
                source,
                1,
            ),
            chunk_rows=_whole(raw.get("chunk_rows", 1_000_000), "chunk_rows", source, 1),
        )


def _mapping(value: object, where: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise QualityConfigError(f"{source}: {where} must be a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _whole(value: object, where: str, source: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise QualityConfigError(
            f"{source}: {where} must be a whole number of at least {minimum}, got {value!r}"
        )
    return value


def _thresholds(values: Any, where: str, source: str, base: Thresholds) -> Thresholds:
    values = _mapping(values, where, source)
    unknown = set(values) - {"rows_per_batch", "freshness_max_age_seconds"}
    if unknown:
        raise QualityConfigError(
            f"{source}: {where} has unknown settings {sorted(unknown)}; "
            "known: rows_per_batch {min, max}, freshness_max_age_seconds"
        )
    rows = _mapping(values.get("rows_per_batch"), f"{where}.rows_per_batch", source)
    low = _whole(rows.get("min", base.min_rows_per_batch), f"{where}.rows_per_batch.min", source, 0)
    high = _whole(
        rows.get("max", base.max_rows_per_batch), f"{where}.rows_per_batch.max", source, 1
    )
    if high < low:
        raise QualityConfigError(
            f"{source}: {where}.rows_per_batch: max ({high}) is below min ({low})"
        )
    age: Any = values.get("freshness_max_age_seconds", base.freshness_max_age_seconds)
    if age is not None and (isinstance(age, bool) or not isinstance(age, int | float) or age <= 0):
        raise QualityConfigError(
            f"{source}: {where}.freshness_max_age_seconds must be a positive number of seconds "
            f"or null (not checked), got {age!r}"
        )
    return Thresholds(low, high, None if age is None else float(age))


# ---------------------------------------------------------------------------------------------
# Suites


def suite_name(stream: str, aspect: str) -> str:
    """The name of a stream's suite for one aspect, e.g. `word_count.rows`."""
    return f"{stream}.{aspect}"


def schema_suite(stream: str, contract: SinkContract) -> gx.ExpectationSuite:
    """Every part file has exactly the contract's columns, each with its contract type."""
    expectations: list[Expectation] = [
        ExpectColumnValuesToBeInSet(
            column=f"type_of_{name}",
            value_set=[type_name],
            description=f"column `{name}` is {type_name} in every file",
        )
        for name, type_name in contract.type_names.items()
    ]
    expectations.append(
        ExpectColumnValuesToBeInSet(
            column="unexpected_columns",
            value_set=[""],
            description="no file has a column outside the contract",
        )
    )
    return gx.ExpectationSuite(
        name=suite_name(stream, "schema"),
        expectations=expectations,
        meta={"sink_kind": contract.kind, "view": "one row per part file"},
    )


def rows_suite(stream: str, contract: SinkContract) -> gx.ExpectationSuite:
    """Row-level rules of the sink contract."""
    value = contract.value_column
    expectations: list[Expectation] = [
        ExpectColumnValuesToNotBeNull(column="batch_id"),
        ExpectColumnPairValuesToBeEqual(
            column_A="batch_id",
            column_B="file_batch_id",
            description="each row is in the file of its batch (`part-<batch_id>.parquet`)",
        ),
        ExpectColumnValuesToNotBeNull(column="batch_time"),
        ExpectColumnValuesToNotBeNull(column="word"),
        ExpectColumnValueLengthsToBeBetween(
            column="word", min_value=1, description="`word` is not empty"
        ),
        ExpectColumnValuesToNotMatchRegex(
            column="word",
            regex=WORD_SEPARATOR,
            description="`word` holds no whitespace or other word separator",
        ),
        ExpectColumnValuesToNotBeNull(column=value),
        ExpectColumnValuesToBeBetween(
            column=value, min_value=1, description=f"`{value}` is at least 1"
        ),
        ExpectCompoundColumnsToBeUnique(
            column_list=list(contract.key_columns),
            description=f"one row per ({', '.join(contract.key_columns)})",
        ),
    ]
    if contract is RUNNING_TOTAL:
        expectations.append(
            ExpectColumnValuesToBeInSet(
                column="total_not_decreasing",
                value_set=[True],
                description="a word's total never decreases as batch_id grows "
                "(derived: total >= the word's previous total, from earlier batches too)",
            )
        )
    return gx.ExpectationSuite(
        name=suite_name(stream, "rows"),
        expectations=expectations,
        meta={"sink_kind": contract.kind, "view": "one row per sink row"},
    )


def volume_suite(stream: str, thresholds: Thresholds) -> gx.ExpectationSuite:
    """Rows per micro-batch within the configured bounds."""
    return gx.ExpectationSuite(
        name=suite_name(stream, "volume"),
        expectations=[
            ExpectColumnValuesToBeBetween(
                column="rows",
                min_value=thresholds.min_rows_per_batch,
                max_value=thresholds.max_rows_per_batch,
                description="rows per micro-batch within the configured bounds",
            )
        ],
        meta={"view": "one row per batch"},
    )


def freshness_suite(stream: str, max_age_seconds: float) -> gx.ExpectationSuite:
    """The newest batch is at most the configured age."""
    return gx.ExpectationSuite(
        name=suite_name(stream, "freshness"),
        expectations=[
            ExpectColumnValuesToBeBetween(
                column="age_seconds",
                min_value=None,
                max_value=max_age_seconds,
                description="the newest batch_time is at most the configured age",
            )
        ],
        meta={"view": "the newest batch"},
    )


# ---------------------------------------------------------------------------------------------
# Views: the pandas frames the suites validate


@dataclass(frozen=True)
class PartFileSchema:
    """The Arrow schema found in one part file, and its rows by row group."""

    batch_id: int
    file: str
    schema: pa.Schema
    #: (first batch id, last batch id, rows) of each row group, in file order.
    row_groups: tuple[tuple[int, int, int], ...] = ()


def schema_view(files: Iterable[PartFileSchema], contract: SinkContract) -> pd.DataFrame:
    """One row per file: its batch id, name, each contract column's type and any extra column."""
    rows = []
    for item in files:
        found = {f.name: str(f.type) for f in item.schema}
        row: dict[str, object] = {"batch_id": item.batch_id, "file": item.file}
        for name in contract.type_names:
            row[f"type_of_{name}"] = found.get(name, MISSING)
        row["unexpected_columns"] = ",".join(n for n in found if n not in contract.type_names)
        rows.append(row)
    columns = ["batch_id", "file", *(f"type_of_{n}" for n in contract.type_names)]
    return pd.DataFrame(rows, columns=[*columns, "unexpected_columns"])


def schema_matches(schema: pa.Schema, contract: SinkContract) -> bool:
    """Whether a file's columns and types are exactly the contract's (order aside)."""
    return {f.name: str(f.type) for f in schema} == contract.type_names


def rows_view(
    rows: pd.DataFrame, contract: SinkContract, previous_totals: Mapping[str, int] | None = None
) -> pd.DataFrame:
    """The sink rows to validate, with the derived columns the rows suite needs.

    `rows` holds the contract columns and `file_batch_id` (the batch id in the file's name).
    For running_total, `previous_totals` are the words' latest totals before these batches.
    """
    if contract is not RUNNING_TOTAL:
        return rows
    return with_total_not_decreasing(rows, previous_totals or {})


def with_total_not_decreasing(
    rows: pd.DataFrame, previous_totals: Mapping[str, int]
) -> pd.DataFrame:
    """Add `total_not_decreasing`: whether each row's total is at least the word's previous one.

    The previous total of a word's first row here is its latest total from earlier batches
    (`previous_totals`), so the rule also holds across validation runs. Rows with a null word
    or total are True here: the not-null expectations report them.
    """
    ordered = rows.sort_values(["word", "batch_id"], kind="stable")
    previous = ordered.groupby("word", sort=False, dropna=False)["total"].shift(1)
    carried = ordered["word"].map(previous_totals) if previous_totals else None
    if carried is not None:
        previous = previous.fillna(carried)
    ok = previous.isna() | ordered["total"].isna() | (ordered["total"] >= previous)
    result = rows.copy()
    result["total_not_decreasing"] = ok.reindex(rows.index).astype(bool)
    return result


def latest_totals(rows: pd.DataFrame, previous: Mapping[str, int] | None = None) -> dict[str, int]:
    """Each word's total at its largest batch id, starting from `previous`."""
    totals = dict(previous or {})
    valid = rows.dropna(subset=["word", "total", "batch_id"])
    if valid.empty:
        return totals
    last = valid.sort_values(["batch_id"], kind="stable").drop_duplicates("word", keep="last")
    totals.update(zip(last["word"].astype(str), last["total"].astype("int64"), strict=True))
    return totals


def volume_view(rows_per_batch: Mapping[int, int]) -> pd.DataFrame:
    """One row per batch: `batch_id` and `rows`, the row count of its file (0 included)."""
    ids = sorted(rows_per_batch)
    return pd.DataFrame(
        {
            "batch_id": pd.Series(ids, dtype="int64"),
            "rows": pd.Series([rows_per_batch[i] for i in ids], dtype="int64"),
        }
    )


def freshness_view(batch_id: int, batch_time: datetime, now: datetime) -> pd.DataFrame:
    """The newest batch: its id, time and age in seconds at `now`."""
    return pd.DataFrame(
        {
            "batch_id": [batch_id],
            "batch_time": [batch_time.isoformat()],
            "age_seconds": [round((now - batch_time).total_seconds(), 3)],
        }
    )


def reconcile_suite(pair: str) -> gx.ExpectationSuite:
    """word_count's counts add up to running_total's totals at every common point of a pair."""
    return gx.ExpectationSuite(
        name=suite_name(pair, "reconcile"),
        expectations=[
            ExpectColumnPairValuesToBeEqual(
                column_A="cumulative_count",
                column_B="running_total",
                description="a word's word_count counts, summed over every batch up to a point "
                "where both jobs had read the same input files, equal its running_total there",
            )
        ],
        meta={"view": "one row per word and common point where either sink has a row"},
    )
