"""Scheduled jobs: one ``jobs/*.toml`` file each, calling the schedulable rows of :mod:`opskit.actions`.

A job file::

    action = "backup"              # backup, copy, prune, verify, drill, status, runbook, wal-stream
    target = "app"                 # a configured target (optional when there is only one)
    cron = "0 * * * *"             # 5-field crontab, or a table of CronTrigger fields, or:
    # interval = "1h"              # a duration: 2s, 15m, 1h, 1d
    timezone = "UTC"               # IANA zone the cron fields are read in
    misfire_grace_time = "1h"      # a run this late still happens; later ones are skipped
    timeout = "6h"                 # a run still going after this is cancelled (default: none)
    [args]                         # keyword arguments of the action's run() (opskit/actions.py)
    labels = ["scheduled"]

The job's name is the file's stem. Crontab strings follow crontab(5) for weekday numbers
(0 and 7 are Sunday), not APScheduler 3's own numbering (0 is Monday). Because crontab ORs a
restricted day-of-month with a restricted day-of-week while APScheduler ANDs them, a string
that restricts both is refused; write such schedules as a table of APScheduler fields, e.g.
``cron = { month = "1,4,7,10", day = "1st mon", hour = "6", minute = "0" }`` for the first
Monday of each quarter.

``timeout`` has no default: opskit cannot know how long a backup of a given database may
rightly take, and cancelling a good 7-hour dump is worse than the RPO alert a hung one raises.
Set it below the job's period, so a run stuck on a lock is cancelled before its next slot would be
skipped. A ``wal-stream`` job refuses it: its run lasts until the daemon stops.
"""

from __future__ import annotations

import collections.abc
import inspect
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from opskit import actions
from opskit.actions import Action
from opskit.config.model import Config
from opskit.config.names import label_problem
from opskit.config.schema import ConfigErrors, Section
from opskit.core.errors import ConfigError
from opskit.core.units import format_duration, parse_duration

DEFAULT_MISFIRE_GRACE = timedelta(hours=1)
# Interval slots are counted from this instant, not from when a replica started, so every
# replica computes the same slots and the ledger can tell them apart.
INTERVAL_ANCHOR = datetime(2000, 1, 3, tzinfo=UTC)
_CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
# Actions whose run is not meant to end (the WAL streamer): a timeout would only stop it.
UNBOUNDED_ACTIONS = frozenset({"wal-stream"})
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

# Actions registered by name in-process (tests register fakes); everything else is imported lazily.
_REGISTERED: dict[str, Action] = {}


@dataclass(frozen=True)
class Job:
    """One scheduled job, validated."""

    name: str
    source: Path
    action: str
    target: str | None
    trigger: BaseTrigger
    schedule: str  # human form, for logs
    timezone: tzinfo = UTC
    misfire_grace_time: timedelta = DEFAULT_MISFIRE_GRACE
    args: Mapping[str, Any] = field(default_factory=dict)
    timeout: timedelta | None = None  # a run still going after this is cancelled (None: never)


# --------------------------------------------------------------------------- action registry


def register_action(name: str, func: Action) -> None:
    """Make ``name`` call ``func(ctx, target=..., **args)`` instead of its entry in :mod:`opskit.actions`."""
    _REGISTERED[name] = func


def unregister_action(name: str) -> None:
    """Forget an action registered with :func:`register_action`."""
    _REGISTERED.pop(name, None)


def known_actions() -> tuple[str, ...]:
    """Return every action name a job may use: the table's schedulable ones, then registered fakes."""
    return tuple(dict.fromkeys((*actions.schedulable(), *_REGISTERED)))


def resolve_action(name: str) -> Action:
    """Return the callable for an action a job may use (see :mod:`opskit.actions`).

    Raises ConfigError when the action is unknown, not schedulable, or its module is not part of this build.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in actions.schedulable():
        raise ConfigError(f"unknown action '{name}'", hint=f"use one of: {', '.join(known_actions())}")
    return actions.resolve(name)


# --------------------------------------------------------------------------- schedules


def crontab_weekdays(text: str) -> str:
    """Return a crontab day-of-week field rewritten as APScheduler weekday names.

    crontab(5) counts 0 (and 7) as Sunday; APScheduler 3 counts 0 as Monday, so numbers are
    expanded here (``1-5`` -> ``mon,tue,wed,thu,fri``). Raises ValueError for a bad field.
    """
    if text in ("*", "?"):
        return "*"
    days: set[int] = set()
    for item in text.lower().split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"bad step in day-of-week '{text}'")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            first_text, last_text = base.split("-", 1)
            first, last = _weekday(first_text), _weekday(last_text)
            if last == 0 and first > 0:
                last = 7  # "5-0" / "fri-sun" end on Sunday
        else:
            first = _weekday(base)
            last = 6 if step_text else first
        if first > last:
            raise ValueError(f"day-of-week range '{base}' runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    # APScheduler wants mon..sun order; Sunday is 0 in crontab.
    return ",".join(_WEEKDAYS[day] for day in sorted(days, key=lambda d: (d + 6) % 7))


def _weekday(text: str) -> int:
    if text.isdigit():
        value = int(text)
        if not 0 <= value <= 7:
            raise ValueError(f"day-of-week {value} is out of range 0-7")
        return value
    if text in _WEEKDAYS:
        return _WEEKDAYS.index(text)
    raise ValueError(f"'{text}' is not a day of the week")


def cron_trigger(spec: str | Mapping[str, Any], timezone: tzinfo) -> tuple[CronTrigger, str]:
    """Return a CronTrigger and its human form from a crontab string or a table of CronTrigger fields.

    Raises ValueError with a message fit for a config error.
    """
    if isinstance(spec, str):
        fields = spec.split()
        if len(fields) != 5:
            raise ValueError(f"'{spec}' has {len(fields)} fields; a crontab needs 5 (minute hour day month weekday)")
        minute, hour, day, month, weekday = fields
        if day not in ("*", "?") and weekday not in ("*", "?"):
            raise ValueError(
                f"'{spec}' restricts both day-of-month and day-of-week, "
                "which crontab ORs and APScheduler ANDs; "
                'write it as a table, e.g. cron = { month = "1,4,7,10", day = "1st mon", hour = "6" }'
            )
        trigger = CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=crontab_weekdays(weekday),
            timezone=timezone,
        )
        return _fires(trigger, f"cron '{spec}'")
    unknown = sorted(set(spec) - set(_CRON_FIELDS))
    if unknown:
        raise ValueError(f"unknown cron field(s) {', '.join(unknown)} (use {', '.join(_CRON_FIELDS)})")
    if not spec:
        raise ValueError("an empty cron table would run every second")
    # CronTrigger itself defaults fields finer than the finest one given to their minimum
    # (hour = 6 alone means 06:00:00) and coarser ones to "*".
    values = {key: str(value) for key, value in spec.items()}
    trigger = CronTrigger(timezone=timezone, **values)
    return _fires(trigger, "cron {" + ", ".join(f"{k}={v}" for k, v in values.items()) + "}")


def _fires(trigger: CronTrigger, schedule: str) -> tuple[CronTrigger, str]:
    """Return ``(trigger, schedule)``; raise ValueError when the trigger has no future fire time.

    "0 0 31 2 *" (February 31st) or a year in the past is accepted by APScheduler and then
    never runs: a job that silently never happens is refused like any other bad schedule.
    """
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError(f"{schedule} never fires (no such date from now on)")
    return trigger, schedule


def interval_trigger(every: timedelta, timezone: tzinfo) -> tuple[IntervalTrigger, str]:
    """Return an IntervalTrigger whose slots are aligned to a fixed anchor (identical on every replica)."""
    if every.total_seconds() < 1:
        raise ValueError("an interval must be at least 1s")
    trigger = IntervalTrigger(seconds=every.total_seconds(), start_date=INTERVAL_ANCHOR, timezone=timezone)
    return trigger, f"every {format_duration(every)}"


def previous_fire_time(trigger: BaseTrigger, now: datetime) -> datetime | None:
    """Return the latest time at or before ``now`` the trigger fires: the slot a run at ``now`` covers.

    APScheduler 3 only looks forward, so this searches windows growing backwards from ``now``
    (an hour, a day, ... ten years) and returns None when there is none.
    """
    if isinstance(trigger, IntervalTrigger):
        start = trigger.start_date
        if now < start:
            return None
        step = trigger.interval_length
        count = int((now - start).total_seconds() // step)
        return start + timedelta(seconds=count * step)
    window = timedelta(hours=1)
    while window <= timedelta(days=3660):
        cursor = trigger.get_next_fire_time(None, now - window)
        latest = None
        while cursor is not None and cursor <= now:
            latest = cursor
            cursor = trigger.get_next_fire_time(cursor, cursor + timedelta(microseconds=1))
        if latest is not None:
            return latest
        window *= 8
    return None


# --------------------------------------------------------------------------- job files


def load_jobs(jobs_dir: Path, config: Config) -> list[Job]:
    """Read and validate every ``*.toml`` job file in ``jobs_dir``, sorted by name.

    Raises ConfigError naming the file and every problem in it; a missing directory or one
    with no jobs is an error too (a daemon with nothing to do is a misconfiguration).
    """
    if not jobs_dir.is_dir():
        raise ConfigError(f"jobs directory {jobs_dir} does not exist", hint="pass --jobs-dir or set daemon.jobs_dir")
    paths = sorted(jobs_dir.glob("*.toml"))
    if not paths:
        raise ConfigError(f"jobs directory {jobs_dir} has no *.toml job files", hint="see the examples in jobs/")
    return [load_job(path, config) for path in paths]


def load_job(path: Path, config: Config) -> Job:
    """Read and validate one job file. Raises ConfigError naming the file and the reasons."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"job file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file {path} is not valid TOML: {exc}") from exc
    return parse_job(path.stem, raw, config, source=path)


def parse_job(name: str, raw: Mapping[str, Any], config: Config, source: Path | None = None) -> Job:
    """Validate a parsed job document. Raises ConfigError listing every problem, naming the file."""
    errors = ConfigErrors()
    section = Section(raw, "", errors)
    action = section.str("action")
    if isinstance(action, str) and action not in known_actions():
        errors.add("action", f"unknown action '{action}' (use one of: {', '.join(known_actions())})")
    target = section.str("target", None)
    if isinstance(target, str) and target not in config.targets:
        errors.add("target", f"unknown target '{target}' (configured: {', '.join(sorted(config.targets))})")
    timezone = _parse_timezone(section)
    grace = section.duration("misfire_grace_time", DEFAULT_MISFIRE_GRACE) or DEFAULT_MISFIRE_GRACE
    if grace < timedelta(seconds=1):
        errors.add("misfire_grace_time", "must be at least 1s (a run this late still happens)")
    timeout = section.duration("timeout", None)
    if timeout is not None and timeout < timedelta(seconds=1):
        errors.add("timeout", "must be at least 1s (a run still going after it is cancelled)")
    elif timeout is not None and action in UNBOUNDED_ACTIONS:
        errors.add("timeout", f"action '{action}' runs until the daemon stops; a timeout would end it")
    trigger, schedule = _parse_schedule(section, timezone)
    args_section = section.table("args")
    args = dict(args_section.raw)
    if "target" in args:
        errors.add("args.target", "set the target with the top-level 'target' key")
    elif isinstance(action, str) and action in known_actions():
        _check_args(action, args, errors)
    section.finish()
    where = source or Path(f"{name}.toml")
    if errors.problems:
        raise ConfigError(
            f"job file {where}: " + "; ".join(errors.problems),
            hint="fix the job file; the daemon did not start",
        )
    assert trigger is not None and isinstance(action, str)
    return Job(
        name=name,
        source=where,
        action=action,
        target=target,
        trigger=trigger,
        schedule=schedule,
        timezone=timezone,
        misfire_grace_time=grace,
        args=args,
        timeout=timeout,
    )


# Parameters the daemon passes itself, or that only make sense at a terminal.
_NOT_FROM_JOB_FILES = frozenset({"ctx", "target"})


def _check_args(action: str, args: Mapping[str, Any], errors: ConfigErrors) -> None:
    """Record in ``errors`` every ``[args]`` key ``action``'s run() would refuse or misread.

    Checks names against the function's parameters (unless it takes ``**kwargs``), values
    against their annotations (:func:`_matches`), and that required parameters are given, so
    a job that could only ever fail with a TypeError stops the daemon at start instead.
    """
    try:
        func = resolve_action(action)
    except ConfigError as exc:
        errors.add("action", exc.message)
        return
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to read
    try:
        annotated: Any = func if inspect.isroutine(func) else type(func).__call__  # a callable object's __call__
        hints = typing.get_type_hints(annotated)
    except (NameError, TypeError, AttributeError):  # an annotation that does not resolve: no type check
        hints = {}
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    by_name = {p.name: p for p in named[1:] if p.name not in _NOT_FROM_JOB_FILES}  # [0] is ctx
    for key, value in args.items():
        parameter = by_name.get(key)
        if parameter is None:
            if not takes_any:
                known = ", ".join(by_name) or "none"
                errors.add(f"args.{key}", f"action '{action}' has no argument '{key}' (its arguments: {known})")
            continue
        hint = hints.get(key, Any)
        if not _matches(value, hint):
            errors.add(f"args.{key}", f"must be {_describe(hint)}, not {_describe_value(value)}")
        elif key == "labels":
            for problem in filter(None, (label_problem(str(label)) for label in value)):
                errors.add(f"args.{key}", problem)
    for name, parameter in by_name.items():
        if parameter.default is parameter.empty and name not in args:
            errors.add(f"args.{name}", f"action '{action}' needs '{name}'")


def _matches(value: Any, hint: Any) -> bool:
    """Return True when a TOML ``value`` fits the annotation ``hint`` (an unknown kind of hint always fits)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, member) for member in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is not None and isinstance(origin, type):
        if issubclass(origin, Mapping):
            inner = typing.get_args(hint)
            return isinstance(value, dict) and (
                len(inner) != 2 or all(_matches(k, inner[0]) and _matches(v, inner[1]) for k, v in value.items())
            )
        if issubclass(origin, collections.abc.Sequence) and not issubclass(origin, str):
            inner = typing.get_args(hint)
            item = inner[0] if inner else Any
            return isinstance(value, list) and all(_matches(v, item) for v in value)
        if issubclass(origin, collections.abc.Callable):  # type: ignore[arg-type]
            return False  # a TOML value is never a function
    if hint is collections.abc.Callable or origin is collections.abc.Callable:
        return False
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    """Return ``hint`` in a job file's words: "a list of strings", "true or false", ..."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(hint) if m is not type(None)]
        return " or ".join(dict.fromkeys(_describe(m) for m in members))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in words:
        return words[hint]
    if origin is not None and isinstance(origin, type):
        inner = typing.get_args(hint)
        if issubclass(origin, Mapping):
            return "a table" + (f" of {_plural(inner[1])}" if len(inner) == 2 and inner[1] is not Any else "")
        if issubclass(origin, collections.abc.Sequence):
            return "a list" + (f" of {_plural(inner[0])}" if inner and inner[0] is not Any else "")
    if hint is collections.abc.Callable or origin is collections.abc.Callable:
        return "a function (it cannot be set in a job file)"
    return f"a {getattr(hint, '__name__', str(hint))}"


def _plural(hint: Any) -> str:
    return {str: "strings", int: "integers", bool: "booleans", float: "numbers"}.get(hint, _describe(hint))


def _describe_value(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _parse_timezone(section: Section) -> tzinfo:
    name = section.str("timezone", "UTC")
    if not isinstance(name, str):
        return UTC
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        section.errors.add("timezone", f"unknown time zone '{name}' (use an IANA name such as Europe/Berlin)")
        return UTC


def _parse_schedule(section: Section, timezone: tzinfo) -> tuple[BaseTrigger | None, str]:
    has_cron, has_interval = section.has("cron"), section.has("interval")
    if has_cron == has_interval:
        section.errors.add("cron", "set exactly one of 'cron' or 'interval'")
        return None, ""
    try:
        if has_cron:
            spec = section.raw["cron"]
            if not isinstance(spec, str | dict):
                section.errors.add("cron", "must be a crontab string or a table of cron fields")
                return None, ""
            return cron_trigger(spec, timezone)
        every = section.raw["interval"]
        if not isinstance(every, str):
            section.errors.add("interval", "must be a duration such as '2s' or '1h'")
            return None, ""
        return interval_trigger(parse_duration(every), timezone)
    except (ValueError, TypeError) as exc:
        section.errors.add("cron" if has_cron else "interval", str(exc))
        return None, ""
