"""How the performance report plans its runs: sweep rounds, and sections kept across a failure.

The Spark runs themselves are covered by the quick report (`test_report.py`); these tests replace
them with stand-ins so that full mode's plan, which CI never runs, is checked in seconds.
"""

from __future__ import annotations

import math
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


def test_a_later_round_starts_its_lead_below_the_median_so_far() -> None:
    # Found rates are measured input rates, a little off the ladder's.
    assert report.later_ladder(LADDER, [LADDER[20] * 1.03], lead=4) == LADDER[16:]
    assert report.later_ladder(LADDER, [LADDER[10], LADDER[30]], lead=4) == LADDER[6:]
    assert report.later_ladder(LADDER, [LADDER[2]], lead=4) == LADDER
    # A query that kept up with nothing starts from the bottom again.
    assert report.later_ladder(LADDER, [0.0], lead=4) == LADDER


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


def test_full_mode_sweeps_every_query_in_rounds_that_take_turns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mode = report.MODES["full"]
    limits = {"bare": 30, "naive_wc": 24, "naive_rt": 26, "word_count": 25, "running_total": 22}
    ran: list[tuple[str, int, float]] = []  # query, round folder, first rate

    def fake_sweep(query: Any, _templates: Any, *, rates: list[float], **_: Any) -> Any:
        ran.append((query.name, int(query.run_dir.name.rsplit("-", 1)[1]), rates[0]))
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

    assert len(ran) == mode.sweep_rounds * len(report.SWEEP_QUERIES)
    firsts = [name for name, _, _ in ran[:: len(report.SWEEP_QUERIES)]]
    assert firsts == list(report.SWEEP_QUERIES[: mode.sweep_rounds])  # each round starts anew
    for name, round_, first in ran:
        if round_ == 1:
            assert first == pytest.approx(LADDER[0])
        else:
            below = math.log(tp.sweeps[name][0].sustainable / first) / math.log(1.15)
            # lead steps below the median so far, which is round 1's or one step off it
            assert abs(below - mode.sweep_lead_steps) <= 1.01
    for name, limit in limits.items():
        assert len(tp.sweeps[name]) == mode.sweep_rounds
        found = tp.sweep(name).sustainable
        assert any(found == pytest.approx(LADDER[step]) for step in (limit, limit + 1))


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
