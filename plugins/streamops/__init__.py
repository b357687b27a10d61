"""The Airflow side of streamops: operators, health checks, notifier and stream configuration.

Airflow puts `plugins/` on `sys.path`, so DAG files import `streamops.<module>`. Nothing here
imports pyspark, pandas or Great Expectations at module level: DAG files are parsed every 30 s.
"""
