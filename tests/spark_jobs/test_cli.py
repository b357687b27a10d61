"""The command line is a contract: bad arguments exit 2 with one line that names the argument."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs import cli, running_total, word_count


@pytest.fixture
def dirs(tmp_path: Path) -> list[str]:
    (tmp_path / "in").mkdir()
    return ["--input", str(tmp_path / "in"), "--sink", "s", "--checkpoint", "c"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--source", "kafka"], "--source"),
        (["--max-files-per-trigger", "0"], "--max-files-per-trigger"),
        (["--max-files-per-trigger", "-3"], "--max-files-per-trigger"),
        (["--shuffle-partitions", "two"], "--shuffle-partitions"),
        (["--trigger-interval", "soon"], "--trigger-interval"),
        (["--trigger-interval", "-1 second"], "--trigger-interval"),
        (["--port", "70000"], "--port"),
        (["--available-now", "--trigger-interval", "1 second"], "--trigger-interval"),
        (["--window", "0 seconds"], "--window"),
        (["--slide", "10 seconds"], "--slide"),
        (["--window", "10 seconds", "--slide", "20 seconds"], "--slide"),
    ],
)
def test_bad_word_count_arguments_exit_2_with_one_line_naming_the_argument(
    dirs: list[str], argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        word_count.parse_args([*dirs, *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("word_count: error: ")
    assert named in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--sink", "s", "--checkpoint", "c"], "--input"),
        (["--input", "/no/such/folder", "--sink", "s", "--checkpoint", "c"], "--input"),
        (["--source", "rate", "--input", "x", "--sink", "s", "--checkpoint", "c"], "--input"),
        (
            ["--source", "socket", "--available-now", "--sink", "s", "--checkpoint", "c"],
            "--available-now",
        ),
        (["--source", "rate", "--checkpoint", "c"], "--sink"),
        (
            ["--source", "rate", "--sink", "s", "--state-store", "memory", "--checkpoint", "c"],
            "--state-store",
        ),
    ],
)
def test_bad_running_total_arguments_name_the_argument(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        running_total.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert named in err


def test_defaults_follow_the_seed(dirs: list[str]) -> None:
    args = word_count.parse_args(dirs)
    assert args.source == "file"
    assert args.trigger_interval == "1 seconds"
    assert args.host == "localhost"
    assert args.port == 9999
    assert not args.available_now
    assert args.window is None
    assert running_total.parse_args(dirs).state_store == "rocksdb"


def test_paths_are_made_absolute_so_job_and_airflow_agree(dirs: list[str]) -> None:
    args = word_count.parse_args(dirs)
    assert Path(args.sink).is_absolute()
    assert Path(args.checkpoint).is_absolute()


def test_slide_defaults_to_window(dirs: list[str]) -> None:
    args = word_count.parse_args([*dirs, "--window", "30s"])
    assert (args.window, args.slide) == ("30 seconds", "30 seconds")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1 second", 1000),
        ("500 milliseconds", 500),
        ("500ms", 500),
        ("2 min", 120_000),
        ("10 Seconds", 10_000),
        ("1 hour", 3_600_000),
    ],
)
def test_interval_parsing(text: str, ms: int) -> None:
    assert cli.interval_ms(text) == ms


def test_zero_trigger_interval_means_back_to_back(dirs: list[str]) -> None:
    assert word_count.parse_args([*dirs, "--trigger-interval", "0 seconds"]).trigger_interval == (
        "0 seconds"
    )
