"""The trigger form of the stream DAGs: typed Params whose JSON schema refuses bad values."""

from __future__ import annotations

from airflow.sdk import Param

from spark_jobs.cli import KAFKA_STARTING_OFFSETS, SOURCES
from streamops.config import (
    BOOTSTRAP_SERVERS_PATTERN,
    CONNECTION_ID_PATTERN,
    HOST_PATTERN,
    INTERVAL_PATTERN,
    KAFKA_TOPICS_PATTERN,
    RELATIVE_PATH_PATTERN,
    STREAM_NAME_PATTERN,
)
from streamops.kafka import DEFAULT_CONNECTION

PATH_HELP = "relative to the data root ($STREAMOPS_DATA_ROOT); empty: streams/<stream>/{}"


def _path(name: str) -> Param:
    return Param(
        None,
        type=["null", "string"],
        pattern=RELATIVE_PATH_PATTERN,
        title=name.capitalize(),
        description=PATH_HELP.format(name),
    )


def stream_param(description: str, default: str | None = None, title: str = "Stream") -> Param:
    """The `stream` Param of every DAG: a stream name, or (without a default) empty for all."""
    return Param(
        default,
        type="string" if default else ["null", "string"],
        pattern=STREAM_NAME_PATTERN,
        title=title,
        description=description,
    )


def kafka_params() -> dict[str, Param]:
    """The Kafka source's fields. None names a secret: the brokers' security settings come
    from the Airflow connection (`streamops.kafka`)."""
    return {
        "kafka_topic": Param(
            None,
            type=["null", "string"],
            pattern=KAFKA_TOPICS_PATTERN,
            title="Kafka topics",
            description="source 'kafka': the topics to read, comma-separated (or a pattern below)",
        ),
        "kafka_topic_pattern": Param(
            None,
            type=["null", "string"],
            minLength=1,
            title="Kafka topic pattern",
            description="source 'kafka': read every topic whose name matches this Java regular "
            "expression, e.g. 'lines-.*' (instead of Kafka topics)",
        ),
        "kafka_starting_offsets": Param(
            "earliest",
            type="string",
            # The enum's two words, or the connector's JSON of offsets per partition.
            pattern=rf"^({'|'.join(KAFKA_STARTING_OFFSETS)}|\{{.*\}})$",
            examples=list(KAFKA_STARTING_OFFSETS),
            title="Kafka starting offsets",
            description="where a new checkpoint starts: earliest, latest, or JSON such as "
            '{"lines": {"0": 23, "1": -2}} (-2: earliest, -1: latest); a checkpoint that '
            "exists resumes from its own offsets",
        ),
        "max_offsets_per_trigger": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Max offsets per trigger",
            description="source 'kafka': at most this many records per micro-batch",
        ),
        "kafka_bootstrap_servers": Param(
            None,
            type=["null", "string"],
            pattern=BOOTSTRAP_SERVERS_PATTERN,
            title="Kafka bootstrap servers",
            description="HOST:PORT[,HOST:PORT...]; empty: the Kafka connection's bootstrap.servers",
        ),
        "kafka_connection": Param(
            DEFAULT_CONNECTION,
            type="string",
            pattern=CONNECTION_ID_PATTERN,
            title="Kafka connection",
            description="the Airflow connection (type 'kafka') with the brokers and security "
            "settings (its Config Dict); needed unless Kafka bootstrap servers is given",
        ),
    }


def stream_params(job: str) -> dict[str, Param]:
    """The Params of a stream DAG running `job`."""
    params = {
        "stream": stream_param(
            "names the stream everywhere (health checks, alerts, stream_control)",
            default=job,
            title="Stream name",
        ),
        "source": Param("file", type="string", enum=list(SOURCES), title="Source"),
        "input": _path("input"),
        "socket_host": Param(
            "localhost",
            type="string",
            pattern=HOST_PATTERN,
            title="Socket host",
            description="source 'socket' only: the host to read lines from (`nc -lk 9999`)",
        ),
        "socket_port": Param(9999, type="integer", minimum=1, maximum=65535, title="Socket port"),
        **kafka_params(),
        "sink": _path("sink"),
        "checkpoint": _path("checkpoint"),
        "trigger_interval": Param(
            "1 second",
            type="string",
            pattern=INTERVAL_PATTERN,
            title="Trigger interval",
            description="a micro-batch every interval, e.g. '1 second', '30 seconds'",
        ),
        "available_now": Param(
            False,
            type="boolean",
            title="Available now",
            description="process what is there, then end the run (a bounded run: backfills, tests)",
        ),
        "max_files_per_trigger": Param(
            None, type=["null", "integer"], minimum=1, title="Max files per trigger"
        ),
        "shuffle_partitions": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Shuffle partitions",
            description="empty: one per core of the Spark cluster; a running stream keeps the "
            "number its checkpoint started with (rotate to change it)",
        ),
        "console": Param(
            False,
            type="boolean",
            title="Console output",
            description="also print each batch's first words, as the seed's pprint() does, into "
            "this run's task log",
        ),
    }
    if job == "word_count":
        # Not for running_total: its sink is the record of every word's total (a rotation
        # carries the totals on from it), so none of it may expire.
        params["sink_retention_days"] = Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Sink retention (days)",
            description="sink_compaction expires sink batches older than this, whole files at a "
            "time; empty: $STREAMOPS_SINK_RETENTION_DAYS, or keep them forever",
        )
        params["window"] = Param(
            None,
            type=["null", "string"],
            pattern=INTERVAL_PATTERN,
            title="Window",
            description="sliding-window length, e.g. '30 seconds'; empty: per-batch counts",
        )
        params["slide"] = Param(
            None,
            type=["null", "string"],
            pattern=INTERVAL_PATTERN,
            title="Slide",
            description="how often a window starts, e.g. '10 seconds'; empty: the window length",
        )
    return params
