"""The ``[hooks]`` section: commands or SQL run before and after a verb, and when it fails.

::

    [hooks]
    timeout = "5m"                 # default for every hook
    on_failure = "fail"            # default: a failing before/after hook fails the run; "warn" logs it

    [[hooks.before]]               # before the verb does anything (a failure with "fail" skips the run)
    verbs = ["backup"]             # default: every verb the daemon can schedule
    command = ["/usr/local/bin/freeze-app", "--wait"]

    [[hooks.after]]                # after the verb succeeded (a failure with "fail" fails the run)
    verbs = ["backup"]
    sql = "SELECT pg_notify('opskit', 'backup done')"   # on the run's target (or ``target = "name"``)

    [[hooks.on_error]]             # after the verb failed or a hook failed it (never changes the result)
    command = ["/usr/local/bin/page", "--team", "db"]

A hook is either ``command`` (an argv list, run without a shell) or ``sql`` (one script, run
on the target's database). Its environment carries the run's context: ``OPSKIT_HOOK``
(before, after, on_error), ``OPSKIT_VERB``, ``OPSKIT_TARGET``, ``OPSKIT_JOB``,
``OPSKIT_BACKUP_ID``, ``OPSKIT_EXIT_CODE``, ``OPSKIT_ERROR`` (the last three once known).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from opskit.config.schema import Section

WHEN = ("before", "after", "on_error")
ON_FAILURE = ("fail", "warn")


@dataclass(frozen=True)
class Hook:
    """One hook: when it runs, for which verbs, what it runs, and what its failure means."""

    when: str  # one of WHEN
    name: str  # hooks.before[0]: how logs and errors name it
    verbs: tuple[str, ...] = ()  # empty: every verb
    command: tuple[str, ...] = ()
    sql: str | None = None
    target: str | None = None  # sql only: the target to run it on (default: the run's)
    timeout: timedelta = timedelta(minutes=5)
    on_failure: str = "fail"

    def applies_to(self, verb: str) -> bool:
        """Return True when this hook runs for ``verb``."""
        return not self.verbs or verb in self.verbs


@dataclass(frozen=True)
class HookSettings:
    """Every configured hook, in file order within each moment."""

    hooks: tuple[Hook, ...] = field(default_factory=tuple)

    def for_run(self, when: str, verb: str) -> list[Hook]:
        """Return the hooks that run at ``when`` for ``verb``, in file order."""
        return [hook for hook in self.hooks if hook.when == when and hook.applies_to(verb)]


def parse_settings(section: Section) -> HookSettings:
    """Validate the ``[hooks]`` table; problems are recorded on the section's error collector."""
    timeout = section.duration("timeout", timedelta(minutes=5)) or timedelta(minutes=5)
    on_failure = _choice(section, "on_failure", "fail")
    hooks: list[Hook] = []
    for when in WHEN:
        items = section.get(when, list, [], "a list of tables ([[hooks." + when + "]])")
        for index, item in enumerate(items):
            path = f"{section.key_path(when)}[{index}]"
            if not isinstance(item, dict):
                section.errors.add(path, "must be a table with 'command' or 'sql'")
                continue
            hook = _parse_hook(Section(item, path, section.errors), when, timeout, on_failure)
            if hook is not None:
                hooks.append(hook)
    section.finish()
    return HookSettings(hooks=tuple(hooks))


def _parse_hook(section: Section, when: str, timeout: timedelta, on_failure: str) -> Hook | None:
    command = section.str_list("command")
    sql = section.str("sql", None)
    hook = Hook(
        when=when,
        name=section.path,
        verbs=section.str_list("verbs"),
        command=command,
        sql=sql,
        target=section.str("target", None),
        timeout=section.duration("timeout", timeout) or timeout,
        on_failure=_choice(section, "on_failure", on_failure),
    )
    section.finish()
    if bool(command) == bool(sql):
        section.errors.add(section.path, "give exactly one of 'command' (an argv list) or 'sql'")
        return None
    if hook.target is not None and not sql:
        section.errors.add(section.key_path("target"), "only an 'sql' hook runs on a target")
    return hook


def _choice(section: Section, key: str, default: str) -> str:
    value = section.str(key, default)
    if value not in ON_FAILURE:
        section.errors.add(section.key_path(key), f"must be one of {', '.join(ON_FAILURE)}")
        return default
    return value
