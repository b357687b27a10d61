"""The stream DAG of a job: one per module in `spark_jobs`, each a few lines in `dags/`.

A stream DAG's run is one stream: its task starts the job's driver with spark-submit, then
defers to a trigger that supervises it for as long as the stream runs.
"""

from __future__ import annotations

from airflow.sdk import DAG

from streamops.config import streams_per_job
from streamops.operators import StreamSubmitOperator
from streamops.params import stream_params

# What every stream DAG's docs say after the job's own lines.
HOW_IT_RUNS = """
**Trigger** this DAG to start the stream; the run lasts as long as the stream does. The driver
is started with spark-submit, built by the Spark provider's `SparkSubmitHook` on the
`spark_default` connection (its master and deploy mode decide where the driver runs), detached
from Airflow: restarting any Airflow component leaves it running. The task then **defers**: it
holds no worker slot while the stream runs, and the triggerer copies the driver's log into this
task's log. Paths are relative to the data root.

- Each run is one stream; up to `$STREAMOPS_MAX_STREAMS_PER_JOB` (default 32) run at once. A run
  for a stream another active run already runs is refused, naming that run. The driver holds its
  checkpoint's lease: a second driver on the checkpoint is refused, naming the one that runs.
  A retry of this run adopts its live driver instead of starting another: Airflow retries a
  try that failed outside the stream (its worker could not reach the api-server, say) up to 5
  times, 30 s to 5 min apart; a failure of the stream itself is never retried. Set the form's
  *Run ID* to `<stream>__<anything>` so the grid reads as a list of streams (`bin/streamops
  start` does). *Console output* prints each batch's first words into this task's log.
- A failed driver restarts from its checkpoint with backoff: at most 5 restarts in 30 minutes,
  then the task fails and alerts. So does a hung one: alive but without progress for
  `$STREAMOPS_STALL_RESTART_SECONDS` (default 3 stall limits; 0: never), it is killed first.
- *Source* `kafka` reads the *Kafka topics* (or the *Kafka topic pattern*) with Spark's own
  Kafka source, exactly once. The brokers and the security settings (a login, TLS) come from
  the Airflow connection named in *Kafka connection* (`kafka_default`, type `kafka`, its Config
  Dict as for the Kafka provider), unless *Kafka bootstrap servers* names the brokers; no field
  of this form takes a secret. *Kafka starting offsets* counts for a new checkpoint only.
- **Stop** the stream with the `stream_control` DAG (action *stop*): it ends at a batch boundary
  and this run succeeds. Marking the task failed or success, or clearing it, stops the driver
  (SIGKILL after 15 s).
"""


def stream_dag(job: str, doc_md: str, schedule: None = None) -> DAG:
    """The DAG `<job>_stream`: a typed trigger form, and one supervised task per run.

    `doc_md` is the job's own part of the DAG's docs (what it computes, its sink); the part
    every stream DAG shares follows it. A stream starts when triggered, never on a schedule."""
    with DAG(
        dag_id=f"{job}_stream",
        schedule=schedule,
        catchup=False,
        # One run per stream; many streams of this job at once.
        max_active_runs=streams_per_job(),
        doc_md=f"{doc_md.rstrip()}\n{HOW_IT_RUNS}",
        params=stream_params(job),
        tags=["streaming", "spark"],
        # Retries: the operator's own (CONTROL_PLANE_RETRIES), for a try failed outside the stream.
        default_args={"owner": "data-platform"},
    ) as dag:
        StreamSubmitOperator(task_id="run_stream", job=job, conn_id="spark_default")
    return dag
