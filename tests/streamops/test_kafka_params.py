"""A Kafka stream from the trigger form: its Params, and its client from an Airflow connection.

The connection is the Apache Kafka provider's (its Config Dict in librdkafka's words); the job
gets the Java client's equivalent, with every credential kept off the command line.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from spark_jobs import word_count
from streamops.config import StreamConfigError, StreamSpec
from streamops.kafka import KafkaConnectionError, client_settings
from streamops.operators import StreamSubmitOperator

PASSWORD = "pa55-w0rd-of-the-streams-user"


def kafka_spec(**params: object) -> StreamSpec:
    return StreamSpec.from_params(
        "word_count", {"stream": "wc", "source": "kafka", **params}, root="/d"
    )


def test_kafka_params_become_the_job_arguments() -> None:
    spec = kafka_spec(
        kafka_topic="lines, clicks",
        kafka_starting_offsets='{"lines": {"0": 5}}',
        max_offsets_per_trigger=500,
    )
    client = client_settings("kafka_default", None, lambda _: {"bootstrap.servers": "b:9092"})
    argv = spec.application_args() + client.application_args()
    args = word_count.parse_args(argv)
    assert (args.source, args.kafka_topic, args.kafka_bootstrap_servers) == (
        "kafka",
        ["lines", "clicks"],
        "b:9092",
    )
    assert (args.kafka_starting_offsets, args.max_offsets_per_trigger) == (
        '{"lines": {"0": 5}}',
        500,
    )
    assert "--input" not in argv


def test_the_trigger_form_names_the_providers_default_connection() -> None:
    from streamops.params import stream_params

    assert stream_params("running_total")["kafka_connection"].value == "kafka_default"
    assert kafka_spec(kafka_topic="lines").kafka_connection == "kafka_default"


def test_a_topic_pattern_is_passed_as_such() -> None:
    args = kafka_spec(kafka_topic_pattern="lines-.*").application_args()
    assert args[args.index("--kafka-topic-pattern") + 1] == "lines-.*"
    assert "--kafka-topic" not in args


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "give exactly one of them"),
        ({"kafka_topic": "a", "kafka_topic_pattern": "a.*"}, "give exactly one of them"),
        ({"kafka_topic": "a b"}, "kafka_topic: must be a Kafka topic name"),
        ({"kafka_topic_pattern": "(unclosed"}, "kafka_topic_pattern: must be a regular expression"),
        ({"kafka_topic": "a", "kafka_starting_offsets": "soon"}, "kafka_starting_offsets: must be"),
        ({"kafka_topic": "a", "kafka_bootstrap_servers": "b"}, "expected HOST:PORT"),
        ({"kafka_topic": "a", "max_offsets_per_trigger": 0}, "at least 1"),
    ],
)
def test_the_operator_refuses_bad_kafka_params(params: dict[str, object], message: str) -> None:
    with pytest.raises(StreamConfigError, match=message):
        kafka_spec(**params)


def test_a_scram_login_from_the_connection_reaches_the_driver_through_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = {
        "bootstrap.servers": "b1:9093,b2:9093",
        "group.id": "the-providers-consumers",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "streams",
        "sasl.password": PASSWORD,
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "enable.ssl.certificate.verification": True,
    }
    client = client_settings("kafka_default", None, lambda _: extra)
    assert client.bootstrap_servers == "b1:9093,b2:9093"
    options = dict(client.options)
    assert options == {
        "sasl.jaas.config": "env:STREAMOPS_KAFKA_SECRET_0",
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": "/etc/kafka/ca.pem",
        "enable.ssl.certificate.verification": "true",
        "sasl.mechanism": "SCRAM-SHA-512",
        "security.protocol": "SASL_SSL",
    }
    assert client.secrets == {
        "STREAMOPS_KAFKA_SECRET_0": "org.apache.kafka.common.security.scram.ScramLoginModule "
        f'required username="streams" password="{PASSWORD}";'
    }
    assert PASSWORD not in " ".join(client.application_args())
    # And the job takes the settings, reading the login from that variable
    for name, value in client.secrets.items():
        monkeypatch.setenv(name, value)
    args = word_count.parse_args(
        kafka_spec(kafka_topic="lines").application_args() + client.application_args()
    )
    assert ("sasl.jaas.config", "env:STREAMOPS_KAFKA_SECRET_0") in args.kafka_option


def test_the_params_brokers_win_over_the_connections() -> None:
    client = client_settings("k", "p:1", lambda _: {"bootstrap.servers": "c:2"})
    assert client.bootstrap_servers == "p:1"
    assert client_settings("k", "p:1", lambda _: None).options == ()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (None, "Kafka connection 'kafka_eu': no brokers. Give the stream's kafka_bootstrap"),
        ({"sasl.username": "u", "sasl.password": "p"}, "no brokers"),
        (
            {"bootstrap.servers": "b:1", "sasl.mechanism": "GSSAPI", "sasl.username": "u"},
            "mechanisms PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 .this connection: GSSAPI",
        ),
        ({"bootstrap.servers": "b:1", "sasl.username": "u"}, "both given"),
        ({"bootstrap.servers": "b:1", "client.rack": {"a": 1}}, "client.rack is a dict"),
    ],
)
def test_a_connection_the_jobs_cannot_use_is_refused_by_name(
    extra: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(KafkaConnectionError, match=message):
        client_settings("kafka_eu", None, lambda _: extra)


def test_the_submit_command_holds_no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAFKA_DEFAULT",
        json.dumps(
            {
                "conn_type": "kafka",
                "extra": {
                    "bootstrap.servers": "broker:9092",
                    "security.protocol": "SASL_PLAINTEXT",
                    "sasl.username": "streams",
                    "sasl.password": PASSWORD,
                },
            }
        ),
    )
    spec = kafka_spec(kafka_topic="lines")
    operator = StreamSubmitOperator(task_id="stream", job=spec.job)
    context: Any = {"ti": SimpleNamespace(dag_id="word_count_stream", run_id="manual__1")}
    operator._prepare_submit(context, spec)
    hook = operator._get_hook()
    command = list(hook._build_spark_submit_command(operator.application))
    assert command[command.index("--kafka-bootstrap-servers") + 1] == "broker:9092"
    assert "sasl.jaas.config=env:STREAMOPS_KAFKA_SECRET_0" in command
    assert PASSWORD not in " ".join(command)
    assert PASSWORD not in json.dumps(operator.env_vars)
    assert PASSWORD in operator._driver_secrets["STREAMOPS_KAFKA_SECRET_0"]
