"""Local demo: both jobs on sample text, with their live console output and their sinks at the end.

    make demo

Starts word_count and running_total on `local[*]` over `data/demo/input`, feeds the seed's text
in three files a few seconds apart, stops both jobs gracefully (SIGTERM: they finish the running
micro-batch), and prints what the sinks hold. Run it again: the jobs resume from their
checkpoints and only the new files are counted.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_jobs.status import read_status  # noqa: E402

DATA = ROOT / "data" / "demo"
JOBS = ("word_count", "running_total")
SAMPLES = [
    "hello world spark streaming\nhello spark\n",
    "hello spark\n",
    "Structured Streaming treats a stream as an unbounded table\nspark streaming\n",
]


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def relay(prefix: str, stream: object) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        print(f"[{prefix}] {line}", end="", flush=True)


def start(job: str) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", f"spark_jobs.{job}",
        "--input", str(DATA / "input"),
        "--sink", str(DATA / f"{job}-sink"),
        "--checkpoint", str(DATA / f"{job}-checkpoint"),
        "--shuffle-partitions", "2",
        "--console",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    threading.Thread(target=relay, args=(job, proc.stdout), daemon=True).start()
    return proc


def wait_until_running(timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [read_status(str(DATA / f"{job}-checkpoint")) for job in JOBS]
        if all(s is not None and s.state == "running" for s in states):
            return
        time.sleep(0.5)
    raise SystemExit("demo: the jobs did not start within 2 minutes; see their output above")


def feed(number: int, text: str) -> None:
    # Write elsewhere, then rename into the watched folder: the file source must never see a
    # half-written file.
    final = DATA / "input" / f"sample-{time.time_ns()}-{number}.txt"
    hidden = final.with_name("." + final.name)
    hidden.write_text(text)
    hidden.rename(final)
    print(f"  fed {final.name}: {text.strip()!r}", flush=True)


def show_sinks() -> None:
    import pandas as pd

    from spark_jobs.sinks import sink_files

    pd.set_option("display.width", 120)
    for job in JOBS:
        sink = DATA / f"{job}-sink"
        say(f"{job} sink ({sink}), as pd.read_parquet(sink_files(sink)) reads it:")
        frame = pd.read_parquet(sink_files(str(sink)))  # type: ignore[call-overload]
        print(frame.sort_values(["batch_id", "word"]).to_string(index=False))


def main() -> int:
    (DATA / "input").mkdir(parents=True, exist_ok=True)
    say(f"starting word_count and running_total on local[*] (data in {DATA})")
    print("  Spark takes 10 to 20 seconds to start on a small machine.", flush=True)
    procs = [start(job) for job in JOBS]
    try:
        wait_until_running()
        say("both jobs are running; feeding sample text, one file every 3 seconds")
        for number, text in enumerate(SAMPLES, 1):
            feed(number, text)
            time.sleep(3)
        time.sleep(2)
    finally:
        say("stopping both jobs at a batch boundary (SIGTERM)")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=120) for proc in procs]
    if any(codes):
        print(f"demo: a job exited with {codes}; its output above says why", file=sys.stderr)
        return 1
    show_sinks()
    say("what next")
    print(
        "  Drop your own text into the input folder (write it elsewhere, then mv it in) and run\n"
        "  `make demo` again: the jobs resume from their checkpoints and count only new files.\n"
        "  The seed's socket workflow: run `nc -lk 9999` in one terminal and\n"
        "  `.venv/bin/python -m spark_jobs.word_count --source socket --sink /tmp/s "
        "--checkpoint /tmp/c --console` in another, then type lines into nc."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
