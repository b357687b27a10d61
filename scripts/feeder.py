"""Sample-text generator: a new file of sentences in each input folder every few seconds.

    .venv/bin/python scripts/feeder.py                      # both streams' default input folders
    .venv/bin/python scripts/feeder.py --interval 2 --folder /tmp/in --files 10

`make demo` (scripts/stack.py) runs it in the background so the two stream DAGs always have
something to count. Every folder gets the same text, so word_count and running_total read the
same words. Each file is written under a hidden name (Spark's file source ignores names starting
with `.`) and then renamed into place, so a stream never sees a half-written file.

Stops on SIGTERM or Ctrl-C after the file it is writing, with exit code 0.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

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


def main(argv: list[str] | None = None) -> int:
    """Write files until stopped (or `--files` files per folder); exit 0."""
    args = parse_args(argv)
    folders: list[Path] = args.folders or default_folders(args.data_root or default_data_root())
    rng = random.Random(args.seed)
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
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
        if not args.quiet:
            print(f"feeder: wrote {name} ({text.count(chr(10))} lines)", flush=True)
        if args.files is not None and number >= args.files:
            break
        stop.wait(args.interval)
    print(f"feeder: stopped after {number} files per folder", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
