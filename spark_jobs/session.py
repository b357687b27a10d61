"""The SparkSession both jobs run in, and what its driver exposes.

A driver listens on three TCP ports: the Spark UI (4040, or the next free one that browsers may
open, `ui_port`), the driver RPC
endpoint and the block manager. Spark binds the UI to `$SPARK_LOCAL_IP`, or to every interface
when it is unset, and the other two to the address the machine's name resolves to; the UI has no
login and, by Spark's default, kill links. A streamops driver instead binds all three to
`$SPARK_LOCAL_IP`, which defaults to the loopback interface (`driver_environment`): nothing of it
is reachable from another host unless the deployment says where executors must reach it
(docs/deploy.md, "What a driver listens on"). Kill links are off, and conf values whose key or
value looks like a credential are redacted on the UI's Environment page.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from spark_jobs.java_runtime import ensure_java

if TYPE_CHECKING:  # pyspark is imported by `build_session` only: the Airflow side reads this module
    from pyspark.sql import SparkSession

STATE_STORE_PROVIDERS = {
    "rocksdb": "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
    "hdfs": "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider",
}

# Spark's own setting for the address a process binds to; the deployment sets it where executors
# on other hosts must reach the driver (the compose file does, for the scheduler's drivers).
BIND_ADDRESS_ENV = "SPARK_LOCAL_IP"
DEFAULT_BIND_ADDRESS = "127.0.0.1"
# Spark's default (secret|password|token|access[.]?key) plus other common names of credentials
# (`jaas`: Kafka's `sasl.jaas.config` holds a login, given as a Kafka source option).
REDACTION_REGEX = (
    r"(?i)secret|password|passwd|token|access[.]?key|api[._-]?key|credential|private[._-]?key"
    r"|jaas"
)

DRIVER_CONF = {
    # Sink timestamps are UTC whatever the machine's zone.
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    # Let the job fail with its own one-line message rather than a stack of JVM frames.
    "spark.sql.pyspark.jvmStacktrace.enabled": "false",
    # Nobody stops a stream's jobs from the UI: a killed job fails the query (stream_control
    # stops a stream at a batch boundary instead).
    "spark.ui.killEnabled": "false",
    "spark.redaction.regex": REDACTION_REGEX,
}


def driver_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a driver process needs in its environment before its JVM starts.

    `$SPARK_LOCAL_IP` is kept when the deployment sets it, and is the loopback interface
    otherwise. The spark-submit that the stream DAGs start gets these; so does the JVM that
    `python -m spark_jobs.<job>` launches (`build_session`).
    """
    env = os.environ if environ is None else environ
    return {BIND_ADDRESS_ENV: env.get(BIND_ADDRESS_ENV) or DEFAULT_BIND_ADDRESS}


# Ports that browsers refuse to open (the Fetch standard's "bad ports"). Spark takes its UI port
# from 4040 up, so the sixth driver on a host would listen on 4045, which no browser can load.
BROWSER_BLOCKED_PORTS = frozenset(
    {1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101}
    | {102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389}
    | {427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636}
    | {989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566}
    | {6665, 6666, 6667, 6668, 6669, 6697, 10080}
)
UI_PORT_KEY = "spark.ui.port"
FIRST_UI_PORT = 4040  # Spark's default
UI_PORT_TRIES = 100


def _port_is_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def ui_port(address: str, is_free: Callable[[str, int], bool] = _port_is_free) -> int | None:
    """The first port from 4040 up that is free on `address` and that browsers may open.

    Spark would take the first free port, blocked or not. Another driver may still take the port
    between this check and Spark's bind; Spark then takes the next one. None if none is free.
    """
    for port in range(FIRST_UI_PORT, FIRST_UI_PORT + UI_PORT_TRIES):
        if port not in BROWSER_BLOCKED_PORTS and is_free(address, port):
            return port
    return None


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback interface."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def unreachable_driver_warning(master: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Why executors of `master` may not reach a driver started here, or None.

    A driver on the default loopback address serves executors on the same host only; a master on
    another host has its executors there.
    """
    env = os.environ if environ is None else environ
    if env.get(BIND_ADDRESS_ENV) or not master.startswith("spark://"):
        return None
    host = urlsplit(master.split(",", maxsplit=1)[0]).hostname or ""
    if is_loopback(host) or host in (socket.gethostname(), socket.getfqdn()):
        return None
    return (
        f"drivers listen on {DEFAULT_BIND_ADDRESS} because {BIND_ADDRESS_ENV} is not set, but "
        f"the master {master} is on another host: its executors cannot connect back to the "
        f"driver. Set {BIND_ADDRESS_ENV} in this Airflow component's environment to the address "
        "on which the cluster reaches this host (docs/deploy.md, 'What a driver listens on')"
    )


# Spark writes a checkpoint's files (offsets, commits, the file source's log, state store changelogs
# and deltas) through a CheckpointFileManager, by default Hadoop's FileContext. On the local
# filesystem, without Hadoop's native library (Spark ships none), FileContext's rename runs
# `readlink` as a subprocess for every path it checks, about a dozen times per file: some 45
# processes per micro-batch, over 100 ms of each batch (docs/performance.md, "Tuning").
# Hadoop's FileSystem API renames with one system call, as atomically on a local filesystem;
# it is what Spark itself falls back to where FileContext is unavailable. The class moved
# package in Spark 4.1: the first name the JVM knows is used.
CHECKPOINT_FILE_MANAGER_KEY = "spark.sql.streaming.checkpointFileManagerClass"
LOCAL_CHECKPOINT_FILE_MANAGERS = (
    "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager",
    "org.apache.spark.sql.execution.streaming.FileSystemBasedCheckpointFileManager",
)


def checkpoint_conf(spark: SparkSession, checkpoint: str) -> dict[str, str]:
    """Session settings for a query whose checkpoint is `checkpoint`.

    A checkpoint on the local filesystem (a plain path while Hadoop's default filesystem is
    local, or a `file:` URI) gets the FileSystem-based checkpoint file manager; any other keeps
    Spark's default. A manager already set for the session (`--conf` of spark-submit) is kept.
    """
    if spark.conf.get(CHECKPOINT_FILE_MANAGER_KEY, None):
        return {}
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    path = jvm.org.apache.hadoop.fs.Path(checkpoint)
    scheme = (
        path.toUri().getScheme()
        or jvm.org.apache.hadoop.fs.FileSystem.getDefaultUri(hadoop_conf).getScheme()
    )
    if scheme != "file":
        return {}
    for name in LOCAL_CHECKPOINT_FILE_MANAGERS:
        if jvm.org.apache.spark.util.Utils.classIsLoadable(name):
            return {CHECKPOINT_FILE_MANAGER_KEY: name}
    return {}


S3A_FILESYSTEM = "org.apache.hadoop.fs.s3a.S3AFileSystem"
# The AWS SDK's own default chain: the standard variables, the shared config and credentials
# files (`AWS_PROFILE`), web identity, the container and instance roles; the same as boto3's.
AWS_DEFAULT_CREDENTIALS = "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
DEFAULT_S3_REGION = "us-east-1"


def s3a_conf(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Session settings for checkpoints and sinks on `s3a://` (and `s3://`) URIs.

    Credentials never enter Spark's configuration (nor argv, the logs or the UI): S3A takes them
    from the AWS SDK's default chain, in the driver's and executors' environment. Only where to
    reach the store goes into the configuration: `$AWS_ENDPOINT_URL` (an S3-compatible server,
    reached by path-style requests) and the region (`$AWS_REGION`, `$AWS_DEFAULT_REGION`). An
    `s3://` URI is read through S3A too, so that one URI means the same objects to Spark and to
    pyarrow (`storage.py`).
    """
    env = os.environ if environ is None else environ
    conf = {
        "spark.hadoop.fs.s3.impl": S3A_FILESYSTEM,
        "spark.hadoop.fs.s3a.aws.credentials.provider": AWS_DEFAULT_CREDENTIALS,
    }
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if endpoint := env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"):
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        region = region or DEFAULT_S3_REGION
    if region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    return conf


def build_session(
    app_name: str, jars: Sequence[str] = (), conf: Mapping[str, str] | None = None
) -> SparkSession:
    """A session with the settings the jobs rely on, and `jars` (local paths) on its classpath.

    `conf` adds settings (`s3a_conf` for a job on S3); one that spark-submit's `--conf` set
    already is kept.

    Per-query settings (shuffle partitions, state store) are set by `runner.start`.

    The master comes from `spark-submit` (or `PYSPARK_SUBMIT_ARGS`); run with plain `python -m`
    it is Spark's default, `local[*]`. The jars are given to the JVM that `python -m` launches
    (`spark.jars`, which puts them on the driver's classpath too); under spark-submit the JVM
    already runs, and its `--jars` (the stream DAGs pass them) are what counts.
    """
    from pyspark.sql import SparkSession

    ensure_java()
    # Read by the JVM that PySpark launches for `python -m`; under spark-submit the JVM already
    # runs, with the environment its launcher gave it.
    os.environ.update(driver_environment())
    builder = SparkSession.builder.appName(app_name)
    ui = _ui_port_conf(jars)
    from pyspark import SparkConf

    submitted = SparkConf()  # spark-submit's --conf and spark-defaults, once the JVM runs
    extra = {k: v for k, v in (conf or {}).items() if not submitted.contains(k)}
    for key, value in {**DRIVER_CONF, **extra, **ui}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _ui_port_conf(jars: Sequence[str] = ()) -> dict[str, str]:
    """`spark.ui.port` for a UI that browsers may open, unless the deployment set one.

    Launches the JVM (unless it runs already), with `jars` in its `spark.jars`.
    """
    from pyspark import SparkConf, SparkContext

    launch = SparkConf(loadDefaults=False)
    if jars:
        launch.set("spark.jars", ",".join(jars))
    # The JVM, with spark-submit's --conf and spark-defaults (and `launch` when it starts now).
    SparkContext._ensure_initialized(conf=launch)
    if SparkConf().contains(UI_PORT_KEY):
        return {}
    address = os.environ.get(BIND_ADDRESS_ENV) or DEFAULT_BIND_ADDRESS
    port = ui_port("0.0.0.0" if address in ("0.0.0.0", "::") else address)
    return {} if port is None else {UI_PORT_KEY: str(port)}


def ui_url(spark: SparkSession) -> str | None:
    """Where the driver's Spark UI is reached: its own address, or the standalone master's reverse
    proxy when the deployment turned it on (`spark.ui.reverseProxy` and `spark.ui.reverseProxyUrl`).
    None when the UI is off (`spark.ui.enabled=false`).
    """
    context = spark.sparkContext
    own = context.uiWebUrl
    if own is None:
        return None
    conf = context.getConf()
    proxy = conf.get("spark.ui.reverseProxyUrl")
    if conf.get("spark.ui.reverseProxy", "false").lower() == "true" and proxy:
        return f"{proxy.rstrip('/')}/proxy/{context.applicationId}"
    return str(own)
