"""How long the Streams page, its API and the metrics take to read N streams.

    .venv/bin/python bench/overview.py [--streams 2 20 100]

For each N, a data root holds N registered streams, each with a status file of 30 recent batches,
a lease, a checkpoint of 200 small files (as a few hundred batches leave), a snapshot, an input
folder with 50 waiting files, quality history and alerts. The figures are the median of 5 calls
of `streamops.overview.overview()` with its listing cache cold (every call lists every
checkpoint and input folder, as the first request does) and warm (the page's 5-second refresh
within the cache's 15 s), and of rendering the Prometheus text. The reference is reading the N
status files alone (`read_status`), the least any overview must do: the ratio is the overhead of
everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from spark_jobs.status import BatchProgress, StreamStatus, read_status, write_status  # noqa: E402
from streamops import registry  # noqa: E402
from streamops.metrics import render  # noqa: E402
from streamops.overview import clear_cache, overview  # noqa: E402

REPEATS = 5


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def make_root(root: Path, streams: int) -> list[str]:
    """A data root with `streams` registered streams and their files; the checkpoints."""
    now = datetime.now(UTC)
    checkpoints = []
    for i in range(streams):
        name = f"stream_{i:03d}"
        base = root / "streams" / name
        checkpoint = base / "checkpoint"
        for sub in ("offsets", "commits", "state/0/0"):
            (checkpoint / sub).mkdir(parents=True)
        for n in range(66):
            for sub in ("offsets", "commits", "state/0/0"):
                (checkpoint / sub / str(n)).write_text("v1\n{}\n")
        snapshot = Path(f"{checkpoint}.snapshots") / "20260101T000000Z-b1"
        snapshot.mkdir(parents=True)
        (snapshot / "snapshot.json").write_text(
            json.dumps(
                {
                    "id": "20260101T000000Z-b1",
                    "created_at": iso(now - timedelta(hours=1)),
                    "last_spark_batch_id": 1,
                    "last_sink_batch_id": 1,
                    "size_bytes": 1000,
                    "reason": "rotation",
                }
            )
        )
        (base / "input").mkdir()
        for n in range(50):
            (base / "input" / f"f{n}.txt").write_text("hello spark\n")
        record = registry.StreamRecord(
            stream=name,
            job="word_count",
            checkpoint=str(checkpoint),
            sink=str(base / "sink"),
            input=str(base / "input"),
            trigger_interval="1 second",
        )
        registry.save(record, str(root))
        batches = [
            BatchProgress(n, n, iso(now - timedelta(seconds=30 - n)), 100, 50.0, 500.0, 200, None)
            for n in range(30)
        ]
        write_status(
            StreamStatus(
                job="word_count",
                checkpoint=str(checkpoint),
                sink=str(base / "sink"),
                state="running",
                pid=os.getpid(),
                host=socket.gethostname(),
                trigger_interval="1 second",
                last_batch=batches[-1],
                recent_batches=batches,
            )
        )
        checkpoints.append(str(checkpoint))
    quality = root / "_streamops" / "quality"
    quality.mkdir(parents=True)
    lines = [
        {"time": iso(now), "subject": f"stream stream_{i:03d}", "success": True}
        for i in range(streams)
    ]
    (quality / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines * 20))
    alerts = [{"time": iso(now), "stream": f"stream_{i % streams:03d}"} for i in range(1000)]
    (root / "_streamops" / "alerts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in alerts))
    return checkpoints


def median_seconds(call: Callable[[], object], before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(REPEATS):
        if before:
            before()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[2, 20, 100])
    args = parser.parse_args()
    print(
        f"{'streams':>7}  {'status files':>12}  {'overview cold':>13}  {'overview warm':>13}  "
        f"{'metrics':>8}  {'cold / status files':>19}"
    )
    for count in args.streams:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            checkpoints = make_root(root, count)
            base = median_seconds(lambda cps=checkpoints: [read_status(c) for c in cps])
            cold = median_seconds(lambda r=root: overview(str(r)), before=clear_cache)
            overview(str(root))
            warm = median_seconds(lambda r=root: overview(str(r)))
            view = overview(str(root))
            metrics = median_seconds(lambda v=view: render(v))
            assert len(view.streams) == count
            print(
                f"{count:>7}  {base * 1000:>10.1f}ms  {cold * 1000:>11.1f}ms  "
                f"{warm * 1000:>11.1f}ms  {metrics * 1000:>6.1f}ms  {cold / base:>19.1f}"
            )


if __name__ == "__main__":
    main()
