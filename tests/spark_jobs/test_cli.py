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
        (["--source", "pulsar"], "--source"),
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


KAFKA = ["--source", "kafka", "--kafka-bootstrap-servers", "127.0.0.1:9092"]
OUT = ["--sink", "s", "--checkpoint", "c"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        ([*KAFKA, *OUT], "--kafka-topic"),
        (["--source", "kafka", "--kafka-topic", "lines", *OUT], "--kafka-bootstrap-servers"),
        ([*KAFKA, "--kafka-topic", "bad topic", *OUT], "--kafka-topic"),
        ([*KAFKA, "--kafka-topic", "a", "--kafka-topic-pattern", "b.*", *OUT], "--kafka-topic"),
        ([*KAFKA, "--kafka-topic-pattern", "(unclosed", *OUT], "--kafka-topic-pattern"),
        ([*KAFKA, "--kafka-topic", "a", "--kafka-starting-offsets", "oldest", *OUT], "offsets"),
        (
            [*KAFKA, "--kafka-topic", "a", "--kafka-starting-offsets", '{"a": {"x": 1}}', *OUT],
            "--kafka-starting-offsets",
        ),
        ([*KAFKA, "--kafka-topic", "a", "--max-offsets-per-trigger", "0", *OUT], "--max-offsets"),
        ([*KAFKA, "--kafka-topic", "a", "--kafka-option", "novalue", *OUT], "--kafka-option"),
        (
            [*KAFKA, "--kafka-topic", "a", "--kafka-option", "bootstrap.servers=x:1", *OUT],
            "--kafka-bootstrap-servers",
        ),
        ([*KAFKA, "--kafka-topic", "a", "--kafka-option", "acks=env:1BAD", *OUT], "env:"),
        (["--source", "rate", "--kafka-topic", "a", *OUT], "--kafka-topic"),
        (["--source", "rate", "--max-offsets-per-trigger", "5", *OUT], "--max-offsets-per-trigger"),
    ],
)
def test_bad_kafka_arguments_name_the_argument(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        running_total.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("running_total: error: ")
    assert named in err


def test_kafka_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_JAAS", "login secret")
    offsets = '{"lines": {"0": 23, "1": -2}}'
    argv = [
        *KAFKA,
        "--kafka-topic", "lines", "more.lines",
        "--kafka-topic", "third",
        "--kafka-starting-offsets", offsets,
        "--max-offsets-per-trigger", "1000",
        "--kafka-option", "security.protocol=SASL_SSL",
        "--kafka-option", "kafka.sasl.mechanism=PLAIN",
        "--kafka-option", "sasl.jaas.config=env:KAFKA_JAAS",
        *OUT,
    ]  # fmt: skip
    args = word_count.parse_args(argv)
    assert args.kafka_topic == ["lines", "more.lines", "third"]
    assert args.kafka_starting_offsets == offsets
    assert args.max_offsets_per_trigger == 1000
    assert cli.kafka_client_options(args.kafka_option, {"KAFKA_JAAS": "login secret"}) == {
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "PLAIN",
        "kafka.sasl.jaas.config": "login secret",
    }
    default = word_count.parse_args([*KAFKA, "--kafka-topic-pattern", "lines-.*", *OUT])
    assert default.kafka_starting_offsets == "earliest"
    assert default.kafka_topic_pattern == "lines-.*"
    assert default.kafka_topic is None


def test_a_credential_given_in_the_command_line_is_refused_without_echoing_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for option in ("sasl.jaas.config=hunter2-jaas", "ssl.key.password=hunter2-jaas"):
        with pytest.raises(SystemExit):
            word_count.parse_args([*KAFKA, "--kafka-topic", "a", "--kafka-option", option, *OUT])
        err = capsys.readouterr().err
        assert "hunter2" not in err
        assert "=env:VARNAME" in err


def test_an_unset_environment_variable_is_named_and_its_absence_reported() -> None:
    with pytest.raises(ValueError, match="KAFKA_JAAS is not set"):
        cli.kafka_client_options([("sasl.jaas.config", "env:KAFKA_JAAS")], {})


def test_an_unset_environment_variable_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STREAMOPS_TEST_UNSET", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        word_count.parse_args(
            [
                *KAFKA,
                "--kafka-topic",
                "a",
                "--kafka-option",
                "sasl.jaas.config=env:STREAMOPS_TEST_UNSET",
                *OUT,
            ]
        )
    assert exit_info.value.code == 2
    assert "STREAMOPS_TEST_UNSET is not set" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--sink", "--checkpoint"])
def test_a_file_where_a_folder_belongs_exits_2_naming_it(tmp_path: Path, flag: str) -> None:
    # Given a file at the path one of the folders is given
    from spark_jobs import runner

    paths = {flag: tmp_path / name for flag, name in [("--sink", "s"), ("--checkpoint", "c")]}
    paths["--input"] = tmp_path / "in"
    paths["--input"].mkdir()
    paths[flag] = tmp_path / "a-file"
    paths[flag].write_text("not a folder\n")
    argv = [part for key, path in paths.items() for part in (key, str(path))]
    # When the job starts (before any JVM or lease)
    args = word_count.parse_args(argv)
    message = runner.file_in_place_of_a_folder(args)
    # Then it is refused, naming the flag and the path
    assert message == (
        f"{flag} {paths[flag]} is a file, not a folder: give the path of a folder (created if "
        "missing), or move the file away"
    )
    assert runner.run(word_count.spec_for(args), args) == runner.EXIT_REFUSED
    assert not (tmp_path / "c" / "_streamops").exists()
