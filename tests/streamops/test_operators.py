"""The spark-submit command of a stream: the Kafka source's jars and, for paths on S3, S3A's go in
`--jars`, for them alone."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from spark_jobs import jars
from streamops.config import StreamSpec
from streamops.operators import StreamSubmitOperator


def submit_command(spec: StreamSpec, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"})
    )
    operator = StreamSubmitOperator(task_id="stream", job=spec.job)
    context: Any = {"ti": SimpleNamespace(dag_id="word_count_stream", run_id="manual__1")}
    operator._prepare_submit(context, spec)
    return list(operator._get_hook()._build_spark_submit_command(operator.application))


def test_a_kafka_stream_is_submitted_with_the_pinned_connector_jars(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = StreamSpec(
        stream="wc", job="word_count", source="kafka", sink="s", checkpoint="c",
        kafka_topics=("lines",), kafka_bootstrap_servers="b:9092",
    )  # fmt: skip
    command = submit_command(spec, monkeypatch)
    paths = command[command.index("--jars") + 1].split(",")
    assert paths == jars.spark_kafka_jars()
    assert {Path(p).name for p in paths} == {
        "spark-sql-kafka-0-10_2.13-4.2.0.jar",
        "spark-token-provider-kafka-0-10_2.13-4.2.0.jar",
        "kafka-clients-3.9.2.jar",
        "commons-pool2-2.13.1.jar",
    }
    assert all(Path(p).is_file() for p in paths)


def test_a_file_stream_gets_no_jars(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = StreamSpec(stream="wc", job="word_count", input="i", sink="s", checkpoint="c")
    assert "--jars" not in submit_command(spec, monkeypatch)


def test_the_driver_is_told_its_spec_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from spark_jobs.packaging import code_version
    from streamops.registry import SpecVersion

    spec = StreamSpec(stream="wc", job="word_count", input="i", sink="s", checkpoint="c")
    command = submit_command(spec, monkeypatch)
    version = command[command.index("--spec-version") + 1]
    assert version == SpecVersion.id_of("word_count", {}, code_version())


def test_a_stream_on_s3_is_submitted_with_the_s3a_jars(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = StreamSpec(
        stream="wc", job="word_count", input="i", sink="s3a://b/s", checkpoint="s3a://b/c"
    )
    command = submit_command(spec, monkeypatch)
    paths = command[command.index("--jars") + 1].split(",")
    assert paths == [str(path) for path in jars.resolve(jars.S3A)]
    assert "hadoop-aws-3.5.0.jar" in {Path(p).name for p in paths}
