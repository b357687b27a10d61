"""What supervising streams costs Airflow, and what Airflow restarts cost the streams.

    .venv/bin/python bench/supervision.py [--streams N]

One run on a stack of separate Airflow processes (api-server, scheduler with LocalExecutor,
dag-processor, triggerer; SQLite), the same stack the restart tests use:

1. Airflow-side memory and slots: the resident memory of every Airflow process (the components
   and whatever they forked: workers, log servers; the drivers run in sessions of their own and
   are not counted) with no stream, then with the two stream DAGs running on a file feed; the
   worker slots taken (running task instances, default pool's occupied slots).
2. Downtime across a scheduler restart: the longest gap between two committed batches of a
   stream fed a file a second, while the scheduler gets SIGTERM and starts again, against the
   longest gap over the same time just before (the baseline).
3. A driver SIGKILL: the time until the restarted driver's first batch (backoff included).
4. Scale: N more streams (rate source, `--trigger-interval 10 seconds`, 512 MB drivers): their
   runs all deferred, the Airflow-side memory per stream, the triggerer's memory and CPU, and
   each driver's memory (what bounds the number of streams on one machine).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from bench.control_plane import feed  # noqa: E402
from spark_jobs.status import read_status  # noqa: E402
from streamops.triggers import stop_driver  # noqa: E402
from tests.dags.airflow_processes import AirflowProcesses, wait_for  # noqa: E402

MIB = 1024 * 1024


def airflow_rss(airflow: AirflowProcesses) -> tuple[int, int]:
    """Resident bytes of the Airflow processes (same session as a component), and their count."""
    total = count = 0
    for proc in airflow.procs.values():
        try:
            leader = psutil.Process(proc.pid)
            session = os.getsid(proc.pid)
            members = [leader, *leader.children(recursive=True)]
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
        for member in members:
            try:
                if os.getsid(member.pid) != session:
                    continue  # a driver: its own session
                total += member.memory_info().rss
                count += 1
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
    return total, count


def slots(airflow: AirflowProcesses) -> tuple[int, int]:
    """Running task instances and occupied default-pool slots."""
    running = airflow.api("GET", "/api/v2/dags/~/dagRuns/~/taskInstances?state=running")
    pool = airflow.api("GET", "/api/v2/pools/default_pool")
    return int(running["total_entries"]), int(pool["occupied_slots"])


def batch_times(checkpoint: Path) -> list[float]:
    """Commit times (mtime) of the checkpoint's batches: when each batch was done."""
    return sorted(p.stat().st_mtime for p in (checkpoint / "commits").glob("[0-9]*"))


def longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    points = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(points))


def main() -> int:  # noqa: PLR0915  (one measurement after another)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--streams", type=int, default=12, help="rate streams for the scale step (default 12)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="streamops-bench-") as tmp:
        data = Path(tmp) / "data"
        airflow = AirflowProcesses(Path(tmp) / "airflow", data, SPARK_DRIVER_MEMORY="512m")
        stop_feed = threading.Event()
        checkpoints: list[Path] = []
        try:
            print("==> starting Airflow (api-server, scheduler, dag-processor, triggerer)")
            airflow.start()
            time.sleep(20)  # let every component finish its start-up
            idle_rss, idle_procs = airflow_rss(airflow)
            print(f"  Airflow with no stream: {idle_rss / MIB:.0f} MiB in {idle_procs} processes")

            print("==> two streams (word_count, running_total) on a file a second")
            feeders = []
            for stream in ("word_count", "running_total"):
                folder = data / "streams" / stream / "input"
                folder.mkdir(parents=True, exist_ok=True)
                thread = threading.Thread(target=feed, args=(folder, stop_feed))
                thread.start()
                feeders.append(thread)
            runs = {
                dag: airflow.trigger(dag, {"shuffle_partitions": 1})
                for dag in ("word_count_stream", "running_total_stream")
            }
            for stream in ("word_count", "running_total"):
                checkpoints.append(data / "streams" / stream / "checkpoint")
            for dag, run in runs.items():
                wait_for(lambda d=dag, r=run: airflow.task_state(d, r) == "deferred", 300, dag)
            wait_for(lambda: all(len(batch_times(c)) >= 5 for c in checkpoints), 300, "batches")
            time.sleep(10)
            two_rss, _ = airflow_rss(airflow)
            running, occupied = slots(airflow)
            per_stream = (two_rss - idle_rss) / 2
            print(
                f"  Airflow with 2 running streams: {two_rss / MIB:.0f} MiB, "
                f"{per_stream / MIB:+.0f} MiB per stream; worker slots taken: {running} running "
                f"task instances, {occupied} occupied pool slots"
            )

            print("==> longest gap between batches: 60 s before vs across a scheduler restart")
            word_count = checkpoints[0]
            t0 = time.time()
            time.sleep(60)
            t1 = time.time()
            airflow.restart("scheduler", signal.SIGTERM)
            time.sleep(max(0.0, 60 - (time.time() - t1)))
            t2 = time.time()
            times = batch_times(word_count)
            before, across = longest_gap(times, t0, t1), longest_gap(times, t1, t2)
            print(
                f"  baseline {before:.1f} s; across the restart {across:.1f} s "
                f"(ratio {across / before:.2f}); the driver's pid did not change: "
                f"{read_status(str(word_count)).pid}"  # type: ignore[union-attr]
            )

            print("==> driver SIGKILL to the restarted driver's first batch")
            status = read_status(str(word_count))
            assert status is not None
            killed = time.time()
            os.kill(status.pid, signal.SIGKILL)

            def restarted() -> bool:
                now = read_status(str(word_count))
                return bool(now and now.pid != status.pid and now.last_batch)

            wait_for(restarted, 300, "the restarted driver's first batch", interval=0.2)
            print(f"  {time.time() - killed:.1f} s (backoff 10 s, trigger poll <= 5 s, JVM start)")

            print(f"==> {args.streams} more streams: rate source, 10 s trigger, 512 MB drivers")
            before_rss, _ = airflow_rss(airflow)
            trigger_proc = psutil.Process(airflow.procs["triggerer"].pid)
            cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in [trigger_proc])
            started = time.time()
            rate_runs = {}
            for i in range(args.streams):
                dag = "word_count_stream" if i % 2 == 0 else "running_total_stream"
                name = f"rate_{i:02d}"
                rate_runs[name] = (
                    dag,
                    airflow.trigger(
                        dag,
                        {
                            "stream": name,
                            "source": "rate",
                            "trigger_interval": "10 seconds",
                            "shuffle_partitions": 1,
                        },
                    ),
                )
                checkpoints.append(data / "streams" / name / "checkpoint")
            wait_for(
                lambda: all(airflow.task_state(d, r) == "deferred" for d, r in rate_runs.values()),
                60 * args.streams,
                "every rate stream to run",
                interval=5,
            )
            took = time.time() - started
            time.sleep(60)
            after_rss, after_procs = airflow_rss(airflow)
            cpu1 = sum(p.cpu_times().user + p.cpu_times().system for p in [trigger_proc])
            trig_rss = trigger_proc.memory_info().rss + sum(
                c.memory_info().rss for c in trigger_proc.children(recursive=True)
            )
            running, occupied = slots(airflow)
            driver_rss = []
            for checkpoint in checkpoints[2:]:
                now = read_status(str(checkpoint))
                if now is not None:
                    proc = psutil.Process(now.pid)
                    parent = proc.parent()
                    driver_rss.append(
                        proc.memory_info().rss + (parent.memory_info().rss if parent else 0)
                    )
            streams = args.streams + 2
            mean_driver = sum(driver_rss) / max(len(driver_rss), 1)
            available = psutil.virtual_memory().total
            print(
                f"  all {args.streams} deferred after {took:.0f} s; slots taken: {running} "
                f"running, {occupied} occupied"
            )
            print(
                f"  Airflow: {after_rss / MIB:.0f} MiB in {after_procs} processes with {streams} "
                f"streams; {(after_rss - before_rss) / args.streams / MIB:+.1f} MiB per added "
                f"stream; triggerer {trig_rss / MIB:.0f} MiB, "
                f"{(cpu1 - cpu0) / (time.time() - started) * 100:.1f}% of a core"
            )
            print(
                f"  a driver (python + JVM): {mean_driver / MIB:.0f} MiB; this machine's "
                f"{available / 2**30:.0f} GiB hold about {available / mean_driver:.0f} such "
                "drivers by memory (an estimate, not run)"
            )
        finally:
            stop_feed.set()
            for checkpoint in checkpoints:
                stop_driver(str(checkpoint), None, grace_seconds=30)
            airflow.stop_all(signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
