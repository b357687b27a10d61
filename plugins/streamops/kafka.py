"""A Kafka stream's brokers and client settings, from its Params or an Airflow connection.

The stream DAGs' Params name the topics, the starting offsets and the rate; they take no client
setting, so no secret is ever typed into a trigger form or stored with a DAG run's conf. The
brokers and the security settings come from an Airflow connection of the Apache Kafka provider's
type (`kafka_default` unless the `kafka_connection` Param names another), whose *Config Dict*
(its extra) is the provider's confluent-kafka configuration, e.g.

    {"bootstrap.servers": "broker-1:9093,broker-2:9093",
     "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
     "sasl.username": "streams", "sasl.password": "..."}

The same connection therefore serves the provider's own operators and sensors. The job runs Spark's
Kafka source, a Java client, so `client_settings` translates what differs (librdkafka's
`sasl.username`/`sasl.password` become the Java client's `sasl.jaas.config`, `ssl.ca.location`
a PEM trust store) and passes every other key on unchanged. A value whose key names a credential
reaches the driver only through an environment variable of the spark-submit process
(`--kafka-option KEY=env:NAME`), never through its command line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spark_jobs.cli import RESERVED_KAFKA_OPTIONS, SECRET_KEY

DEFAULT_CONNECTION = "kafka_default"
# The variables of the spark-submit process that carry credentials to the driver.
SECRET_ENV_PREFIX = "STREAMOPS_KAFKA_SECRET_"
# librdkafka's names for a login; the Java client takes one JAAS line instead.
LOGIN_KEYS = ("sasl.username", "sasl.password")
LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
# librdkafka settings that name the same thing under another key in the Java client.
RENAMED = {"sasl.mechanisms": "sasl.mechanism"}
# Consumer-group settings of the provider's consumers: Spark's Kafka source manages its own.
CONSUMER_ONLY = frozenset(RESERVED_KAFKA_OPTIONS) - {"bootstrap.servers"}


class KafkaConnectionError(ValueError):
    """A Kafka connection cannot be used by the jobs; the message names it and what to change."""


@dataclass(frozen=True)
class KafkaClient:
    """What a Kafka stream's driver is given: the brokers, `--kafka-option` values (a credential
    as `env:NAME`), and the credentials by variable name, for the spark-submit environment."""

    bootstrap_servers: str
    options: tuple[tuple[str, str], ...] = ()
    secrets: Mapping[str, str] = field(default_factory=dict)

    def application_args(self) -> list[str]:
        args = ["--kafka-bootstrap-servers", self.bootstrap_servers]
        for key, value in self.options:
            args += ["--kafka-option", f"{key}={value}"]
        return args


def client_settings(
    connection_id: str,
    bootstrap_servers: str | None,
    get_extra: Callable[[str], Mapping[str, Any] | None],
) -> KafkaClient:
    """The client of a stream: its `bootstrap_servers` Param if given, otherwise the
    connection's; the connection's security settings in both cases.

    `get_extra(connection_id)` returns the connection's extra, or None when there is no such
    connection (which is fine only when the Params name the brokers).
    """
    extra = dict(get_extra(connection_id) or {})
    where = f"Kafka connection {connection_id!r}"
    servers = bootstrap_servers or extra.get("bootstrap.servers")
    if not servers:
        raise KafkaConnectionError(
            f"{where}: no brokers. Give the stream's kafka_bootstrap_servers Param, or create "
            f"the connection (type 'kafka', Admin > Connections) with a Config Dict such as "
            '{"bootstrap.servers": "broker:9092"}'
        )
    extra.pop("bootstrap.servers", None)
    for key in CONSUMER_ONLY:
        extra.pop(key, None)
    options: list[tuple[str, str]] = []
    secrets: dict[str, str] = {}

    def secret(key: str, value: str) -> None:
        name = f"{SECRET_ENV_PREFIX}{len(secrets)}"
        secrets[name] = value
        options.append((key, f"env:{name}"))

    if any(key in extra for key in LOGIN_KEYS):
        mechanism = str(extra.get("sasl.mechanism") or extra.get("sasl.mechanisms") or "PLAIN")
        module = LOGIN_MODULES.get(mechanism.upper())
        if module is None or not all(key in extra for key in LOGIN_KEYS):
            raise KafkaConnectionError(
                f"{where}: sasl.username and sasl.password are turned into a login for the "
                f"mechanisms {', '.join(LOGIN_MODULES)} (this connection: {mechanism}, "
                f"{'both' if module else 'mechanism unsupported'} given). For another "
                "mechanism put the Java client's sasl.jaas.config in the Config Dict instead"
            )
        username, password = (str(extra.pop(key)) for key in LOGIN_KEYS)
        secret("sasl.jaas.config", jaas_line(module, username, password))
    if "ssl.ca.location" in extra:
        options += [
            ("ssl.truststore.type", "PEM"),
            ("ssl.truststore.location", str(extra.pop("ssl.ca.location"))),
        ]
    for name, value in sorted(extra.items()):
        if not isinstance(value, str | int | float | bool):
            raise KafkaConnectionError(
                f"{where}: {name} is a {type(value).__name__}; the jobs take text, numbers and "
                "true/false settings only"
            )
        text = str(value).lower() if isinstance(value, bool) else str(value)
        key = RENAMED.get(name, name)
        if SECRET_KEY.search(key):
            secret(key, text)
        else:
            options.append((key, text))
    return KafkaClient(servers, tuple(options), secrets)


def jaas_line(module: str, username: str, password: str) -> str:
    """The Java client's `sasl.jaas.config` for a user name and a password."""

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return f"{module} required username={quoted(username)} password={quoted(password)};"


def connection_extra(connection_id: str) -> Mapping[str, Any] | None:
    """The extra of an Airflow connection (from the metadata database, a secrets backend or
    `AIRFLOW_CONN_*`), or None when no connection has that id."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(connection_id)
    except AirflowNotFoundException:
        return None
    return connection.extra_dejson


def mask_secrets(client: KafkaClient) -> None:
    """Redact the client's credentials from every task log line (Airflow's secrets masker)."""
    from airflow.sdk.log import mask_secret

    for name, value in client.secrets.items():
        mask_secret(value, name)
