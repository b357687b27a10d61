"""
### checkpoint_rotation

Keeps stream checkpoints small and recoverable. Runs **daily** (rotate, then prune, for every
stream) and on demand for one stream, with these actions:

- `rotate`: starts a new checkpoint generation. Input position and running totals carry over,
  sink batch ids go on increasing, the old generation is kept as a snapshot. Set *Shuffle
  partitions* to scale a stateful stream out.
- `snapshot`: copies the checkpoint at a batch boundary into `<checkpoint>.snapshots/<id>`.
- `restore`: puts a snapshot back (*Snapshot id*, or the latest). Sink batches written after it
  are removed and recomputed, so every record stays exactly once.
- `prune`: deletes snapshots beyond *Keep count* or older than *Keep age*; never the newest.

A running stream is asked to stop at a batch boundary first (as `stream_control` does), the
action runs while this task holds the checkpoint's lease, and the stream is started again with the
Params it ran with. Each action logs the checkpoint size before and after.

Limits: each stream needs an input folder of its own (rotation moves processed input files to
`<input>/_processed/`); a windowed word_count loses the windows still open at the rotation.
"""

from __future__ import annotations

import os

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param, task

from streamops.params import stream_param

with DAG(
    dag_id="checkpoint_rotation",
    schedule=os.environ.get("STREAMOPS_ROTATION_SCHEDULE", "@daily"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "stream": stream_param("one stream, or empty for every stream"),
        "action": Param(
            "rotate", type="string", enum=["rotate", "snapshot", "restore", "prune"], title="Action"
        ),
        "snapshot_id": Param(
            None,
            type=["null", "string"],
            pattern=r"^[0-9TZ]+-b[0-9a-z]+$",
            title="Snapshot id",
            description="restore only; empty: the latest snapshot",
        ),
        "shuffle_partitions": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Shuffle partitions",
            description="rotate only: partitions of the new generation; empty: unchanged",
        ),
        "keep_count": Param(10, type="integer", minimum=1, title="Keep count"),
        "keep_age_hours": Param(24, type="number", exclusiveMinimum=0, title="Keep age (hours)"),
    },
    tags=["checkpoints", "operations"],
    default_args={"owner": "data-platform", "retries": 0},
) as dag:

    @task
    def streams_to_act_on() -> list[str]:
        """The stream named in the Params, or every known stream."""
        from airflow.sdk import get_current_context

        from streamops.tasks import streams_to_act_on

        return streams_to_act_on(
            get_current_context()["params"]["stream"], doing="acting on the checkpoints of"
        )

    @task
    def act(stream: str) -> dict[str, object]:
        """Stop the stream if it runs, run the action, log sizes; return how to restart it."""
        from airflow.sdk import get_current_context

        from streamops.lifecycle import act_on_stream
        from streamops.tasks import task_owner

        context = get_current_context()
        # A scheduled run rotates and prunes; a manual one runs the action of its Params.
        scheduled = context["dag_run"].run_type == "scheduled"
        return act_on_stream(
            stream,
            ["rotate", "prune"] if scheduled else [context["params"]["action"]],
            context["params"],
            owner=task_owner(context["ti"]),
        )

    @task
    def streams_to_restart(outcomes: list[dict[str, object]]) -> list[dict[str, object]]:
        """The streams that were running before the action."""
        return [o for o in outcomes if o]

    restarts = streams_to_restart(act.expand(stream=streams_to_act_on()))  # type: ignore[arg-type]
    TriggerDagRunOperator.partial(task_id="restart_stream").expand_kwargs(restarts)


if __name__ == "__main__":
    dag.test()
