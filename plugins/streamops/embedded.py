"""Settings of the embedded stack's Airflow (`scripts/stack.py`) that Airflow imports by name.

Airflow imports these while it sets up its database connection, before anything else of this
package, so this module imports nothing.
"""

#: SQLite connection arguments (`[database] sql_alchemy_connect_args` and its `_async` twin).
#: The stack's scheduler, triggerer, dag-processor, api-server and tasks share one SQLite file
#: with a single write lock; on 2 busy cores a writer can hold it for more than Python's default
#: wait of 5 s, and the API then answers HTTP 500 "database is locked". Waiting up to 60 s turns
#: that into a slow answer instead of a failed one.
SQLITE_CONNECT_ARGS: dict[str, object] = {"timeout": 60}
SQLITE_CONNECT_ARGS_ASYNC: dict[str, object] = {"timeout": 60}
