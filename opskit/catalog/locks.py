"""Repository locks: one small object per running holder, so runs on one repository coordinate.

The protocol follows restic's repository locks (``internal/restic/lock.go``), with the lock
kept in the storage itself, so it works when the database is down and across hosts (two
daemons, a CronJob and a person at a terminal)::

    <target>/locks/<lock id>.json     {"operation": "prune", "exclusive": true, "host": ..., "pid": ...,
                                        "created": ..., "refreshed": ..., "backup_id": ...}

- **Shared** for backup, copy, pin/unpin, verify records and drills: any number run together.
  **Exclusive** for prune and its sweep: nothing else runs beside it.
- **Acquiring** writes the own lock first (create-if-absent), then lists every lock of the
  target, then decides; on a conflict it removes its own lock and raises ``LockHeld`` (exit 7)
  naming the holder. Two runs that start at the same moment both see each other and both
  back off, so two conflicting runs never both proceed.
- **Refreshing**: a holder rewrites its lock's ``refreshed`` time every :data:`REFRESH_EVERY`
  from a thread; :meth:`RepositoryLock.check` says whether the lock is still there (an
  ``opskit unlock --all`` may have removed it).
- **Stale**: a lock not refreshed for :data:`STALE_AFTER` (by its own time and by the storage's
  modification time, both aged by the storage's clock: the time of this run's own lock, just
  written, or of a probe object (:func:`read_storage_time`) for ``unlock`` and a dry run, so a
  judge whose clock is slow or fast does not see a live lock as dead or a dead one as live; a
  ``refreshed`` time in the future, a writer's fast clock, counts for nothing), or one
  written on this host by a process that no longer exists. Stale locks never block anyone;
  the next run on the same host removes those of its dead processes, ``opskit unlock`` the rest.
- **Releasing** deletes the lock at the end of the run, also on an error and on SIGTERM (the
  CLI turns SIGTERM into an unwinding exception; the daemon sets the cancel event); where the
  bucket's default retention refuses the delete, the lock is hidden behind a delete marker
  (:func:`remove_lock_object`).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from opskit.catalog.layout import format_time, parse_time
from opskit.core.clock import Clock
from opskit.core.errors import LockHeld, ObjectNotFound, OpskitError, StorageError
from opskit.core.log import get_logger
from opskit.storage.base import Storage, delete_or_hide, join_key, storage_time

log = get_logger(__name__)

LOCKS_DIR = "locks"
STALE_AFTER = timedelta(minutes=10)
# How far a writer's clock may run ahead of ours (or the storage's) before its times are not trusted.
CLOCK_TOLERANCE = timedelta(minutes=1)
REFRESH_EVERY = timedelta(seconds=60)
EXCLUSIVE_OPERATIONS = frozenset({"prune"})


def locks_prefix(target: str) -> str:
    """Return the prefix the locks of ``target`` are stored under (``<target>/locks``)."""
    return join_key(target, LOCKS_DIR)


def lock_key(target: str, lock_id: str) -> str:
    """Return the key of one lock object."""
    return join_key(locks_prefix(target), f"{lock_id}.json")


@dataclass(frozen=True)
class LockRecord:
    """One holder's lock as stored: who holds it, for what, and since when.

    ``modified`` is the storage's own time of the last write (None before it is read back);
    ``backup_id`` names the backup a backup or copy run is writing, which the sweep leaves alone.
    """

    id: str
    target: str
    operation: str
    exclusive: bool
    host: str
    pid: int
    created: datetime
    refreshed: datetime
    backup_id: str | None = None
    modified: datetime | None = None
    # The writer's pid namespace (``pid:[4026531836]``): a container sharing the host's name
    # (``--network host``) has pids of its own, which this host's process table cannot judge.
    pid_namespace: str | None = None

    @property
    def key(self) -> str:
        """Return the key this lock is stored under."""
        return lock_key(self.target, self.id)

    def to_json(self) -> bytes:
        """Return the stored form (UTF-8 JSON)."""
        data = {
            "id": self.id,
            "target": self.target,
            "operation": self.operation,
            "exclusive": self.exclusive,
            "host": self.host,
            "pid": self.pid,
            "created": format_time(self.created),
            "refreshed": format_time(self.refreshed),
            "backup_id": self.backup_id,
            "pid_namespace": self.pid_namespace,
        }
        return json.dumps(data, indent=2).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, payload: bytes, modified: datetime | None = None) -> LockRecord:
        """Parse a stored lock. Raises ValueError when it is not a lock record."""
        data: Any = json.loads(payload.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            return cls(
                id=str(data["id"]),
                target=str(data["target"]),
                operation=str(data["operation"]),
                exclusive=bool(data["exclusive"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                created=parse_time(str(data["created"])),
                refreshed=parse_time(str(data["refreshed"])),
                backup_id=str(data["backup_id"]) if data.get("backup_id") else None,
                modified=modified,
                pid_namespace=str(data["pid_namespace"]) if data.get("pid_namespace") else None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or malformed field: {exc}") from exc

    def is_stale(
        self, now: datetime, stale_after: timedelta = STALE_AFTER, storage_now: datetime | None = None
    ) -> bool:
        """Return True when this lock no longer protects anything.

        Stale means: not refreshed for ``stale_after`` by both its own clock and the storage's
        (the newer of the two counts), or written on this host by a pid that is gone. A
        ``refreshed`` time ahead of the judge's time by more than :data:`CLOCK_TOLERANCE` comes
        from a writer whose clock runs fast: only the storage's time counts then, or such a lock
        would block everyone until its future time plus ``stale_after``.

        ``storage_now`` is the storage's own current time (the modification time of a lock this
        run has just written, or of a probe: :func:`read_storage_time`). When given, it is the
        judge's time and ``now`` is not used: this host's clock running fast must not make a
        live lock look stale, nor one running slow keep a dead lock. ``now`` judges only where
        the storage's time is unknown.
        """
        if self.writer_gone():
            return True
        judge = storage_now or now
        if self.modified is None:
            return judge - self.refreshed > stale_after
        stored_age = judge - self.modified
        if self.clock_ahead(judge) is not None:
            return stored_age > stale_after
        return judge - self.refreshed > stale_after and stored_age > stale_after

    def writer_gone(self) -> bool:
        """Return True when this lock's writer ran here (same host, same pid namespace) and its pid is gone.

        A lock without a namespace (an older writer) is judged by host name alone, as before.
        """
        if self.host != socket.gethostname():
            return False
        here = pid_namespace()
        if self.pid_namespace is not None and here is not None and self.pid_namespace != here:
            return False  # another container on this host: its pids are not ours to look up
        return not _pid_alive(self.pid)

    def clock_ahead(self, now: datetime) -> timedelta | None:
        """Return how far ``refreshed`` is ahead of ``now`` when by more than :data:`CLOCK_TOLERANCE`, else None."""
        ahead = self.refreshed - now
        return ahead if ahead > CLOCK_TOLERANCE else None

    def describe(self, now: datetime | None = None, storage_now: datetime | None = None) -> str:
        """Return the holder in words: ``prune (exclusive) by pid 12 on host 'db1' since <time>``.

        With ``now`` (this host's time) a clock that is off is named, judged by ``storage_now``
        (the storage's time, see :meth:`is_stale`) when given: a ``refreshed`` time in the
        future of the storage's says the writer's clock is ahead; this host's clock running
        behind or ahead of the storage's says so instead (its times would mislead the reader).
        """
        kind = "exclusive" if self.exclusive else "shared"
        judge = storage_now or now
        ahead = self.clock_ahead(judge) if judge is not None else None
        # Which time the staleness is judged by, for a reader who sees times that do not add up.
        judged = (
            f"the storage's time, {format_time(self.modified.replace(microsecond=0))}"
            if self.modified
            else "its own time"
        )
        ours = storage_now - now if storage_now is not None and now is not None else timedelta(0)
        skew = ""
        if ahead is not None:
            skew = f" ({_rounded(ahead)} in the future: the writer's clock is ahead; judged by {judged})"
        elif ours > CLOCK_TOLERANCE:
            skew = f" (this host's clock runs {_rounded(ours)} behind the storage's; judged by {judged})"
        elif -ours > CLOCK_TOLERANCE:
            skew = f" (this host's clock runs {_rounded(-ours)} ahead of the storage's; judged by {judged})"
        return (
            f"{self.operation} ({kind}) by pid {self.pid} on host '{self.host}' since {format_time(self.created)}"
            f", refreshed {format_time(self.refreshed)}{skew}"
        )


def _rounded(delta: timedelta) -> str:
    """Return ``delta`` in words to the nearest minute: ``3h 0min``, ``12 min``."""
    # To the nearest: the storage's time is a request later than this host's (or, at whole
    # seconds, a moment earlier), and 2h 59min 59s reads as "3h 0min".
    minutes = int((delta.total_seconds() + 30) // 60)
    return f"{minutes // 60}h {minutes % 60}min" if minutes >= 60 else f"{minutes} min"


def pid_namespace() -> str | None:
    """Return this process's pid namespace (``pid:[4026531836]``), or None where /proc does not say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except OSError:
        return False
    return True


def remove_lock_object(storage: Storage, key: str) -> None:
    """Delete a lock object, or hide it where the store's retention refuses the delete.

    A bucket with S3 Object Lock *default* retention locks every new object, lock objects
    included: a plain delete is refused (ObjectLocked), and a lock that stays listed would block
    every conflicting run until it went stale, 10 min after each run. A delete marker hides it
    (:func:`opskit.storage.base.delete_or_hide`). Raises StorageError, and ObjectLocked on a
    store that cannot hide objects (GCS, Azure retention policies).
    """
    delete_or_hide(storage, key)


def read_storage_time(storage: Storage, target: str, *, required: bool = True) -> datetime | None:
    """Return the storage's current time, from a probe object written and removed under the target's locks.

    For judging locks where this run has written no lock of its own (``opskit unlock``, a dry
    run's sweep). The probe is not a ``.json`` object, so :func:`list_locks` never reads it.
    With ``required=False`` a storage that refuses the probe (a read-only credential, in a run
    that writes nothing else) gives None and a warning: the caller judges by its own clock, as
    before. Raises StorageError when ``required``.
    """
    try:
        return storage_time(storage, locks_prefix(target))
    except StorageError as exc:
        if required:
            raise
        log.warning(
            "the storage's time could not be read; locks are judged by this host's clock",
            storage=storage.name,
            error=exc.one_line(),
        )
        return None


@dataclass(frozen=True)
class UnreadableLock:
    """An object under ``locks/`` that is not a lock record: it blocks nobody; ``unlock`` removes it."""

    key: str
    error: str


def list_locks(storage: Storage, target: str, unreadable: list[UnreadableLock] | None = None) -> list[LockRecord]:
    """Return every lock of ``target`` in ``storage``, oldest first.

    A lock deleted between the listing and the read is skipped; an object that does not parse
    is skipped too (a lock is written whole, so it cannot be a live holder's) and collected in
    ``unreadable`` when given. Raises StorageError.
    """
    found: list[LockRecord] = []
    for info in storage.list(locks_prefix(target) + "/"):
        if not info.key.endswith(".json"):
            continue
        try:
            with storage.reader(info.key) as inp:
                payload = inp.read()
        except ObjectNotFound:
            continue  # released while we listed
        try:
            found.append(LockRecord.from_json(payload, modified=info.modified))
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("unreadable lock object ignored", key=info.key, error=str(exc))
            if unreadable is not None:
                unreadable.append(UnreadableLock(info.key, str(exc)))
    found.sort(key=lambda lock: (lock.created, lock.id))
    return found


def live_backup_ids(
    storage: Storage, target: str, now: datetime, *, held: RepositoryLock | None = None
) -> frozenset[str]:
    """Return the backup ids named by live (not stale) locks: runs still writing them.

    Judged by the storage's time: that of ``held`` (this run's lock, as prune's sweep holds),
    else a probe's (:func:`read_storage_time`; a dry run that may not write judges by ``now``).
    Raises StorageError.
    """
    locks = [lock for lock in list_locks(storage, target) if lock.backup_id]
    if not locks:
        return frozenset()
    storage_now = held.storage_now() if held is not None else None
    if storage_now is None:
        storage_now = read_storage_time(storage, target, required=held is not None)
    return frozenset(
        lock.backup_id for lock in locks if lock.backup_id and not lock.is_stale(now, storage_now=storage_now)
    )


class RepositoryLock:
    """A lock this process holds: refreshed by a thread until :meth:`release`."""

    def __init__(
        self,
        storage: Storage,
        record: LockRecord,
        clock: Clock,
        refresh_every: timedelta = REFRESH_EVERY,
        storage_now: datetime | None = None,
    ) -> None:
        self.storage = storage
        self.record = record
        self.clock = clock
        self.refresh_every = refresh_every
        # The storage's time when the lock was taken (its own modification time), and when that
        # was by the monotonic clock: storage_now() projects it without another request.
        self._storage_taken = storage_now
        self._monotonic_taken = time.monotonic()
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="opskit-lock-refresh", daemon=True)

    def start(self) -> None:
        """Start the refresh thread."""
        self._thread.start()

    def storage_now(self) -> datetime | None:
        """Return the storage's current time: its time when this lock was written plus the time since.

        The elapsed time is this host's monotonic clock's, which a wrong wall clock does not
        affect. Returns None when the lock's own modification time was not read back.
        """
        if self._storage_taken is None:
            return None
        return self._storage_taken + timedelta(seconds=time.monotonic() - self._monotonic_taken)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_every.total_seconds()):
            try:
                self.refresh()
            except OpskitError as exc:
                # A refresh that fails once is not fatal: the lock stays live for STALE_AFTER.
                log.warning("could not refresh the repository lock", key=self.record.key, error=exc.one_line())

    def refresh(self) -> None:
        """Rewrite the lock with a new ``refreshed`` time; mark it lost if someone removed it.

        Raises StorageError.
        """
        if not self.storage.exists(self.record.key):
            self.lost = True
            log.warning("the repository lock was removed by someone else", key=self.record.key)
            return
        self.record = replace(self.record, refreshed=self.clock())
        with self.storage.writer(self.record.key) as out:
            out.write(self.record.to_json())
        if self._stop.is_set():
            # release() ran while this rewrite was under way (a slow store outlasts its 5 s wait)
            # and may have deleted the lock before the rewrite landed: remove it again, or a
            # long-lived process (the daemon, whose pid stays alive) would leave a live-looking
            # lock blocking every conflicting run for STALE_AFTER.
            with suppress(OpskitError):
                remove_lock_object(self.storage, self.record.key)

    def check(self) -> None:
        """Raise LockHeld (exit 7) when this run's lock is no longer in the storage.

        Called before a destructive step: a run whose lock was removed (``opskit unlock --all``)
        no longer knows that it is alone.
        """
        if self.lost or not self.storage.exists(self.record.key):
            self.lost = True
            raise LockHeld(
                f"this run's lock on target '{self.record.target}' in storage '{self.storage.name}' was removed "
                "while it ran (opskit unlock --all?)",
                hint="nothing more was deleted; run it again",
            )

    def release(self) -> None:
        """Stop refreshing and delete the lock (best effort: a lock left behind goes stale)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            remove_lock_object(self.storage, self.record.key)
        except OpskitError as exc:
            log.warning("could not remove the repository lock; it goes stale", key=self.record.key, error=str(exc))


def acquire_lock(
    storage: Storage,
    target: str,
    operation: str,
    *,
    clock: Clock,
    exclusive: bool | None = None,
    backup_id: str | None = None,
    refresh_every: timedelta = REFRESH_EVERY,
) -> RepositoryLock:
    """Take a lock on ``target`` in ``storage`` for ``operation`` and start refreshing it.

    ``exclusive`` defaults to True for prune and False for everything else. Returns the held
    lock; call :meth:`RepositoryLock.release` (or use :func:`locked`). Raises LockHeld (exit 7)
    naming the holder when a live lock conflicts (this run's own lock is removed first), and
    StorageError when the storage fails.
    """
    exclusive = operation in EXCLUSIVE_OPERATIONS if exclusive is None else exclusive
    now = clock()
    while True:
        record = LockRecord(
            id=now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(6),
            target=target,
            operation=operation,
            exclusive=exclusive,
            host=socket.gethostname(),
            pid=os.getpid(),
            created=now,
            refreshed=now,
            backup_id=backup_id,
            pid_namespace=pid_namespace(),
        )
        if storage.create(record.key, record.to_json()):
            break  # a random id taken already is astronomically rare; draw again if so
    try:
        listed = list_locks(storage, target)
        # Our own lock, just written, carries the storage's time: staleness is judged by it.
        storage_now = next((lock.modified for lock in listed if lock.id == record.id), None)
        others = [other for other in listed if other.id != record.id]
        # A lock of a process gone from this host is certainly dead (restic removes these too):
        # remove it now, so a killed run leaves nothing behind once the next run starts.
        for other in others:
            if other.writer_gone():
                try:
                    remove_lock_object(storage, other.key)
                except OpskitError as exc:
                    log.info("could not remove the lock of a run that is gone", key=other.key, error=exc.one_line())
                else:
                    log.info("removed the lock of a run that is gone", key=other.key, operation=other.operation)
        conflicts = [
            other
            for other in others
            if (exclusive or other.exclusive) and not other.is_stale(now, storage_now=storage_now)
        ]
    except BaseException:
        with suppress(OpskitError):
            remove_lock_object(storage, record.key)
        raise
    if conflicts:
        with suppress(OpskitError):
            remove_lock_object(storage, record.key)
        first = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise LockHeld(
            f"target '{target}' in storage '{storage.name}' is locked by {first.describe(now, storage_now)}{more}",
            hint=f"this {operation} changed nothing; run it again once that run ends. If that run is gone, "
            f"its lock goes stale after {int(STALE_AFTER.total_seconds() // 60)} min without a refresh and "
            f"'opskit unlock --target {target}' removes it",
        )
    held = RepositoryLock(storage, record, clock, refresh_every, storage_now)
    held.start()
    log.debug("repository lock taken", key=record.key, operation=operation, exclusive=exclusive)
    return held


@contextmanager
def locked(
    storage: Storage,
    target: str,
    operation: str,
    *,
    clock: Clock,
    exclusive: bool | None = None,
    backup_id: str | None = None,
) -> Iterator[RepositoryLock]:
    """Hold a lock (see :func:`acquire_lock`) for the ``with`` block; release it however the block ends.

    Raises LockHeld (exit 7) on a conflict, StorageError when the storage fails.
    """
    held = acquire_lock(storage, target, operation, clock=clock, exclusive=exclusive, backup_id=backup_id)
    try:
        yield held
    finally:
        held.release()


def remove_locks(
    storage: Storage,
    target: str,
    *,
    now: datetime,
    storage_now: datetime | None = None,
    stale_only: bool = True,
    dry_run: bool = False,
) -> list[str]:
    """Remove the stale locks of ``target`` (every lock with ``stale_only=False``) and unreadable lock objects.

    Staleness is judged by ``storage_now``, the storage's time (:func:`read_storage_time`),
    when given, else by ``now`` (see :meth:`LockRecord.is_stale`). Returns the keys removed (or
    that would be, with ``dry_run``). Raises StorageError.
    """
    unreadable: list[UnreadableLock] = []
    doomed = [
        lock.key
        for lock in list_locks(storage, target, unreadable)
        if not stale_only or lock.is_stale(now, storage_now=storage_now)
    ]
    doomed += [item.key for item in unreadable]
    if not dry_run:
        for key in doomed:
            remove_lock_object(storage, key)
    return doomed
