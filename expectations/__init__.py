"""Data quality of the streams' sinks, with Great Expectations: suites as code, the incremental
validation runner, and the reconciliation of word_count against running_total.

- `suites`: what each sink must satisfy (one suite per stream and aspect: schema, rows, volume,
  freshness), the pandas views the suites check, and the thresholds from `thresholds.yaml`.
- `validate`: validates the batches new since the last run of each stream, keeps the results
  (Data Docs, `history.jsonl`) and says what failed, where, with sample values.
- `reconcile`: checks that a word's per-batch counts add up to its running total wherever the
  two jobs have read the same input files.

Nothing here is imported when Airflow parses DAG files: the `sink_quality` DAG imports these
modules inside its tasks.
"""
