"""
### running_total_stream

Runs the **running_total** Spark Structured Streaming job under Airflow: each word's cumulative
count over every batch so far, kept as streaming state (RocksDB) in the checkpoint.

Sink: Parquet, one file per micro-batch, columns `batch_id, batch_time, word, total`,
one row per word whose total changed in that batch, merged hourly by `sink_compaction`; read it
with `spark_jobs.sinks.sink_files(SINK)` (`docs/sinks.md`). It keeps every batch (no sink
retention): it is the record of every word's total, and a checkpoint rotation carries the totals
on from it.
"""

from __future__ import annotations

from streamops.stream_dag import stream_dag

dag = stream_dag("running_total", __doc__ or "", schedule=None)

if __name__ == "__main__":
    dag.test()
