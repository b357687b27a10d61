"""`make demo KAFKA=1`: the demo's broker, its topic, the feeder producing to it, and the Kafka
stream's Params, against a real Apache Kafka broker (the stack's own, then the tests' shared one).
The whole stack with Kafka is what `make demo KAFKA=1` runs; `test_stack` runs it without."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

from streamops.config import StreamSpec
from tests.scripts.test_stack import feeder, stack
from tests.spark_jobs.test_kafka_source import create_topic

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("kafka_broker")]


def consume(bootstrap: str, topic: str, count: int, timeout: float = 60) -> list[bytes]:
    """The values of the first `count` records of `topic` (all partitions)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test-{time.time_ns()}",
         "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )  # fmt: skip
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                values.append(message.value())
    finally:
        consumer.close()
    return values


def test_the_feeder_produces_each_line_of_its_files_as_a_record(
    tmp_path: Path, broker: str
) -> None:
    # Given a topic
    create_topic(broker, "feeder-lines")
    # When the feeder writes three files and produces their lines to it
    argv = ["--interval", "0.01", "--files", "3", "--seed", "2", "--quiet"]
    argv += ["--folder", str(tmp_path), "--kafka-bootstrap-servers", broker]
    assert feeder.main([*argv, "--kafka-topic", "feeder-lines"]) == 0
    # Then the topic holds each line of the files once, as one record
    lines = [line for f in sorted(tmp_path.iterdir()) for line in f.read_text().splitlines()]
    values = consume(broker, "feeder-lines", len(lines))
    assert collections.Counter(v.decode() for v in values) == collections.Counter(lines)
    assert not consume(broker, "feeder-lines", len(lines) + 1, timeout=3)[len(lines) :]


def test_the_demo_broker_starts_with_its_topic_and_stops_by_its_pid(tmp_path: Path) -> None:
    demo = stack.Stack(home=tmp_path / "home", data_root=tmp_path / "data", port=stack.free_port())
    # When the stack starts its broker
    bootstrap = stack.start_kafka(demo)
    try:
        # Then it answers with the demo's topic, in 3 partitions
        from confluent_kafka.admin import AdminClient

        topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
        assert len(topics[stack.KAFKA_TOPIC].partitions) == stack.KAFKA_PARTITIONS
        pid = int((demo.kafka_dir / "kafka.pid").read_text())
        assert Path(f"/proc/{pid}").exists()
        # And a second start is refused, saying how to stop the first
        with pytest.raises(stack.StackError, match="runs already"):
            stack.start_kafka(demo)
    finally:
        # When the stack stops it
        stack.stop_kafka(demo)
    # Then its process is gone
    assert (
        not Path(f"/proc/{pid}").exists() or "kafka" not in Path(f"/proc/{pid}/cmdline").read_text()
    )
    assert not (demo.kafka_dir / "kafka.pid").exists()


def test_the_demos_kafka_stream_is_a_word_count_on_the_topic_through_kafka_default() -> None:
    streams = {s.stream: s for s in stack.demo_streams(kafka=True)}
    assert set(streams) - {s.stream for s in stack.demo_streams()} == {"word_count_kafka"}
    kafka = streams["word_count_kafka"]
    spec = StreamSpec.from_params("word_count", {"stream": kafka.stream, **dict(kafka.conf)}, "/d")
    assert (spec.source, spec.kafka_topics, spec.kafka_connection) == (
        "kafka",
        (stack.KAFKA_TOPIC,),
        "kafka_default",
    )
    assert spec.kafka_bootstrap_servers is None  # from the connection the stack sets
