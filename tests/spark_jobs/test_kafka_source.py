"""The kafka source against a real Apache Kafka broker: both jobs count exactly what was produced.

A broker from the pinned jars (`scripts/kafka.py`, the `broker` fixture) runs on a free port;
each test makes its own 3-partition topics, produces to them with confluent-kafka, runs the jobs
as their own processes (`python -m`, the connector's jars through `spark.jars`), and compares
each sink with an oracle computed in Python from the produced values.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, job_command, read_sink
from tests.spark_jobs.test_exactly_once import last_batch, uncommitted_output

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


def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=30)


Record = tuple[int, int, bytes | None]  # partition, offset, value


def produce(bootstrap: str, topic: str, values: list[bytes | None]) -> list[Record]:
    """Produce `values` round-robin over the topic's partitions; every one must be acknowledged.
    Returns where each record landed."""
    from confluent_kafka import KafkaError, Message, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    failed: list[KafkaError] = []
    delivered: list[Record] = []

    def report(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failed.append(error)
        else:
            delivered.append((message.partition(), message.offset(), message.value()))

    for i, value in enumerate(values):
        producer.produce(
            topic, value, key=str(i).encode(), partition=i % PARTITIONS, on_delivery=report
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failed
    assert len(delivered) == len(values)
    return delivered


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


def job_argv(
    tmp_path: Path, job: str, bootstrap: str, topic: str, max_offsets: int = 150
) -> list[str]:
    return [
        "--source", "kafka",
        "--kafka-bootstrap-servers", bootstrap,
        "--kafka-topic", topic,
        "--max-offsets-per-trigger", str(max_offsets),
        "--sink", str(tmp_path / f"{job}-sink"),
        "--checkpoint", str(tmp_path / f"{job}-ck"),
        "--shuffle-partitions", "2",
    ]  # fmt: skip


JOBS = ("word_count", "running_total")
JOB_ENV = {"PYSPARK_SUBMIT_ARGS": "--master local[1] pyspark-shell"}


def run_both(tmp_path: Path, bootstrap: str, topic: str, max_offsets: int = 150) -> None:
    """Run word_count and running_total side by side until each has read all it can."""
    env = {**os.environ, **JOB_ENV}
    processes = {
        job: subprocess.Popen(
            job_command(
                job, *job_argv(tmp_path, job, bootstrap, topic, max_offsets), "--available-now"
            ),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for job in JOBS
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
    # and each batch's status says how many records it left behind: from 250 down to none
    from spark_jobs.status import read_status

    status = read_status(str(tmp_path / "word_count-ck"))
    assert status is not None
    behind = [b.records_behind for b in status.recent_batches if b.input_rows]
    assert behind[0] == {"mixed": 400 - status.recent_batches[0].input_rows}
    assert behind[-1] == {"mixed": 0}
    assert [b["mixed"] for b in behind] == sorted((b["mixed"] for b in behind), reverse=True)


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


def test_a_rotation_carries_the_kafka_position_into_the_new_checkpoint(
    broker: str, tmp_path: Path
) -> None:
    from spark_jobs import checkpoints
    from spark_jobs.layout import CheckpointLayout
    from spark_jobs.storage import Location

    # Given both jobs that have read a topic, their checkpoints then rotated (twice in a row for
    # running_total: the second rotation has no batch of its own to take the position from)
    rng = random.Random(11)
    first, second = messages(rng, 200), messages(rng, 200)
    create_topic(broker, "rotated")
    produce(broker, "rotated", first)
    run_both(tmp_path, broker, "rotated")
    rounds = {"word_count": 1, "running_total": 2}
    for job, times in rounds.items():
        layout = CheckpointLayout.of(str(tmp_path / f"{job}-ck"))
        committed = layout.committed_source_offsets()
        for _ in range(times):
            rotation = checkpoints.rotate(
                layout,
                Location.of(str(tmp_path / f"{job}-sink")),
                None,
                carry_totals=job == "running_total",
            )
            # The position it carries is the one the old generation committed
            assert [rotation.kafka_offsets] == committed
            assert sum(sum(p.values()) for p in committed[0].values()) == len(first)
        assert rotation.generation.number == times
    # When more is produced and both jobs start on the new checkpoints (whose own
    # --kafka-starting-offsets, earliest, would read the topic again from its start)
    produce(broker, "rotated", second)
    run_both(tmp_path, broker, "rotated")
    # Then the new generation read exactly the new records: no record twice, none lost
    counts = read_sink(tmp_path / "word_count-sink")
    assert counted(counts) == oracle(first + second)
    assert totals(read_sink(tmp_path / "running_total-sink")) == oracle(first + second)


def offsets_per_batch(checkpoint: Path, topic: str) -> dict[int, dict[int, tuple[int, int]]]:
    """Each committed batch id and the offsets it read, `[start, end)` per partition.

    Batch N read from batch N-1's offsets (batch 0: from the earliest, 0 on a new topic) up to
    its own, the last line of `offsets/N`: `{"topic": {"0": 12, "1": 11, "2": 12}}`.
    """
    committed = {int(p.name) for p in (checkpoint / "commits").iterdir() if p.name.isdigit()}
    offsets = checkpoint / "offsets"
    batches: dict[int, dict[int, tuple[int, int]]] = {}
    previous: dict[int, int] = {}
    for batch_id in sorted(int(p.name) for p in offsets.iterdir() if p.name.isdigit()):
        ends = json.loads((offsets / str(batch_id)).read_text().splitlines()[-1])[topic]
        ends = {int(partition): int(end) for partition, end in ends.items()}
        if batch_id in committed:
            batches[batch_id] = {p: (previous.get(p, 0), end) for p, end in ends.items()}
        previous = ends
    return batches


def kill_mid_stream(
    tmp_path: Path, bootstrap: str, topic: str, rng: random.Random, aimed: bool
) -> tuple[list[Record], int]:
    """Start both jobs, produce while they run, then SIGKILL each driver.

    An aimed kill lands after a batch's sink file is written and before Spark has committed the
    batch. Returns the records produced and how many kills landed that way.
    """
    before = {job: last_batch(tmp_path, job) for job in JOBS}
    back_to_back = ("--trigger-interval", "0 seconds")
    procs = {
        job: subprocess.Popen(
            job_command(job, *job_argv(tmp_path, job, bootstrap, topic, 40), *back_to_back),
            start_new_session=True,  # its own process group: the JVM dies with the driver
            env={**os.environ, **JOB_ENV},
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{job}.log").open("ab"),
        )
        for job in JOBS
    }
    produced: list[Record] = []
    stop_feeding = threading.Event()

    def feed() -> None:
        # 10 records every 0.2 s until the kills are done
        while not stop_feeding.is_set() or not produced:
            produced.extend(produce(bootstrap, topic, messages(rng, 10)))
            time.sleep(0.2)

    feeder = threading.Thread(target=feed)
    feeder.start()
    aimed_kills = 0
    try:
        deadline = time.monotonic() + 240
        while any(last_batch(tmp_path, job) <= before[job] for job in JOBS):
            assert time.monotonic() < deadline, "the jobs made no progress in 240 s"
            assert all(p.poll() is None for p in procs.values()), "a job exited on its own"
            time.sleep(0.1)
        if not aimed:
            time.sleep(rng.uniform(0.0, 1.5))
        pending = list(JOBS)
        while aimed and pending and time.monotonic() < deadline:
            for job in list(pending):
                if uncommitted_output(tmp_path, job):
                    os.killpg(procs[job].pid, signal.SIGKILL)
                    aimed_kills += uncommitted_output(tmp_path, job)
                    pending.remove(job)
            time.sleep(0.002)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stop_feeding.set()
        feeder.join(timeout=120)
    assert not feeder.is_alive()
    return produced, aimed_kills


def in_ranges(ranges: dict[int, tuple[int, int]]) -> list[tuple[int, int]]:
    """The `(partition, offset)` of every record in `[start, end)` ranges per partition."""
    return [(p, o) for p, (start, end) in ranges.items() for o in range(start, end)]


def test_both_sinks_stay_exact_through_repeated_sigkills(broker: str, tmp_path: Path) -> None:
    # Given a 3-partition topic produced to while both drivers run, each SIGKILLed mid-stream
    # in every round (random kills and kills aimed between a sink write and its commit)
    rng = random.Random(2029)
    create_topic(broker, "killed")
    records: list[Record] = []
    aimed_kills = 0
    round_ = 0
    # A random kill, an aimed one, a random one; an aimed kill can miss the short window between
    # a sink write and Spark's commit, so go on (two rounds at most) until one has landed in it.
    while round_ < 3 or (aimed_kills == 0 and round_ < 5):
        aimed = round_ % 2 == 1 or round_ >= 3
        produced, landed = kill_mid_stream(tmp_path, broker, "killed", rng, aimed)
        records += produced
        aimed_kills += landed
        round_ += 1

    # When both jobs are restarted to finish what is left
    run_both(tmp_path, broker, "killed")

    # Then every record was read by exactly one committed batch of each job, and each batch's
    # rows are exactly the words of its records
    value_at = {(partition, offset): value for partition, offset, value in records}
    assert len(value_at) == len(records)
    expected = oracle([value for _, _, value in records])
    for job in JOBS:
        batches = offsets_per_batch(tmp_path / f"{job}-ck", "killed")
        read = [
            (p, o)
            for ranges in batches.values()
            for p, (a, b) in ranges.items()
            for o in range(a, b)
        ]
        assert sorted(read) == sorted(value_at), job
        sink = read_sink(tmp_path / f"{job}-sink")
        assert not sink.duplicated(["batch_id", "word"]).any(), job
        assert set(sink.batch_id.unique()) <= set(batches), job
        column = "count" if job == "word_count" else "total"
        seen: Counter[str] = Counter()
        for batch_id, ranges in sorted(batches.items()):
            batch_words = Counter(oracle([value_at[record] for record in in_ranges(ranges)]))
            seen.update(batch_words)
            rows = sink[sink.batch_id == batch_id].set_index("word")[column].to_dict()
            if job == "word_count":
                assert rows == dict(batch_words), (job, batch_id)
            else:
                assert rows == {word: seen[word] for word in batch_words}, (job, batch_id)
        # And both end at the oracle of everything produced
        assert dict(seen) == expected, job
    assert counted(read_sink(tmp_path / "word_count-sink")) == expected
    assert totals(read_sink(tmp_path / "running_total-sink")) == expected
    # And at least one kill landed between a sink write and its commit (a replayed batch)
    assert aimed_kills >= 1, "no kill landed between a sink write and its commit"


def test_a_credential_from_the_environment_shows_nowhere(broker: str, tmp_path: Path) -> None:
    import urllib.request

    from spark_jobs.status import read_status

    # Given a stream whose Kafka login comes from an environment variable
    secret = "streamops-test-secret-4711"
    jaas = f'org.apache.kafka.common.security.plain.PlainLoginModule required password="{secret}";'
    create_topic(broker, "private")
    produce(broker, "private", [b"alpha beta"] * 5)
    argv = [
        *job_argv(tmp_path, "word_count", broker, "private"),
        "--kafka-option", "sasl.jaas.config=env:STREAMOPS_TEST_JAAS",
        "--kafka-option", "sasl.mechanism=PLAIN",
    ]  # fmt: skip
    log = tmp_path / "driver.log"
    with log.open("wb") as out:
        driver = subprocess.Popen(
            job_command("word_count", *argv),
            env={**os.environ, **JOB_ENV, "STREAMOPS_TEST_JAAS": jaas},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # When it has counted what the topic holds
        deadline = time.monotonic() + 240
        status = read_status(str(tmp_path / "word_count-ck"))
        while status is None or status.last_batch is None:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no batch in 240 s"
            time.sleep(0.5)
            status = read_status(str(tmp_path / "word_count-ck"))
        assert status.ui_url is not None
        assert status.app_id is not None
        # Then neither the Spark UI's environment nor its SQL plans show the secret
        api = f"{status.ui_url.rstrip('/')}/api/v1/applications/{status.app_id}"
        pages = {
            page: urllib.request.urlopen(f"{api}/{page}", timeout=30).read().decode()
            for page in ("environment", "sql?details=true&planDescription=true")
        }
        for page, body in pages.items():
            assert secret not in body, page
        assert "spark.app.id" in pages["environment"]
        # (the SQL pages are the micro-batches' plans, whose scans read Kafka)
        assert "kafka" in pages["sql?details=true&planDescription=true"].lower()
    finally:
        os.killpg(driver.pid, signal.SIGTERM)
        driver.wait(timeout=120)
    assert counted(read_sink(tmp_path / "word_count-sink")) == {"alpha": 5, "beta": 5}
    # And neither the command line, the driver's log, nor any file of the checkpoint holds it
    assert secret not in " ".join(driver.args)
    assert secret not in log.read_text(errors="replace")
    for path in (tmp_path / "word_count-ck").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_driver_waits_out_a_broker_outage_and_reads_on_exactly(tmp_path: Path) -> None:
    """A broker of its own (this test kills it): 60 s of outage under a running word_count."""
    from tests.conftest import free_port, load_kafka_script

    kafka = load_kafka_script()
    folder = tmp_path / "broker"
    bootstrap = kafka.start(folder, free_port())
    argv = job_argv(tmp_path, "word_count", bootstrap, "outage")
    driver = None
    try:
        # Given a word_count that has read what a topic held
        create_topic(bootstrap, "outage")
        rng = random.Random(60)
        before, after = messages(rng, 150), messages(rng, 150)
        produce(bootstrap, "outage", before)
        log = (tmp_path / "driver.log").open("w")
        driver = subprocess.Popen(
            job_command("word_count", *argv, "--trigger-interval", "1 second"),
            cwd=ROOT,
            env={**os.environ, **JOB_ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sink = tmp_path / "word_count-sink"
        wait_until(lambda: sink.exists() and counted(read_sink(sink)) == oracle(before), driver)
        # When the broker is SIGKILLed for 60 s, then started again on the same folder
        broker_pid = int((folder / "kafka.pid").read_text())
        os.killpg(broker_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(1)
        assert kafka.start(folder, None) == bootstrap
        produce(bootstrap, "outage", after)
        # Then the same driver reads on: every record once, nothing lost
        wait_until(lambda: counted(read_sink(sink)) == oracle(before + after), driver)
        committed = offsets_per_batch(tmp_path / "word_count-ck", "outage")
        ranges = sorted(r for batch in committed.values() for r in batch.items())
        for (p1, (_, end)), (p2, (start, _)) in itertools.pairwise(ranges):
            assert p1 != p2 or end == start, ranges  # contiguous: no gap, no overlap
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGTERM)
            driver.wait(90)
        kafka.stop(folder)


def wait_until(
    check: Callable[[], bool], driver: subprocess.Popen[bytes], timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert driver.poll() is None, f"the driver exited {driver.returncode}"
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(1)


def test_records_expired_before_they_were_read_fail_naming_them_until_accepted(
    broker: str, tmp_path: Path
) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    # Given a word_count that has read what a topic held, then records it has not read yet, of
    # which the first 20 of each partition expire (deleted up to offset 50: they were 30-49)
    create_topic(broker, "expiring")
    rng = random.Random(5)
    read, unread = messages(rng, 90), messages(rng, 90)
    produce(broker, "expiring", read)
    argv = [*job_argv(tmp_path, "word_count", broker, "expiring"), "--available-now"]
    env = {**os.environ, **JOB_ENV}

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        command = job_command("word_count", *argv, *extra)
        return subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
        )

    assert run().returncode == 0
    delivered = produce(broker, "expiring", unread)
    admin = AdminClient({"bootstrap.servers": broker})
    partitions = [TopicPartition("expiring", p, 50) for p in range(PARTITIONS)]
    for future in admin.delete_records(partitions).values():
        future.result(timeout=30)
    # When the stream starts again
    failed = run()
    # Then it is refused (exit 2: a restart cannot help), naming the partition, the offsets and
    # the two ways on
    assert failed.returncode == 2, failed.stderr[-3000:]
    (line,) = [x for x in failed.stderr.splitlines() if x.startswith("word_count: error:")]
    # (Spark names the batch's range of the partition: offsets 30 to 59, of which 30-49 expired)
    assert re.search(r"expiring-\d offsets 30 to 59 \(up to 30 records lost\)", line), line
    assert "--kafka-accept-data-loss" in line
    assert "kafka_accept_data_loss" in line
    # When it is started accepting the loss
    assert run("--kafka-accept-data-loss").returncode == 0
    # Then it read on from the earliest records left: everything but the expired ones, once
    kept = [value for partition, offset, value in delivered if offset >= 50]
    assert len(kept) == 90 - 3 * 20
    assert counted(read_sink(tmp_path / "word_count-sink")) == oracle(read + kept)
