"""Loads every DAG file the way Airflow's dag-processor does, and reports what DAG tests check.

Run in a fresh interpreter (`python tests/dags/dag_report.py`) so that what the DAG files import
is not hidden by what the test process already imported. Prints one JSON document.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

HEAVY = ("pyspark", "pandas", "great_expectations", "numpy", "pyarrow")
MARKER = "DAG-REPORT "
DAGS = Path(__file__).resolve().parents[2] / "dags"


def main() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Variable

    before = set(sys.modules)
    secret_reads: list[str] = []

    def record(kind: str) -> Any:
        def read(*args: Any, **kwargs: Any) -> Any:
            secret_reads.append(f"{kind}({args[-1] if args else kwargs})")
            raise RuntimeError(f"{kind} read at parse time")

        return read

    parse_seconds: dict[str, float] = {}
    with (
        mock.patch.object(BaseHook, "get_connection", side_effect=record("connection")),
        mock.patch.object(Variable, "get", side_effect=record("variable")),
    ):
        dags: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for path in sorted(DAGS.glob("*.py")):
            start = time.perf_counter()
            bag = DagBag(dag_folder=str(path))
            parse_seconds[path.name] = time.perf_counter() - start
            dags.update(bag.dags)
            errors.update(bag.import_errors)
    heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before if m.split(".")[0] in HEAVY})
    report = {
        "import_errors": errors,
        "heavy_imports": heavy,
        "secret_reads": secret_reads,
        "parse_seconds": parse_seconds,
        "dags": {
            dag_id: {
                "fileloc": Path(dag.fileloc).stem,
                "owners": sorted({t.owner for t in dag.tasks}),
                "retries": sorted({t.retries for t in dag.tasks}),
                "tags": sorted(dag.tags),
                "doc_md": dag.doc_md or "",
                "schedule": None if dag.schedule is None else str(dag.schedule),
                "catchup": dag.catchup,
                "params": {k: v.schema for k, v in dag.params.items()},
            }
            for dag_id, dag in dags.items()
        },
    }
    print(MARKER + json.dumps(report, default=str))


if __name__ == "__main__":
    main()
