"""The ``[retention.NAME]`` policies: their model and parser."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opskit.core.units import format_span

if TYPE_CHECKING:
    from opskit.config.schema import Section

COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
DEFAULT_KEEP_RUNS = timedelta(days=90)


@dataclass(frozen=True)
class RetentionPolicy:
    """A retention policy (``[retention.NAME]``). A count of 0 or ``keep_within`` None disables a rule."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None
    min_keep: int = 1
    timezone: str = "UTC"
    keep_runs: timedelta = DEFAULT_KEEP_RUNS  # run records (catalog.runs) younger than this stay readable

    def count(self, rule: str) -> int:
        """Return the count of the rule ``last``, ``hourly``, ... ``yearly``."""
        value: int = getattr(self, f"keep_{rule}")
        return value

    @property
    def keeps_nothing(self) -> bool:
        """Return True when no rule and no ``min_keep`` would ever keep a backup."""
        no_rule = not any(self.count(rule) for rule in COUNT_RULES) and not self.keep_within
        return no_rule and self.min_keep == 0

    def describe(self) -> str:
        """Return a one-line summary such as ``last 3, daily 7, within 30d, min_keep 1 (UTC)``."""
        parts = [f"{rule} {self.count(rule)}" for rule in COUNT_RULES if self.count(rule)]
        if self.keep_within:
            parts.append(f"within {format_span(self.keep_within)}")
        parts.append(f"min_keep {self.min_keep}")
        return ", ".join(parts) + f" ({self.timezone})"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form of the policy (``keep_within`` as text such as ``30d``)."""
        data: dict[str, Any] = {f"keep_{rule}": self.count(rule) for rule in COUNT_RULES}
        data["keep_within"] = format_span(self.keep_within) if self.keep_within else None
        data["min_keep"] = self.min_keep
        data["timezone"] = self.timezone
        data["keep_runs"] = format_span(self.keep_runs)
        return data


# --------------------------------------------------------------------------- config


def parse_policy(section: Section) -> RetentionPolicy:
    """Validate a ``[retention.NAME]`` table and return its policy.

    Problems (wrong types, negative counts, an unknown time zone, a policy that keeps
    nothing, unknown keys) are recorded on ``section.errors``; the returned policy then
    holds defaults and is never used, because the config load raises.
    """
    counts = {rule: section.int(f"keep_{rule}", 0, minimum=0) for rule in COUNT_RULES}
    within = section.duration("keep_within", None)
    if within is not None and within <= timedelta(0):
        within = None  # "0d" means the rule is off, like restic's zero duration
    min_keep = section.int("min_keep", 1, minimum=0)
    zone = section.str("timezone", "UTC")
    keep_runs = section.duration("keep_runs", DEFAULT_KEEP_RUNS) or DEFAULT_KEEP_RUNS
    if not _valid_zone(zone):
        section.errors.add(
            section.key_path("timezone"),
            f"unknown time zone '{zone}' (use an IANA name such as 'Europe/Berlin')",
        )
        zone = "UTC"
    section.finish()
    policy = RetentionPolicy(
        keep_last=counts["last"],
        keep_hourly=counts["hourly"],
        keep_daily=counts["daily"],
        keep_weekly=counts["weekly"],
        keep_monthly=counts["monthly"],
        keep_yearly=counts["yearly"],
        keep_within=within,
        min_keep=min_keep,
        timezone=zone,
        keep_runs=keep_runs,
    )
    if policy.keeps_nothing:
        section.errors.add(
            section.path,
            "keeps nothing: every keep_* is 0, keep_within is unset and min_keep = 0, so prune would delete "
            "every backup; set at least one keep_* rule or min_keep >= 1",
        )
    return policy


def _valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
