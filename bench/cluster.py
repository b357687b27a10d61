"""Throughput of word_count on a Spark standalone cluster (1 and 2 workers) against `local[2]`.

What is measured
----------------
The corpus of `bench/throughput.py` (same generator, seed and defaults) is counted by
`spark_jobs/word_count.py --available-now`, submitted the way the operator submits it:
`spark-submit --master M --py-files spark_jobs.zip spark_jobs/word_count.py ...`, with M:

1. `local[2]`     driver and tasks in one JVM, 2 task threads (the embedded stack's master);
2. `1 worker`     `spark://localhost:<port>`, one worker offering `--cores` cores;
3. `2 workers`    the same cores split over two workers (so each executor gets half).

The cluster is a master and workers from `scripts/spark_cluster.py`, started before and stopped
after each configuration's runs (its start-up is reported apart, not in the figures). Every run
gets a fresh checkpoint and sink; the sink is checked against the words Python wrote.

The figures are those of `bench/throughput.py` (its module docstring explains them): `seconds` is
first batch start to last commit, `cpu s` the CPU of every process of the run in that window
(spark-submit, the Python driver, and on the cluster the master, the workers and the executors
with their Python workers), `others` the cores other processes used. `vs local[2]` is the
throughput ratio, `cpu vs local` the ratio of words per CPU second.

On a machine with few cores the cluster cannot be faster: the same cores run the same tasks, plus
the scheduling between driver and executors over RPC, and (with 2 workers) one executor JVM more.
The ratios show that overhead; on real nodes the cluster adds cores instead.

    .venv/bin/python bench/cluster.py [--quick] [--repeat N] [--cores 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import throughput  # noqa: E402
from throughput import BenchFailure, Corpus, Measurement, Run, progress  # noqa: E402

LOCAL = "local[2]"


def load_spark_cluster() -> ModuleType:
    """`scripts/spark_cluster.py` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "spark_cluster", ROOT / "scripts" / "spark_cluster.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class TreesLoad(throughput.OtherLoad):
    """`OtherLoad` over several process trees: spark-submit's, and the cluster's processes."""

    def poll_roots(self, roots: Iterable[int]) -> None:
        """Record the CPU time of every root and of all their descendants."""
        table = throughput._process_table()
        tree = set(roots) & table.keys()
        grew = True
        while grew:
            grew = False
            for pid, (parent, _cpu) in table.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        self._record(table, tree)


def submit_command(
    master: str, py_files: Path, corpus: Corpus, run: Path, args: argparse.Namespace
) -> list[str]:
    """The spark-submit command line the operator would build for this run."""
    return [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master",
        master,
        "--conf",
        "spark.log.level=WARN",
        "--name",
        "streamops-word_count",
        "--py-files",
        str(py_files),
        str(ROOT / "spark_jobs" / "word_count.py"),
        "--input",
        str(corpus.folder),
        "--sink",
        str(run / "sink"),
        "--checkpoint",
        str(run / "checkpoint"),
        "--available-now",
        "--max-files-per-trigger",
        str(args.max_files_per_trigger),
        "--shuffle-partitions",
        str(args.shuffle_partitions),
    ]


def measure(
    measurement: Measurement,
    command: list[str],
    run: Path,
    env: dict[str, str],
    cluster_pids: list[int],
) -> None:
    """Run one submission to its end and record its figures."""
    run.mkdir(parents=True)
    log = run / "log.txt"
    load = TreesLoad()
    started = time.perf_counter()
    with log.open("wb") as out:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while child.poll() is None:
            load.poll_roots([child.pid, *cluster_pids])
            time.sleep(throughput.POLL_SECONDS)
    wall = time.perf_counter() - started
    load.poll_roots([child.pid, *cluster_pids])
    if child.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-throughput.LOG_TAIL_LINES :]
        raise BenchFailure(
            f"exit code {child.returncode} from: {' '.join(command)}\n  log: {log}\n"
            + "\n".join(f"    {line}" for line in tail)
        )
    others = load.cores()
    timing = throughput.checkpoint_timing(run / "checkpoint")
    busy = throughput.busy_from_status(run / "checkpoint", timing.batches)
    cpu = load.tree_cpu_between(timing.start, timing.end)
    measurement.runs.append(Run(timing.seconds, cpu, busy, wall, others))
    measurement.batches = timing.batches
    cpu_text = "" if cpu is None else f", cpu {cpu:.2f} s"
    others_text = "" if others is None else f", others {others:.2f} cores"
    progress(
        f"  {measurement.name}: {timing.batches} batches in {timing.seconds:.2f} s{cpu_text} "
        f"(wall {wall:.1f} s{others_text})"
    )


def print_report(
    corpus: Corpus,
    measurements: list[Measurement],
    startup: dict[str, float],
    args: argparse.Namespace,
) -> None:
    """The table and the overhead of the cluster as ratios against local[2]."""
    local = measurements[0]
    local_rate = local.words_per_second(corpus.words)
    local_cpu = local.median_cpu
    runs = f"medians of {args.repeat} runs" if args.repeat > 1 else "1 run"
    print()
    print(
        f"corpus: {corpus.lines:,} lines, {corpus.words:,} words in {corpus.files} files; "
        f"maxFilesPerTrigger={args.max_files_per_trigger}, shuffle partitions="
        f"{args.shuffle_partitions}; cluster cores={args.cores}; {runs}; "
        f"{os.cpu_count()} cores on this machine"
    )
    header = (
        f"{'master':<10} {'batches':>7} {'seconds':>8} {'words/s':>12} {'vs local[2]':>11} "
        f"{'cpu s':>6} {'cpu vs local':>12} {'busy s':>7} {'wall s':>7} {'start s':>7} "
        f"{'others':>6} {'clean':>5}"
    )
    print(header)
    print("-" * len(header))
    for m in measurements:
        rate = m.words_per_second(corpus.words)
        cpu = m.median_cpu
        cpu_ratio = local_cpu / cpu if local_cpu and cpu else None
        start = startup.get(m.name)
        print(
            f"{m.name:<10} {m.batches or 0:>7} {m.median_seconds:>8.2f} {rate:>12,.0f} "
            f"{rate / local_rate:>11.2f} {throughput.figure(cpu):>6} "
            f"{throughput.figure(cpu_ratio):>12} {throughput.figure(m.median_busy):>7} "
            f"{throughput.figure(m.median_wall):>7} {throughput.figure(start, 1):>7} "
            f"{throughput.figure(m.worst_others):>6} {m.clean_text:>5}"
        )
    print()
    for m in measurements[1:]:
        ratio = m.words_per_second(corpus.words) / local_rate
        print(
            f"{m.name + ' / ' + LOCAL:<22} {ratio:5.2f}  (cluster overhead "
            f"{(1 / ratio - 1) * 100:+.0f}% time)"
        )
    print(
        "\n`start s`: master and workers up and registered, before any submission (not in "
        "`seconds`). `cpu s` on the cluster includes the master's and the workers' own CPU."
    )
    disturbed = [m.name for m in measurements if m.disturbed]
    if disturbed:
        print(
            f"\nWARNING: other processes used more than {throughput.BUSY_MACHINE_CORES} cores "
            f"during every run of {', '.join(disturbed)}: those figures are not reliable. Rerun "
            "on a quiet machine, with --repeat N or --wait-idle SECONDS."
        )


def benchmark(args: argparse.Namespace, workdir: Path) -> list[str]:
    """Generate, measure the three masters, verify, report. Returns the verification problems."""
    from spark_jobs.packaging import build_py_files

    spark_cluster = load_spark_cluster()
    corpus_dir, runs_dir = workdir / "corpus", workdir / "runs"
    for owned in (corpus_dir, runs_dir, workdir / "clusters"):
        shutil.rmtree(owned, ignore_errors=True)
    progress(f"generating {args.lines:,} lines in {args.files} files under {corpus_dir}")
    corpus = throughput.generate_corpus(corpus_dir, args.lines, args.files)
    progress(f"  {corpus.words:,} words, {len(corpus.counts):,} distinct")
    py_files = build_py_files(workdir / "dist")
    env = throughput.child_env()
    env["PYSPARK_PYTHON"] = sys.executable
    env.pop("PYSPARK_SUBMIT_ARGS", None)

    split = [(1, args.cores), (2, max(1, args.cores // 2))]
    names = [LOCAL, *(f"{n} worker{'s' if n > 1 else ''}" for n, _ in split)]
    measurements = [Measurement(name) for name in names]
    startup: dict[str, float] = {}
    problems: list[str] = []

    def runs(measurement: Measurement, master: str, pids: list[int]) -> None:
        for rep in range(1, args.repeat + 1):
            throughput.wait_for_quiet(args.wait_idle)
            tag = f" (run {rep}/{args.repeat})" if args.repeat > 1 else ""
            progress(f"{measurement.name}{tag}")
            run = runs_dir / measurement.name.replace(" ", "-").replace("[", "").replace("]", "")
            run = run / f"run-{rep}"
            measure(
                measurement, submit_command(master, py_files, corpus, run, args), run, env, pids
            )
            problems.extend(
                p.replace("word_count", f"word_count on {measurement.name}")
                for p in throughput.verify_word_count(run / "sink", corpus)
            )

    runs(measurements[0], LOCAL, [])
    for measurement, (workers, cores) in zip(measurements[1:], split, strict=True):
        progress(f"starting a cluster: {workers} worker(s) of {cores} core(s)")
        started = time.perf_counter()
        cluster = spark_cluster.SparkCluster(
            workdir / "clusters" / measurement.name.replace(" ", "-"),
            workers=workers,
            worker_cores=cores,
            worker_memory=args.worker_memory,
        )
        with cluster:
            startup[measurement.name] = time.perf_counter() - started
            pids = [p.pid for p in cluster.processes]
            runs(measurement, cluster.master_url, pids)
        progress(f"  cluster stopped, no process left ({cluster.master_url})")

    print_report(corpus, measurements, startup, args)
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="cluster", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lines",
        type=throughput.positive,
        help=f"corpus lines (default {throughput.DEFAULT_LINES:,})",
    )
    parser.add_argument("--files", type=throughput.positive, default=20, help="corpus files")
    parser.add_argument("--max-files-per-trigger", type=throughput.positive, default=2, metavar="K")
    parser.add_argument("--shuffle-partitions", type=throughput.positive, default=8, metavar="P")
    parser.add_argument(
        "--cores",
        type=throughput.positive,
        default=2,
        help="cores of the cluster, on one worker or split over two (default 2, like local[2])",
    )
    parser.add_argument("--worker-memory", default="2g", help="memory per worker (default 2g)")
    parser.add_argument("--repeat", type=throughput.positive, default=1)
    parser.add_argument("--workdir", type=Path, help="kept; default a temporary folder")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {throughput.QUICK_LINES:,} lines (unless --lines)",
    )
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.lines is None:
        args.lines = throughput.QUICK_LINES if args.quick else throughput.DEFAULT_LINES
    if args.files > args.lines:
        parser.error(f"--files {args.files} is more than --lines {args.lines}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return throughput.run_benchmark(
        parse_args(argv),
        benchmark,
        "streamops-bench-cluster-",
        "every run's sink holds exactly the corpus's per-word counts",
    )


if __name__ == "__main__":
    sys.exit(main())
