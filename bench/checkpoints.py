"""Checkpoint lifecycle figures: size before and after rotation, rotation downtime, restore time.

    .venv/bin/python bench/checkpoints.py [--batches 1000] [--workdir DIR]

running_total runs as its own process (`python -m spark_jobs.running_total`, RocksDB state,
batches back to back) on the file source until it has committed `--batches` micro-batches
(one small file each). Then, as the `checkpoint_rotation` DAG does: a stop request, a rotation
(snapshot, input archival, base totals, new generation), and a restart. Reported:

- checkpoint size after N batches, and right after rotation;
- rotation downtime: from the stop request to the first batch of the new generation, split
  into stopping, rotating, and start-up plus first batch;
- snapshot time (of the stopped new generation) and restore time of the rotation's snapshot
  (the old generation).
Totals are checked against the input after the restart, so the figures are for a correct run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_jobs import checkpoints  # noqa: E402
from spark_jobs.layout import CheckpointLayout  # noqa: E402
from spark_jobs.status import read_status  # noqa: E402
from spark_jobs.storage import Location  # noqa: E402

WORDS = [f"w{i}" for i in range(500)]


def start_job(work: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spark_jobs.running_total",
            "--input",
            str(work / "in"),
            "--sink",
            str(work / "sink"),
            "--checkpoint",
            str(work / "ck"),
            "--max-files-per-trigger",
            "1",
            "--trigger-interval",
            "0 seconds",
            "--shuffle-partitions",
            "4",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def last_batch(work: Path) -> int:
    status = read_status(str(work / "ck"))
    return -1 if status is None or status.last_batch is None else status.last_batch.batch_id


def wait_for(predicate: object, what: str, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class RotationFigures:
    """What one rotation of a running_total stream cost (seconds and bytes)."""

    batches: int
    size_before: int
    size_after: int
    snapshot_size: int
    stop_s: float
    rotate_s: float
    start_s: float
    snapshot_s: float
    restore_s: float
    correct: bool

    @property
    def downtime_s(self) -> float:
        """From the stop request to the new generation's first batch."""
        return self.stop_s + self.rotate_s + self.start_s


def measure_rotation(
    work: Path, batches: int, env: dict[str, str] | None = None
) -> RotationFigures:
    """Run running_total for `batches` batches in `work`, rotate, restart, snapshot, restore."""
    (work / "in").mkdir(parents=True, exist_ok=True)
    log = work / "job.log"
    expected: Counter[str] = Counter()
    base_mtime = time.time() - 10 * batches

    def drop(index: int) -> None:
        words = [WORDS[(index * 7 + k) % len(WORDS)] for k in range(20)]
        expected.update(words)
        hidden = work / "in" / f".{index:06d}.tmp"
        hidden.write_text(" ".join(words) + "\n")
        os.utime(hidden, (base_mtime + index, base_mtime + index))
        hidden.rename(work / "in" / f"{index:06d}.txt")

    print(f"==> writing {batches} input files into {work / 'in'}", flush=True)
    for i in range(batches):
        drop(i)
    print(f"==> running running_total until {batches} batches are committed", flush=True)
    job = start_job(work, log, env)
    started = time.monotonic()

    def report() -> None:
        while job.poll() is None:
            print(f"  batch {last_batch(work)}", flush=True)
            time.sleep(30)

    threading.Thread(target=report, daemon=True).start()
    wait_for(lambda: last_batch(work) >= batches - 1, f"{batches} batches")
    print(f"  {batches} batches in {time.monotonic() - started:.0f} s", flush=True)

    layout = CheckpointLayout.of(str(work / "ck"))
    t_request = time.monotonic()
    layout.stop_request.write_text_atomic("stop\n")
    job.wait(timeout=600)
    t_stopped = time.monotonic()
    layout.stop_request.filesystem.delete_file(layout.stop_request.path)
    rotation = checkpoints.rotate(
        layout, Location.of(str(work / "sink")), Location.of(str(work / "in")), carry_totals=True
    )
    t_rotated = time.monotonic()
    drop(batches)
    first_new = rotation.generation.first_sink_batch_id
    job = start_job(work, log, env)
    wait_for(lambda: last_batch(work) >= first_new, "the new generation's first batch")
    t_first = time.monotonic()
    layout.stop_request.write_text_atomic("stop\n")
    job.wait(timeout=600)
    layout.stop_request.filesystem.delete_file(layout.stop_request.path)

    import pandas as pd

    totals = pd.read_parquet(work / "sink").sort_values("batch_id").groupby("word")["total"].last()
    correct = totals.to_dict() == dict(expected)

    # A snapshot on its own, of the stopped new generation: what `checkpoint_rotation`'s
    # snapshot action costs.
    snapshot_start = time.monotonic()
    checkpoints.SnapshotStore.of(layout).create(layout, reason="bench")
    snapshot_s = time.monotonic() - snapshot_start

    restore_start = time.monotonic()
    checkpoints.restore(layout, Location.of(str(work / "sink")), rotation.snapshot.id)
    restore_s = time.monotonic() - restore_start
    return RotationFigures(
        batches=batches,
        size_before=rotation.size_before,
        size_after=rotation.size_after,
        snapshot_size=rotation.snapshot.size_bytes,
        stop_s=t_stopped - t_request,
        rotate_s=t_rotated - t_stopped,
        start_s=t_first - t_rotated,
        snapshot_s=snapshot_s,
        restore_s=restore_s,
        correct=correct,
    )


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="streamops-ckbench-"))
    figures = measure_rotation(work, args.batches)
    batches = figures.batches
    mib = 1024 * 1024
    print("==> results")
    print(f"  checkpoint after {batches} batches: {figures.size_before / mib:8.2f} MiB")
    print(f"  checkpoint right after rotation:     {figures.size_after / mib:8.2f} MiB")
    print(f"  snapshot of the old generation:      {figures.snapshot_size / mib:8.2f} MiB")
    print(
        f"  rotation downtime: {figures.downtime_s:.1f} s = stop {figures.stop_s:.1f} s "
        f"+ rotate {figures.rotate_s:.2f} s "
        f"+ start and first batch {figures.start_s:.1f} s"
    )
    print(f"  snapshot of the new generation: {figures.snapshot_s:.2f} s")
    print(f"  restore of a {batches}-batch snapshot: {figures.restore_s:.2f} s")
    print(f"  totals after rotation equal the input: {'yes' if figures.correct else 'NO'}")
    return 0 if figures.correct else 1


if __name__ == "__main__":
    sys.exit(main())
