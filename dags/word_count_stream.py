"""
### word_count_stream

Runs the **word_count** Spark Structured Streaming job under Airflow: how often each word occurs
in each micro-batch (or, with *Window* and *Slide*, in sliding windows).

Sink: Parquet, one file per micro-batch, columns `batch_id, batch_time, word, count`, merged
hourly by `sink_compaction`; read it with `spark_jobs.sinks.sink_files(SINK)` (`docs/sinks.md`).
*Sink retention* (off by default) expires batches older than that many days.
"""

from __future__ import annotations

from streamops.stream_dag import stream_dag

dag = stream_dag("word_count", __doc__ or "", schedule=None)

if __name__ == "__main__":
    dag.test()
