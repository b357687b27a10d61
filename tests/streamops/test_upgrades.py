"""Upgrade preflight on real checkpoints: each verdict, its reasons named, and nothing written.

One word_count and one running_total stream are built once for the module (two batches each,
registered as a stream DAG registers them); every dry run then runs its new spec on a copy of
their checkpoints in the shared SparkSession, and one runs it as `bin/streamops` does, in a
process of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from collections import Counter
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_jobs.packaging import code_version
from spark_jobs.preflight import CheckpointState, Finding, Trial, trial_run
from spark_jobs.status import read_status
from streamops import registry
from streamops.config import StreamSpec
from streamops.params import Change
from streamops.upgrades import UpgradeError, Verdict, decide, dry_run
from tests.conftest import ROOT, drop_file, read_sink, run_available_now

TEXT = "hello world\nHello spark streaming\nhello again\n"
WINDOW_MISSING_STATE = "STREAMING_STATEFUL_OPERATOR_MISSING_STATE_DIRECTORY"
# The module's streams are built once: its tests run on one worker.
pytestmark = pytest.mark.xdist_group("upgrades")


def job_argv(spec: StreamSpec) -> list[str]:
    """The stream's command line, as its DAG builds it, but bounded (for building checkpoints)."""
    argv = spec.application_args()
    at = argv.index("--trigger-interval")
    return argv[:at] + argv[at + 2 :]


@pytest.fixture(scope="module")
def root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with streams `wc` (word_count) and `rt` (running_total, 2 shuffle
    partitions), each two batches in and registered with its Params and spec version."""
    data = tmp_path_factory.mktemp("upgrades")
    for stream, job, params in (
        ("wc", "word_count", {"stream": "wc"}),
        ("rt", "running_total", {"stream": "rt", "shuffle_partitions": 2}),
    ):
        spec = StreamSpec.from_params(job, params, str(data))
        version = registry.SpecVersion.of(job, params)
        for batch in range(2):
            drop_file(Path(spec.input), f"{batch}.txt", TEXT)
            run_available_now(
                spark,
                import_module(f"spark_jobs.{job}"),
                [*job_argv(spec), "--spec-version", version.version, "--stream", stream],
            )
        record = registry.StreamRecord(
            stream, job, spec.checkpoint, spec.sink, spec.input, "1 second", params=params
        )
        record.run_version(version)
        registry.save(record, str(data))
    return data


def in_session(spark: SparkSession) -> Any:
    """The preflight's trial in the test's own SparkSession (the CLI starts one of its own)."""
    return lambda job, argv: trial_run(spark, import_module(f"spark_jobs.{job}"), argv)


def digest(*folders: str) -> dict[str, str]:
    """Every file below the folders, by path, with a hash of its bytes."""
    found = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def stream_files(root: Path, stream: str) -> dict[str, str]:
    record = registry.load(stream, str(root))
    assert record is not None
    return digest(record.checkpoint, record.sink, str(registry.registry_dir(str(root)).path))


@pytest.mark.spark
def test_each_driver_names_its_spec_version_in_its_status(root: Path) -> None:
    for stream in ("wc", "rt"):
        record = registry.load(stream, str(root))
        assert record is not None
        status = read_status(record.checkpoint)
        assert status is not None
        assert status.spec_version == record.spec_version
        assert record.spec_version is not None


@pytest.mark.spark
def test_a_trigger_interval_change_restarts_on_the_same_checkpoint(
    spark: SparkSession, root: Path
) -> None:
    before = stream_files(root, "wc")
    verdict = dry_run(
        "wc", {"trigger_interval": "5 seconds"}, root=str(root), trial_runner=in_session(spark)
    )
    assert verdict.action == "restart", verdict.report()
    assert [c.key for c in verdict.changes] == ["trigger_interval"]
    assert verdict.trial is not None
    assert verdict.trial.replayed_batch == 1
    assert verdict.trial.error is None
    assert verdict.findings == []
    assert verdict.new_version != verdict.current_version
    assert stream_files(root, "wc") == before


@pytest.mark.spark
def test_more_shuffle_partitions_on_a_running_total_need_a_new_checkpoint_named(
    spark: SparkSession, root: Path
) -> None:
    before = stream_files(root, "rt")
    verdict = dry_run(
        "rt", {"shuffle_partitions": 4}, root=str(root), trial_runner=in_session(spark)
    )
    assert verdict.action == "new checkpoint", verdict.report()
    # Spark ran the batch on the checkpoint's 2 partitions: only the state data source tells.
    assert verdict.trial is not None
    assert verdict.trial.error is None
    assert verdict.trial.after is not None
    assert [op.partitions for op in verdict.trial.after.operators] == [2]
    assert verdict.findings == [
        Finding(
            "new checkpoint",
            "state of operator 0: 2 partitions in the checkpoint, 4 asked; a new checkpoint "
            "carries the totals",
        )
    ]
    assert "state of operator 0: 2 partitions in the checkpoint, 4 asked" in verdict.report()
    assert stream_files(root, "rt") == before


@pytest.mark.spark
def test_a_window_added_in_mode_restart_is_refused_by_spark_itself(
    spark: SparkSession, root: Path
) -> None:
    before = stream_files(root, "wc")
    verdict = dry_run(
        "wc", {"window": "30 seconds"}, "restart", root=str(root), trial_runner=in_session(spark)
    )
    assert verdict.action == "refused", verdict.report()
    # The failure `make demo` met: the old checkpoint has no state for the window's aggregation.
    assert verdict.trial is not None
    assert verdict.trial.error is not None
    assert WINDOW_MISSING_STATE in verdict.trial.error
    assert any(WINDOW_MISSING_STATE in reason for reason in verdict.reasons)
    assert all(r.startswith("mode restart was asked, but") for r in verdict.reasons)
    assert verdict.advice is not None
    assert "mode auto (or new-checkpoint)" in verdict.advice
    assert stream_files(root, "wc") == before

    auto = dry_run("wc", {"window": "30 seconds"}, root=str(root), trial_runner=in_session(spark))
    assert auto.action == "new checkpoint", auto.report()


def test_a_change_the_table_refuses_runs_no_preflight(root: Path) -> None:
    def no_trial(job: str, argv: list[str]) -> Trial:
        raise AssertionError("the preflight ran for a refused change")

    verdict = dry_run("wc", {"source": "rate"}, root=str(root), trial_runner=no_trial)
    assert verdict.action == "refused"
    assert verdict.reasons == [
        "source: another source kind has other offsets, which the checkpoint cannot resume; "
        "start a new stream under another name (its own sink and checkpoint) instead"
    ]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"shuffle_partitions": 0}, "shuffle_partitions=0: "),
        (
            {"normalize": True},
            "normalize: not a Param of a word_count stream; it is a job argument",
        ),
        ({"colour": "red"}, "colour: not a Param of a word_count stream; the Params of"),
    ],
)
def test_a_bad_change_is_named_before_anything_runs(
    root: Path, sets: dict[str, object], message: str
) -> None:
    with pytest.raises(UpgradeError, match=f"^{message}"):
        dry_run("wc", sets, root=str(root), trial_runner=lambda job, argv: pytest.fail("ran"))


def restart_change() -> Change:
    return Change("trigger_interval", "1 second", "5 seconds", "restart", "no part of it")


@pytest.mark.parametrize(
    ("mode", "found", "findings", "action"),
    [
        ("auto", [restart_change()], [], "restart"),
        ("new-checkpoint", [restart_change()], [], "new checkpoint"),
        ("restart", [restart_change()], [], "restart"),
        (
            "auto",
            [restart_change()],
            [Finding("new checkpoint", "state differs")],
            "new checkpoint",
        ),
        ("restart", [], [Finding("new checkpoint", "state differs")], "refused"),
        ("new-checkpoint", [], [Finding("refused", "the new code fails")], "refused"),
    ],
)
def test_the_mode_and_the_findings_decide_the_action(
    mode: Any, found: list[Change], findings: list[Finding], action: str
) -> None:
    decided, reasons = decide(mode, found, findings)
    assert decided == action
    assert reasons


@pytest.mark.spark
def test_bin_streamops_upgrade_dry_run_prints_the_verdict_and_writes_nothing(root: Path) -> None:
    before = stream_files(root, "wc")
    env = {**os.environ, "STREAMOPS_DATA_ROOT": str(root)}
    done = subprocess.run(
        [str(ROOT / "bin" / "streamops"), "upgrade", "wc", "--set", "window=30 seconds",
         "--mode", "restart", "--dry-run"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("upgrade of wc (mode restart): refused\n"), done.stdout
    assert WINDOW_MISSING_STATE in done.stdout
    assert "window: None -> '30 seconds' (new checkpoint:" in done.stdout
    assert stream_files(root, "wc") == before


def test_a_verdict_reads_for_a_person() -> None:
    verdict = Verdict(
        stream="rt",
        mode="auto",
        action="new checkpoint",
        reasons=["state of operator 0: 2 partitions in the checkpoint, 4 asked"],
        changes=[],
        current_version="aaa",
        new_version="bbb",
    )
    assert verdict.report().splitlines()[:3] == [
        "upgrade of rt (mode auto): new checkpoint",
        "  spec version aaa -> bbb",
        "  because state of operator 0: 2 partitions in the checkpoint, 4 asked",
    ]
    assert verdict.goes_ahead


def test_an_upgrade_that_changes_nothing_is_refused_without_a_preflight(root: Path) -> None:
    verdict = dry_run("wc", {"trigger_interval": "1 second"}, root=str(root), trial_runner=None)  # type: ignore[arg-type]
    assert verdict.action == "refused"
    assert verdict.reasons[0].startswith("nothing changes: the stream runs spec version")


class FakeTaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


@pytest.mark.spark
def test_the_dag_task_keeps_the_verdict_and_a_refused_one_fails_before_any_cut_over(
    spark: SparkSession, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from streamops.upgrades import upgrade_task

    monkeypatch.setenv("STREAMOPS_DATA_ROOT", str(root))
    ti = FakeTaskInstance()
    params = {"stream": "rt", "changes": {"shuffle_partitions": 4}, "mode": "auto", "dry_run": True}
    # A dry run: the verdict as XCom, nothing to start
    assert upgrade_task(params, ti, trial_runner=in_session(spark)) == []
    verdict = ti.pushed["verdict"]
    assert isinstance(verdict, dict)
    assert verdict["action"] == "new checkpoint"
    assert verdict["findings"] == [
        {
            "requires": "new checkpoint",
            "text": "state of operator 0: 2 partitions in the checkpoint, 4 asked; a new "
            "checkpoint carries the totals",
        }
    ]
    with pytest.raises(AirflowFailException, match="upgrade of rt refused: mode restart was asked"):
        upgrade_task(
            {**params, "mode": "restart", "dry_run": False}, ti, trial_runner=in_session(spark)
        )
    assert ti.pushed["verdict"]["action"] == "refused"  # type: ignore[index]


@pytest.mark.spark
def test_new_code_that_changes_the_state_schema_needs_a_new_checkpoint(
    spark: SparkSession, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyspark.sql import functions as F

    from spark_jobs import running_total

    # A code version whose state keeps each word's total as a double: another value schema.
    monkeypatch.setattr(
        running_total,
        "running_totals",
        lambda words: words.groupBy("word").agg(F.sum(F.lit(1.0)).alias("total")),
    )
    verdict = dry_run(
        "rt", {"max_files_per_trigger": 5}, root=str(root), trial_runner=in_session(spark)
    )
    assert verdict.action == "new checkpoint", verdict.report()
    assert verdict.trial is not None
    assert verdict.trial.error is not None
    assert verdict.trial.error.startswith("[STATE_STORE_"), verdict.trial.error
    assert verdict.findings[0].text.startswith(
        "the checkpoint cannot run the new spec (Spark: [STATE_STORE_"
    )


@pytest.mark.spark
def test_new_code_that_fails_on_the_last_batch_is_refused(
    spark: SparkSession, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spark_jobs import word_count

    def failing(batch: Any) -> Any:
        raise RuntimeError("the new code's bug")

    real = word_count.spec_for
    monkeypatch.setattr(
        word_count, "spec_for", lambda args: dataclasses.replace(real(args), batch_result=failing)
    )
    verdict = dry_run(
        "wc",
        {"trigger_interval": "5 seconds"},
        mode="new-checkpoint",
        root=str(root),
        trial_runner=in_session(spark),
    )
    assert verdict.action == "refused", verdict.report()
    (finding,) = verdict.findings
    assert finding.requires == "refused"
    assert finding.text.startswith("the new spec failed on the checkpoint's last batch (batch 1): ")
    assert "the new code's bug" in finding.text
    assert finding.text.endswith("; fix it, then try again")


@pytest.mark.spark
def test_a_new_checkpoint_cut_over_carries_the_totals_onto_the_partitions_asked(
    spark: SparkSession, tmp_path: Path
) -> None:
    from spark_jobs import running_total
    from spark_jobs.layout import CheckpointLayout, Generation
    from spark_jobs.preflight import read_state
    from streamops.upgrades import cut_over

    # Given a stopped running_total stream of 2 partitions, two batches in
    params: dict[str, object] = {"stream": "totals", "shuffle_partitions": 2}
    spec = StreamSpec.from_params("running_total", params, str(tmp_path))
    for batch in range(2):
        drop_file(Path(spec.input), f"{batch}.txt", TEXT)
        run_available_now(spark, running_total, [*job_argv(spec), "--stream", "totals"])
    record = registry.StreamRecord(
        "totals", "running_total", spec.checkpoint, spec.sink, spec.input, None, params=params
    )
    record.run_version(registry.SpecVersion.of("running_total", params))
    registry.save(record, str(tmp_path))

    # When it is upgraded to 4 partitions
    verdict = dry_run(
        "totals", {"shuffle_partitions": 4}, root=str(tmp_path), trial_runner=in_session(spark)
    )
    assert verdict.action == "new checkpoint"
    assert cut_over(verdict, owner="test", root=str(tmp_path)) == {}  # it was not running
    replaced = registry.load("totals", str(tmp_path))
    assert replaced is not None
    (old,) = replaced.versions
    assert (old.replaced_by, old.replaced_why) == (
        verdict.new_version,
        "upgrade (new checkpoint): shuffle_partitions",
    )
    assert old.replaced_at is not None

    # Then the checkpoint was rotated, and the new spec goes on from the carried totals
    layout = CheckpointLayout.of(spec.checkpoint)
    generation = Generation.read(layout)
    assert generation is not None
    assert (generation.number, generation.first_sink_batch_id) == (1, 2)
    new_spec = StreamSpec.from_params("running_total", verdict.params, str(tmp_path))
    drop_file(Path(spec.input), "2.txt", TEXT)
    run_available_now(spark, running_total, [*job_argv(new_spec), "--stream", "totals"])
    assert [op.partitions for op in read_state(spark, spec.checkpoint).operators] == [4]
    totals = read_sink(Path(spec.sink)).groupby("word")["total"].last().to_dict()
    assert totals == {word: 3 * n for word, n in Counter(TEXT.split()).items()}


def test_new_code_alone_is_an_upgrade_the_preflight_judges(tmp_path: Path) -> None:
    # Given a stream whose driver runs an older code version
    record = registry.StreamRecord("wc", "word_count", "ck", "sink", "in", "1 second")
    record.params = {"stream": "wc"}
    old = registry.SpecVersion.of("word_count", record.params)
    old.code = "sha256:0000000000000000"
    record.run_version(old)
    registry.save(record, str(tmp_path))
    asked: list[list[str]] = []

    def trial(job: str, argv: list[str]) -> Trial:
        asked.append(argv)
        return Trial(job, "ck", CheckpointState([], {}, 3), replayed_batch=3)

    # When the same Params are asked for with this checkout's code
    verdict = dry_run("wc", {}, root=str(tmp_path), trial_runner=trial)
    # Then the code is the change, the preflight ran it, and it restarts
    (change,) = verdict.changes
    assert (change.key, change.old, change.new) == ("code", old.code, code_version())
    assert change.requires == "restart"
    assert len(asked) == 1
    assert verdict.action == "restart"
