"""The trigger form of the stream DAGs: typed Params whose JSON schema refuses bad values, and
what changing each of them on a running stream requires (`CHANGES`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

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
        "kafka_accept_data_loss": Param(
            False,
            type="boolean",
            title="Kafka: accept data loss",
            description="source 'kafka': when records the stream had not read have expired from "
            "the topic, read on from the earliest ones left instead of failing (docs/runbook.md, "
            "kafka_data_loss)",
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


# ---------------------------------------------------------------------------------------------
# What a change needs: the one table of upgrades (docs/upgrades.md shows it; a test keeps the two
# equal). A stream's spec is its job, these Params and the code version (`CODE_VERSION`); an
# upgrade changes some of them, and each change needs at least what its row says:
#
# - `restart`: stop at a batch boundary and start the new spec on the same checkpoint;
# - `new checkpoint`: rotate first (`checkpoint_rotation`: the input position is carried, and a
#   running_total's totals), then start the new spec on the new generation;
# - `refused`: not an upgrade of this stream at all; the reason says what to do instead.
#
# The preflight (`streamops.upgrades`) can only raise what a row asks for: it runs the new spec on
# a copy of the checkpoint and turns what Spark's state data source finds different into further
# reasons for a new checkpoint.

Requirement = Literal["restart", "new checkpoint", "refused"]
#: The requirements from the cheapest to the most drastic.
REQUIREMENTS: tuple[Requirement, ...] = ("restart", "new checkpoint", "refused")
#: The spec's part that is not a Param: the content of `spark_jobs/`.
CODE_VERSION = "code"

_NEW_STREAM = "start a new stream under another name (its own sink and checkpoint) instead"


@dataclass(frozen=True)
class ChangeRule:
    """What changing one part of a stream's spec requires, and why.

    `stateful` overrides `requires` for a stream that keeps state across batches (a
    running_total, or a word_count with a window), whose state the change affects.
    """

    requires: Requirement
    why: str
    stateful: Requirement | None = None
    stateful_why: str = ""

    def requirement(self, keeps_state: bool) -> tuple[Requirement, str]:
        """What the change requires of a stream that keeps state or not, and why."""
        if keeps_state and self.stateful is not None:
            return self.stateful, self.stateful_why
        return self.requires, self.why


CHANGES: dict[str, ChangeRule] = {
    "stream": ChangeRule("refused", f"the name is the stream: {_NEW_STREAM}"),
    "source": ChangeRule(
        "refused",
        "another source kind has other offsets, which the checkpoint cannot resume; " + _NEW_STREAM,
    ),
    "input": ChangeRule(
        "refused",
        "the checkpoint's position is in this input; another input would be read from its "
        f"start or skipped; {_NEW_STREAM}",
    ),
    "socket_host": ChangeRule("refused", f"the socket is the stream's input; {_NEW_STREAM}"),
    "socket_port": ChangeRule("refused", f"the socket is the stream's input; {_NEW_STREAM}"),
    "sink": ChangeRule(
        "refused",
        f"the sink holds the stream's batches, whose ids go on from the checkpoint; {_NEW_STREAM}",
    ),
    "checkpoint": ChangeRule(
        "refused",
        "the checkpoint is what an upgrade carries over; the upgrade itself moves a stream to a "
        "new one (mode new-checkpoint)",
    ),
    "kafka_topic": ChangeRule(
        "refused",
        "the checkpoint's offsets are those of these topics; other topics would be read from "
        f"their starting offsets or skipped; {_NEW_STREAM}",
    ),
    "kafka_topic_pattern": ChangeRule(
        "refused",
        f"the checkpoint's offsets are those of the topics it matched; {_NEW_STREAM}",
    ),
    "kafka_starting_offsets": ChangeRule(
        "restart", "a checkpoint that exists resumes from its own offsets, never from these"
    ),
    "max_offsets_per_trigger": ChangeRule("restart", "a batch's size is no part of the checkpoint"),
    "kafka_bootstrap_servers": ChangeRule(
        "restart", "which brokers serve the topics is no part of the checkpoint"
    ),
    "kafka_accept_data_loss": ChangeRule(
        "restart", "whether expired records fail the stream is no part of the checkpoint"
    ),
    "kafka_connection": ChangeRule(
        "restart", "the brokers' address and login are no part of the checkpoint"
    ),
    "trigger_interval": ChangeRule("restart", "when batches start is no part of the checkpoint"),
    "available_now": ChangeRule("restart", "the same checkpoint runs bounded or unbounded"),
    "max_files_per_trigger": ChangeRule("restart", "a batch's size is no part of the checkpoint"),
    "console": ChangeRule("restart", "printing batches is no part of the checkpoint"),
    "sink_retention_days": ChangeRule(
        "restart", "sink_compaction reads it from the stream's record; the driver does not"
    ),
    "shuffle_partitions": ChangeRule(
        "restart",
        "a stateless query keeps no state partitions",
        stateful="new checkpoint",
        stateful_why="Spark keeps the number of state partitions a checkpoint started with",
    ),
    "window": ChangeRule(
        "new checkpoint",
        "windowing on, off or of another length is another state: the old checkpoint has none "
        "of it, or the wrong one",
    ),
    "slide": ChangeRule("new checkpoint", "another slide is another set of windows in the state"),
    # Job arguments that the stream DAGs do not offer as Params yet; an upgrade refuses them as
    # unknown keys until they are Params.
    "normalize": ChangeRule(
        "restart",
        "per-batch counts keep no state",
        stateful="new checkpoint",
        stateful_why="the state's words would mix normalized and raw forms ('Hello' beside "
        "'hello') from the change on",
    ),
    "state_store": ChangeRule(
        "new checkpoint", "Spark keeps the state store provider a checkpoint started with"
    ),
    CODE_VERSION: ChangeRule(
        "restart",
        "new code runs on the same checkpoint when the preflight finds the same state "
        "operators, schemas and partitions; any difference it finds needs a new checkpoint",
    ),
}


def keeps_state(job: str, params: Mapping[str, object]) -> bool:
    """Whether a stream of `job` with these Params keeps state across batches."""
    return job == "running_total" or bool(params.get("window"))


@dataclass(frozen=True)
class Change:
    """One difference between two specs of a stream, and what it requires."""

    key: str
    old: object
    new: object
    requires: Requirement
    why: str

    def describe(self) -> str:
        """`trigger_interval: '1 second' -> '5 seconds' (restart: ...)`."""
        return f"{self.key}: {self.old!r} -> {self.new!r} ({self.requires}: {self.why})"


def changes(
    job: str, old: Mapping[str, object], new: Mapping[str, object], defaults: bool = True
) -> list[Change]:
    """The differences between two Params of a stream of `job`, each with its rule's requirement.

    A Param missing from either side counts as its default (`stream_params(job)`), so a record
    written before a Param existed compares equal to one with its default. A key that no rule
    names is refused.
    """
    declared = stream_params(job)
    stateful = keeps_state(job, old) or keeps_state(job, new)

    def value(params: Mapping[str, object], key: str) -> object:
        if key in params:
            return params[key]
        return declared[key].value if defaults and key in declared else None

    found = []
    for key in sorted(set(old) | set(new)):
        before, after = value(old, key), value(new, key)
        if before == after:
            continue
        rule = CHANGES.get(key)
        if rule is None:
            found.append(Change(key, before, after, "refused", "no rule says what it requires"))
            continue
        requires, why = rule.requirement(stateful)
        found.append(Change(key, before, after, requires, why))
    return found
