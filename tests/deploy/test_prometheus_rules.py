"""deploy/prometheus/streamops-rules.yml: valid for Debian's promtool, every rule unit-tested
(`promtool test rules` on streamops-rules.test.yml), each with its `for:`, severity, summary and
a runbook link to a section that exists, and loaded by the compose file's Prometheus."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.monitoring import promtool

FOLDER = ROOT / "deploy" / "prometheus"
RULES = FOLDER / "streamops-rules.yml"
RULE_TESTS = FOLDER / "streamops-rules.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
#: What on-call must hear about, by the rule that says it.
REQUIRED = {
    "StreamopsStreamDown": "not_running",
    "StreamopsStreamStalled": "stalled",
    "StreamopsStreamFallingBehind": "falling_behind",
    "StreamopsStreamBacklog": "backlog",
    "StreamopsQualityFailed": "quality_failed",
    "StreamopsMetricsDown": "metrics_down",
    "StreamopsMetricsStale": "metrics_stale",
}


def rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(REQUIRED)} rules found" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_unit_tests_fail_when_a_rule_fires_too_early(tmp_path: Path) -> None:
    # A rule whose `for:` is shortened makes `promtool test rules` fail: the tests pin it
    for path in (RULES, RULE_TESTS):
        shutil.copy(path, tmp_path / path.name)
    changed = tmp_path / RULES.name
    changed.write_text(changed.read_text().replace("for: 5m", "for: 1m", 1))
    done = promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert done.returncode != 0
    assert "StreamopsStreamStalled" in done.stdout + done.stderr


def test_every_rule_has_a_wait_a_severity_a_summary_and_a_runbook_section() -> None:
    anchors = set(re.findall(r'<a id="([a-z_]+)"></a>', RUNBOOK.read_text()))
    found = {rule["alert"]: rule for rule in rules()}
    assert set(found) == set(REQUIRED)
    for name, anchor in REQUIRED.items():
        rule = found[name]
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert rule["annotations"]["summary"], name
        url = rule["annotations"]["runbook_url"]
        assert url == f"http://localhost:8080/streamops/runbook#{anchor}", name
        assert anchor in anchors, f"{name}: docs/runbook.md has no section {anchor!r}"
        # The labels on-call routes by are the Alertmanager channel's: stream, signal, severity
        assert "signal" in rule["expr"] or "signal" in rule["labels"], name


def test_each_rule_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[bool]] = {name: [] for name in REQUIRED}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases[case["alertname"]].append(bool(case["exp_alerts"]))
    for name, fired in cases.items():
        assert True in fired, f"{name}: no test case where it fires"
        assert False in fired, f"{name}: no test case where it stays quiet"


def test_the_compose_prometheus_loads_the_rules(tmp_path: Path) -> None:
    config = yaml.safe_load((FOLDER / "prometheus.yml").read_text())
    # docker-compose.yaml mounts the rules file at the path prometheus.yml names
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    (path,) = config["rule_files"]
    assert f"./deploy/prometheus/{RULES.name}:{path}:ro" in volumes
    # And promtool accepts the configuration with the rules at that path
    local = dict(config, rule_files=[str(RULES)])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(local))
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(REQUIRED)} rules found" in done.stdout


def test_the_oncall_page_lists_the_rules_as_they_are() -> None:
    # docs/oncall.md's table: alert, `for:` and severity of every rule, as in the rules file
    page = (ROOT / "docs" / "oncall.md").read_text()
    rows = {
        match[0]: (match[1], match[2])
        for match in re.findall(r"^\| `(Streamops\w+)` \| .* \| (\d+m) \| (\w+) \|$", page, re.M)
    }
    assert rows == {r["alert"]: (r["for"], r["labels"]["severity"]) for r in rules()}


def test_the_oncall_route_sends_the_stream_rules_nowhere_and_the_others_on(
    tmp_path: Path,
) -> None:
    # The Alertmanager route of docs/oncall.md, checked and tried by Debian's amtool
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (Debian's prometheus-alertmanager)")
    page = (ROOT / "docs" / "oncall.md").read_text()
    (route,) = [
        block for block in re.findall(r"```yaml\n(.*?)```", page, re.S) if "route:" in block
    ]
    config = tmp_path / "alertmanager.yml"
    config.write_text(route)
    done = subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for rule in rules():
        done = subprocess.run(
            [
                amtool,
                "config",
                "routes",
                "test",
                f"--config.file={config}",
                f"alertname={rule['alert']}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        expected = "null" if rule["alert"].startswith("StreamopsStream") else "oncall"
        assert done.stdout.strip() == expected, (rule["alert"], done.stdout, done.stderr)
