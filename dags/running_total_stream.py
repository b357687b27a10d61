"""
### running_total_stream

Runs the **running_total** Spark Structured Streaming job: each word's cumulative count over
every batch so far, kept as streaming state (RocksDB) in the checkpoint.

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
- **Stop** the stream with the `stream_control` DAG (action *stop*): it ends at a batch boundary
  and this run succeeds. Marking the task failed or success, or clearing it, stops the driver
  (SIGKILL after 15 s).

Sink: Parquet, one file per micro-batch, columns `batch_id, batch_time, word, total`,
one row per word whose total changed in that batch, merged hourly by `sink_compaction`; read it
with `spark_jobs.sinks.sink_files(SINK)` (`docs/sinks.md`). It keeps every batch (no sink
retention): it is the record of every word's total, and a checkpoint rotation carries the totals
on from it.
"""

from __future__ import annotations

from airflow.sdk import DAG

from streamops.config import streams_per_job
from streamops.operators import StreamSubmitOperator
from streamops.params import stream_params

with DAG(
    dag_id="running_total_stream",
    schedule=None,
    catchup=False,
    # One run per stream; many streams of this job at once.
    max_active_runs=streams_per_job(),
    doc_md=__doc__,
    params=stream_params("running_total"),
    tags=["streaming", "spark"],
    # Retries: the operator's own (CONTROL_PLANE_RETRIES), for a try failed outside the stream.
    default_args={"owner": "data-platform"},
) as dag:
    StreamSubmitOperator(task_id="run_stream", job="running_total", conn_id="spark_default")


if __name__ == "__main__":
    dag.test()
