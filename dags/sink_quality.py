"""
### sink_quality

Checks the **data quality of every stream's sink** with Great Expectations, and that
`word_count` and `running_total` agree. Read-only: a failed check never stops or changes a
stream.

**When**: every 10 minutes (`$STREAMOPS_QUALITY_SCHEDULE`, cron, UTC) **and** when a stream
writes new output: the `stream_sinks` asset's watcher (in the triggerer) lists the registered
sinks every minute (`$STREAMOPS_QUALITY_POLL_SECONDS`) and fires on a new part file.

**What**, per stream (one mapped `validate_sink` task each, suites in `expectations/suites.py`,
thresholds in `expectations/thresholds.yaml`):

- *schema*: each part file has exactly the contract's columns and types;
- *rows*: `batch_id`, `batch_time`, `word` and `count` / `total` not null; `word` not empty
  and without whitespace; `count` / `total` >= 1; one row per key; rows in their batch's file;
  running_total: a word's total never decreases;
- *volume*: rows per batch within bounds; *freshness*: a running stream's newest batch is
  recent enough.

Only batches new since the last run are validated (watermarks in
`<data root>/_streamops/quality/<stream>.json`); trigger with **Revalidate all** to check
everything again, or with **Stream** to check one stream.

`reconcile_sinks` then checks, for each pair in `thresholds.yaml` and each word_count and
running_total stream that read the same input folder, that every word's counts add up to its
running total wherever both jobs had read the same input files (see `docs/quality.md`).

**Results**: Great Expectations **Data Docs** at
`<data root>/_streamops/quality/data_docs/index.html` (each task log prints the link), and one
summary line per stream and run in `<data root>/_streamops/quality/history.jsonl`. A failed
check fails its task with the expectation, the sink, the failing batches and sample values,
and alerts once (`<data root>/_streamops/alerts.jsonl`, Slack / e-mail when configured).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from streamops.notifiers import StreamAlertNotifier
from streamops.params import stream_param
from streamops.quality import quality_schedule

with DAG(
    dag_id="sink_quality",
    schedule=quality_schedule(),
    catchup=False,
    # Runs share watermarks and the Data Docs project: one at a time.
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "revalidate_all": Param(
            False,
            type="boolean",
            title="Revalidate all",
            description="check every batch of every sink again, not only the new ones",
        ),
        "stream": stream_param(
            "check only this stream (and the pairs it is in); empty: every stream"
        ),
    },
    tags=["quality", "streaming"],
    default_args={
        "owner": "data-platform",
        # Failed expectations fail at once (no retry); a storage error is retried once.
        "retries": 1,
        "retry_delay": timedelta(minutes=1),
        "execution_timeout": timedelta(minutes=9),
        # Called once, when a task has failed for good: one alert per failed check.
        "on_failure_callback": StreamAlertNotifier(),
    },
) as dag:

    @task
    def list_streams() -> list[str]:
        """The registered streams to validate."""
        from airflow.sdk import get_current_context

        from streamops.tasks import streams_to_act_on

        return streams_to_act_on(
            get_current_context()["params"].get("stream"), doing="validating the sinks of"
        )

    # One at a time: the mapped tasks share the Great Expectations project.
    @task(map_index_template="{{ stream }}", max_active_tis_per_dagrun=1)
    def validate_sink(stream: str) -> dict[str, Any]:
        """Validate the stream's batches new since the last run; fail on a failed expectation."""
        from airflow.sdk import get_current_context

        from streamops.quality import validate_stream
        from streamops.tasks import name_map_index

        name_map_index(stream)
        context = get_current_context()
        params = context["params"]
        return validate_stream(stream, bool(params.get("revalidate_all")), context["run_id"])

    @task(trigger_rule="all_done")
    def reconcile_sinks() -> list[dict[str, Any]]:
        """Reconcile word_count against running_total for each configured pair."""
        from airflow.sdk import get_current_context

        from streamops.quality import reconcile_streams

        context = get_current_context()
        params = context["params"]
        return reconcile_streams(
            params.get("stream"), bool(params.get("revalidate_all")), context["run_id"]
        )

    validate_sink.expand(stream=list_streams()) >> reconcile_sinks()


if __name__ == "__main__":
    dag.test()
