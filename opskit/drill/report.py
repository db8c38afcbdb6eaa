"""Rendering a drill report (the JSON dict of ``DrillReport.to_dict()``) for machines and people.

JSON for machines; Markdown for a ticket or a wiki; a self-contained HTML page (inline CSS,
no scripts, no external assets) with a per-phase timeline bar, for looking at after a drill.
Each renderer takes the stored dict, so an old report can be re-rendered from storage.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from opskit.plan.objectives import short

_PHASE_COLOURS = {
    "fetch": "#4e79a7",
    "decrypt": "#f28e2b",
    "restore": "#59a14f",
    "verify": "#af7aa1",
    "extract": "#59a14f",
    "verifybackup": "#edc948",
    "replay": "#e15759",
}


def _pitr_lines(report: Mapping[str, Any]) -> list[str]:
    """Return the facts of a PITR drill as "label: value" lines ([] for a logical drill)."""
    pitr = report.get("pitr")
    if not isinstance(pitr, Mapping):
        return []
    window = pitr.get("window") or {}
    reached = pitr.get("reached") or {}
    chosen = pitr.get("chosen_time")
    lines = [
        f"Recovery target: {pitr.get('target')}" + (" (picked at random)" if pitr.get("random_time") else ""),
        f"Chosen moment: {chosen if chosen else 'the end of the archive'}",
        f"PITR window: {window.get('start')} .. {window.get('end')} (newest segment {window.get('newest_segment')})",
    ]
    if reached:
        lines.append(
            f"Reached: LSN {reached.get('replay_lsn')}, last transaction {reached.get('last_transaction_time')}, "
            f"timeline {reached.get('timeline')}"
        )
    return lines


def _skipped_lines(report: Mapping[str, Any]) -> list[str]:
    return [f"{s.get('name')}: {s.get('reason')}" for s in report.get("skipped_checks") or []]


def to_json(report: Mapping[str, Any]) -> bytes:
    """Return the report as indented UTF-8 JSON."""
    return json.dumps(report, indent=2, default=str).encode("utf-8") + b"\n"


def _seconds(value: Any) -> str:
    return short(float(value)) if isinstance(value, int | float) else "n/a"


def _rate(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if value < 1024 or unit == "GiB/s":
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1024
    return ""  # pragma: no cover


def _cell(value: Any) -> str:
    if isinstance(value, list | dict):
        text = json.dumps(value, default=str) if value else ("none" if isinstance(value, list) else "{}")
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Mapping[str, Any]) -> str:
    """Return the report as Markdown: summary, objectives, phases, checks, cleanup."""
    backup = report.get("backup") or {}
    staging = report.get("staging") or {}
    rpo = report.get("rpo") or {}
    rto = report.get("rto") or {}
    lines = [
        f"# Restore drill {report.get('drill_id')}: {str(report.get('verdict', '')).upper()}",
        "",
        f"- Target: `{report.get('target')}`; trigger: {report.get('trigger')}; opskit {report.get('opskit_version')}",
        f"- Backup: `{backup.get('id')}` from storage `{backup.get('storage')}`, "
        f"snapshot {backup.get('snapshot_time')},"
        f" {backup.get('size')} bytes, sha256 `{backup.get('sha256')}`",
        f"- Staging: database `{staging.get('database')}` on target `{staging.get('target')}`",
        f"- Started {report.get('started_at')}, finished {report.get('finished_at')}",
        f"- Verdict: **{report.get('verdict')}**; objectives met: **{report.get('objectives_met')}**",
        "",
        "## Objectives",
        "",
        "| | measured | target | status |",
        "|---|---|---|---|",
        f"| Data-loss window (drill start - recovery point) | {_seconds(rpo.get('data_loss_seconds'))} "
        f"| {_seconds(rpo.get('target_seconds'))} | {rpo.get('status')} |",
        f"| Measured RTO (fetch + decrypt + restore + verify) | {_seconds(rto.get('measured_seconds'))} "
        f"| {_seconds(rto.get('target_seconds'))} | |",
        f"| Estimated RTO (+ allowances {_seconds(rto.get('allowances_seconds'))}) "
        f"| {_seconds(rto.get('estimated_seconds'))} | {_seconds(rto.get('target_seconds'))} "
        f"| {rto.get('status')} |",
        "",
    ]
    for breach in report.get("breaches") or []:
        lines.append(f"- **{breach}**")
    for warning in report.get("warnings") or []:
        lines.append(f"- Warning: {warning}")
    lines += [
        "",
        "## Phases",
        "",
        "| phase | start | end | seconds | bytes | throughput |",
        "|---|---|---|---|---|---|",
    ]
    for phase in report.get("phases") or []:
        lines.append(
            f"| {phase['name']} | {phase['started_at']} | {phase['ended_at']} | {phase['seconds']} "
            f"| {phase.get('bytes', 0)} | {_rate(phase.get('throughput_bytes_per_second'))} |"
        )
    pitr = _pitr_lines(report)
    if pitr:
        lines += ["", "## Point-in-time recovery", "", *(f"- {line}" for line in pitr)]
    lines += ["", "## Checks", "", "| | phase | check | expected | actual |", "|---|---|---|---|---|"]
    for check in report.get("checks") or []:
        mark = "pass" if check.get("ok") else "**FAIL**"
        lines.append(
            f"| {mark} | {check.get('phase')} | {_cell(check.get('name'))} | {_cell(check.get('expected'))} "
            f"| {_cell(check.get('actual'))} |"
        )
    skipped = _skipped_lines(report)
    if skipped:
        lines += ["", "Skipped (they do not apply):", "", *(f"- {_cell(line)}" for line in skipped)]
    errors = report.get("pg_restore_errors") or {}
    lines += [
        "",
        "## pg_restore errors",
        "",
        f"- Unexpected: {_cell(errors.get('unexpected') or [])}",
        f"- Allowed by the allow-list: {_cell(errors.get('allowed') or [])}",
        "",
        "## Cleanup",
        "",
        *(f"- {key}: {_cell(value)}" for key, value in (report.get("cleanup") or {"action": "none"}).items()),
        "",
    ]
    return "\n".join(lines)


def _cleanup_table(cleanup: Mapping[str, Any]) -> str:
    """Return the cleanup record as a two-column table (what was done to the staging database, and why)."""
    if not cleanup:
        return "<p>nothing recorded</p>"
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_cell(value))}</td></tr>"
        for key, value in cleanup.items()
    )
    return f'<table class="cleanup">{rows}</table>'


def to_html(report: Mapping[str, Any]) -> str:
    """Return a self-contained HTML page: summary, a timeline bar with one segment per phase, the checks."""
    esc = html.escape
    phases = report.get("phases") or []
    total = sum(float(p.get("seconds") or 0) for p in phases) or 1.0
    segments = "".join(
        f'<div class="seg" style="width:{max(float(p.get("seconds") or 0) / total * 100, 0.5):.2f}%;'
        f'background:{_PHASE_COLOURS.get(p["name"], "#999")}" title="{esc(p["name"])}: {p.get("seconds")} s">'
        f"{esc(p['name'])}</div>"
        for p in phases
    )
    phase_rows = "".join(
        f"<tr><td>{esc(p['name'])}</td><td>{esc(str(p['started_at']))}</td><td>{esc(str(p['ended_at']))}</td>"
        f"<td>{p.get('seconds')}</td><td>{p.get('bytes', 0)}</td>"
        f"<td>{esc(_rate(p.get('throughput_bytes_per_second')))}</td></tr>"
        for p in phases
    )
    check_rows = "".join(
        f'<tr class="{"ok" if c.get("ok") else "bad"}"><td>{"pass" if c.get("ok") else "FAIL"}</td>'
        f"<td>{esc(str(c.get('phase')))}</td><td>{esc(str(c.get('name')))}</td>"
        f"<td>{esc(_cell(c.get('expected')))}</td><td>{esc(_cell(c.get('actual')))}</td></tr>"
        for c in report.get("checks") or []
    )
    backup = report.get("backup") or {}
    rpo = report.get("rpo") or {}
    rto = report.get("rto") or {}
    notes = "".join(f"<li><b>{esc(b)}</b></li>" for b in report.get("breaches") or []) + "".join(
        f"<li>{esc(w)}</li>" for w in report.get("warnings") or []
    )
    verdict = str(report.get("verdict"))
    pitr = "".join(f"<li>{esc(line)}</li>" for line in _pitr_lines(report))
    pitr_section = f"<h2>Point-in-time recovery</h2><ul>{pitr}</ul>" if pitr else ""
    skipped = "".join(f"<li>{esc(line)}</li>" for line in _skipped_lines(report))
    skipped_section = f"<h3>Skipped (they do not apply)</h3><ul>{skipped}</ul>" if skipped else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Restore drill {esc(str(report.get("drill_id")))}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:100%;overflow-wrap:anywhere}}
table{{border-collapse:collapse;margin:1em 0;max-width:100%}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;word-break:break-word;overflow-wrap:anywhere}}
table.wide{{table-layout:fixed;width:100%}} table.wide td{{max-width:0}}
col.mark{{width:3.5em}} col.phase{{width:5em}} col.name{{width:22%}}
.verdict-pass{{color:#2e7d32}} .verdict-fail{{color:#c62828}} tr.bad{{background:#fdecea}}
.timeline{{display:flex;width:100%;height:2em;border:1px solid #999;margin:1em 0}}
.seg{{color:#fff;font-size:.8em;line-height:2em;overflow:hidden;white-space:nowrap;padding-left:4px}}
</style></head><body>
<h1>Restore drill {esc(str(report.get("drill_id")))}:
<span class="verdict-{esc(verdict)}">{esc(verdict.upper())}</span></h1>
<p>Target <b>{esc(str(report.get("target")))}</b>, trigger {esc(str(report.get("trigger")))},
opskit {esc(str(report.get("opskit_version")))}.<br>
Backup <code>{esc(str(backup.get("id")))}</code> ({esc(str(backup.get("storage")))}), snapshot
{esc(str(backup.get("snapshot_time")))}, {esc(str(backup.get("size")))} bytes.<br>
Started {esc(str(report.get("started_at")))}, finished {esc(str(report.get("finished_at")))}.</p>
<table><tr><th></th><th>measured</th><th>target</th><th>status</th></tr>
<tr><td>Data-loss window</td><td>{_seconds(rpo.get("data_loss_seconds"))}</td>
<td>{_seconds(rpo.get("target_seconds"))}</td><td>{esc(str(rpo.get("status")))}</td></tr>
<tr><td>Measured RTO</td><td>{_seconds(rto.get("measured_seconds"))}</td>
<td>{_seconds(rto.get("target_seconds"))}</td>
<td></td></tr>
<tr><td>Estimated RTO</td><td>{_seconds(rto.get("estimated_seconds"))}</td>
<td>{_seconds(rto.get("target_seconds"))}</td>
<td>{esc(str(rto.get("status")))}</td></tr></table>
<ul>{notes}</ul>
{pitr_section}
<h2>Timeline</h2>
<div class="timeline">{segments}</div>
<table><tr><th>phase</th><th>start</th><th>end</th><th>seconds</th><th>bytes</th><th>throughput</th></tr>
{phase_rows}</table>
<h2>Checks</h2>
<table class="wide"><colgroup><col class="mark"><col class="phase"><col class="name"><col><col></colgroup>
<tr><th></th><th>phase</th><th>check</th><th>expected</th><th>actual</th></tr>{check_rows}</table>
{skipped_section}
<h2>Cleanup</h2>
{_cleanup_table(report.get("cleanup") or {})}
</body></html>
"""
