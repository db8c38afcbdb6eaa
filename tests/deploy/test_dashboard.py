"""The Grafana dashboard shipped in deploy/: every query names only metrics opskit exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from opskit.daemon.http import process_metrics
from opskit.ops.metrics import Metrics
from tests.servers import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana-dashboard.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def exported_metrics() -> set[str]:
    """Return the sample names a scrape of the daemon shows (counters gain ``_total``)."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    names |= set(re.findall(r"^(process_\w+)", process_metrics().decode(), re.MULTILINE))
    return names


def metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects (label names, functions and keywords removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # grouping labels
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][\w:]*", expr):
        following = expr[match.end() :].lstrip()
        if not following.startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["query"]["query"])
            assert inner, f"variable {variable['name']}: expected label_values(metric, label)"
            yield f"variable {variable['name']}", inner.group(1)


def test_every_panel_query_names_a_metric_opskit_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_metrics()
    assert {"process_cpu_seconds_total", "opskit_backup_runs_total"} <= exported
    checked = 0
    for title, expr in queries(dashboard):
        used = metric_names(expr)
        assert used, f"{title}: no metric in {expr!r}"
        assert used <= exported, f"{title}: {sorted(used - exported)} are not exported by opskit"
        checked += 1
    assert checked >= 10


def test_the_metric_name_reader_sees_through_grouping_and_matchers() -> None:
    expr = 'time() - max by (target) (opskit_x{target=~"$target"}) > sum without (instance) (rate(node_y[5m]))'
    assert metric_names(expr) == {"opskit_x", "node_y"}


def test_the_dashboard_covers_rpo_drills_storage_and_3_2_1() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(metric_names(expr) for _, expr in queries(dashboard)))
    assert {
        "opskit_backup_last_recovery_point_timestamp_seconds",
        "opskit_rpo_target_seconds",
        "opskit_drill_last_result",
        "opskit_drill_estimated_rto_seconds",
        "opskit_backup_last_size_bytes",
        "opskit_backup_copy_last_success_timestamp_seconds",
        "opskit_storage_up",
    } <= used
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
