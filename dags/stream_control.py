"""
### stream_control

Asks a running stream to **stop** gracefully: the job finishes the micro-batch it is running,
commits it, and exits; the stream DAG's run then ends as a success.

Trigger it with the *stream* name (as given when the stream was started, e.g. `word_count`).
The stop is recorded, so `stream_health` no longer expects the stream to run. Start it again by
triggering its stream DAG: it resumes from its checkpoint.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from streamops.config import STREAM_NAME_PATTERN

with DAG(
    dag_id="stream_control",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    params={
        "stream": Param("word_count", type="string", pattern=STREAM_NAME_PATTERN, title="Stream"),
        "action": Param("stop", type="string", enum=["stop"], title="Action"),
    },
    tags=["streaming", "operations"],
    default_args={"owner": "data-platform", "retries": 0},
) as dag:

    @task
    def request_stop() -> str:
        """Write the stream's stop request and record that it should no longer run."""
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from spark_jobs.layout import CheckpointLayout
        from streamops import registry

        params = get_current_context()["params"]
        record = registry.load(params["stream"])
        if record is None:
            known = ", ".join(r.stream for r in registry.load_all()) or "none yet"
            raise AirflowFailException(
                f"stream {params['stream']!r} was never started here (known streams: {known})"
            )
        layout = CheckpointLayout.of(record.checkpoint)
        layout.stop_request.write_text_atomic("stop\n")
        record.desired = "stopped"
        registry.save(record)
        return f"stop requested for stream {record.stream} ({layout.stop_request})"

    request_stop()


if __name__ == "__main__":
    dag.test()
