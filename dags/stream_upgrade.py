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
that needs a new checkpoint) or `new-checkpoint`. The verdict is logged and kept as the task's
XCom `verdict`; a refused upgrade fails the task with its reasons and touches nothing.

**Dry run** (the default) stops there: nothing is written. Otherwise the upgrade **cuts over**:
the stream stops at a batch boundary (as `stream_control` stops it) while this run holds its
checkpoint's lease; for `restart` the checkpoint is snapshotted (`upgrade to <version>`), for
`new checkpoint` it is rotated (as `checkpoint_rotation` rotates it); then `start_new_spec`
triggers a new run of the stream's DAG with the new Params, which replaces the old run (that
one ends as a success, stopped as asked). A stream that was not running is not started.
Rollback is not built yet (docs/upgrades.md).
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
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
            description="give the verdict and change nothing; off: cut over to the new spec",
        ),
    },
    tags=["streaming", "operations"],
    default_args={"owner": "data-platform", "retries": 0},
) as dag:

    @task
    def upgrade() -> list[dict[str, object]]:
        """The preflight's verdict (XCom `verdict`); unless a dry run, stop and snapshot or
        rotate the stream. Returns the start of the new spec, if the stream was running."""
        from airflow.sdk import get_current_context

        from streamops.tasks import task_owner
        from streamops.upgrades import upgrade_task

        context = get_current_context()
        return upgrade_task(dict(context["params"]), context["ti"], task_owner(context["ti"]))

    TriggerDagRunOperator.partial(task_id="start_new_spec").expand_kwargs(upgrade())


if __name__ == "__main__":
    dag.test()
