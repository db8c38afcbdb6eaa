"""The optional ``[drill]`` table of the configuration.

::

    [drill]
    keep_on_failure = false            # keep the staging database when a check failed (to look at it)
    allowed_restore_errors = []        # regexes; a pg_restore error matching one does not fail the drill
    checks_dir = "runbooks/checks"     # smoke queries (*.sql), relative to the config file's directory
    report_dir = "drill-reports"       # also write every report here (JSON, Markdown, HTML)
    no_owner = false                   # pg_restore --no-owner --no-privileges (staging lacks the roles)
    jobs = 1                           # connections loading the data (see restore --jobs)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opskit.config.schema import Section

DEFAULT_CHECKS_DIR = "runbooks/checks"


@dataclass(frozen=True)
class DrillSettings:
    """Validated ``[drill]`` settings (defaults when the table is absent)."""

    keep_on_failure: bool = False
    allowed_restore_errors: tuple[str, ...] = ()
    checks_dir: str = DEFAULT_CHECKS_DIR
    report_dir: str | None = None
    no_owner: bool = False
    jobs: int = 1


def parse_settings(section: Section) -> DrillSettings:
    """Return the DrillSettings of ``section``; problems are recorded on the section's error list."""
    allowed = section.str_list("allowed_restore_errors")
    for index, pattern in enumerate(allowed):
        try:
            re.compile(pattern)
        except re.error as exc:
            section.errors.add(f"{section.key_path('allowed_restore_errors')}[{index}]", f"is not a regex: {exc}")
    result = DrillSettings(
        keep_on_failure=section.bool("keep_on_failure", False),
        allowed_restore_errors=allowed,
        checks_dir=section.str("checks_dir", DEFAULT_CHECKS_DIR),
        report_dir=section.str("report_dir", None),
        no_owner=section.bool("no_owner", False),
        jobs=section.int("jobs", 1, minimum=1, maximum=64),
    )
    section.finish()
    return result
