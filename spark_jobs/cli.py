"""The jobs' command line: the contract that users, `spark-submit` and the DAGs script against.

Bad arguments end the program with exit code 2 and one line on stderr that names the argument.
This module imports neither pyspark nor pandas, so the control plane can validate with it too.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import NoReturn

SOURCES = ("file", "socket", "rate")
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


def common_parser(prog: str, description: str) -> JobArgumentParser:
    """The arguments both jobs take."""
    parser = JobArgumentParser(prog=prog, description=description)
    src = parser.add_argument_group("source")
    src.add_argument(
        "--source",
        choices=SOURCES,
        default="file",
        help="file: new files in --input (default); socket: lines from --host:--port, as in "
        "`nc -lk 9999`; rate: generated words for load tests",
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
        "--owner",
        metavar="TEXT",
        help="who started this driver, recorded in the lease (the stream DAGs pass "
        "'<dag_id>/<run_id>'; default: user@host)",
    )
    return parser


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
