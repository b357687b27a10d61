"""The trigger form refuses bad values before anything starts, and the operator checks again."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk import Param
from airflow.sdk.exceptions import ParamValidationError

from streamops.config import JOBS, StreamConfigError, StreamSpec
from streamops.params import CHANGES, CODE_VERSION, REQUIREMENTS, changes, stream_params


def validate(name: str, value: object, job: str = "word_count") -> object:
    param: Param = stream_params(job)[name]
    return Param(value, **param.schema).resolve()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("input", "../etc"),
        ("input", "streams/../../etc"),
        ("input", "/etc/passwd"),
        ("sink", "out; rm -rf /"),
        ("sink", "$(reboot)"),
        ("checkpoint", "a b"),
        ("checkpoint", "x|y"),
        ("checkpoint", "."),
        ("source", "kinesis"),
        ("kafka_topic", "lines; rm"),
        ("kafka_topic", "a b"),
        ("kafka_starting_offsets", "soon"),
        ("kafka_bootstrap_servers", "broker"),
        ("kafka_bootstrap_servers", "b:9092;evil"),
        ("kafka_connection", "my conn"),
        ("max_offsets_per_trigger", 0),
        ("shuffle_partitions", 0),
        ("shuffle_partitions", -4),
        ("max_files_per_trigger", 0),
        ("trigger_interval", "soon"),
        ("trigger_interval", "1 second; ls"),
        ("stream", "Word Count"),
        ("socket_port", 0),
        ("socket_host", "evil host;"),
        ("window", "-5 seconds"),
        ("sink_retention_days", 0),
        ("sink_retention_days", "a week"),
    ],
)
def test_trigger_form_refuses(name: str, value: object) -> None:
    with pytest.raises(ParamValidationError):
        validate(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("input", "streams/word_count/input"),
        ("sink", "team-a/sinks/wc.v2"),
        ("trigger_interval", "30 seconds"),
        ("trigger_interval", "500 ms"),
        ("shuffle_partitions", 16),
        ("max_files_per_trigger", None),
        ("window", "30 seconds"),
        ("input", None),
        ("sink_retention_days", None),
        ("sink_retention_days", 0.5),
        ("sink_retention_days", 30),
        ("source", "kafka"),
        ("kafka_topic", "lines"),
        ("kafka_topic", "lines, clicks.v2,orders-eu"),
        ("kafka_topic_pattern", "lines-.*"),
        ("kafka_starting_offsets", "latest"),
        ("kafka_starting_offsets", '{"lines": {"0": 23, "1": -2}}'),
        ("kafka_bootstrap_servers", "b1:9092,b2.example.com:9093"),
        ("kafka_connection", "kafka_eu"),
        ("max_offsets_per_trigger", 5000),
    ],
)
def test_trigger_form_accepts(name: str, value: object) -> None:
    assert validate(name, value) == value


def test_default_paths_live_under_the_data_root() -> None:
    spec = StreamSpec.from_params("running_total", {"stream": "rt"}, root="/data")
    assert (spec.input, spec.sink, spec.checkpoint) == (
        "/data/streams/rt/input",
        "/data/streams/rt/sink",
        "/data/streams/rt/checkpoint",
    )


def test_operator_side_check_refuses_paths_outside_the_root() -> None:
    with pytest.raises(
        StreamConfigError, match=r"sink '\.\./x' is not a path inside the data root"
    ):
        StreamSpec.from_params("word_count", {"stream": "wc", "sink": "../x"}, root="/data")


def test_application_args_follow_the_job_cli() -> None:
    spec = StreamSpec.from_params(
        "word_count",
        {
            "stream": "wc",
            "trigger_interval": "5 seconds",
            "max_files_per_trigger": 3,
            "shuffle_partitions": 4,
            "window": "30 seconds",
            "slide": "10 seconds",
            "console": True,
        },
        root="s3://bucket/root",
    )
    assert spec.application_args() == [
        "--source", "file",
        "--input", "s3://bucket/root/streams/wc/input",
        "--sink", "s3://bucket/root/streams/wc/sink",
        "--checkpoint", "s3://bucket/root/streams/wc/checkpoint",
        "--trigger-interval", "5 seconds",
        "--max-files-per-trigger", "3",
        "--shuffle-partitions", "4",
        "--console",
        "--window", "30 seconds",
        "--slide", "10 seconds",
    ]  # fmt: skip


def test_the_job_accepts_the_arguments_the_operator_builds(tmp_path: object) -> None:
    from spark_jobs import running_total

    spec = StreamSpec.from_params(
        "running_total",
        {"stream": "rt", "source": "socket", "socket_port": 9000, "console": True},
        root="/d",
    )
    args = running_total.parse_args(spec.application_args())
    assert (args.source, args.host, args.port, args.sink, args.console) == (
        "socket",
        "localhost",
        9000,
        "/d/streams/rt/sink",
        True,
    )


def test_sink_compaction_applies_the_retention_the_stream_was_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa

    from spark_jobs.sinks import WORD_COUNT_SCHEMA, ParquetBatchSink, with_batch_columns
    from streamops import registry
    from streamops.lifecycle import compact_stream

    # Given a stream started with a 7-day sink retention, whose first two batches are older
    monkeypatch.setenv("STREAMOPS_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("STREAMOPS_SINK_RETENTION_DAYS", raising=False)
    sink, checkpoint = tmp_path / "sink", tmp_path / "checkpoint"
    now = datetime.now(UTC)
    for batch_id, age in enumerate((30, 10, 1)):
        rows = pa.table({"word": ["a"], "count": [1]})
        ParquetBatchSink(str(sink), WORD_COUNT_SCHEMA).write(
            batch_id, with_batch_columns(rows, batch_id, now - timedelta(days=age))
        )
        (checkpoint / "commits").mkdir(parents=True, exist_ok=True)
        (checkpoint / "commits" / str(batch_id)).write_text("v1\n{}\n")
    registry.save(
        registry.StreamRecord(
            stream="words",
            job="word_count",
            checkpoint=str(checkpoint),
            sink=str(sink),
            input=str(tmp_path / "input"),
            trigger_interval="1 second",
            params={"stream": "words", "sink_retention_days": 7},
        )
    )
    # When the sink_compaction task compacts it
    result = compact_stream("words", owner="test")
    # Then the two old batches expired, the newest stayed
    assert (result["expired"], result["expired_before"]) == (2, 2)
    assert (sink / "_expired-before-000000000002").exists()

    # And a running_total sink keeps every batch, even with a default retention for all streams
    assert "sink_retention_days" not in stream_params("running_total")
    record = registry.load("words")
    assert record is not None
    record.job = "running_total"
    record.params = {"stream": "words"}
    registry.save(record)
    monkeypatch.setenv("STREAMOPS_SINK_RETENTION_DAYS", "0.5")
    (checkpoint / "commits" / "3").write_text("v1\n{}\n")
    ParquetBatchSink(str(sink), WORD_COUNT_SCHEMA).write(
        3, with_batch_columns(pa.table({"word": ["a"], "count": [1]}), 3, now)
    )
    assert compact_stream("words", owner="test")["expired"] == 0


# -- what a change needs ----------------------------------------------------------------------


@pytest.mark.parametrize("job", JOBS)
def test_every_param_of_a_stream_dag_has_a_change_rule(job: str) -> None:
    # A Param added without a rule would be refused by every upgrade as unknown.
    assert set(stream_params(job)) <= set(CHANGES), set(stream_params(job)) - set(CHANGES)
    assert CODE_VERSION in CHANGES


WINDOWED = {"window": "30 seconds"}


@pytest.mark.parametrize(
    ("job", "old", "new", "requires"),
    [
        ("word_count", {}, {"trigger_interval": "5 seconds"}, "restart"),
        ("running_total", {}, {"max_files_per_trigger": 10}, "restart"),
        ("word_count", {}, {"shuffle_partitions": 4}, "restart"),
        ("running_total", {}, {"shuffle_partitions": 4}, "new checkpoint"),
        # A windowed word count keeps state: its partitions are the checkpoint's.
        ("word_count", WINDOWED, {**WINDOWED, "shuffle_partitions": 4}, "new checkpoint"),
        ("word_count", {}, {"window": "30 seconds"}, "new checkpoint"),
        ("word_count", {"window": "30 seconds"}, {}, "new checkpoint"),
        ("word_count", WINDOWED, {**WINDOWED, "slide": "10 seconds"}, "new checkpoint"),
        ("running_total", {}, {"normalize": True}, "new checkpoint"),
        ("word_count", {}, {"normalize": True}, "restart"),
        ("running_total", {}, {"state_store": "hdfs"}, "new checkpoint"),
        ("word_count", {}, {"source": "socket"}, "refused"),
        ("word_count", {}, {"input": "streams/other/input"}, "refused"),
        ("running_total", {}, {"sink": "elsewhere"}, "refused"),
        ("word_count", {}, {"no_such_param": 1}, "refused"),
    ],
)  # fmt: skip
def test_a_change_requires_what_its_rule_says(
    job: str, old: dict[str, object], new: dict[str, object], requires: str
) -> None:
    found = changes(job, old, new)
    assert max(REQUIREMENTS.index(c.requires) for c in found) == REQUIREMENTS.index(requires)


def test_a_param_missing_from_an_old_record_counts_as_its_default() -> None:
    # A record written before `console` existed, against Params that give its default.
    assert changes("word_count", {"stream": "wc"}, {"stream": "wc", "console": False}) == []
    (change,) = changes("word_count", {"stream": "wc"}, {"stream": "wc", "console": True})
    assert (change.key, change.old, change.new, change.requires) == (
        "console",
        False,
        True,
        "restart",
    )
    assert "console: False -> True (restart:" in change.describe()


def test_docs_upgrades_shows_the_change_table_as_it_is() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "upgrades.md").read_text()
    section = text.split("## What each change needs", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            key, needs, stateful, why = (cell.strip() for cell in line.strip("|").split(" | "))
            rows[key.strip("`")] = (needs, stateful, why)
    expected = {
        key: (
            rule.requires,
            rule.stateful or rule.requires,
            f"{rule.why}; with state: {rule.stateful_why}" if rule.stateful else rule.why,
        )
        for key, rule in CHANGES.items()
    }
    assert rows == expected
