"""Bad input never stops a stream: it counts what can be counted and never emits a blank word."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from spark_jobs import running_total, word_count
from tests.conftest import drop_file, read_sink, run_available_now

pytestmark = pytest.mark.spark

TEN_MB_LINE = ("alpha " * (10 * 1024 * 1024 // 6)).encode()
BAD_FILES: dict[str, bytes] = {
    "latin1.txt": "caf\xe9 alpha\n".encode("latin-1"),  # \xe9 alone is not UTF-8
    "invalid-utf8.txt": b"alpha\xff\xfebeta \xc3\x28 gamma\n",
    "nul.txt": b"alpha\x00beta\x00\x00\n",
    "empty.txt": b"",
    "blank-lines.txt": b"\n\n   \n\t\n\r\n",
    "ten-mb-line.txt": TEN_MB_LINE,
    "binary.bin": random.Random(7).randbytes(256 * 1024),
    "good.txt": b"beta gamma\n",
}
EXPECTED_KNOWN = {
    "alpha": 1 + 1 + 1 + TEN_MB_LINE.count(b"alpha"),
    "beta": 1 + 1 + 1,
    "gamma": 1 + 1,
    "caf": 1,
}


def is_separator(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Cc" or ch in "\ufffd\ufeff\u200b"


def argv(tmp_path: Path, job: str) -> list[str]:
    return [
        "--input", str(tmp_path / "in"),
        "--sink", str(tmp_path / f"{job}-sink"),
        "--checkpoint", str(tmp_path / f"{job}-ck"),
        "--max-files-per-trigger", "3",
        "--shuffle-partitions", "2",
    ]  # fmt: skip


def test_bad_files_are_counted_where_they_can_be(spark: SparkSession, tmp_path: Path) -> None:
    # Given a folder of hostile files next to a good one
    for i, (name, content) in enumerate(BAD_FILES.items()):
        drop_file(tmp_path / "in", name, content, mtime=1_700_000_000 + i)

    # When both jobs process them (a failure would raise here)
    run_available_now(spark, word_count, argv(tmp_path, "wc"))
    run_available_now(spark, running_total, argv(tmp_path, "rt"))

    counts = read_sink(tmp_path / "wc-sink")
    totals = read_sink(tmp_path / "rt-sink")
    for frame in (counts, totals):
        # Then no word is empty or holds a separator: whitespace, a control character, U+FFFD
        assert all(frame.word.str.len() > 0)
        assert not [word for word in frame.word if any(is_separator(ch) for ch in word)]
    # And the words that were there are counted exactly, the binary file's noise aside
    summed = counts.groupby("word")["count"].sum()
    assert {word: int(summed[word]) for word in EXPECTED_KNOWN} == EXPECTED_KNOWN
    latest = totals.sort_values("batch_id").groupby("word")["total"].last()
    assert latest.to_dict() == summed.to_dict()
    assert sorted(counts.batch_id.unique()) == [0, 1, 2]
