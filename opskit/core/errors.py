"""The opskit exception tree: every error opskit raises on purpose, grouped by meaning.

The CLI maps an :class:`OpskitError` to its class's ``exit_code`` and prints one line: what
failed, why, and (``hint``) what to do. Library errors (boto3, psycopg, google-cloud, azure)
are translated into these classes in the module that calls the library, with
``raise ... from exc``, never further up. No opskit module defines another subclass: the tree
is closed, so every class and the context it carries is listed here. Extra context is a
keyword-only constructor argument and a typed attribute of the same name.

**The exit-code rule**, the one place it is written (:data:`EXIT_CODES` holds the codes, the
README's table is checked against it by ``tests/core/test_exit_codes.py``): the code says what
the operator must do next, whatever the verb.

- 3, *unreachable*: opskit could not reach or was refused by a server or a store (no
  connection, no such bucket, bad credentials, access denied), at any point of any verb:
  fix the network, the credentials or the URL. A storage error carries ``unreachable=True``
  for these causes and exits 3 like :class:`UnreachableError`.
- 4, *the run failed*: the store and the server answered, and the work itself broke (a
  stream cut mid-object, a full disk, a failed pg_restore); nothing half-written stays visible.
- 5, *the data is wrong*: a checksum, a manifest, a verification or a drill check says the
  backup cannot be trusted, including a restore stopped by a corrupt object.
- A verb that works through several (target, storage) pairs and carries on past a failing one
  (``prune``, ``copy``) exits with the code its failures share: 3 when every failed pair was
  unreachable, 7 when every one was a lock conflict, 5 when every one was a corrupt source
  (``copy``), 4 for any other failure or a mix.
  ``status`` exits 3 when a storage it had to read was unreachable (its objectives cannot be
  judged without it), before 6 for a breach; the full report is printed either way.
- 2 the input is wrong, 6 an objective is breached, 7 another run holds the lock, 130 the run
  was interrupted (SIGINT or SIGTERM), 1 anything else (a bug).

The tree, with exit codes::

    OpskitError                 1  base; an unexpected error is a bug (report it with --debug output)
    ├── ConfigError             2  the command line or the configuration is wrong    .problems
    │   ├── MissingExtraError   2  an optional SDK is not installed ("install opskit[s3]")
    │   └── PlaceholderError    2  a migration script uses a placeholder with no value
    ├── UnreachableError        3  a target or storage cannot be reached or refuses us (any verb)
    ├── Cancelled               4  the run was asked to stop (daemon shutdown); nothing was committed
    ├── BackupFailed            4  a backup failed while running
    │   ├── RestoreFailed       4  a restore failed
    │   ├── CopyFailed          4  copying a backup to a secondary storage failed
    │   ├── PruneFailed         4  pruning failed for a (target, storage)                 .report
    │   │                       3  ... when every failed pair was unreachable             .unreachable
    │   └── MigrationFailed     4  a schema migration failed      .migration .database_error
    │                                                             .restore_command .restored
    ├── StorageError            4  a storage request failed mid-run, after retries        .bucket_missing
    │                           3  ... when the store could not be reached or refused us  .unreachable
    │   ├── ObjectNotFound      4  the object asked for does not exist
    │   └── ObjectLocked        4  the object is immutable (S3 Object Lock) and cannot be deleted yet .until
    ├── VerificationFailed      5  a checksum, manifest or drill check failed
    │   ├── ManifestError       5  a manifest is missing fields, malformed or of an unknown format
    │   ├── VerifyFailed        5  at least one backup failed verification                .report
    │   └── MigrationValidationFailed  5  scripts disagree with the schema history        .errors
    ├── ObjectiveBreached       6  the RPO or RTO objective is breached
    ├── LockHeld                7  another run holds the lock for the same target
    └── RunbookFailed         any  a runbook step failed; the exit code is that step's

``Cancelled`` is deliberately not a ``BackupFailed``: a handler for a failed backup must not
treat a shutdown as one. Internal signals that never leave their module's caller
(``pg.toc.NeedMoreBytes``, ``pg.toc.UnsupportedArchive``, ``pg.copy_loader.ScriptError``,
``pg.copy_loader.LoadFailed``, ``ops.notify._SendFailed``) are plain exceptions that the
calling feature maps into this tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol


class FeatureReport(Protocol):
    """A feature's report carried by an error (prune's, verify's), seen from core.

    Core cannot import the features, so it names only what every report offers; the feature's
    own code narrows ``exc.report`` to its class (``isinstance``) to read the rest.
    """

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready report."""
        ...


class OpskitError(Exception):
    """Base of every error opskit raises on purpose (exit 1 unless a subclass says otherwise).

    ``message`` says what failed and why; ``hint`` says what to do about it.
    """

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """Return the single line the CLI prints for this error."""
        text = self.message.rstrip(".")
        if self.hint:
            text = f"{text}; {self.hint}"
        return text.replace("\n", " ")


# --------------------------------------------------------------------------- exit 2: usage and configuration


class ConfigError(OpskitError):
    """The command line or the configuration is wrong (exit 2).

    ``problems`` lists every ``At 'path': message`` found when the configuration was checked
    as a whole; it is empty for an error about one thing (the message says it).
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message, hint=hint)
        self.problems: list[str] = list(problems)


class MissingExtraError(ConfigError):
    """An optional SDK is needed but not installed (exit 2)."""


class PlaceholderError(ConfigError):
    """A migration script uses a placeholder that has no value (exit 2)."""


# --------------------------------------------------------------------------- exit 3: unreachable


class UnreachableError(OpskitError):
    """A target or a storage cannot be reached or refuses us: connection, credentials, permissions (exit 3)."""

    exit_code = 3


# --------------------------------------------------------------------------- exit 4: a run failed or stopped


class Cancelled(OpskitError):
    """The run was asked to stop (daemon shutdown); nothing was committed (exit 4)."""

    exit_code = 4


class BackupFailed(OpskitError):
    """A backup failed while running (exit 4)."""

    exit_code = 4


class RestoreFailed(BackupFailed):
    """A restore failed (exit 4)."""


class CopyFailed(BackupFailed):
    """Copying a backup to a secondary storage failed (exit 4)."""


class PruneFailed(BackupFailed):
    """Pruning failed for at least one (target, storage); ``report`` holds everything done (exit 4).

    ``report`` is the prune feature's ``PruneReport``. ``unreachable`` says every failed pair
    was a storage that could not be reached: the exit code is then 3, as the module's rule says.
    """

    def __init__(
        self, message: str, hint: str | None = None, *, report: FeatureReport, unreachable: bool = False
    ) -> None:
        super().__init__(message, hint=hint)
        self.report = report
        self.unreachable = unreachable
        if unreachable:
            self.exit_code = UnreachableError.exit_code


class MigrationFailed(BackupFailed):
    """A schema migration failed while running; its changes were rolled back where possible (exit 4).

    ``migration`` names the failing script and ``database_error`` is PostgreSQL's message, when
    a script failed (None for a failure around the scripts). ``restore_command`` is the command
    that restores the pre-migrate backup (None when none was taken) and ``restored`` says whether
    ``--restore-on-failure`` already ran it; both are filled in by the migrate feature after the
    engine raised.
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        migration: str | None = None,
        database_error: str | None = None,
        restore_command: str | None = None,
        restored: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.migration = migration
        self.database_error = database_error
        self.restore_command = restore_command
        self.restored = restored


class StorageError(OpskitError):
    """A storage operation failed after retries (exit 4; exit 3 when ``unreachable``).

    Storage modules raise :class:`UnreachableError` from their writability probe, and this
    class for a request that failed later. ``unreachable`` says the store could not be
    reached or refused us (no connection, missing bucket, bad credentials, access denied):
    the exit code is then 3, as the module docstring's rule says, so ``backup list`` and
    ``backup now`` agree. ``bucket_missing`` says the bucket itself does not exist (implies
    ``unreachable``).
    """

    exit_code = 4

    def __init__(
        self, message: str, hint: str | None = None, *, bucket_missing: bool = False, unreachable: bool = False
    ) -> None:
        super().__init__(message, hint=hint)
        self.bucket_missing = bucket_missing
        self.unreachable = unreachable or bucket_missing
        if self.unreachable:
            self.exit_code = UnreachableError.exit_code


class ObjectNotFound(StorageError):
    """The object asked for does not exist in the storage (exit 4)."""


class ObjectLocked(StorageError):
    """The storage refused to delete an object under retention (S3 Object Lock); ``until`` is when it ends.

    Expected on an immutable storage, not a fault: prune reports it and keeps going.
    """

    def __init__(self, message: str, hint: str | None = None, *, until: datetime | None = None) -> None:
        super().__init__(message, hint=hint)
        self.until = until


# --------------------------------------------------------------------------- exit 5: a check failed


class VerificationFailed(OpskitError):
    """A checksum, a manifest or a drill check failed (exit 5)."""

    exit_code = 5


class ManifestError(VerificationFailed):
    """A manifest is missing fields, malformed or of an unknown format (exit 5)."""


class VerifyFailed(VerificationFailed):
    """At least one backup failed verification; ``report`` holds every result (exit 5).

    ``report`` is the verify feature's ``VerifyReport``.
    """

    def __init__(self, message: str, hint: str | None = None, *, report: FeatureReport) -> None:
        super().__init__(message, hint=hint)
        self.report = report


class MigrationValidationFailed(VerificationFailed):
    """Flyway's validate found scripts that disagree with the schema history (exit 5).

    ``errors`` holds each of Flyway's messages, in its order.
    """

    def __init__(self, message: str, hint: str | None = None, *, errors: Sequence[str] = ()) -> None:
        super().__init__(message, hint=hint)
        self.errors: list[str] = list(errors)


# --------------------------------------------------------------------------- exit 6 and 7


class ObjectiveBreached(OpskitError):
    """An RPO or RTO objective is breached (exit 6)."""

    exit_code = 6


class LockHeld(OpskitError):
    """Another run holds the lock for the same target (exit 7)."""

    exit_code = 7


# --------------------------------------------------------------------------- any exit code


class RunbookFailed(OpskitError):
    """A runbook stopped at a failing step; ``exit_code`` is that step's (an opskit step's own code)."""

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


EXIT_CODES: dict[int, str] = {
    0: "ok",
    1: "unexpected error (a bug: report it with `--debug` output)",
    2: "usage or configuration error",
    3: "target or storage unreachable or refusing us (connection, missing bucket, credentials), in any verb",
    4: "backup, copy, restore or prune failed while running (nothing half-written is left visible)",
    5: "verification or drill check failed, or a restore stopped by a corrupt object",
    6: "objective breached (RPO/RTO)",
    7: "lock held by another run",
    130: "interrupted: Ctrl-C (SIGINT) or SIGTERM (`docker stop`, a CronJob's deadline); every open upload is"
    " aborted, nothing of the step in progress is committed (a runbook's earlier steps stay done: its line names"
    " the step it stopped at and the transcript)",
    141: "stdout closed by its reader (a pipe into `head -1`); nothing else went wrong",
}
"""Every exit code opskit uses and what it means (the rule is the module docstring's); the README's table is this."""
