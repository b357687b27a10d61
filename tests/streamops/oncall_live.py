"""On-call surfaces against a live Airflow: the Streams page, its API, the metrics and the CLI.

Called by the embedded-stack test (`tests/scripts/test_stack.py`) while its standalone Airflow
runs both streams, so the suite starts Airflow once for both. Steps:

1. the API refuses requests without a login (no token, a forged token);
2. `/streamops/metrics` parses with prometheus_client's parser and has both streams;
3. `bin/streamops status` prints both streams; its exit code agrees with their health;
4. `bin/streamops stop word_count --wait` stops one stream through `stream_control`;
5. headless Chromium (Debian's `chromium`) in a 1,280-pixel window, signed in with the UI's
   session cookie, opens the Airflow UI at `/plugin/streams`; the page, inside the UI, shows
   `word_count` stopped and `running_total` running, with every stream's row, and neither the
   UI nor the page scrolls sideways; each running stream's row links its own driver's Spark UI
   (each at the port its driver got), the link opens that query's Structured Streaming page in a
   new tab (as do the runbook's, from Airflow's sandboxed frame), and a UI the browser cannot
   reach gets directions instead of a link; each stream's details say where its batch time
   goes, phase by phase. A screenshot is kept in
   `$STREAMOPS_TEST_ARTIFACTS` (default `<repo>/.artifacts/`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT

ARTIFACTS = Path(os.environ.get("STREAMOPS_TEST_ARTIFACTS", ROOT / ".artifacts"))
RUNNING_STATES = ("running", "starting", "falling_behind")


def http(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def cli(
    port: int, password: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STREAMOPS_AIRFLOW_URL": f"http://127.0.0.1:{port}",
        "STREAMOPS_AIRFLOW_USERNAME": "admin",
        "STREAMOPS_AIRFLOW_PASSWORD": password,
    }
    done = subprocess.run(
        [str(ROOT / "bin" / "streamops"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    print(f"$ streamops {' '.join(args)}  -> exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def streams_by_name(port: int, token: str) -> dict[str, dict[str, Any]]:
    status, body = http(port, "/streamops/api/streams", token)
    assert status == 200, body
    return {s["stream"]: s for s in json.loads(body)["streams"]}


def check_on_call_surfaces(port: int, token: str, password: str) -> None:
    """Run the steps of this module's docstring against the stack on `port`."""
    # The API refuses anonymous and forged requests
    status, body = http(port, "/streamops/api/streams")
    assert status == 401, body
    assert http(port, "/streamops/api/streams", token="forged.jwt.token")[0] in (401, 403)
    streams = streams_by_name(port, token)
    assert set(streams) >= {"word_count", "running_total"}

    # The metrics parse, with both streams
    status, text = http(port, "/streamops/metrics")
    assert status == 200, text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    healthy = {s.labels["stream"] for s in families["streamops_stream_healthy"].samples}
    assert healthy >= {"word_count", "running_total"}
    assert families["streamops_stream_restarts"].type == "counter"

    # status: a table of both streams; exit 0 exactly when every stream is healthy
    listed = cli(port, password, "status", "--json")
    view = json.loads(listed.stdout)
    expected = 0 if all(s["healthy"] for s in view["streams"]) and not view["problems"] else 1
    assert listed.returncode == expected
    table = cli(port, password, "status")
    assert table.returncode in (0, 1), table.stderr
    for name in ("word_count", "running_total"):
        assert any(line.startswith(name) for line in table.stdout.splitlines()), table.stdout

    # stop: one stream stops at a batch boundary, through stream_control
    stopped = cli(port, password, "stop", "word_count", "--wait", "--timeout", "240")
    assert stopped.returncode == 0, stopped.stderr
    assert "stream word_count stopped" in stopped.stdout
    after = cli(port, password, "status", "word_count")
    assert after.returncode == 0, after.stdout  # stopped on purpose is healthy
    assert "stopped" in after.stdout
    # And says where its batches' time went, Spark's phases and the job's parts
    assert "stream word_count: batch time by phase, last / median of" in after.stdout
    for phase in ("latestOffset", "addBatch ", "addBatch.result", "addBatch.write", "walCommit"):
        assert phase in after.stdout, after.stdout
    # An action on an unknown stream says what is known, with the usage exit code
    unknown = cli(port, password, "stop", "nope")
    assert unknown.returncode == 2
    assert "not registered" in unknown.stderr

    # The page, in the Airflow UI, shows one stream stopped and one running
    check_page(port, token)


def check_page(port: int, token: str) -> None:
    """Open the Streams page inside the Airflow UI in headless Chromium; keep a screenshot."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/system-deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            # A 1,280-pixel window: the page must fit it without scrolling sideways.
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            # The cookie the UI's login sets; the api-server reads it for the plugin's API too.
            context.add_cookies([{"name": "_token", "value": token, "url": base}])
            page = context.new_page()
            page.goto(f"{base}/plugin/streams", wait_until="domcontentloaded", timeout=60_000)
            frame = wait_for_frame(page, "/streamops/ui", timeout=120)
            frame.wait_for_selector("body[data-loaded='true']", timeout=60_000)
            deadline = time.monotonic() + 60
            while True:
                states = frame.eval_on_selector_all(
                    "tr[data-stream]",
                    "rows => Object.fromEntries("
                    "rows.map(r => [r.dataset.stream, r.dataset.state]))",
                )
                if (
                    states.get("word_count") == "stopped"
                    and states.get("running_total") in RUNNING_STATES
                ):
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"the Streams page shows {states}")
                time.sleep(2)
            summary = frame.inner_text("#summary")
            assert "streams" in summary, summary
            check_spark_ui_links(context, frame, states, streams_by_name(port, token))
            # Each stream's details say where its batch time goes
            phases = frame.eval_on_selector_all(
                "div[data-phases]", "divs => divs.map(d => [d.dataset.phases, d.innerText])"
            )
            assert {name for name, _ in phases} == set(states), phases
            assert all("addBatch.result" in text for _, text in phases), phases
            # And its sink's files, rows, last compaction and retention
            sinks = frame.eval_on_selector_all(
                "div[data-sink-details]",
                "divs => divs.map(d => [d.dataset.sinkDetails, d.innerText])",
            )
            assert {name for name, _ in sinks} == set(states), sinks
            assert all("retention: kept forever" in text for _, text in sinks), sinks
            width = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            for where, (scroll, client) in (
                ("the Airflow UI", page.evaluate(width)),
                ("the Streams page's frame", frame.evaluate(width)),
            ):
                assert scroll <= client, f"{where} scrolls sideways: {scroll} > {client} px"
            shot = ARTIFACTS / "streams-page.png"
            page.screenshot(path=str(shot), full_page=True)
            frame.frame_element().screenshot(path=str(ARTIFACTS / "streams-page-frame.png"))
            print(f"Streams page: {states}; screenshot {shot}")
        finally:
            browser.close()


def wait_for_frame(page: Any, url_end: str, timeout: float) -> Any:
    """The page's frame whose URL ends with `url_end`, once it has one.

    Airflow's React UI may render the plugin's iframe more than once while it loads, so an
    element found early can be detached by the time it is read: look the frame up by its URL.
    """
    deadline = time.monotonic() + timeout
    while True:
        frames = [
            f
            for f in page.frames
            if f.parent_frame is not None and f.url.endswith(url_end) and not f.is_detached()
        ]
        if frames:
            return frames[-1]
        if time.monotonic() > deadline:
            shot = ARTIFACTS / "streams-page-failed.png"
            page.screenshot(path=str(shot), full_page=True)
            iframes = page.eval_on_selector_all("iframe", "els => els.map(e => e.src)")
            text = page.evaluate("document.body.innerText")[:1500]
            urls = [f.url for f in page.frames]
            pytest.fail(
                f"no frame at ...{url_end} after {timeout:.0f} s; frames {urls}, iframe elements "
                f"{iframes}, screenshot {shot}; the page says: {text}"
            )
        # Not time.sleep: Playwright's sync API takes in the page's events (new frames, their
        # URLs) only while one of its calls runs
        page.wait_for_timeout(500)


def check_spark_ui_links(
    context: Any, frame: Any, states: dict[str, str], api: dict[str, Any]
) -> None:
    """Each running stream's row links its driver's UI; the link opens its query's page.

    The page links a UI once its probe from the browser answered, and probes it again every
    30 s: a UI that was slow to answer on a busy machine gets its link at the next probe."""
    running = {name for name, state in states.items() if state in RUNNING_STATES}
    deadline = time.monotonic() + 75
    while True:
        links = frame.eval_on_selector_all(
            "tr[data-stream] a.spark-ui",
            "links => Object.fromEntries(links.map(a => "
            "[a.closest('tr').dataset.stream, [a.href, a.dataset.port]]))",
        )
        if set(links) == running or time.monotonic() > deadline:
            break
        frame.wait_for_timeout(2000)  # Playwright takes in the page's refreshes meanwhile
    assert set(links) == running, (links, states)  # the stopped stream has none
    ports = {port for _, port in links.values()}
    assert len(running) >= 2, states
    assert len(ports) == len(running), links  # 4040, 4041, ...
    for name, (href, _) in links.items():
        assert href == api[name]["spark_ui"]["url"], (name, href)
    # The link opens the Structured Streaming page of that stream's query
    name = sorted(running)[0]
    with context.expect_page() as opened:
        frame.click(f"tr[data-stream='{name}'] a.spark-ui")
    ui_page = opened.value
    ui_page.wait_for_load_state("domcontentloaded", timeout=60_000)
    run_id = links[name][0].rsplit("id=", 1)[1]
    ui_page.wait_for_function(
        "runId => document.body.innerText.includes(runId)", arg=run_id, timeout=60_000
    )
    body = ui_page.inner_text("body")
    assert "Streaming Query Statistics" in body, body[:2000]
    assert name in body, body[:2000]
    ui_page.close()
    # The page's other new-tab links open too, although Airflow's frame may not open windows
    with context.expect_page() as opened:
        frame.click("header a[href='runbook']")
    runbook = opened.value
    runbook.wait_for_load_state("domcontentloaded", timeout=60_000)
    assert "Runbook" in runbook.inner_text("h1"), runbook.url
    runbook.close()
    # A UI on another host's loopback gets directions, not a dead link
    elsewhere = {**api[name]["spark_ui"], "on_this_host": False}
    shown = frame.evaluate("s => sparkUi(s)", {"spark_ui": elsewhere})
    assert shown["link"] == "", shown
    assert elsewhere["tunnel"].startswith("ssh -N -L "), elsewhere
    for directions in (elsewhere["tunnel"], elsewhere["tunneled_url"]):
        assert directions.replace("&", "&amp;") in shown["how"], shown
