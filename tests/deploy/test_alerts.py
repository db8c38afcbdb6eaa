"""The shipped Prometheus alert rules, run by Prometheus' own rule engine (``promtool test rules``)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.servers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing (Debian package prometheus; scripts/setup-tools.sh installs it)"
)


@needs_promtool
def test_the_alert_rules_are_valid_promql() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(DEPLOY / "prometheus-alerts.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_alert_fires_once_for_two_replicas_when_it_should_and_not_before() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(DEPLOY / "prometheus-alerts.test.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_shipped_alert_has_a_promtool_case() -> None:
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
    cases = yaml.safe_load((DEPLOY / "prometheus-alerts.test.yml").read_text())["tests"]
    tested = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert {rule["alert"] for rule in rules} == tested


def test_the_wal_alerts_ship_and_every_alert_links_a_runbook_line() -> None:
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
    readme = (DEPLOY / "README.md").read_text()
    runbooks = readme.split("## Alert runbooks", 1)[1].split("\n## ", 1)[0]

    assert {
        "OpskitWalArchiveStale",
        "OpskitWalSlotLagHigh",
        "OpskitWalSpoolNearLimit",
        "OpskitWalStreamStorageDown",
    } <= {rule["alert"] for rule in rules}
    for rule in rules:
        assert rule["annotations"]["runbook_url"].endswith("deploy/README.md#alert-runbooks"), rule["alert"]
        assert f"| `{rule['alert']}` |" in runbooks, f"{rule['alert']} has no line in deploy/README.md's runbooks"
    slot_rule = next(rule for rule in rules if rule["alert"] == "OpskitWalSlotLagHigh")
    assert "max_slot_wal_keep_size" in slot_rule["annotations"]["description"]
