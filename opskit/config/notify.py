"""The ``[notify]`` section: webhooks and heartbeat pings (one list for every run, or one URL per job or verb)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from opskit.secrets.references import SecretRef

if TYPE_CHECKING:
    from opskit.config.schema import Section

START, SUCCESS, FAILURE, ABORTED = "start", "success", "failure", "aborted"


@dataclass(frozen=True)
class NotifySettings:
    """Where notifications go and how hard to try.

    ``pings`` get every run's signals; ``ping_urls`` maps a job name or a verb (``backup``,
    ``prune``, ...) to the one URL of that check, so two jobs never flap the same check.
    """

    webhooks: tuple[SecretRef, ...] = ()
    slack: bool = False
    on_success: bool = False
    pings: tuple[SecretRef, ...] = ()
    ping_urls: Mapping[str, SecretRef] = field(default_factory=dict)
    timeout: timedelta = timedelta(seconds=10)
    attempts: int = 3


def parse_settings(section: Section) -> NotifySettings:
    """Validate the ``[notify]`` table; problems are recorded on the section's error collector."""
    defaults = NotifySettings()
    webhooks = tuple(SecretRef(url) for url in section.str_list("webhooks"))
    pings = tuple(SecretRef(url) for url in section.str_list("pings"))
    for key, refs in (("webhooks", webhooks), ("pings", pings)):
        for index, ref in enumerate(refs):
            problem = _url_problem(ref)
            if problem:
                section.errors.add(f"{section.key_path(key)}[{index}]", problem)
    ping_urls: dict[str, SecretRef] = {}
    table = section.table("ping_urls")
    for name in table.raw:
        ref_text = table.str(name)
        if not isinstance(ref_text, str):
            continue
        ref = SecretRef(ref_text)
        problem = _url_problem(ref)
        if problem:
            table.errors.add(table.key_path(name), problem)
        else:
            ping_urls[name] = ref
    table.finish()
    settings = NotifySettings(
        webhooks=webhooks,
        slack=section.bool("slack", False),
        on_success=section.bool("on_success", False),
        pings=pings,
        ping_urls=ping_urls,
        timeout=section.duration("timeout", defaults.timeout) or defaults.timeout,
        attempts=section.int("attempts", defaults.attempts, minimum=1, maximum=10),
    )
    section.finish()
    return settings


def _url_problem(ref: SecretRef) -> str | None:
    # A literal that is not http(s) is first of all a wrong URL: say that, rather than the
    # general "unknown secret scheme" an ftp:// would otherwise get.
    if ref.is_literal and not ref.reference.startswith(("http://", "https://")):
        return "must be an http(s):// URL or a secret reference such as 'env:NAME'"
    return ref.problem()
