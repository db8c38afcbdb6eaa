"""Retention: which backups a policy keeps, and why. Pure: no I/O, no clock.

``plan(backups, policy, now)`` returns a decision (keep or delete) for every backup with
every reason, following restic's ``forget`` (``internal/restic/snapshot_policy.go``):

- Backups are sorted newest first by snapshot time (ties by id).
- ``keep_last n`` keeps the n newest.
- ``keep_hourly/daily/weekly/monthly/yearly n`` walk newest to oldest; a backup's bucket is
  the hour / date / ISO year-week / year-month / year of its snapshot time in the policy's
  time zone; the newest backup of each bucket is kept until n buckets have been kept. As
  in restic, when a rule still has count left after the walk, the oldest backup is kept
  too (reason ``"... (oldest)"``): that keeps the longest history the counts allow.
- ``keep_within d`` keeps every backup whose snapshot time is within d of ``now``. Restic
  measures from the newest snapshot instead; docs/operations.md §1 says ``now``, and the
  ``min_keep`` and "newest verified" guarantees cover the case restic's choice protects
  (backups that stopped arriving).
- Always kept: the ``min_keep`` newest backups, every pinned backup, and the newest backup
  that passed a verification or a drill.

Every rule applies to each backup kind (``logical`` dumps, ``base`` backups) on its own, as
pgBackRest keeps its full and differential backups under their own counts: ``keep_last 2``
keeps the 2 newest dumps and the 2 newest base backups, ``min_keep`` and "newest verified"
hold per kind. Counted together, a run of dumps would push every base backup out and lose
point-in-time recovery without a word (:attr:`Plan.emptied_kinds` is the floor that catches
a policy that would still do it). A backup without a ``kind`` attribute is ``logical``.

Future-dated backups (snapshot time more than ``timeline.CLOCK_SKEW`` after ``now``, i.e.
taken by a host whose clock was ahead) are always kept, reason ``"future-dated"``, and take
no part in the rules: their age is unknown, so deleting them could lose the newest data,
and counting them would let one bad clock push real backups out of ``keep_last``/``min_keep``.
Nor do they count for "never delete everything": :attr:`Plan.deletes_every_present_backup`
ignores them. An operator removes them by hand once the clock is fixed.

Immutable backups (S3 Object Lock): ``locked`` maps a backup id to the latest retain-until
date of its objects. A backup locked past ``now`` is kept with the reason ``"immutable until
<date>"``, whatever the rules say: the storage would refuse to delete it anyway, and a plan
that said "delete" would be a lie ``--dry-run`` shows. It counts as kept for every floor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from opskit.config.retention import COUNT_RULES, RetentionPolicy
from opskit.core.units import format_span
from opskit.plan import timeline

FUTURE = "future-dated"
MIN_KEEP = "min_keep"
PINNED = "pinned"
NEWEST_VERIFIED = "newest verified"
IMMUTABLE = "immutable until"


LOGICAL = "logical"


class Backup(Protocol):
    """What the planner needs of a backup: an id and an aware snapshot time (a Manifest fits; its ``kind`` is read too)."""

    @property
    def id(self) -> str: ...

    @property
    def snapshot_time(self) -> datetime: ...


@dataclass(frozen=True)
class Decision:
    """Keep or delete one backup, with every reason it is kept (empty when deleted)."""

    id: str
    snapshot_time: datetime
    keep: bool
    reasons: tuple[str, ...]
    kind: str = LOGICAL

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form: id, kind, snapshot_time (ISO, UTC), action, reasons."""
        return {
            "id": self.id,
            "kind": self.kind,
            "snapshot_time": _iso_utc(self.snapshot_time),
            "action": "keep" if self.keep else "delete",
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Plan:
    """The decisions for every backup, newest first, and what they were computed from."""

    policy: RetentionPolicy
    now: datetime
    decisions: tuple[Decision, ...]

    @property
    def kept(self) -> tuple[Decision, ...]:
        """Return the decisions that keep a backup, newest first."""
        return tuple(d for d in self.decisions if d.keep)

    @property
    def deleted(self) -> tuple[Decision, ...]:
        """Return the decisions that delete a backup, newest first."""
        return tuple(d for d in self.decisions if not d.keep)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Return the backup kinds the plan decides on, sorted."""
        return tuple(sorted({d.kind for d in self.decisions}))

    @property
    def emptied_kinds(self) -> tuple[str, ...]:
        """Return the kinds of which the plan deletes every backup that is not future-dated (sorted).

        The "never delete everything" floor, per kind: the last base backup is what PITR
        replays the archived WAL onto, the last dump what a logical restore needs; one kind
        cannot stand in for the other. A future-dated backup is kept but cannot stand in for
        the last real one either, since its age (and so whether it is usable) is unknown.
        """
        emptied = []
        for kind in self.kinds:
            present = [d for d in self.decisions if d.kind == kind and FUTURE not in d.reasons]
            if present and not any(d.keep for d in present):
                emptied.append(kind)
        return tuple(emptied)

    @property
    def deletes_every_present_backup(self) -> bool:
        """Return True when the plan deletes every present backup of some kind (see :attr:`emptied_kinds`)."""
        return bool(self.emptied_kinds)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready plan: now, policy, decisions (each with its kind), counts in all and per kind."""
        return {
            "now": _iso_utc(self.now),
            "policy": self.policy.to_dict(),
            "keep": len(self.kept),
            "delete": len(self.deleted),
            "by_kind": {
                kind: {
                    "keep": sum(1 for d in self.kept if d.kind == kind),
                    "delete": sum(1 for d in self.deleted if d.kind == kind),
                }
                for kind in self.kinds
            },
            "decisions": [d.to_dict() for d in self.decisions],
        }


# --------------------------------------------------------------------------- planning


def plan(
    backups: Iterable[Backup],
    policy: RetentionPolicy,
    now: datetime,
    pinned: frozenset[str] = frozenset(),
    verified: frozenset[str] = frozenset(),
    locked: Mapping[str, datetime] | None = None,
) -> Plan:
    """Return the plan for ``backups`` under ``policy`` at ``now``: keep or delete each, with reasons.

    The rules apply to each kind of backup apart (module docstring). ``pinned`` holds the
    ids of pinned backups, ``verified`` the ids that passed a verification or a drill (only
    the newest of each kind is protected), ``locked`` the retain-until date of immutable
    backups. Decisions are newest first across kinds. Raises ValueError when ``now`` or a
    snapshot time is naive (no time zone).
    """
    if now.tzinfo is None:
        raise ValueError("plan() needs an aware 'now'")
    ordered = sorted(backups, key=lambda b: (_aware(b).snapshot_time, b.id), reverse=True)
    reasons: dict[str, list[str]] = {b.id: [] for b in ordered}
    for kind in sorted({kind_of(b) for b in ordered}):
        same_kind = [b for b in ordered if kind_of(b) == kind]
        _plan_kind(same_kind, policy, now, pinned, verified, locked or {}, reasons)
    decisions = tuple(
        Decision(b.id, b.snapshot_time, keep=bool(reasons[b.id]), reasons=tuple(reasons[b.id]), kind=kind_of(b))
        for b in ordered
    )
    return Plan(policy=policy, now=now, decisions=decisions)


def kind_of(backup: Backup) -> str:
    """Return the kind of ``backup`` (``logical`` or ``base``); ``logical`` when it has none."""
    return str(getattr(backup, "kind", LOGICAL) or LOGICAL)


def _plan_kind(
    ordered: list[Backup],
    policy: RetentionPolicy,
    now: datetime,
    pinned: frozenset[str],
    verified: frozenset[str],
    locked: Mapping[str, datetime],
    reasons: dict[str, list[str]],
) -> None:
    """Add the reasons every rule keeps each of ``ordered`` (one kind, newest first) to ``reasons``."""
    zone = ZoneInfo(policy.timezone)
    future = timeline.future(ordered, now)
    past = timeline.present(ordered, now)
    for backup in future:
        reasons[backup.id].append(FUTURE)

    local_times = [b.snapshot_time.astimezone(zone) for b in past]
    _apply_count_rules(past, local_times, policy, reasons)
    if policy.keep_within:
        horizon = now - policy.keep_within
        label = f"within {format_span(policy.keep_within)}"
        for backup in past:
            if backup.snapshot_time > horizon:
                reasons[backup.id].append(label)
    for backup in past[: policy.min_keep]:
        reasons[backup.id].append(MIN_KEEP)
    for backup in ordered:
        if backup.id in pinned:
            reasons[backup.id].append(PINNED)
    newest_verified = next((b for b in past if b.id in verified), None)
    if newest_verified is not None:
        reasons[newest_verified.id].append(NEWEST_VERIFIED)
    for backup in ordered:
        until = locked.get(backup.id)
        if until is not None and until > now:
            reasons[backup.id].append(immutable_reason(until))


def immutable_reason(until: datetime) -> str:
    """Return the reason a backup locked until ``until`` is kept: ``immutable until 2026-12-31T10:00:00Z``."""
    return f"{IMMUTABLE} {_iso_utc(until.replace(microsecond=0))}"


def _apply_count_rules(
    past: list[Backup], local_times: list[datetime], policy: RetentionPolicy, reasons: dict[str, list[str]]
) -> None:
    """Walk newest to oldest once per count rule, as restic's ApplyPolicy does."""
    for backup in past[: policy.keep_last]:
        reasons[backup.id].append("last")  # every backup is its own bucket for keep_last
    last_index = len(past) - 1
    for rule in COUNT_RULES[1:]:
        left = policy.count(rule)
        previous: str | None = None
        for index, (backup, local) in enumerate(zip(past, local_times, strict=True)):
            if left <= 0:
                break
            bucket = _bucket(rule, local)
            if bucket != previous:
                reasons[backup.id].append(bucket)
            elif index == last_index:
                # restic keeps the oldest backup while a rule has count left: the longest history.
                reasons[backup.id].append(f"{bucket} (oldest)")
            else:
                continue
            previous = bucket
            left -= 1


def _bucket(rule: str, local: datetime) -> str:
    """Return the bucket label of a local time for ``rule``; equal labels mean the same bucket."""
    if rule == "hourly":
        return f"hourly {local:%Y-%m-%dT%H}"
    if rule == "daily":
        return f"daily {local:%Y-%m-%d}"
    if rule == "weekly":
        year, week, _ = local.isocalendar()
        return f"weekly {year}-W{week:02d}"
    if rule == "monthly":
        return f"monthly {local:%Y-%m}"
    return f"yearly {local.year}"


def _aware(backup: Backup) -> Backup:
    if backup.snapshot_time.tzinfo is None:
        raise ValueError(f"backup {backup.id} has a naive snapshot time")
    return backup


def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
