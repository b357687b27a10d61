"""
### sink_compaction

Keeps every stream's **sink fast to read**: a stream writes one Parquet file per micro-batch
(86,400 a day at a 1-second trigger), and this DAG merges them into files of up to *Target size*
while the streams run. Runs **hourly** (`$STREAMOPS_COMPACTION_SCHEDULE`) and on demand for one
stream (`bin/streamops compact STREAM`).

Per stream (one mapped `compact_sink` task each, code in `spark_jobs/compaction.py`):

- only batches its checkpoint has **committed** are merged: a newer batch may still be replayed;
- the merged files leave the sink folder as soon as it commits, into `_superseded/`, where they
  stay for the *Grace period* (default 60 minutes) so that reads already under way end, then go;
- it never runs beside another compaction, a restore or a rotation of the same sink (the sink's
  maintenance lease); a busy sink is skipped and the task says by whom.

Readers that follow the **reader contract** (`docs/sinks.md`) read every batch once at every
moment: `spark_jobs.sinks.read_sink(SINK)`, or the files `sink_files(SINK)` lists. A plain
`pd.read_parquet(SINK)` reads every batch once too, but within a commit's few milliseconds,
when it may count merged batches twice or fail on a missing file.

Each task logs what it merged, the bytes before and after, and what it deleted; the Streams page
shows each sink's files, size and last compaction.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import DAG, Param, task

from streamops.params import stream_param

with DAG(
    dag_id="sink_compaction",
    schedule=os.environ.get("STREAMOPS_COMPACTION_SCHEDULE", "@hourly"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "stream": stream_param("compact only this stream's sink; empty: every stream"),
        "target_mb": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Target size (MB)",
            description="largest compacted file; empty: $STREAMOPS_COMPACT_TARGET_MB or 64",
        ),
        "grace_minutes": Param(
            None,
            type=["null", "number"],
            minimum=0,
            title="Grace period (minutes)",
            description="how long merged files stay for running reads; empty: "
            "$STREAMOPS_COMPACT_GRACE_SECONDS or 60 minutes",
        ),
    },
    tags=["operations", "streaming"],
    default_args={"owner": "data-platform", "retries": 0},
) as dag:

    @task
    def sinks_to_compact() -> list[str]:
        """The stream named in the Params, or every registered stream."""
        from airflow.sdk import get_current_context

        from streamops.tasks import streams_to_act_on

        return streams_to_act_on(
            get_current_context()["params"].get("stream"), doing="compacting the sinks of"
        )

    @task(map_index_template="{{ stream }}")
    def compact_sink(stream: str) -> dict[str, Any]:
        """Merge the stream's committed batch files; delete the ones merged past the grace."""
        from airflow.sdk import get_current_context

        from streamops.lifecycle import compact_stream
        from streamops.tasks import name_map_index, task_owner

        name_map_index(stream)
        context = get_current_context()
        params = context["params"]
        return compact_stream(
            stream,
            owner=task_owner(context["ti"]),
            target_mb=params.get("target_mb"),
            grace_minutes=params.get("grace_minutes"),
        )

    compact_sink.expand(stream=sinks_to_compact())


if __name__ == "__main__":
    dag.test()
