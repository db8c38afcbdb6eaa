"""The drill report renderers show every check, passing and failing, in the HTML and Markdown tables.

The HTML page is also rendered by headless Chromium at 1200 px: long values wrap inside the page.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from opskit.catalog import Check
from opskit.drill import report
from opskit.drill.result import DrillReport
from opskit.drill.timing import PhaseTiming

STARTED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CHECKS = [
    Check("pre", "stored sha256", "abc", "abc", True),
    Check("restore", "pg_restore errors outside the allow-list", [], ["ERROR: boom | pipe"], False),
    Check("post", "row counts", "2 tables as in the manifest", ["public.t: expected 3, got 2"], False),
    Check("post", "smoke query <ok>.sql", "one row, first column true", "1 row(s), first column True", True),
]


def drill_report() -> dict[str, object]:
    """Return the stored JSON form of a drill with two passing and two failing checks."""
    result = DrillReport(
        drill_id="20240501T120000Z-abcd",
        trigger="test",
        target="app",
        staging_target="staging",
        staging_database="opskit_drill_app",
        started_at=STARTED,
        finished_at=STARTED + timedelta(seconds=30),
        storage="local",
        phases=[PhaseTiming("fetch", STARTED, STARTED + timedelta(seconds=2), 2.0, bytes=4096)],
        checks=list(CHECKS),
    )
    return result.to_dict()


class TableCollector(HTMLParser):
    """Collects every table of a page as rows of cell texts, with each row's class attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[tuple[str | None, list[str]]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append((dict(attrs).get("class"), []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def checks_table(page: str) -> list[tuple[str | None, list[str]]]:
    """Return the rows of the HTML table whose header names the check column."""
    parser = TableCollector()
    parser.feed(page)
    (table,) = [t for t in parser.tables if t and t[0][1] == ["", "phase", "check", "expected", "actual"]]
    return table[1:]


def test_the_html_checks_table_has_one_row_per_check_with_its_verdict() -> None:
    rows = checks_table(report.to_html(drill_report()))

    assert [cells[2] for _, cells in rows] == [c.name for c in CHECKS]
    assert [cells[0] for _, cells in rows] == ["pass", "FAIL", "FAIL", "pass"]
    assert [css for css, _ in rows] == ["ok", "bad", "bad", "ok"]
    assert [cells[1] for _, cells in rows] == ["pre", "restore", "post", "post"]
    failing = rows[2][1]
    assert failing[3] == "2 tables as in the manifest"
    assert json.loads(failing[4]) == ["public.t: expected 3, got 2"]


def test_the_html_page_escapes_what_the_checks_say_and_shows_the_verdict() -> None:
    page = report.to_html(drill_report())

    assert "smoke query &lt;ok&gt;.sql" in page
    assert '<span class="verdict-fail">FAIL</span>' in page


def test_the_markdown_checks_table_has_one_row_per_check_with_its_verdict() -> None:
    lines = report.to_markdown(drill_report()).splitlines()
    start = lines.index("| | phase | check | expected | actual |")
    assert lines[start + 1] == "|---|---|---|---|---|"
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        # A "|" inside a cell is escaped as "\|"; split on the others only.
        cells = line.replace("\\|", "\0").strip("|").split("|")
        rows.append([c.strip().replace("\0", "|") for c in cells])

    assert [r[2] for r in rows] == [c.name for c in CHECKS]
    assert [r[0] for r in rows] == ["pass", "**FAIL**", "**FAIL**", "pass"]
    assert [r[1] for r in rows] == ["pre", "restore", "post", "post"]
    assert json.loads(rows[1][4]) == ["ERROR: boom | pipe"]
    assert rows[1][3] == "none"


def test_a_drill_with_failing_checks_is_reported_as_failed() -> None:
    data = drill_report()

    assert data["verdict"] == "fail"
    assert report.to_markdown(data).startswith("# Restore drill 20240501T120000Z-abcd: FAIL")
    assert json.loads(report.to_json(data))["checks"][1] == {
        "phase": "restore",
        "name": "pg_restore errors outside the allow-list",
        "ok": False,
        "expected": [],
        "actual": ["ERROR: boom | pipe"],
    }


# --------------------------------------------------------------------------- layout at 1200 px

LONG = "x" * 400  # one unbroken word, as a sha256 list or a long table name is
WIDE_CHECKS = [
    Check("pre", "stored sha256", "ab" * 64, "cd" * 64, False),
    Check(
        "post",
        "row counts",
        "12 tables as in the manifest",
        [f"public.{LONG}_{i}: expected 3, got 2" for i in range(5)],
        False,
    ),
    Check("post", "object counts", {"tables": 12, "views": 3, "functions": 40}, {LONG: 1}, False),
]


def wide_report() -> dict[str, object]:
    """Return a report whose checks carry long unbroken expected and actual values, and a cleanup record."""
    data = drill_report()
    data["checks"] = [c.to_drill_dict() for c in WIDE_CHECKS]
    data["cleanup"] = {"action": "drop failed", "database": "opskit_drill_" + LONG, "error": "ERROR: " + LONG}
    return data


def test_the_cleanup_is_a_table_of_its_fields_not_raw_json() -> None:
    page = report.to_html(wide_report())
    parser = TableCollector()
    parser.feed(page)

    (cleanup,) = [t for t in parser.tables if t and t[0][1][0] == "action"]
    assert [cells for _, cells in cleanup] == [
        ["action", "drop failed"],
        ["database", "opskit_drill_" + LONG],
        ["error", "ERROR: " + LONG],
    ]
    assert '{"action"' not in page
    assert "- action: drop failed" in report.to_markdown(wide_report()).splitlines()


def test_the_checks_table_wraps_long_values_at_1200_px(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = report.to_html(wide_report())
    assert "<script" not in page  # the report itself stays script-free; the probe is added below
    probe = (
        "<script>window.addEventListener('load', () => {"
        "const p = document.createElement('pre'); p.id = 'scroll-width';"
        "p.textContent = String(document.documentElement.scrollWidth);"
        "document.body.appendChild(p);});</script></body>"
    )
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", probe), encoding="utf-8")

    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,900",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout

    width = re.search(r'<pre id="scroll-width">(\d+)</pre>', dom)
    assert width is not None, dom[-500:]
    assert int(width.group(1)) <= 1200
