"""The optional ``[drill]`` table of the configuration.

::

    [drill]
    keep_on_failure = false            # keep the staging database when a check failed (to look at it)
    allowed_restore_errors = []        # regexes; a pg_restore error matching one does not fail the drill
    checks_dir = "runbooks/checks"     # smoke queries (*.sql), relative to the config file's directory
    report_dir = "drill-reports"       # also write every report here (JSON, Markdown, HTML)
    no_owner = false                   # pg_restore --no-owner --no-privileges (staging lacks the roles)
    jobs = 1                           # connections loading the data (see restore --jobs)
    size_window = 10                   # the size check compares with this many earlier backups
    size_factor = 2.0                  # normal sizes: at least median / f .. median * f of those
    size_spread = 4.0                  # ... widened to median +- this many median absolute deviations
    size_jump = "warn"                 # a size outside that range: "warn" (the drill goes on) or "fail"
    scratch_dir = "/var/tmp"           # PITR drills: the scratch server's data directory goes under it (default: TMPDIR)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opskit.config.schema import Section

DEFAULT_CHECKS_DIR = "runbooks/checks"
SIZE_JUMP_WARN = "warn"
SIZE_JUMP_FAIL = "fail"
SIZE_JUMPS = (SIZE_JUMP_WARN, SIZE_JUMP_FAIL)


@dataclass(frozen=True)
class DrillSettings:
    """Validated ``[drill]`` settings (defaults when the table is absent)."""

    keep_on_failure: bool = False
    allowed_restore_errors: tuple[str, ...] = ()
    checks_dir: str = DEFAULT_CHECKS_DIR
    report_dir: str | None = None
    no_owner: bool = False
    jobs: int = 1
    size_window: int = 10
    size_factor: float = 2.0
    size_spread: float = 4.0
    size_jump: str = SIZE_JUMP_WARN  # one of SIZE_JUMPS
    scratch_dir: str | None = None  # PITR drills' scratch data directories go under it (None: the system's temp dir)


def _number(section: Section, key: str, default: float, minimum: float) -> float:
    """Return a number (integer or float) of at least ``minimum``; otherwise record an error and return ``default``."""
    value = section.get(key, (int, float), default, "a number")
    if value < minimum:
        section.errors.add(section.key_path(key), f"must be at least {minimum}, not {value}")
        return default
    return float(value)


def parse_settings(section: Section) -> DrillSettings:
    """Return the DrillSettings of ``section``; problems are recorded on the section's error list."""
    allowed = section.str_list("allowed_restore_errors")
    for index, pattern in enumerate(allowed):
        try:
            re.compile(pattern)
        except re.error as exc:
            section.errors.add(f"{section.key_path('allowed_restore_errors')}[{index}]", f"is not a regex: {exc}")
    size_jump = section.str("size_jump", SIZE_JUMP_WARN)
    if size_jump not in SIZE_JUMPS:
        section.errors.add(section.key_path("size_jump"), f'must be "warn" or "fail", not {size_jump!r}')
        size_jump = SIZE_JUMP_WARN
    result = DrillSettings(
        keep_on_failure=section.bool("keep_on_failure", False),
        allowed_restore_errors=allowed,
        checks_dir=section.str("checks_dir", DEFAULT_CHECKS_DIR),
        report_dir=section.str("report_dir", None),
        no_owner=section.bool("no_owner", False),
        jobs=section.int("jobs", 1, minimum=1, maximum=64),
        size_window=section.int("size_window", 10, minimum=1, maximum=1000),
        size_factor=_number(section, "size_factor", 2.0, minimum=1.0),
        size_spread=_number(section, "size_spread", 4.0, minimum=0.0),
        size_jump=size_jump,
        scratch_dir=section.str("scratch_dir", None),
    )
    section.finish()
    return result
