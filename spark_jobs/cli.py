"""The jobs' command line: the contract that users, `spark-submit` and the DAGs script against.

Bad arguments end the program with exit code 2 and one line on stderr that names the argument.
This module imports neither pyspark nor pandas, so the control plane can validate with it too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import NoReturn

SOURCES = ("file", "socket", "rate", "kafka")
KAFKA_STARTING_OFFSETS = ("earliest", "latest")
# Kafka's own rule for topic names.
KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# `--kafka-option KEY=env:VARNAME`: the value is read from the driver's environment.
ENV_VALUE_PREFIX = "env:"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Options the job sets itself, from its own arguments, or that Spark's Kafka source refuses.
RESERVED_KAFKA_OPTIONS = (
    "bootstrap.servers",
    "group.id",
    "auto.offset.reset",
    "key.deserializer",
    "value.deserializer",
    "enable.auto.commit",
    "interceptor.classes",
)
# Keys whose values are credentials: they must come from the environment, never from argv.
SECRET_KEY = re.compile(r"(?i)secret|password|passwd|token|jaas|credential|private[._-]?key")
DEFAULT_TRIGGER_INTERVAL = "1 second"
EXIT_BAD_ARGS = 2

_UNITS_MS = {
    "millisecond": 1,
    "second": 1000,
    "minute": 60_000,
    "hour": 3_600_000,
}
_UNIT_ALIASES = {
    "ms": "millisecond",
    "msec": "millisecond",
    "s": "second",
    "sec": "second",
    "m": "minute",
    "min": "minute",
    "h": "hour",
}
_INTERVAL = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")


def _unit(word: str) -> str | None:
    for candidate in (word, word.removesuffix("s")):
        unit = _UNIT_ALIASES.get(candidate, candidate)
        if unit in _UNITS_MS:
            return unit
    return None


class JobArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        """Print `<prog>: error: <message>` and exit with code 2."""
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_ARGS)


def interval_ms(text: str, allow_zero: bool = False) -> int:
    """Milliseconds in an interval such as `"1 second"`, `"500 milliseconds"` or `"2 min"`.

    Raises `ValueError` with a message for the user when the text is not such an interval.
    """
    match = _INTERVAL.match(text.lower())
    unit = _unit(match.group(2)) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"expected an interval like '1 second', '500 milliseconds' or '2 minutes', got {text!r}"
        )
    amount = int(match.group(1))
    if amount <= 0 and not allow_zero:
        raise ValueError(f"the interval must be longer than zero, got {text!r}")
    return amount * _UNITS_MS[unit]


def _spark_interval(ms: int) -> str:
    if ms == 0:
        return "0 seconds"
    for unit, size in reversed(_UNITS_MS.items()):
        if ms % size == 0:
            return f"{ms // size} {unit}s"
    raise AssertionError("unreachable: milliseconds divide every interval")


def interval(text: str) -> str:
    """argparse type: a non-zero interval, normalised to the `"<n> <unit>s"` form Spark reads."""
    try:
        return _spark_interval(interval_ms(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def trigger_interval(text: str) -> str:
    """argparse type: a trigger interval; `"0 seconds"` runs micro-batches back to back."""
    try:
        return _spark_interval(interval_ms(text, allow_zero=True))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 1 to 65535, got {text!r}")
    return value


def kafka_topic(text: str) -> str:
    """argparse type: a Kafka topic name."""
    if not KAFKA_TOPIC.match(text):
        raise argparse.ArgumentTypeError(
            f"must be a Kafka topic name (letters, digits, '.', '_' and '-', at most 249), "
            f"got {text!r}"
        )
    return text


def kafka_topic_pattern(text: str) -> str:
    """argparse type: a regular expression of topic names."""
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(
            f"must be a regular expression of topic names, got {text!r}: {err}"
        ) from err
    return text


def kafka_starting_offsets(text: str) -> str:
    """argparse type: `earliest`, `latest`, or the connector's JSON of offsets per partition.

    The JSON is `{"topic": {"0": 23, "1": -2}}`, where -2 stands for earliest and -1 for latest.
    """
    if text in KAFKA_STARTING_OFFSETS:
        return text
    try:
        offsets = json.loads(text)
    except ValueError:
        offsets = None
    valid = isinstance(offsets, dict) and all(
        isinstance(topic, str)
        and isinstance(partitions, dict)
        and all(
            p.isdigit() and isinstance(o, int) and not isinstance(o, bool) and o >= -2
            for p, o in partitions.items()
        )
        for topic, partitions in offsets.items()
    )
    if not valid:
        raise argparse.ArgumentTypeError(
            "must be 'earliest', 'latest' or JSON such as '{\"lines\": {\"0\": 23, \"1\": -2}}' "
            f"(offsets per partition; -2: earliest, -1: latest), got {text!r}"
        )
    return text


def kafka_option(text: str) -> tuple[str, str]:
    """argparse type: `KEY=VALUE`, a setting of the Kafka client (`security.protocol=SASL_SSL`).

    A value `env:VARNAME` is read from the driver's environment when the stream starts, and is
    the only way to give a value whose key names a credential (`sasl.jaas.config`,
    `ssl.key.password`, ...): such values never appear in the command line.
    """
    key, sep, value = text.partition("=")
    key = key.strip().removeprefix("kafka.")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    if key in RESERVED_KAFKA_OPTIONS:
        raise argparse.ArgumentTypeError(
            f"{key} is set by the job itself or refused by Spark's Kafka source; "
            "use --kafka-bootstrap-servers for the brokers"
        )
    if value.startswith(ENV_VALUE_PREFIX):
        if not ENV_NAME.match(value.removeprefix(ENV_VALUE_PREFIX)):
            raise argparse.ArgumentTypeError(
                f"{key}: {value!r} must name an environment variable, e.g. env:KAFKA_JAAS_CONFIG"
            )
    elif SECRET_KEY.search(key):
        # Only the key is echoed: the value may be the secret itself.
        raise argparse.ArgumentTypeError(
            f"{key} holds a credential: give it as {key}=env:VARNAME and put the value in that "
            "environment variable, so it never appears in the command line"
        )
    return key, value


def kafka_client_options(
    options: list[tuple[str, str]], environ: dict[str, str] | None = None
) -> dict[str, str]:
    """The `kafka.`-prefixed options of Spark's Kafka source, `env:` values read from the
    environment. Raises `ValueError` naming the variable (never its value) when one is unset."""
    env = dict(os.environ) if environ is None else environ
    resolved = {}
    for key, value in options:
        if value.startswith(ENV_VALUE_PREFIX):
            name = value.removeprefix(ENV_VALUE_PREFIX)
            if name not in env:
                raise ValueError(
                    f"--kafka-option: {key}=env:{name}, but the environment variable {name} is "
                    "not set in the driver's environment"
                )
            resolved[f"kafka.{key}"] = env[name]
        else:
            resolved[f"kafka.{key}"] = value
    return resolved


def common_parser(prog: str, description: str) -> JobArgumentParser:
    """The arguments both jobs take."""
    parser = JobArgumentParser(prog=prog, description=description)
    src = parser.add_argument_group("source")
    src.add_argument(
        "--source",
        choices=SOURCES,
        default="file",
        help="file: new files in --input (default); socket: lines from --host:--port, as in "
        "`nc -lk 9999`; rate: generated words for load tests; kafka: the values of the records "
        "of --kafka-topic (or --kafka-topic-pattern) on --kafka-bootstrap-servers",
    )
    src.add_argument(
        "--input",
        metavar="DIR",
        help="folder the file source watches; writers must write elsewhere (or to a name "
        "starting with '.' or '_') and then move each finished file in with an atomic rename",
    )
    src.add_argument("--host", default="localhost", help="socket source host (default localhost)")
    src.add_argument("--port", type=port, default=9999, help="socket source port (default 9999)")
    src.add_argument(
        "--rows-per-second",
        type=positive_int,
        default=1000,
        metavar="N",
        help="rate source: words generated per second (default 1000)",
    )
    src.add_argument(
        "--max-files-per-trigger",
        type=positive_int,
        metavar="N",
        help="file source: at most N new files per micro-batch (default: all new files)",
    )
    kafka = parser.add_argument_group("kafka source")
    kafka.add_argument(
        "--kafka-bootstrap-servers",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the Kafka brokers to connect to first",
    )
    topics = kafka.add_mutually_exclusive_group()
    topics.add_argument(
        "--kafka-topic",
        type=kafka_topic,
        nargs="+",
        action="extend",
        metavar="TOPIC",
        help="the topics to read (one or more)",
    )
    topics.add_argument(
        "--kafka-topic-pattern",
        type=kafka_topic_pattern,
        metavar="REGEX",
        help="read every topic whose name matches REGEX (Java regular expression syntax)",
    )
    kafka.add_argument(
        "--kafka-starting-offsets",
        type=kafka_starting_offsets,
        default="earliest",
        metavar="OFFSETS",
        help="where a new checkpoint starts: earliest (default: everything the topics still "
        "hold), latest, or JSON offsets per partition; a checkpoint resumes where it stopped",
    )
    kafka.add_argument(
        "--max-offsets-per-trigger",
        type=positive_int,
        metavar="N",
        help="kafka source: at most N records per micro-batch (default: all new records)",
    )
    kafka.add_argument(
        "--kafka-accept-data-loss",
        action="store_true",
        help="kafka source: read on from the earliest records still in the topic when records "
        "the stream had not read yet have expired (default: fail, naming them)",
    )
    kafka.add_argument(
        "--kafka-option",
        type=kafka_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Kafka client setting, e.g. security.protocol=SASL_SSL; VALUE env:NAME reads the "
        "value from the environment variable NAME (required for credentials)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--sink", required=True, metavar="DIR", help="Parquet dataset to write")
    out.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="the query's checkpoint folder"
    )
    out.add_argument(
        "--console",
        action="store_true",
        help="also print each batch: a 'Time: ...' header and its first 10 (word, count) pairs",
    )
    run = parser.add_argument_group("running")
    when = run.add_mutually_exclusive_group()
    when.add_argument(
        "--trigger-interval",
        type=trigger_interval,
        default=trigger_interval(DEFAULT_TRIGGER_INTERVAL),
        metavar="INTERVAL",
        help="start a micro-batch every INTERVAL (default '1 second'; '0 seconds': back to back)",
    )
    when.add_argument(
        "--available-now",
        action="store_true",
        help="process everything available now, then exit 0 (not with --source socket)",
    )
    run.add_argument(
        "--shuffle-partitions",
        type=positive_int,
        metavar="N",
        help="partitions of the aggregation (default: one per core, Spark's default parallelism); "
        "a stateful query keeps the number it was first started with",
    )
    run.add_argument(
        "--normalize",
        action="store_true",
        help="lower-case words and strip their leading and trailing punctuation",
    )
    run.add_argument(
        "--allow-new-checkpoint",
        action="store_true",
        help="start a new checkpoint even though --sink already holds batches (the file source "
        "then reads every file in --input again)",
    )
    run.add_argument(
        "--stream",
        metavar="NAME",
        help="the stream's name, recorded in the checkpoint's lease (default: the job's name)",
    )
    run.add_argument(
        "--spec-version",
        metavar="ID",
        help="the version of the stream's spec this driver runs, recorded in the lease and the "
        "status (the stream DAGs pass it; default: none)",
    )
    run.add_argument(
        "--owner",
        metavar="TEXT",
        help="who started this driver, recorded in the lease (the stream DAGs pass "
        "'<dag_id>/<run_id>'; default: user@host)",
    )
    return parser


def _check_kafka(parser: JobArgumentParser, args: argparse.Namespace) -> None:
    """The Kafka source's arguments: required with it, refused without it."""
    kafka_flags = {
        "--kafka-bootstrap-servers": args.kafka_bootstrap_servers,
        "--kafka-topic": args.kafka_topic,
        "--kafka-topic-pattern": args.kafka_topic_pattern,
        "--max-offsets-per-trigger": args.max_offsets_per_trigger,
        "--kafka-option": args.kafka_option,
        "--kafka-accept-data-loss": args.kafka_accept_data_loss,
    }
    if args.source == "kafka":
        if not args.kafka_bootstrap_servers:
            parser.error(
                "argument --kafka-bootstrap-servers: required with --source kafka "
                "(HOST:PORT of one or more brokers)"
            )
        if not args.kafka_topic and not args.kafka_topic_pattern:
            parser.error(
                "argument --kafka-topic: required with --source kafka (or --kafka-topic-pattern)"
            )
        try:
            kafka_client_options(args.kafka_option)
        except ValueError as err:
            parser.error(f"argument {err}")
    else:
        for flag, value in kafka_flags.items():
            if value:
                parser.error(f"argument {flag}: only used with --source kafka, not {args.source}")


def check_common(parser: JobArgumentParser, args: argparse.Namespace) -> None:
    """Checks that involve more than one argument."""
    if args.source == "file" and not args.input:
        parser.error("argument --input: required with --source file (the folder to watch)")
    if args.source != "file" and args.input:
        parser.error(f"argument --input: only used with --source file, not {args.source}")
    if args.source == "socket" and args.available_now:
        parser.error(
            "argument --available-now: the socket source cannot replay, so it has no 'available "
            "now'; use --trigger-interval"
        )
    _check_kafka(parser, args)
    if args.source == "file" and "://" not in args.input and not os.path.isdir(args.input):
        parser.error(
            f"argument --input: folder {args.input!r} does not exist; create it, or point "
            "--input at the folder your writers fill"
        )
    args.stream = args.stream or parser.prog
    if not args.owner:
        import getpass
        import socket

        args.owner = f"{getpass.getuser()}@{socket.gethostname()} (command line)"
    for name in ("input", "sink", "checkpoint"):
        value = getattr(args, name)
        if value and "://" not in value:
            # Absolute, so that the job, its status file and Airflow agree on every path.
            setattr(args, name, os.path.abspath(value))
