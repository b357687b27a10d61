"""The SparkSession both jobs run in."""

from __future__ import annotations

from pyspark.sql import SparkSession

from spark_jobs.java_runtime import ensure_java

STATE_STORE_PROVIDERS = {
    "rocksdb": "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
    "hdfs": "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider",
}


def build_session(app_name: str) -> SparkSession:
    """A session with the settings the jobs rely on.

    Per-query settings (shuffle partitions, state store) are set by `runner.start`.

    The master comes from `spark-submit` (or `PYSPARK_SUBMIT_ARGS`); run with plain `python -m`
    it is Spark's default, `local[*]`.
    """
    ensure_java()
    conf = {
        # Sink timestamps are UTC whatever the machine's zone.
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        # Let the job fail with its own one-line message rather than a stack of JVM frames.
        "spark.sql.pyspark.jvmStacktrace.enabled": "false",
    }
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
