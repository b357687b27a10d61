"""What the DAGs' task bodies share: the streams to act on, the mapped task's label, and who
holds a lease."""

from __future__ import annotations

from typing import Any


def name_map_index(stream: str) -> None:
    """Label the running mapped task by its stream (its `map_index_template` is `{{ stream }}`)."""
    from airflow.sdk import get_current_context

    get_current_context()["stream"] = stream  # type: ignore[typeddict-unknown-key]


def task_owner(ti: Any) -> str:
    """The running task try, as a lease's owner names it: `<dag>/<run>/<task>#<try>`."""
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}#{ti.try_number}"


def streams_to_act_on(only: str | None, doing: str) -> list[str]:
    """The registered streams a maintenance DAG acts on: all, or `only` (its `stream` Param)."""
    from airflow.sdk.exceptions import AirflowFailException

    from streamops import registry

    try:
        names = [record.stream for record in registry.select(only)]
    except registry.UnknownStream as err:
        raise AirflowFailException(str(err)) from err
    print(f"{doing} {len(names)} streams: {names}")
    return names
