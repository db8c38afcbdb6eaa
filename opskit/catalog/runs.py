"""Run records: ``<target>/runs/<UTC time>-<verb>-<result>-<hex>.json``, one small object per run.

Every run of a verb the daemon can schedule leaves one, from the daemon and from the command
line alike, so ``opskit metrics --textfile`` in a CronJob counts runs it did not make
(``opskit_backup_runs_total``). Counting reads only the listing: the verb and result are in
the key, the JSON body (exit code, error, duration, job) is for people and later tools.

Records do not pile up forever: ``opskit prune`` folds the ones older than the policy's
``keep_runs`` into a *tally* (``runs/tally-<newest folded record>.json``: counts per verb
and result of every record folded so far) and then deletes them. The count is the newest
tally plus the records newer than the one it names, so it never goes down: a Prometheus
counter that fell when old records went would read as a reset, and ``increase()`` would
report every remaining failure again. The tally is written (create-if-absent) before any
record is deleted, so a prune killed halfway leaves a count that is still right; the
records it did not get to are ignored by the count and deleted by the next prune.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opskit.catalog.layout import format_time
from opskit.core.errors import StorageError
from opskit.storage.base import Storage, join_key

RUNS_DIR = "runs"
RUN_RESULTS = ("success", "failure", "aborted")
TALLY_PREFIX = "tally-"
_KEY_RE = re.compile(r"^\d{8}T\d{6}Z-(?P<verb>[a-z_-]+?)-(?P<result>success|failure|aborted)-[0-9a-f]{4}\.json$")


@dataclass(frozen=True)
class RunRecord:
    """One finished run of a verb on a target, as stored."""

    target: str
    verb: str
    result: str  # one of RUN_RESULTS
    started_at: datetime
    finished_at: datetime
    exit_code: int
    job: str | None = None
    error: str | None = None
    backup_id: str | None = None

    def key(self) -> str:
        """Return the record's object key (time first, so key order is time order)."""
        stamp = self.finished_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{stamp}-{self.verb}-{self.result}-{secrets.token_hex(2)}.json"
        return join_key(self.target, RUNS_DIR, name)

    def to_dict(self) -> dict[str, object]:
        """Return the stored JSON document."""
        return {
            "kind": "run",
            "target": self.target,
            "verb": self.verb,
            "result": self.result,
            "exit_code": self.exit_code,
            "job": self.job,
            "started_at": format_time(self.started_at),
            "finished_at": format_time(self.finished_at),
            "duration_seconds": round((self.finished_at - self.started_at).total_seconds(), 3),
            "error": self.error,
            "backup_id": self.backup_id,
        }


def write_run(storage: Storage, record: RunRecord) -> str:
    """Store ``record`` (create-if-absent, so two runs never overwrite each other) and return its key.

    Raises StorageError when the storage cannot take it.
    """
    key = record.key()
    storage.create(key, json.dumps(record.to_dict(), indent=2).encode("utf-8"))
    return key


@dataclass(frozen=True)
class RunTally:
    """The counts of every run record folded away so far, through the record named ``through``."""

    through: str = ""  # file name of the newest folded record; "" when nothing was folded yet
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # verb -> result -> number

    def key(self, target: str) -> str:
        """Return the tally's object key (named after the newest record it covers)."""
        return join_key(target, RUNS_DIR, TALLY_PREFIX + self.through)

    def to_dict(self) -> dict[str, object]:
        """Return the stored JSON document."""
        return {"kind": "run-tally", "through": self.through, "counts": self.counts}


@dataclass(frozen=True)
class _Listing:
    """What ``runs/`` holds: record file names (sorted, oldest first) and tally keys."""

    records: list[str]
    tallies: list[str]


def _list_runs(storage: Storage, target: str) -> _Listing:
    records: list[str] = []
    tallies: list[str] = []
    for info in storage.list(join_key(target, RUNS_DIR) + "/"):
        name = info.key.rsplit("/", 1)[-1]
        if name.startswith(TALLY_PREFIX):
            tallies.append(info.key)
        elif _KEY_RE.match(name):
            records.append(name)
    return _Listing(records=sorted(records), tallies=sorted(tallies))


def _newest_tally_key(tallies: list[str]) -> str | None:
    # A tally is named after the record it covers through; record names sort in time order.
    return max(tallies, key=lambda key: key.rsplit("/", 1)[-1], default=None)


def read_tally(storage: Storage, target: str, listing: _Listing | None = None) -> RunTally:
    """Return the newest tally of ``target`` (an empty one when there is none).

    Raises StorageError when the storage cannot be read, or when the tally is not valid JSON
    of the expected shape (a count that silently restarted would mislead the alerts).
    """
    listing = listing or _list_runs(storage, target)
    key = _newest_tally_key(listing.tallies)
    if key is None:
        return RunTally()
    with storage.reader(key) as stream:
        raw = stream.read()
    try:
        data = json.loads(raw)
        counts = {str(verb): {str(r): int(n) for r, n in by.items()} for verb, by in data["counts"].items()}
        return RunTally(through=str(data["through"]), counts=counts)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StorageError(f"run tally {key} is damaged ({exc})", hint="delete it; the run counts restart") from exc


def count_runs(storage: Storage, target: str, verb: str) -> Counter[str]:
    """Return {result: number of runs} of ``verb`` on ``target``: the tally plus the newer records.

    Raises StorageError when the storage cannot be listed or the tally read.
    """
    listing = _list_runs(storage, target)
    tally = read_tally(storage, target, listing)
    counts: Counter[str] = Counter(tally.counts.get(verb, {}))
    for name in listing.records:
        match = _KEY_RE.match(name)
        if match and match["verb"] == verb and name > tally.through:
            counts[match["result"]] += 1
    return counts


def _finished_at(name: str) -> datetime:
    return datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def fold_runs(
    storage: Storage,
    target: str,
    older_than: datetime,
    dry_run: bool = False,
    check: Callable[[], None] | None = None,
) -> list[str]:
    """Fold the run records of ``target`` finished before ``older_than`` into a new tally and delete them.

    Returns the keys of the records folded (with ``dry_run``: that would be). ``check`` runs
    before anything is deleted (the prune's lock check). Tallies older than the new one are
    deleted after it is stored. Raises StorageError.
    """
    listing = _list_runs(storage, target)
    tally = read_tally(storage, target, listing)
    # Records at or before the tally were counted already (a prune killed after writing it).
    already = [name for name in listing.records if name <= tally.through]
    fresh = [name for name in listing.records if name > tally.through and _finished_at(name) < older_than]
    folded = [join_key(target, RUNS_DIR, name) for name in already + fresh]
    if dry_run or not folded:
        return folded
    if check is not None:
        check()
    newest = tally
    if fresh:
        counts = {verb: dict(by) for verb, by in tally.counts.items()}
        for name in fresh:
            match = _KEY_RE.match(name)
            assert match is not None  # _list_runs kept only matching names
            by_result = counts.setdefault(match["verb"], {})
            by_result[match["result"]] = by_result.get(match["result"], 0) + 1
        newest = RunTally(through=fresh[-1], counts=counts)
        storage.create(newest.key(target), json.dumps(newest.to_dict(), indent=2).encode("utf-8"))
    for key in folded:
        storage.delete(key)
    for key in listing.tallies:
        if key != newest.key(target):
            storage.delete(key)
    return folded
