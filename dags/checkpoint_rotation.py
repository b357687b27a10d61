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

from streamops.config import STREAM_NAME_PATTERN, stream_run_id

with DAG(
    dag_id="checkpoint_rotation",
    schedule=os.environ.get("STREAMOPS_ROTATION_SCHEDULE", "@daily"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "stream": Param(
            None,
            type=["null", "string"],
            pattern=STREAM_NAME_PATTERN,
            title="Stream",
            description="one stream, or empty for every stream",
        ),
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
        from airflow.sdk.exceptions import AirflowFailException

        from streamops import registry

        params = get_current_context()["params"]
        known = [r.stream for r in registry.load_all()]
        if params["stream"]:
            if params["stream"] not in known:
                raise AirflowFailException(
                    f"stream {params['stream']!r} was never started here (known: "
                    f"{', '.join(known) or 'none yet'})"
                )
            return [params["stream"]]
        return known

    @task
    def act(stream: str) -> dict[str, object]:
        """Stop the stream if it runs, run the action, log sizes; return how to restart it."""
        from datetime import timedelta

        from airflow.sdk import get_current_context

        from streamops import registry
        from streamops.lifecycle import run_action

        context = get_current_context()
        params = context["params"]
        record = registry.load(stream)
        assert record is not None
        ti = context["ti"]
        actions = [params["action"]]
        if context["dag_run"].run_type == "scheduled":
            actions = ["rotate", "prune"]
        restart: dict[str, object] = {}
        for action in actions:
            outcome = run_action(
                record,
                action,
                owner=f"{ti.dag_id}/{ti.run_id}/{ti.task_id}#{ti.try_number}",
                snapshot_id=params["snapshot_id"],
                keep_count=params["keep_count"],
                keep_age=timedelta(hours=params["keep_age_hours"]),
                shuffle_partitions=params["shuffle_partitions"],
            )
            print(
                f"stream {stream}: {action}: {outcome.summary}; size "
                f"{outcome.size_before:,} -> {outcome.size_after:,} bytes"
            )
            if outcome.restart_dag_id:
                restart = {
                    "trigger_dag_id": outcome.restart_dag_id,
                    "trigger_run_id": stream_run_id(stream),
                    "conf": outcome.restart_conf,
                }
        return restart

    @task
    def streams_to_restart(outcomes: list[dict[str, object]]) -> list[dict[str, object]]:
        """The streams that were running before the action."""
        return [o for o in outcomes if o]

    restarts = streams_to_restart(act.expand(stream=streams_to_act_on()))  # type: ignore[arg-type]
    TriggerDagRunOperator.partial(task_id="restart_stream").expand_kwargs(restarts)


if __name__ == "__main__":
    dag.test()
