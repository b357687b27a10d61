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

from streamops.params import stream_param

with DAG(
    dag_id="stream_control",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    params={
        "stream": stream_param("the stream to stop", default="word_count"),
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

        from streamops import lifecycle, registry

        try:
            return lifecycle.request_stop(get_current_context()["params"]["stream"])
        except registry.UnknownStream as err:
            raise AirflowFailException(str(err)) from err

    request_stop()


if __name__ == "__main__":
    dag.test()
