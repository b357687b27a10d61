"""The kafka source against a real Apache Kafka broker: both jobs count exactly what was produced.

A broker from the pinned jars (`scripts/kafka.py`) runs on a free port for the module; each test
makes its own 3-partition topics, produces to them with confluent-kafka, runs the jobs as their
own processes (`python -m`, the connector's jars through `spark.jars`), and compares each sink
with an oracle computed in Python from the produced values.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from tests.conftest import ROOT, free_port, job_command, read_sink

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.xdist_group("kafka_broker")]

PARTITIONS = 3
JOB_TIMEOUT_SECONDS = 300
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "Grüße aus Köln, naïve café",
    "我爱北京 天安门",  # Han without spaces: one word per run
    "Привет, мир! Привет",
    "مرحبا بالعالم",
    "こんにちは\u3000世界",  # ideographic space
    "🙂 emoji 🙂 ok",
    "  leading and  double  spaces\t\ttabs ",
    "line one\nline two",  # a newline inside a value is a separator too
]
NOT_UTF8 = [
    "caf\xe9 alpha".encode("latin-1"),  # \xe9 alone is not UTF-8
    b"alpha\xff\xfebeta \xc3\x28 gamma",
    b"\xed\xa0\x80surrogate half",
    b"over\xc0\xaflong",
    b"nul\x00byte",
]


def load_kafka_script() -> ModuleType:
    """`scripts/kafka.py` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location("kafka_script", ROOT / "scripts" / "kafka.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A single-node Kafka broker on a free port; stopped by its pid at the end."""
    kafka = load_kafka_script()
    folder = tmp_path_factory.mktemp("kafka-broker")
    bootstrap = kafka.start(folder, free_port())
    try:
        yield bootstrap
    finally:
        assert kafka.stop(folder), "the broker was not running at the end"
        assert not kafka.is_running(kafka.BrokerFolder(folder))


def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=30)


def produce(bootstrap: str, topic: str, values: list[bytes | None]) -> None:
    """Produce `values` round-robin over the topic's partitions; every one must be acknowledged."""
    from confluent_kafka import KafkaError, Message, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    failed: list[KafkaError] = []
    delivered: list[int] = []

    def report(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failed.append(error)
        else:
            delivered.append(1)

    for i, value in enumerate(values):
        producer.produce(
            topic, value, key=str(i).encode(), partition=i % PARTITIONS, on_delivery=report
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failed
    assert len(delivered) == len(values)


def is_separator(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Cc" or ch in "\ufffd\ufeff\u200b"


def words_of(value: bytes) -> list[str]:
    """The words the tokenizer finds, computed in Python: bad bytes decode to U+FFFD."""
    text = value.decode("utf-8", errors="replace")
    words, current = [], []
    for ch in text:
        if is_separator(ch):
            if current:
                words.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def oracle(values: list[bytes | None]) -> dict[str, int]:
    return dict(Counter(w for value in values if value is not None for w in words_of(value)))


def messages(rng: random.Random, count: int) -> list[bytes | None]:
    """Multi-script text, bytes that are not UTF-8, empty values and tombstones, mixed."""
    values: list[bytes | None] = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.1:
            values.append(None)
        elif kind < 0.2:
            values.append(b"")
        elif kind < 0.35:
            values.append(rng.choice(NOT_UTF8))
        else:
            values.append(" ".join(rng.sample(TEXTS, 2)).encode())
    return values


def job_argv(tmp_path: Path, job: str, bootstrap: str, topic: str) -> list[str]:
    return [
        "--source", "kafka",
        "--kafka-bootstrap-servers", bootstrap,
        "--kafka-topic", topic,
        "--max-offsets-per-trigger", "150",
        "--sink", str(tmp_path / f"{job}-sink"),
        "--checkpoint", str(tmp_path / f"{job}-ck"),
        "--shuffle-partitions", "2",
        "--available-now",
    ]  # fmt: skip


def run_both(tmp_path: Path, bootstrap: str, topic: str) -> None:
    """Run word_count and running_total side by side until each has read all it can."""
    env = {**os.environ, "PYSPARK_SUBMIT_ARGS": "--master local[1] pyspark-shell"}
    processes = {
        job: subprocess.Popen(
            job_command(job, *job_argv(tmp_path, job, bootstrap, topic)),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for job in ("word_count", "running_total")
    }
    try:
        for job, process in processes.items():
            output, _ = process.communicate(timeout=JOB_TIMEOUT_SECONDS)
            assert process.returncode == 0, f"{job} exited {process.returncode}:\n{output}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def counted(sink: pd.DataFrame) -> dict[str, int]:
    return {str(w): int(c) for w, c in sink.groupby("word")["count"].sum().items()}


def totals(sink: pd.DataFrame) -> dict[str, int]:
    latest = sink.sort_values("batch_id").groupby("word")["total"].last()
    return {str(w): int(t) for w, t in latest.items()}


def test_both_jobs_count_a_topic_exactly(broker: str, tmp_path: Path) -> None:
    # Given a 3-partition topic holding multi-script text, bytes that are not UTF-8, empty
    # values and tombstones
    values = messages(random.Random(29), 400)
    assert None in values
    assert b"" in values
    create_topic(broker, "mixed")
    produce(broker, "mixed", values)

    # When both jobs read it, at most 150 records per micro-batch
    run_both(tmp_path, broker, "mixed")

    # Then each sink equals the oracle computed from what was produced
    expected = oracle(values)
    counts = read_sink(tmp_path / "word_count-sink")
    assert counted(counts) == expected
    assert totals(read_sink(tmp_path / "running_total-sink")) == expected
    # in several micro-batches (400 records, 150 at most per batch)
    assert counts.batch_id.nunique() >= 3
    # and the bad bytes split words as U+FFFD does: no word holds a separator
    assert "caf" in expected
    assert "alpha" in expected
    assert not [w for w in expected if not w or any(is_separator(ch) for ch in w)]


def test_a_stream_started_again_reads_on_from_where_it_stopped(broker: str, tmp_path: Path) -> None:
    # Given both jobs that have read what a topic held
    rng = random.Random(7)
    first, second = messages(rng, 150), messages(rng, 150)
    create_topic(broker, "restart")
    produce(broker, "restart", first)
    run_both(tmp_path, broker, "restart")
    counts = read_sink(tmp_path / "word_count-sink")
    assert counted(counts) == oracle(first)
    last_batch = int(counts.batch_id.max())

    # When more is produced and both jobs start again on their checkpoints
    produce(broker, "restart", second)
    run_both(tmp_path, broker, "restart")

    # Then the new batches hold exactly the new records, and the totals all of them
    counts = read_sink(tmp_path / "word_count-sink")
    assert counted(counts[counts.batch_id > last_batch]) == oracle(second)
    assert counted(counts) == oracle(first + second)
    assert totals(read_sink(tmp_path / "running_total-sink")) == oracle(first + second)
