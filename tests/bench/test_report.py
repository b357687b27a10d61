"""The performance report's smoke test: smoke mode writes a complete, well-formed report.

It checks the shape of what `bench/report.py --mode smoke` writes (every section, the expected
table columns, numbers where numbers belong, and every plot a valid PNG), never the timings.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+\s*$")

# One smoke run serves every test here: they run on one worker of a parallel run. It alone may
# take up to 15 minutes (the suite's 10 are too few for it on a busy 2-core machine, see
# `report`), and ends every process it started when it runs out.
SMOKE_TIMEOUT_SECONDS = 840
pytestmark = [
    pytest.mark.slow,
    pytest.mark.spark,
    pytest.mark.xdist_group("bench_report"),
    pytest.mark.timeout(SMOKE_TIMEOUT_SECONDS + 60),
]

# Section -> the tables it must hold (their header rows), and which of their columns are numbers.
SECTIONS: dict[str, list[tuple[list[str], list[str]]]] = {
    "Targets": [(["target", "ratio", "goal", "result"], ["ratio"])],
    "Throughput": [
        (
            [
                "query",
                "batches",
                "seconds",
                "runs s",
                "words/s",
                "vs bare",
                "vs pyarrow",
                "cpu vs bare",
                "others",
            ],
            ["batches", "seconds", "runs s", "words/s", "vs bare", "vs pyarrow", "others"],
        ),
        (
            [
                "query",
                "sustainable words/s",
                "rounds",
                "vs bare",
                "vs pyarrow",
                "vs own capacity",
                "steps",
                "last rate",
                "last backlog s",
                "ended",
                "spikes",
            ],
            ["sustainable words/s", "vs pyarrow", "steps", "last rate", "last backlog s", "spikes"],
        ),
        # Where batch time goes: the jobs time every phase and their own parts of addBatch
        (
            ["phase", "bare", "naive_wc", "naive_rt", "word_count", "running_total"],
            ["word_count", "running_total"],
        ),
    ],
    "Latency": [
        (
            [
                "job",
                "trigger s",
                "words/s",
                "samples",
                "p50 s",
                "p95 s",
                "p99 s",
                "max s",
                "p99 / trigger",
                "warm-up max s",
            ],
            [
                "trigger s",
                "words/s",
                "samples",
                "p50 s",
                "p95 s",
                "p99 s",
                "max s",
                "warm-up max s",
            ],
        )
    ],
    "State scaling": [
        (
            [
                "state store",
                "distinct words",
                "batch ms",
                "vs default",
                "load ms",
                "checkpoint MiB",
                "restart s",
                "restart batch ms",
            ],
            ["distinct words", "batch ms", "vs default", "load ms", "checkpoint MiB"],
        )
    ],
    "Operations": [
        (["DAG file", "parse s", "vs 0.3 s target"], ["parse s", "vs 0.3 s target"]),
        (["step", "seconds", "share of downtime"], ["seconds", "share of downtime"]),
        (
            ["rows per sink", "seconds", "rows/s", "rows/s vs smallest", "Data Docs s", "peak MB"],
            ["rows per sink", "seconds", "rows/s", "rows/s vs smallest", "peak MB"],
        ),
        (
            [
                "batch files",
                "read before s",
                "read after s",
                "one file s",
                "read vs one file",
                "MiB before",
                "MiB after",
                "size vs one file",
                "compaction s",
                "quality on 600 new s",
                "quality peak MiB",
            ],
            ["read before s", "read vs one file", "size vs one file", "compaction s"],
        ),
    ],
    "Tuning": [
        (
            [
                "job",
                "workload",
                "before",
                "after",
                "before words/s",
                "after words/s",
                "after / before",
            ],
            ["before words/s", "after words/s", "after / before"],
        ),
        (
            [
                "job",
                "setting",
                "default",
                "alternative",
                "default words/s",
                "alternative words/s",
                "alternative / default",
                "reading",
            ],
            ["default words/s", "alternative words/s", "alternative / default"],
        ),
    ],
}


def sections(text: str) -> dict[str, str]:
    """`## Heading` -> the text up to the next such heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table in `text`: its header and its rows of cells."""
    found: list[tuple[list[str], list[list[str]]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and SEPARATOR.match(lines[i + 1]):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def is_number(cell: str) -> bool:
    """A figure as the report prints it: digits with thousands separators and a decimal point."""
    try:
        float(cell.replace(",", ""))
    except ValueError:
        return False
    return True


# Why the smoke run failed, once it has: the module's other tests fail with it.
SMOKE_FAILED: list[str] = []


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run smoke mode once into a temporary folder.

    It took 243 s on an idle 2-core machine and 346 s beside another test worker, over 540 s
    beside two,
    the longest fixture of the suite: every section's real queries run, each in a fresh JVM as
    the report measures them (about 15 JVM starts, CPU-bound). Smoke mode already gives each
    the smallest input that fills its tables, runs each throughput step's five queries side by
    side and the independent sections beside the rest; fewer JVMs would mean queries sharing a
    session, which the report does not measure. A run that failed fails
    every test of the module with its output, without running again; the report and every
    process it started (its own process group) are ended with the fixture."""
    if SMOKE_FAILED:
        pytest.fail(SMOKE_FAILED[0])
    out = tmp_path_factory.mktemp("performance")
    command = [sys.executable, str(ROOT / "bench" / "report.py"), "--mode", "smoke"]
    smoke = subprocess.Popen(
        [*command, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = smoke.communicate(timeout=SMOKE_TIMEOUT_SECONDS)
    except BaseException as ended:  # the timeout, or the test run's own (pytest-timeout, Ctrl+C)
        os.killpg(smoke.pid, signal.SIGKILL)
        output, _ = smoke.communicate()
        SMOKE_FAILED.append(f"the smoke run did not finish ({ended!r}):\n{output[-4000:]}")
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(smoke.pid, signal.SIGKILL)  # whatever it left of its group
    if smoke.returncode != 0 or "wrote" not in output:  # progress lines while it runs
        SMOKE_FAILED.append(f"the smoke run exited {smoke.returncode}:\n{output[-4000:]}")
        pytest.fail(SMOKE_FAILED[0])
    return out


def test_report_has_every_section_with_its_tables(report: Path) -> None:
    """Given a smoke run, every section holds its tables with numbers where numbers belong."""
    text = (report / "performance.md").read_text(encoding="utf-8")
    found = sections(text)
    for section, expected in SECTIONS.items():
        assert section in found, f"section {section!r} missing"
        present = tables(found[section])
        for header, numeric in expected:
            matching = [rows for h, rows in present if h == header]
            assert matching, f"{section}: no table with columns {header}"
            rows = matching[0]
            assert rows, f"{section}: table {header} has no rows"
            for row in rows:
                assert len(row) == len(header), f"{section}: ragged row {row}"
                for column in numeric:
                    cell = row[header.index(column)]
                    assert is_number(cell), f"{section}: {column} = {cell!r} is not a number"


def test_the_jobs_are_measured_against_the_naive_parquet_queries(report: Path) -> None:
    """Both capacity and the sweep hold the queries a user would write instead of the jobs."""
    found = sections((report / "performance.md").read_text(encoding="utf-8"))
    queries = [{row[0] for row in rows} for header, rows in tables(found["Throughput"])
               if header[0] == "query"]  # fmt: skip
    assert len(queries) == 2  # capacity, sweep
    for names in queries:
        assert names >= {"bare", "naive_wc", "naive_rt", "word_count", "running_total"}, names
    targets = next(rows for header, rows in tables(found["Targets"]) if header[0] == "target")
    assert any(row[0].startswith("word_count / naive_wc") for row in targets), targets
    assert any(row[0].startswith("running_total / naive_rt") for row in targets), targets


def test_smoke_report_never_writes_into_docs(report: Path) -> None:
    """The smoke run writes only where it was told."""
    assert report.resolve() != (ROOT / "docs").resolve()
    assert (report / "performance.md").exists()


def test_every_plot_is_a_png(report: Path) -> None:
    """Each image the report references exists next to it and is a valid PNG."""
    text = (report / "performance.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 6
    for relative in images:
        path = report / relative
        assert path.is_file(), f"{relative} referenced but missing"
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), f"{relative} is not a PNG"
        # The IHDR chunk comes first and gives a non-empty image.
        assert data[12:16] == b"IHDR"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 0
        assert height > 0
