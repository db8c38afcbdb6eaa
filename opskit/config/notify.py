"""The ``[notify]`` section: webhooks and heartbeat pings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from opskit.secrets.references import SecretRef

if TYPE_CHECKING:
    from opskit.config.schema import Section

START, SUCCESS, FAILURE, ABORTED = "start", "success", "failure", "aborted"


@dataclass(frozen=True)
class NotifySettings:
    """Where notifications go and how hard to try."""

    webhooks: tuple[SecretRef, ...] = ()
    slack: bool = False
    on_success: bool = False
    pings: tuple[SecretRef, ...] = ()
    timeout: timedelta = timedelta(seconds=10)
    attempts: int = 3


def parse_settings(section: Section) -> NotifySettings:
    """Validate the ``[notify]`` table; problems are recorded on the section's error collector."""
    defaults = NotifySettings()
    webhooks = tuple(SecretRef(url) for url in section.str_list("webhooks"))
    pings = tuple(SecretRef(url) for url in section.str_list("pings"))
    for key, refs in (("webhooks", webhooks), ("pings", pings)):
        for index, ref in enumerate(refs):
            problem = ref.problem()
            if problem is None and ref.is_literal and not ref.reference.startswith(("http://", "https://")):
                problem = "must be an http(s):// URL or a secret reference such as 'env:NAME'"
            if problem:
                section.errors.add(f"{section.key_path(key)}[{index}]", problem)
    settings = NotifySettings(
        webhooks=webhooks,
        slack=section.bool("slack", False),
        on_success=section.bool("on_success", False),
        pings=pings,
        timeout=section.duration("timeout", defaults.timeout) or defaults.timeout,
        attempts=section.int("attempts", defaults.attempts, minimum=1, maximum=10),
    )
    section.finish()
    return settings
