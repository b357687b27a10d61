"""A Kafka stream started from the stream DAG's Params, its brokers and login from an Airflow
connection: `airflow dags test` on a real broker, the sink exact, the login nowhere to be read."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from tests.dags.conftest import airflow_env, dags_test, run_state
from tests.spark_jobs.test_kafka_source import create_topic, messages, oracle, produce

pytestmark = [
    pytest.mark.airflow,
    pytest.mark.spark,
    pytest.mark.slow,
    pytest.mark.xdist_group("kafka_broker"),
]

PASSWORD = "kafka-login-0f-the-stream-7342"


def test_a_kafka_stream_runs_from_its_params_and_the_kafka_default_connection(
    airflow_home: Path, tmp_path: Path, broker: str
) -> None:
    # Given a topic with text on the broker, and the provider's connection naming that broker
    # (with a login, which a PLAINTEXT listener does not ask for)
    create_topic(broker, "dag-lines")
    values = messages(random.Random(29), 300)
    produce(broker, "dag-lines", values)
    connection = {
        "conn_type": "kafka",
        "extra": {
            "bootstrap.servers": broker,
            "group.id": "the-providers-consumers",
            "security.protocol": "PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "streams",
            "sasl.password": PASSWORD,
        },
    }
    env = airflow_env(airflow_home, tmp_path, AIRFLOW_CONN_KAFKA_DEFAULT=json.dumps(connection))
    # When the word_count DAG runs a bounded run on it, the trigger form naming only the topic
    conf = {
        "stream": "wc_kafka",
        "source": "kafka",
        "kafka_topic": "dag-lines",
        "max_offsets_per_trigger": 120,
        "available_now": True,
        "shuffle_partitions": 2,
    }
    result = dags_test("word_count_stream", conf, env)
    # Then the run succeeds and the sink holds each word's count of the produced text, once
    output = result.stdout + result.stderr
    assert run_state(result) == "success", output[-3000:]
    assert (tmp_path / "streams/wc_kafka/sink").is_dir(), output[-5000:]
    sink = pd.read_parquet(tmp_path / "streams/wc_kafka/sink")
    assert sink.batch_id.nunique() >= 3  # 300 records, at most 120 a batch
    assert sink.groupby("word")["count"].sum().to_dict() == oracle(values)
    # And the login is in no task log, driver log, checkpoint, status or registry file
    assert PASSWORD not in output
    for folder in (tmp_path, airflow_home):
        for path in folder.rglob("*"):
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), path


def test_a_kafka_stream_without_brokers_fails_with_what_to_do(
    airflow_home: Path, tmp_path: Path
) -> None:
    # Given no Kafka connection and no brokers in the Params
    env = airflow_env(airflow_home, tmp_path)
    conf = {"stream": "wc_nowhere", "source": "kafka", "kafka_topic": "lines"}
    # When the stream DAG runs
    result = dags_test("word_count_stream", conf, env)
    # Then it fails before any driver starts, saying what is missing and where to give it
    output = result.stdout + result.stderr
    assert run_state(result) == "failed", output[-3000:]
    assert "Kafka connection 'kafka_default': no brokers" in output, output[-3000:]
    assert "kafka_bootstrap_servers" in output
    assert not (tmp_path / "streams/wc_nowhere/checkpoint/_streamops/lease.json").exists()
