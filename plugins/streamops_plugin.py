"""The `streamops` Airflow plugin: the Streams page in the Airflow UI, its API and metrics.

Adds to the api-server a FastAPI app at `/streamops` (`streamops.web`) and a "Streams" entry in
the UI's navigation that shows its page (`/streamops/ui`) inside the Airflow UI, at
`/plugin/streams`. The page, the JSON API and `/streamops/metrics` read one module,
`streamops.overview`, which judges streams with the same rules as the `stream_health` DAG.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from streamops.web import create_app


class StreamopsPlugin(AirflowPlugin):
    """Streams page, stream overview API and Prometheus metrics."""

    name = "streamops"
    fastapi_apps = [  # noqa: RUF012  (Airflow reads these class attributes)
        {"app": create_app(), "url_prefix": "/streamops", "name": "streamops"}
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "Streams",
            "href": "/streamops/ui",
            "url_route": "streams",
            "destination": "nav",
            "category": "browse",
        }
    ]
