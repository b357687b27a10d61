"""Sample-text generator: a new file of sentences in each input folder every few seconds.

    .venv/bin/python scripts/feeder.py                      # both streams' default input folders
    .venv/bin/python scripts/feeder.py --interval 2 --folder /tmp/in --files 10
    .venv/bin/python scripts/feeder.py --socket-port 9999    # also serve lines, like `nc -lk 9999`
    .venv/bin/python scripts/feeder.py --type                # type lines into that socket

`make demo` (scripts/stack.py) runs it in the background so the stream DAGs always have
something to count. Every folder gets the same text, so word_count and running_total read the
same words. Each file is written under a hidden name (Spark's file source ignores names starting
with `.`) and then renamed into place, so a stream never sees a half-written file.

With `--socket-port PORT` it also stands in for the seed's `nc -lk 9999`: it listens on
127.0.0.1:PORT, and sends each sample file's lines, and every line a client sends, to every other
connected client. The socket stream (Spark's socket source) is one client; a person typing is
another: `nc localhost 9999`, or `feeder.py --type` where there is no `nc`.

Stops on SIGTERM or Ctrl-C after the file it is writing, with exit code 0.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STREAMS = ("word_count", "running_total")

# The seed tutorial's own lines first, then a small corpus about what the demo runs.
SEED_SENTENCES = (
    "hello world spark streaming",
    "hello spark",
    "spark streaming",
)
CORPUS = (
    "Structured Streaming treats a stream as an unbounded table",
    "every micro-batch appends new rows to the input table",
    "the checkpoint remembers which files were already read",
    "a sink file is written under a hidden name and renamed into place",
    "Airflow triggers the stream and keeps it running",
    "the word count job counts words in each micro-batch",
    "the running total job keeps each word's total as state",
    "exactly once means every batch appears once in the sink",
    "hello airflow hello spark",
    "a stream that fails restarts from its checkpoint",
    "small machines need small settings",
    "the quick brown fox jumps over the lazy dog",
)


def default_data_root() -> Path:
    """`$STREAMOPS_DATA_ROOT`, or `data/` in the repository (as `streamops.config.data_root`)."""
    return Path(os.environ.get("STREAMOPS_DATA_ROOT") or ROOT / "data")


def default_folders(data_root: Path) -> list[Path]:
    """The input folders of both stream DAGs' default streams."""
    return [data_root / "streams" / stream / "input" for stream in STREAMS]


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The feeder's command line."""
    parser = argparse.ArgumentParser(
        prog="feeder", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--folder",
        action="append",
        type=Path,
        dest="folders",
        metavar="DIR",
        help="a folder to write into (repeat for several); default: "
        "<data root>/streams/{word_count,running_total}/input",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="data root for the default folders (default: $STREAMOPS_DATA_ROOT or <repo>/data)",
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=5.0,
        help="seconds between two files (default: 5)",
    )
    parser.add_argument(
        "--lines",
        type=positive_int,
        default=5,
        help="sentences per file (default: 5)",
    )
    parser.add_argument(
        "--files",
        type=positive_int,
        default=None,
        help="stop after this many files per folder (default: run until stopped)",
    )
    parser.add_argument(
        "--socket-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve the sample lines, and lines clients send, on 127.0.0.1:PORT",
    )
    parser.add_argument(
        "--kafka-bootstrap-servers",
        metavar="HOST:PORT",
        help="also produce the sample lines, one record each, to --kafka-topic on these brokers; "
        "with --type: produce the lines typed here",
    )
    parser.add_argument(
        "--kafka-topic", default="lines", help="the topic to produce to (default: lines)"
    )
    parser.add_argument(
        "--type",
        action="store_true",
        help="send the lines typed here to the feeder's socket (--socket-port, default 9999), "
        "or with --kafka-bootstrap-servers to the Kafka topic",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (repeatable output)")
    parser.add_argument("--quiet", action="store_true", help="print nothing per file")
    return parser.parse_args(argv)


def make_text(rng: random.Random, lines: int) -> str:
    """A file's content: one of the seed's lines, then random corpus sentences."""
    chosen = [rng.choice(SEED_SENTENCES)]
    chosen += [rng.choice(CORPUS) for _ in range(lines - 1)]
    return "\n".join(chosen) + "\n"


def write_atomically(folder: Path, name: str, text: str) -> Path:
    """Write `text` as `folder/name`: first under a hidden name, then renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    hidden = folder / f".{name}.tmp"
    hidden.write_text(text, encoding="utf-8")
    os.replace(hidden, final)
    return final


class LineRelay(socketserver.ThreadingTCPServer):
    """`nc -lk PORT` for many clients: every line reaches every connected client but its sender."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        self.clients: set[socket.socket] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), RelayHandler)

    def send(self, text: str, sender: socket.socket | None = None) -> None:
        """Send lines to every client but `sender`; drop the clients that went away."""
        data = text.encode("utf-8")
        with self.lock:
            for client in list(self.clients):
                if client is sender:
                    continue
                try:
                    client.sendall(data)
                except OSError:
                    self.clients.discard(client)


class RelayHandler(socketserver.StreamRequestHandler):
    """One client: registered for the lines of others, its own lines relayed."""

    server: LineRelay

    def handle(self) -> None:
        with self.server.lock:
            self.server.clients.add(self.connection)
        try:
            for line in self.rfile:
                self.server.send(line.decode("utf-8", "replace"), sender=self.connection)
        except OSError:
            pass
        finally:
            with self.server.lock:
                self.server.clients.discard(self.connection)


def type_lines(port: int) -> int:
    """Send each line typed on stdin to the feeder's socket, until end of input or Ctrl-C."""
    try:
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as err:
        print(
            f"feeder: error: nothing listens on 127.0.0.1:{port} ({err.strerror}); is `make demo` "
            "running? (its feeder serves the socket stream's lines)",
            file=sys.stderr,
        )
        return 1
    print(f"feeder: type lines for 127.0.0.1:{port}; Ctrl-D or Ctrl-C to end", flush=True)
    try:
        with connection:
            for line in sys.stdin:
                connection.sendall(line.encode("utf-8"))
    except KeyboardInterrupt:
        print()
    except OSError as err:
        print(f"feeder: error: the socket closed ({err.strerror})", file=sys.stderr)
        return 1
    return 0


class TopicWriter:
    """Produces lines to a Kafka topic, one record each, with confluent-kafka (the Airflow Kafka
    provider's client); every record acknowledged before `send` returns."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def send(self, text: str) -> int:
        """Produce each line of `text`; how many. Raises RuntimeError if the broker refuses."""
        lines = text.splitlines()
        failed: list[str] = []

        def report(error: Any, _message: Any) -> None:
            if error is not None:
                failed.append(str(error))

        for line in lines:
            self.producer.produce(self.topic, line.encode(), on_delivery=report)
            self.producer.poll(0)
        if self.producer.flush(30) or failed:
            raise RuntimeError(
                f"records to {self.topic} not acknowledged: {failed[:1] or 'timed out'}"
            )
        return len(lines)


def type_records(bootstrap: str, topic: str) -> int:
    """Produce each line typed on stdin to the topic until end of input (Ctrl-D)."""
    writer = TopicWriter(bootstrap, topic)
    print(f"feeder: each line you type is a record of {topic} on {bootstrap}; Ctrl-D ends")
    for line in sys.stdin:
        writer.send(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Write files until stopped (or `--files` files per folder); exit 0."""
    args = parse_args(argv)
    if args.type and args.kafka_bootstrap_servers:
        return type_records(args.kafka_bootstrap_servers, args.kafka_topic)
    if args.type:
        return type_lines(args.socket_port or 9999)
    folders: list[Path] = args.folders or default_folders(args.data_root or default_data_root())
    rng = random.Random(args.seed)
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    relay = None
    if args.socket_port is not None:
        relay = LineRelay(args.socket_port)
        threading.Thread(target=relay.serve_forever, name="relay", daemon=True).start()
        print(f"feeder: serving lines on 127.0.0.1:{args.socket_port}", flush=True)
    topic = None
    if args.kafka_bootstrap_servers:
        topic = TopicWriter(args.kafka_bootstrap_servers, args.kafka_topic)
        print(f"feeder: producing the lines to {args.kafka_topic}", flush=True)
    print(
        f"feeder: a file of {args.lines} sentences every {args.interval:g} s into "
        + ", ".join(str(f) for f in folders),
        flush=True,
    )
    number = 0
    while not stop.is_set():
        number += 1
        text = make_text(rng, args.lines)
        name = f"feed-{time.time_ns()}-{number:06d}.txt"
        for folder in folders:
            write_atomically(folder, name, text)
        if relay is not None:
            relay.send(text)
        if topic is not None:
            try:
                topic.send(text)
            except RuntimeError as err:  # the broker is down: the files and socket go on
                print(f"feeder: {err}", flush=True)
        if not args.quiet:
            print(f"feeder: wrote {name} ({text.count(chr(10))} lines)", flush=True)
        if args.files is not None and number >= args.files:
            break
        stop.wait(args.interval)
    if relay is not None:
        relay.shutdown()
        relay.server_close()
    print(f"feeder: stopped after {number} files per folder", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
