"""The one line a failed stream is reported by: Spark's error line, or the Python exception."""

from __future__ import annotations

from spark_jobs.runner import failure_reason

PYTHON_PROXY = """An exception was raised by the Python Proxy. Return Message: Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/py4j/clientserver.py", line 644, in _call_proxy
    return_value = getattr(self.pool[obj_id], method)(*params)
  File "/repo/spark_jobs/runner.py", line 260, in write_batch
    result = spec.batch_result(batch).toArrow()
ValueError: the new code's bug

=== Streaming Query ===
Identifier: word_count [id = 1, runId = 2]
"""  # noqa: E501


def test_a_python_failure_in_a_batch_is_reported_by_its_exception_line() -> None:
    assert failure_reason(PYTHON_PROXY) == "ValueError: the new code's bug"


def test_a_spark_failure_is_reported_by_its_error_line() -> None:
    message = (
        "[STREAMING_STATEFUL_OPERATOR_MISSING_STATE_DIRECTORY] Cannot restart streaming query "
        "with stateful operators because the state directory is empty or missing.\n"
        "Stateful operators in current batch: [(OperatorId: 0 -> OperatorName: stateStoreSave)]."
    )
    assert failure_reason(message) == message.splitlines()[0]
    assert failure_reason("\n") == "the query failed without a message"
