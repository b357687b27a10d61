"""What a word is, checked on static DataFrames with the jobs' own pure transforms."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_jobs.running_total import running_totals
from spark_jobs.tokenizer import PLAIN_LINE, SEPARATORS, tokenize, words_of
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


# Unicode White_Space (Java's (?U)\s) that is not a control character, and the three extras.
WHITE_SPACE_OUTSIDE_CC = [0x20, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F]
SEPARATOR_POINTS = {
    *range(0x00, 0x20),  # \p{Cc}
    *range(0x7F, 0xA0),  # \p{Cc}
    *WHITE_SPACE_OUTSIDE_CC,
    0x205F,
    0x3000,
    0xFFFD,
    0xFEFF,
    0x200B,
}


def test_found_words_are_the_split_words_on_every_code_point(spark: SparkSession) -> None:
    # Given every Unicode scalar value, each between two letters, 4096 to a line; then each ASCII
    # code point alone between letters, and spaces at the edges and doubled (plain lines take
    # their own path)
    points = [p for p in range(0x110000) if not 0xD800 <= p <= 0xDFFF]
    mixed = [
        "x" + "x".join(chr(p) for p in points[i : i + 4096]) + "x"
        for i in range(0, len(points), 4096)
    ]
    ascii_ = [f"a{chr(p)}b" for p in range(0x80)] + [" a  b ", "", " ", "  ", "~ !"]
    lines = spark.createDataFrame(
        [(line, True) for line in mixed] + [(line, False) for line in ascii_],
        "value string, mixed boolean",
    )
    # When the words are found (the jobs' form) and split out (splitting on the separators and
    # dropping empty strings, the definition)
    compared = lines.select(
        "mixed",
        F.col("value").rlike(PLAIN_LINE).alias("plain"),
        words_of(F.col("value")).alias("found"),
        F.filter(F.split("value", SEPARATORS), lambda t: t != "").alias("split"),
    )
    # Then both give the same words on every line, and exactly the documented code points
    # separate words: each one adds a word to its line
    assert compared.where("found != split").count() == 0
    separators = compared.where("mixed").select(F.sum(F.size("found") - 1)).first()[0]
    assert separators == len(SEPARATOR_POINTS)
    # and the plain lines are exactly those of printable ASCII
    assert compared.where("plain").count() == (0x7F - 0x20) + 5
    between = spark.createDataFrame([(f"a{chr(p)}b",) for p in SEPARATOR_POINTS], "value string")
    assert {
        tuple(r.words) for r in between.select(words_of(F.col("value")).alias("words")).collect()
    } == {("a", "b")}


# Bytes as the file source reads them: every kind of malformed UTF-8 separates words, and every
# word comes out as valid UTF-8.
MALFORMED = [
    (b"caf\xc3\xa9 ok", ["caf\u00e9", "ok"]),  # valid two-byte sequence: kept
    (b"bad\xffbyte", ["bad", "byte"]),  # a byte that never starts a sequence
    (b"cont\x80\xbfonly", ["cont", "only"]),  # lone continuation bytes
    (b"trunc\xe2\x82 end", ["trunc", "end"]),  # a truncated three-byte sequence
    (b"over\xc0\xaflong", ["over", "long"]),  # an overlong encoding of '/'
    (b"surr\xed\xa0\x80gate", ["surr", "gate"]),  # an encoded UTF-16 surrogate
    (b"\xf0\x9f\x98\x80 smile \xf0\x9f\x98", ["\U0001f600", "smile"]),  # 4 bytes, then cut
    (b"five\xf8\x88\x80\x80\x80byte", ["five", "byte"]),  # an old five-byte form
    (b"\xf4\x90\x80\x80big", ["big"]),  # beyond U+10FFFF
    (b"\xef\xbb\xbfbom lead", ["bom", "lead"]),  # a UTF-8 byte-order mark
]


def test_malformed_utf8_separates_words_and_every_word_is_valid(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Given a file of lines with malformed UTF-8, read as the file source reads it
    (tmp_path / "bytes.txt").write_bytes(b"\n".join(line for line, _ in MALFORMED) + b"\n")
    lines = spark.read.text(str(tmp_path / "bytes.txt"))
    # When it is tokenized
    found = [row.word for row in tokenize(lines).collect()]
    # Then the words are exactly those between the malformed sequences
    assert found == [word for _, expected in MALFORMED for word in expected]


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
