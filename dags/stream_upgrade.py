"""
### stream_upgrade

Judges an **upgrade** of a running stream: a change of its Params, of its code (`spark_jobs/` as
deployed), or both. The preflight runs the new spec on a copy of the stream's checkpoint (its
last batch again, no new input) and Spark's state data source compares the state operators,
their key and value schemas and their partitions with the checkpoint's. The verdict:

- `restart`: the new spec runs on the same checkpoint;
- `new checkpoint`: it needs a rotated checkpoint (`checkpoint_rotation` carries the position);
- `refused`: every reason is named, e.g. `state of operator 0: 2 partitions in the checkpoint,
  4 asked`.

Trigger it with the *stream*, the *changes* (the Params to change, as a JSON object, e.g.
`{"shuffle_partitions": 4}`) and the *mode*: `auto` (the verdict), `restart` (refuse anything
that needs a new checkpoint) or `new-checkpoint`. **Dry run** gives the verdict, in the log and
as the task's XCom, and changes nothing; a refused upgrade fails the task with its reasons.
The cut-over itself is not built yet (docs/upgrades.md): apply a verdict with `stream_control`,
`checkpoint_rotation` and the stream's DAG.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from streamops.params import stream_param

with DAG(
    dag_id="stream_upgrade",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    params={
        "stream": stream_param("the stream to upgrade", default="word_count"),
        "changes": Param(
            {},
            type="object",
            title="Changes",
            description='the Params to change and their new values, e.g. {"trigger_interval": '
            '"5 seconds"}; empty: the code alone',
        ),
        "mode": Param(
            "auto",
            type="string",
            enum=["auto", "restart", "new-checkpoint"],
            title="Mode",
            description="auto: the preflight's verdict; restart: refuse a new checkpoint; "
            "new-checkpoint: rotate even when a restart would do",
        ),
        "dry_run": Param(
            True,
            type="boolean",
            title="Dry run",
            description="give the verdict and change nothing (the cut-over is not built yet)",
        ),
    },
    tags=["streaming", "operations"],
    default_args={"owner": "data-platform", "retries": 0},
) as dag:

    @task
    def preflight() -> dict[str, object]:
        """Run the upgrade's preflight; log and return the verdict, fail if it is refused."""
        from airflow.sdk import get_current_context

        from streamops.upgrades import upgrade_task

        context = get_current_context()
        return upgrade_task(dict(context["params"]), context["ti"])

    preflight()


if __name__ == "__main__":
    dag.test()
