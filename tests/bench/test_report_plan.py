"""How the performance report plans its runs: sweep rounds, and sections kept across a failure.

The Spark runs themselves are covered by the quick report (`test_report.py`); these tests replace
them with stand-ins so that full mode's plan, which CI never runs, is checked in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402
import streaming  # noqa: E402
import throughput  # noqa: E402
from throughput import BenchFailure  # noqa: E402

LADDER = streaming.rate_ladder(1_000.0, 1.15, 40)


def test_the_median_round_is_what_a_query_sustains() -> None:
    def swept(rate: float) -> streaming.Sweep:
        step = streaming.Step(rate, 0.0, 1.0, 0.5, 0.0)
        return streaming.Sweep("q", 1.0, [step], [True])

    tp = report.ThroughputResult(
        SimpleNamespace(words=1),  # type: ignore[arg-type]
        {},
        {"q": [swept(9.0), swept(3.0), swept(5.0)], "even": [swept(4.0), swept(2.0)]},
        [],
    )
    assert tp.sweep("q").sustainable == 5.0
    assert tp.sweep("even").sustainable == 2.0  # the lower middle one
    assert list(tp.median_sweeps()) == ["q", "even"]


def test_a_lone_step_over_the_backlog_line_is_a_spike_and_two_in_a_row_end_the_sweep(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Backlog at each step's end, in seconds of input; the line is 2 x 1 s + 1.5 s = 3.5 s.
    backlogs = [0.5, 0.6, 4.0, 0.7, 0.8, 3.9, 5.0, 0.5, 0.5]
    checks: list[float] = []

    class Query:
        name = "q"
        input = tmp_path / "input"
        checkpoint = tmp_path / "checkpoint"

        def start(self) -> None: ...
        def stop(self) -> None: ...
        def wait_until_committed(self, *_: Any, **__: Any) -> None: ...

    class Feeder:
        def __init__(self, *_: Any) -> None:
            self.written: list[streaming.Written] = []

        def feed(self, rate: float, seconds: float, tick: float) -> tuple[float, float]:
            start = float(len(self.written))
            self.written.append(streaming.Written(f"f{start}", round(rate * seconds), start))
            return start, start + seconds

    def committed_by(written: list[streaming.Written], *_: Any) -> int:
        # While the sweep runs: every word but the step's backlog (its rate: words / 6 s).
        if len(checks) < len(backlogs) and len(written) - 1 > len(checks):
            step = len(checks)
            checks.append(backlogs[step])
            return sum(w.words for w in written) - round(backlogs[step] * written[-1].words / 6)
        return 0

    monkeypatch.setattr(streaming, "Feeder", Feeder)
    monkeypatch.setattr(streaming, "committed_by", committed_by)
    monkeypatch.setattr(streaming, "file_batches", lambda *_: {})
    monkeypatch.setattr(streaming, "commit_times", lambda *_: {})
    found = streaming.sweep(
        Query(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        rates=LADDER[: len(backlogs)],
        step_seconds=6.0,
        trigger_seconds=1.0,
        tick=0.25,
        warmup_seconds=1.0,
    )
    # The sweep went on past the lone step over the line and ended at the second in a row
    assert found.kept_up == [True, True, False, True, True, False, False]
    assert found.done
    assert found.fell_behind
    assert found.spikes == 1
    assert found.sustainable == pytest.approx(LADDER[4], rel=1e-3)


def test_full_mode_sweeps_every_query_in_rounds_that_take_turns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mode = report.MODES["full"]
    limits = {
        "bare": 30,
        "naive_wc": 24,
        "naive_rt": 26,
        "word_count": 25,
        "running_total": 22,
        report.TOKENIZER_REFERENCE: 27,
    }
    ran: list[tuple[str, int, list[float]]] = []  # query, round folder, rates

    def fake_sweep(query: Any, _templates: Any, *, rates: list[float], **_: Any) -> Any:
        ran.append((query.name, int(query.run_dir.name.rsplit("-", 1)[1]), rates))
        limit = LADDER[limits[query.name] + len(ran) % 2]  # one step of noise between rounds
        kept = [rate <= limit * 1.001 for rate in rates]
        steps = [streaming.Step(rate, 0.0, 1.0, 0.5, 0.0) for rate in rates]
        end = kept.index(False) + 1
        return streaming.Sweep(query.name, 1.0, steps[:end], kept[:end])

    capacity = SimpleNamespace(words_per_second=lambda _words: LADDER[0] / mode.sweep_start)
    corpus = SimpleNamespace(words=1)
    monkeypatch.setattr(throughput, "measure", lambda *_: (corpus, {"bare": capacity}, []))
    monkeypatch.setattr(streaming, "sweep", fake_sweep)
    monkeypatch.setattr(streaming, "Templates", lambda *_a, **_k: None)
    ctx = report.Context(mode, tmp_path, tmp_path / "plots", {}, code="test")

    tp = report.run_throughput(ctx)

    # The bare query with the jobs' tokenizer is swept with the others (full mode diagnoses)
    queries = (*report.SWEEP_QUERIES, report.TOKENIZER_REFERENCE)
    assert len(ran) == mode.sweep_rounds * len(queries)
    firsts = [name for name, _, _ in ran[:: len(queries)]]
    assert firsts == list(queries[: mode.sweep_rounds])  # each round starts anew
    # Every round climbs the whole ladder, in a folder of its own
    assert all(rates == pytest.approx(LADDER) for _, _, rates in ran)
    assert len({(name, round_) for name, round_, _ in ran}) == len(ran)
    for name, limit in limits.items():
        assert len(tp.sweeps[name]) == mode.sweep_rounds
        found = tp.sweep(name).sustainable
        assert any(found == pytest.approx(LADDER[step]) for step in (limit, limit + 1))
    # and the report reads the jobs against it: sustained rates relative to bare+tok
    reading = report.tokenizer_reading(tp, tp.sweep("bare").sustainable)
    tok = tp.sweep(report.TOKENIZER_REFERENCE).sustainable
    assert f"It sustains {report.num(tok / tp.sweep('bare').sustainable)} x bare:" in reading
    assert f"word_count {report.num(tp.sweep('word_count').sustainable / tok)}" in reading


def test_a_rerun_measures_only_the_sections_that_had_not_finished(tmp_path: Path) -> None:
    quick = report.MODES["quick"]
    calls: list[str] = []

    def measured(ctx: report.Context, name: str, value: int) -> Any:
        def run() -> int:
            calls.append(name)
            ctx.note_load(name)
            return value

        return run

    def failing() -> int:
        calls.append("state")
        (tmp_path / "state" / "half").mkdir(parents=True)
        raise BenchFailure("the state run stopped")

    first = report.Context(quick, tmp_path, tmp_path / "plots", {}, code="commit a")
    assert report.section(first, "throughput", measured(first, "throughput", 1)) == 1
    with pytest.raises(BenchFailure):
        report.section(first, "state", failing)

    again = report.Context(quick, tmp_path, tmp_path / "plots", {}, code="commit a")
    assert report.section(again, "throughput", measured(again, "throughput", 2)) == 1
    assert report.section(again, "state", measured(again, "state", 3)) == 3
    assert calls == ["throughput", "state", "state"]
    assert not (tmp_path / "state" / "half").exists()  # the failed run's folder was cleared
    assert [where for where, _ in again.loads] == ["throughput", "state"]

    # Results of other code are never reused.
    other = report.Context(quick, tmp_path, tmp_path / "plots", {}, code="commit b")
    assert report.section(other, "throughput", measured(other, "throughput", 4)) == 4
