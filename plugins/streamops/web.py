"""The Streams page, its JSON API and the Prometheus metrics: a FastAPI app in the api-server.

Mounted at `/streamops` by the `streamops` Airflow plugin (`plugins/streamops_plugin.py`), which
also adds a "Streams" entry to the Airflow UI's navigation that shows `/streamops/ui`.

| path | auth | what |
| --- | --- | --- |
| `GET /streamops/ui` | page shell only; its data comes from the API | the Streams page |
| `GET /streamops/api/streams` | Airflow login (DAG read) | every stream (`streamops.overview`) |
| `GET /streamops/api/streams/{stream}` | Airflow login (DAG read) | one stream |
| `GET /streamops/data-docs/{path}` | Airflow login (DAG read) | the Great Expectations Data Docs |
| `GET /streamops/runbook` | Airflow login (DAG read) | `docs/runbook.md`, rendered |
| `GET /streamops/metrics` | open; `Bearer $STREAMOPS_METRICS_TOKEN` if set | Prometheus metrics |

Authentication is Airflow's own: the session cookie the UI's login sets, or an
`Authorization: Bearer <JWT>` header from `POST /auth/token`, checked by the api-server's auth
manager exactly as for its REST API (a request without either gets 401). Nothing heavy is
imported when the plugin loads: the overview and Airflow's security module are imported by the
first request, so loading plugins in the scheduler or dag-processor stays cheap.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from streamops import registry
from streamops.config import REPO_ROOT, data_root

log = logging.getLogger(__name__)

METRICS_TOKEN_ENV = "STREAMOPS_METRICS_TOKEN"
PAGE = Path(__file__).with_name("streams_page.html")
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"


async def require_reader(request: Request) -> None:
    """Refuse the request unless an Airflow user who may read DAGs makes it (401 / 403)."""
    from airflow.api_fastapi.core_api.security import (
        bearer_scheme,
        get_user,
        requires_access_dag,
    )

    credentials = await bearer_scheme(request)
    user = await get_user(request, None, credentials)
    requires_access_dag("GET")(request, user)


def require_metrics_token(request: Request) -> None:
    """When `$STREAMOPS_METRICS_TOKEN` is set, the scraper must send it as a bearer token."""
    expected = os.environ.get(METRICS_TOKEN_ENV)
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise HTTPException(
            status_code=401,
            detail=f"metrics need 'Authorization: Bearer <token>' with ${METRICS_TOKEN_ENV}",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _overview() -> Any:
    from streamops.overview import overview

    return overview(data_root())


def create_app() -> FastAPI:
    """The app the plugin mounts at `/streamops`."""
    app = FastAPI(
        title="streamops",
        description="Stream states, the data behind the Streams page, and Prometheus metrics.",
    )
    reader = [Depends(require_reader)]

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/api/streams", dependencies=reader)
    def streams() -> dict[str, Any]:
        """Every registered stream: state, health, rates, checkpoint, quality, alerts."""
        result: dict[str, Any] = _overview().to_dict()
        return result

    @app.get("/api/streams/{stream}", dependencies=reader)
    def stream(stream: str) -> dict[str, Any]:
        """One stream's overview."""
        view = _overview()
        for item in view.streams:
            if item.stream == stream:
                result: dict[str, Any] = item.to_dict()
                return result
        unknown = registry.UnknownStream(stream, (s.stream for s in view.streams))
        raise HTTPException(status_code=404, detail=str(unknown))

    @app.get("/metrics", dependencies=[Depends(require_metrics_token)])
    def metrics() -> Response:
        """Prometheus text exposition of every stream's signals."""
        from streamops.metrics import CONTENT_TYPE, render

        return Response(render(_overview()), media_type=CONTENT_TYPE)

    @app.get("/data-docs/{path:path}", dependencies=reader, include_in_schema=False)
    def data_docs(path: str) -> FileResponse:
        from expectations.results import QualityConfigError, data_docs_dir

        try:
            site = data_docs_dir(data_root()).resolve()
        except QualityConfigError as err:
            raise HTTPException(status_code=404, detail=str(err)) from err
        target = (site / (path or "index.html")).resolve()
        if not target.is_relative_to(site) or not target.is_file():
            raise HTTPException(
                status_code=404,
                detail=f"no Data Docs page {path!r} in {site}; sink_quality builds them on its "
                "first run",
            )
        return FileResponse(target)

    @app.get("/runbook", dependencies=reader, response_class=HTMLResponse, include_in_schema=False)
    def runbook() -> HTMLResponse:
        from markdown_it import MarkdownIt

        if not RUNBOOK.is_file():
            raise HTTPException(status_code=404, detail=f"the runbook {RUNBOOK} is missing")
        body = MarkdownIt("commonmark").enable("table").render(RUNBOOK.read_text("utf-8"))
        return HTMLResponse(RUNBOOK_PAGE.format(body=body))

    return app


RUNBOOK_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>streamops runbook</title>
<style>body{{font:14px/1.5 system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}}
code,pre{{background:#f3f4f6;border-radius:4px;padding:0 .2em}}pre{{padding:.6em;overflow:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:.2em .5em}}</style>
</head><body>{body}</body></html>"""
