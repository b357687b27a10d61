"""What a driver's environment says about where it listens (no Spark needed)."""

from __future__ import annotations

import socket

from spark_jobs.session import (
    BROWSER_BLOCKED_PORTS,
    _port_is_free,
    driver_environment,
    ui_port,
    unreachable_driver_warning,
)


def test_drivers_listen_on_loopback_unless_the_deployment_says_otherwise() -> None:
    assert driver_environment({}) == {"SPARK_LOCAL_IP": "127.0.0.1"}
    assert driver_environment({"SPARK_LOCAL_IP": ""}) == {"SPARK_LOCAL_IP": "127.0.0.1"}
    assert driver_environment({"SPARK_LOCAL_IP": "10.0.0.7"}) == {"SPARK_LOCAL_IP": "10.0.0.7"}


def test_a_master_on_another_host_with_drivers_on_loopback_is_a_warning() -> None:
    warning = unreachable_driver_warning("spark://spark-master.example:7077", {})
    assert warning is not None
    assert "spark://spark-master.example:7077 is on another host" in warning
    assert "Set SPARK_LOCAL_IP" in warning


def test_no_warning_when_the_executors_can_reach_the_driver() -> None:
    for master in ("local[2]", "spark://localhost:7077", "spark://127.0.0.1:7077", "yarn"):
        assert unreachable_driver_warning(master, {}) is None, master
    remote = "spark://spark-master.example:7077"
    assert unreachable_driver_warning(remote, {"SPARK_LOCAL_IP": "10.0.0.7"}) is None


def test_the_ui_port_is_one_that_browsers_open() -> None:
    # Five drivers hold 4040-4044: Spark alone would give the sixth 4045, which browsers refuse.
    taken = set(range(4040, 4045))
    assert 4045 in BROWSER_BLOCKED_PORTS
    assert ui_port("127.0.0.1", lambda _, port: port not in taken) == 4046
    assert ui_port("127.0.0.1", lambda _, port: True) == 4040
    assert ui_port("127.0.0.1", lambda _, port: False) is None


def test_a_port_held_by_another_process_is_not_free() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not _port_is_free("127.0.0.1", port)
    assert _port_is_free("127.0.0.1", port)


def test_s3a_takes_where_to_reach_the_store_from_the_aws_settings_and_never_a_secret() -> None:
    from spark_jobs.session import AWS_DEFAULT_CREDENTIALS, S3A_FILESYSTEM, s3a_conf

    secret = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}
    # An S3-compatible server: its endpoint, path-style requests, a region by default
    local = s3a_conf({**secret, "AWS_ENDPOINT_URL": "http://127.0.0.1:8333"})
    assert local == {
        "spark.hadoop.fs.s3.impl": S3A_FILESYSTEM,
        "spark.hadoop.fs.s3a.aws.credentials.provider": AWS_DEFAULT_CREDENTIALS,
        "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:8333",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
    }
    # AWS itself: the region the environment names, S3A's own endpoint
    aws = s3a_conf({**secret, "AWS_REGION": "eu-west-1"})
    assert aws["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert "spark.hadoop.fs.s3a.endpoint" not in aws
    for conf in (local, aws):
        assert not {"AKIDEXAMPLE", "wJalrXUtnFEMI"} & set(conf.values())
