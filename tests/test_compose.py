"""docker-compose.yaml is valid and agrees with what the DAGs, the jobs and the Dockerfile expect.

`docker-compose config` validates the file the way Compose will run it (skipped when the binary
is missing; `make system-deps` installs it). The other tests read the YAML itself, with the
variables of `.env.example` substituted, so they run without Docker.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer")  # fmt: skip
SPARK_SERVICES = ("spark-master", "spark-worker")
STREAM_DAGS = ("word_count_stream", "running_total_stream")
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    """The variables `.env.example` sets."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """`${VAR}`, `${VAR:-default}` and `${VAR:?error}` replaced as Compose does; `$$` -> `$`."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise AssertionError(f"{name} is required: {default}")
        return default or env.get(name, "")

    return VARIABLE.sub(substitute, node.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yaml as Compose sees it with `cp .env.example .env`."""
    return dict(interpolate(yaml.safe_load(COMPOSE.read_text()), env_example()))


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (Compose allows a list of NAME=value too)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's volumes as `container path -> source`."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


# --- Compose itself ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (make system-deps installs it)")
    return binary


def test_compose_config_is_valid_with_the_example_env(docker_compose: str, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    shutil.copy(ENV_EXAMPLE, env_file)
    for profile in ([], ["--profile", "metrics"]):
        done = subprocess.run(
            [docker_compose, "-f", str(COMPOSE), "--env-file", str(env_file), *profile, "config"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        rendered = yaml.safe_load(done.stdout)
        assert "spark-worker" in rendered["services"]


def test_compose_refuses_to_start_without_the_secrets(docker_compose: str, tmp_path: Path) -> None:
    empty = tmp_path / ".env"
    empty.write_text("")
    done = subprocess.run(
        [docker_compose, "-f", str(COMPOSE), "--env-file", str(empty), "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "in .env" in done.stderr


def test_secrets_come_from_an_uncommitted_env_file() -> None:
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required
    assert required <= env_example().keys()
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False
        ).returncode
        assert ignored == 0


# --- what the DAGs expect ------------------------------------------------------------------


def test_the_services_of_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"postgres", "airflow-init", *AIRFLOW_SERVICES, *SPARK_SERVICES}
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-scheduler"] == ["airflow", "scheduler"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]
    assert commands["airflow-apiserver"][-1].endswith("exec airflow api-server")
    assert services["airflow-init"]["command"] == ["airflow", "db", "migrate"]
    assert services["spark-worker"]["deploy"]["replicas"] == 2
    # Prometheus only with the `metrics` profile
    assert services["prometheus"]["profiles"] == ["metrics"]
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = service_env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(
            "postgresql+psycopg2://airflow:change-me-postgres@postgres:5432/airflow"
        )


def stream_dag_conn_ids() -> set[str]:
    """The connection id every stream DAG's StreamSubmitOperator submits with."""
    ids = set()
    for dag_id in STREAM_DAGS:
        spec = importlib.util.spec_from_file_location(
            f"compose_{dag_id}", ROOT / f"dags/{dag_id}.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ids.add(module.dag.get_task("run_stream")._conn_id)
    return ids


def test_spark_connection_points_at_the_master(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    conn_ids = stream_dag_conn_ids()
    assert conn_ids == {"spark_default"}
    master_port = compose["services"]["spark-master"]["command"]
    assert master_port[master_port.index("--port") + 1] == "7077"
    assert master_port[master_port.index("--host") + 1] == "spark-master"
    for name in AIRFLOW_SERVICES:
        env = service_env(compose["services"][name])
        # When the provider reads the connection the way a task does
        monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", env["AIRFLOW_CONN_SPARK_DEFAULT"])
        hook = SparkSubmitHook(conn_id="spark_default")
        # Then it submits to the compose master, the driver beside the task
        assert hook._connection["master"] == "spark://spark-master:7077"
        assert hook._connection["deploy_mode"] == "client"
    worker = compose["services"]["spark-worker"]["command"]
    assert "spark://spark-master:7077" in worker


def test_one_data_root_shared_by_airflow_and_spark(compose: dict[str, Any]) -> None:
    services = compose["services"]
    roots = {
        name: service_env(services[name]).get("STREAMOPS_DATA_ROOT")
        for name in (*AIRFLOW_SERVICES, *SPARK_SERVICES)
    }
    assert set(roots.values()) == {"/opt/streamops/data"}, roots
    for name in (*AIRFLOW_SERVICES, *SPARK_SERVICES):
        assert mounts(services[name]).get("/opt/streamops/data") == "streamops-data", name
    assert "streamops-data" in compose["volumes"]
    # The image creates the mount point, so the volume starts owned by the airflow user
    assert "/opt/streamops/data" in (ROOT / "Dockerfile").read_text()


def test_same_dags_and_plugins_as_the_embedded_stack(compose: dict[str, Any]) -> None:
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        service = compose["services"][name]
        env = service_env(service)
        volumes = mounts(service)
        assert volumes[env["AIRFLOW__CORE__DAGS_FOLDER"]] == "./dags"
        assert volumes[env["AIRFLOW__CORE__PLUGINS_FOLDER"]] == "./plugins"
        # streamops.config.REPO_ROOT is two levels above plugins/streamops: the jobs live there
        assert volumes["/opt/airflow/spark_jobs"] == "./spark_jobs"
        assert volumes["/opt/airflow/expectations"] == "./expectations"
        assert "/opt/airflow" in env["PYTHONPATH"].split(":")


def test_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    for name in AIRFLOW_SERVICES:
        env = service_env(services[name])
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-apiserver:8080/execution/"
        )
    # Prometheus scrapes the streamops endpoint of the api-server
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "streamops")
    assert job["metrics_path"] == "/streamops/metrics"
    assert job["static_configs"][0]["targets"] == ["airflow-apiserver:8080"]
    assert prometheus["scrape_configs"][-1] is job  # the token block is appended to it
    assert mounts(services["prometheus"])["/etc/streamops/prometheus.yml"] == (
        "./deploy/prometheus/prometheus.yml"
    )


def test_drivers_listen_on_the_compose_network_only_and_their_uis_are_proxied(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    # The drivers run in the scheduler container: bound to its address in the compose network,
    # where the executors reach them; no service publishes a driver port (4040-...)
    assert service_env(services["airflow-scheduler"])["SPARK_LOCAL_IP"] == "airflow-scheduler"
    for name, service in services.items():
        for port in service.get("ports", []):
            assert not str(port).split(":")[-1].startswith("404"), (name, port)
    # And the master, the workers and every driver turn the master's reverse proxy on, with the
    # same public URL, so the Streams page links each driver's UI through the master
    proxy = "-Dspark.ui.reverseProxyUrl=http://localhost:8081"  # .env.example's
    options = {
        "spark-master": service_env(services["spark-master"])["SPARK_MASTER_OPTS"],
        "spark-worker": service_env(services["spark-worker"])["SPARK_WORKER_OPTS"],
        **{
            name: service_env(services[name])["SPARK_SUBMIT_OPTS"]
            for name in (*AIRFLOW_SERVICES, "airflow-init")
        },
    }
    for name, value in options.items():
        assert "-Dspark.ui.reverseProxy=true" in value.split(), name
        assert proxy in value.split(), name
    assert "SPARK_UI_PROXY_URL=http://localhost:8081" in (ROOT / ".env.example").read_text()


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
    # The built image: Airflow 3.3.2 on Python 3.11, and the locked pyspark is Spark 4.2.0
    froms = re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert "apache/airflow:3.3.2-python3.11" in froms
    for base in froms:
        assert ":" in base
        assert not base.endswith(":latest")
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = {p["name"]: p["version"] for p in lock["package"]}
    assert versions["pyspark"] == "4.2.0"
    assert versions["apache-airflow"] == "3.3.2"


def test_spark_services_run_the_launcher_of_the_images_spark_home(compose: dict[str, Any]) -> None:
    spark_home = re.search(r"^ENV SPARK_HOME=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert spark_home is not None
    for name in SPARK_SERVICES:
        entrypoint = compose["services"][name]["entrypoint"]
        assert entrypoint[-1] == f"{spark_home.group(1)}/bin/spark-class"
    # The pip package has that launcher where the symlink points
    import pyspark

    assert (Path(pyspark.__file__).parent / "bin" / "spark-class").exists()


def test_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    one_shot = {"airflow-init"}
    for name, service in services.items():
        if name not in one_shot:
            assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            condition = rule["condition"]
            if dependency in one_shot:
                assert condition == "service_completed_successfully", (name, dependency)
            else:
                assert condition == "service_healthy", (name, dependency)
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"
    # The scheduler runs the stream tasks: it needs the master and the api-server first
    assert {"spark-master", "airflow-apiserver"} <= services["airflow-scheduler"][
        "depends_on"
    ].keys()
    assert "spark-master" in services["spark-worker"]["depends_on"]


@pytest.mark.parametrize("token", ["", "s3cret-token"])
def test_prometheus_sends_the_metrics_token_when_set(
    compose: dict[str, Any], tmp_path: Path, token: str
) -> None:
    # Given the prometheus service's start script, run by sh with its paths in a temp folder
    prometheus = compose["services"]["prometheus"]
    assert prometheus["entrypoint"] == ["/bin/sh", "-c"]
    script = (
        prometheus["command"][0]
        .replace("/prometheus/", f"{tmp_path}/")
        .replace("/etc/streamops/prometheus.yml", str(ROOT / "deploy/prometheus/prometheus.yml"))
        .replace("exec /bin/prometheus", "exec echo")
    )
    # When it starts with STREAMOPS_METRICS_TOKEN set or empty
    done = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "STREAMOPS_METRICS_TOKEN": token},
        capture_output=True,
        text=True,
        check=True,
    )
    # Then Prometheus gets a valid config whose streamops job sends the token only when set
    assert f"--config.file={tmp_path}/prometheus.yml" in done.stdout
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streamops")
    if token:
        assert job["authorization"] == {"credentials_file": f"{tmp_path}/metrics-token"}
        assert (tmp_path / "metrics-token").read_text() == token
    else:
        assert "authorization" not in job
        assert not (tmp_path / "metrics-token").exists()
