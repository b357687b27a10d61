"""What runs inside Spark: the word_count and running_total streaming jobs and their shared parts.

Nothing in this package imports Airflow. The Airflow side imports only the light modules
(`layout`, `status`, `storage`, `cli`), which import neither pyspark nor pandas at module level.
"""
