# The image of every Airflow and Spark service in docker-compose.yaml.
#
# Airflow 3.3.2 on Python 3.11 with the project's locked dependencies. pyspark 4.2.0 is one of them
# and carries Spark 4.2.0's jars and launch scripts (`spark-submit`, `spark-class`), so the Spark
# master and workers run from this image too: executors then have exactly the driver's Python,
# pandas and pyarrow, which PySpark requires. Java (Debian's default JRE, 17 or 21, both supported
# by Spark 4) serves spark-submit, the driver, the master and the workers.
#
# The code (dags/, plugins/, spark_jobs/, expectations/) is not copied in: docker-compose.yaml
# mounts it, so the embedded and the compose stacks run the same files.
FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends default-jre-headless \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/default-java
# The shared data root: created here so the named volume mounted on it starts owned by airflow.
RUN mkdir -p /opt/streamops/data \
    && chown -R airflow:0 /opt/streamops \
    && chmod -R g+rwX /opt/streamops
COPY --from=uv /uv /usr/local/bin/uv

USER airflow
COPY --chown=airflow:0 pyproject.toml uv.lock /tmp/streamops/
# Exactly the lock's versions. --no-deps: the lock already lists every dependency, and it leaves
# out pyspark-client on purpose (it would overwrite pyspark's own files; see pyproject.toml).
RUN uv export --project /tmp/streamops --locked --no-dev --no-emit-project --no-hashes \
        --output-file /tmp/streamops/requirements.txt \
    && pip install --no-cache-dir --no-deps -r /tmp/streamops/requirements.txt \
    && rm -rf /tmp/streamops \
    && ln -s "$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" \
        /opt/streamops/spark
# Spark's launch scripts look for their home with `python3` from PATH when this is unset.
ENV SPARK_HOME=/opt/streamops/spark
