"""The opskit exception tree, one class per exit code.

Every error opskit raises on purpose is an :class:`OpskitError`. The CLI maps it to its
``exit_code`` and prints one line: what failed, why, and (``hint``) what to do. Library
errors (boto3, psycopg, google-cloud, azure) are translated into these classes in the
module that calls the library, with ``raise ... from exc``, never further up.

Exit codes (also in the README and ``docs/architecture.md``)::

    0  ok
    1  unexpected error (a bug: please report it with --debug output)
    2  ConfigError          usage or configuration error; MissingExtraError (an SDK is not installed)
    3  UnreachableError     a target or storage cannot be reached, read or written before work starts
    4  BackupFailed         a backup, copy or restore failed (RestoreFailed, CopyFailed, MigrationFailed)
    5  VerificationFailed   a checksum, manifest or drill check failed (ManifestError)
    6  ObjectiveBreached    the RPO or RTO objective is breached
    7  LockHeld             another run holds the lock for the same target
"""

from __future__ import annotations


class OpskitError(Exception):
    """Base of every error opskit raises on purpose.

    ``message`` says what failed and why; ``hint`` says what to do about it.
    """

    exit_code = 1

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


class ConfigError(OpskitError):
    """The command line or the configuration is wrong (exit 2)."""

    exit_code = 2


class MissingExtraError(ConfigError):
    """An optional SDK is needed but not installed (exit 2)."""


class UnreachableError(OpskitError):
    """A target or a storage cannot be reached, read or written (exit 3)."""

    exit_code = 3


class BackupFailed(OpskitError):
    """A backup or copy failed while running (exit 4)."""

    exit_code = 4


class Cancelled(BackupFailed):
    """The run was asked to stop (daemon shutdown); nothing was committed."""


class RestoreFailed(BackupFailed):
    """A restore failed (exit 4)."""


class CopyFailed(BackupFailed):
    """Copying a backup to a secondary storage failed (exit 4)."""


class MigrationFailed(BackupFailed):
    """A schema migration failed while running; its changes were rolled back where possible (exit 4)."""


class VerificationFailed(OpskitError):
    """A checksum, a manifest or a drill check failed (exit 5)."""

    exit_code = 5


class ManifestError(VerificationFailed):
    """A manifest is missing fields, malformed or of an unknown format (exit 5)."""


class ObjectiveBreached(OpskitError):
    """An RPO or RTO objective is breached (exit 6)."""

    exit_code = 6


class LockHeld(OpskitError):
    """Another run holds the lock for the same target (exit 7)."""

    exit_code = 7


class StorageError(OpskitError):
    """A storage operation failed after retries (exit 4 while a run is under way).

    Storage modules raise :class:`UnreachableError` for problems found before any
    data moves (missing bucket, bad credentials) and this class for failures mid-run.
    """

    exit_code = 4


class ObjectNotFound(StorageError):
    """The object asked for does not exist in the storage (exit 4)."""


EXIT_CODES: dict[int, str] = {
    0: "ok",
    1: "unexpected error",
    2: "usage or configuration error",
    3: "target or storage unreachable",
    4: "backup, copy or restore failed",
    5: "verification or drill check failed",
    6: "objective breached (RPO/RTO)",
    7: "lock held by another run",
}
