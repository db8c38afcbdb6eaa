"""The drill report renderers show every check, passing and failing, in the HTML and Markdown tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

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
