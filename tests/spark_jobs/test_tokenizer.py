"""What a word is, checked on static DataFrames with the jobs' own pure transforms."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from spark_jobs.running_total import running_totals
from spark_jobs.tokenizer import tokenize
from spark_jobs.word_count import count_words

pytestmark = pytest.mark.spark


def words(spark: SparkSession, line: str, normalize: bool = False) -> list[str]:
    lines = spark.createDataFrame([(line,)], "value string")
    return [row.word for row in tokenize(lines, normalize).collect()]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello world spark streaming", ["hello", "world", "spark", "streaming"]),
        ("  double  spaces  ", ["double", "spaces"]),  # the seed's split(" ") counted "" here
        (
            "tab\tand\u00a0no-break\u3000ideographic\u2003em",
            ["tab", "and", "no-break", "ideographic", "em"],
        ),
        ("Case Is Kept, punctuation too!", ["Case", "Is", "Kept,", "punctuation", "too!"]),
        ("nul\x00separated\x07bell", ["nul", "separated", "bell"]),
        ("bad\ufffdbytes", ["bad", "bytes"]),
        ("\ufeffbom zero\u200bwidth", ["bom", "zero", "width"]),
        ("", []),
        ("   \t  ", []),
        ("我爱北京 天安门", ["我爱北京", "天安门"]),
    ],
)
def test_default_tokenizer(spark: SparkSession, line: str, expected: list[str]) -> None:
    assert words(spark, line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Hello, hello HELLO!", ["hello", "hello", "hello"]),
        ("don't -- (stop) «quoted»", ["don't", "stop", "quoted"]),
        ("...", []),
    ],
)
def test_normalizing_tokenizer(spark: SparkSession, line: str, expected: list[str]) -> None:
    assert words(spark, line, normalize=True) == expected


def test_tokenize_keeps_the_other_columns(spark: SparkSession) -> None:
    lines = spark.createDataFrame([(1, "a b")], "n int, value string")
    assertDataFrameEqual(
        tokenize(lines), spark.createDataFrame([(1, "a"), (1, "b")], "n int, word string")
    )


def test_count_words_counts_each_word_of_a_batch(spark: SparkSession) -> None:
    lines = spark.createDataFrame(
        [("hello world spark streaming",), ("hello spark",)], "value string"
    )
    expected = spark.createDataFrame(
        [("hello", 2), ("spark", 2), ("world", 1), ("streaming", 1)], "word string, count long"
    )
    assertDataFrameEqual(count_words(tokenize(lines)), expected)


def test_running_totals_on_a_static_frame_is_a_plain_count(spark: SparkSession) -> None:
    lines = spark.createDataFrame([("b a b",)], "value string")
    expected = spark.createDataFrame([("a", 1), ("b", 2)], "word string, total long")
    assertDataFrameEqual(running_totals(tokenize(lines)), expected)
