"""Flyway's SQL callbacks: ``beforeMigrate.sql``, ``afterMigrate__grants.sql``, ... run as Flyway runs them.

A callback is a script in a migration location whose name, before the first separator, is one of
Flyway's event ids (``docs/migrations.md`` lists them and when each fires). What Flyway does, and
so what this module does (flyway-core ``SqlScriptCallbackFactory``, ``DefaultCallbackExecutor``):

* callbacks of one event run in description order, the one without a description first;
  two callbacks with one name in different locations are an error;
* placeholders are replaced as in migrations (``${flyway:filename}`` is the callback's file),
  a leading BOM is dropped, a ``<file>.conf`` beside it may set ``executeInTransaction``,
  ``encoding`` and ``placeholderReplacement``;
* the ``*Each*`` events run on the migration's connection inside its transaction (if it has one),
  so a ``SET`` in ``beforeEachMigrate`` is visible to the migration; every other event first
  restores the session's role and ``search_path``, then runs in its own transaction unless the
  script holds statements PostgreSQL refuses in one;
* callbacks are never recorded in the history table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import ConfigError, MigrationFailed
from opskit.core.log import get_logger
from opskit.flyway.checksums import decode, strip_bom
from opskit.flyway.names import CALLBACK_EVENTS, utf16_key
from opskit.flyway.placeholders import executable_text
from opskit.flyway.scripts import Script, read_script_conf
from opskit.flyway.statements import split_statements
from opskit.flyway.transactions import runs_in_transaction

log = get_logger(__name__)

# Events of Flyway Teams, or of commands opskit does not have: found, never fired.
NOT_FIRED = frozenset(
    {
        "beforeEachMigrateStatement",
        "afterEachMigrateStatement",
        "afterEachMigrateStatementError",
        "beforeUndo",
        "beforeEachUndo",
        "beforeEachUndoStatement",
        "afterEachUndoStatement",
        "afterEachUndoStatementError",
        "afterEachUndo",
        "afterEachUndoError",
        "afterUndo",
        "afterUndoError",
        "beforeClean",
        "afterClean",
        "afterCleanError",
        "beforeConnect",
        "afterConnect",
    }
)


@dataclass(frozen=True)
class Callback:
    """One SQL callback script: its event, its description (None without one) and the script itself.

    ``script`` reuses the migration Script type (kind ``repeatable``, no version, checksum 0) so
    placeholders and the transaction rules are exactly the migrations' ones.
    """

    event: str
    description: str | None
    script: Script

    @property
    def name(self) -> str:
        """Return the file name (what messages and logs show)."""
        return self.script.path.name


def parse_callback_name(filename: str, separator: str, suffixes: Iterable[str]) -> tuple[str, str | None] | None:
    """Return (event, description) when ``filename`` names a callback, else None.

    As Flyway: the suffix is removed, the text before the first separator must be an event id
    exactly (``afterMigrate__grants.sql`` -> ``("afterMigrate", "grants")``).
    """
    lowered = filename.lower()
    suffix = next((s for s in suffixes if lowered.endswith(s.lower())), None)
    if suffix is None:
        return None
    stem = filename[: len(filename) - len(suffix)]
    event, found, description = stem.partition(separator)
    if event not in CALLBACK_EVENTS:
        return None
    return event, (description if found else None)


def load_callbacks(paths: Iterable[Path], settings: MigrationSettings) -> tuple[Callback, ...]:
    """Read the callback files ``paths`` and return them in Flyway's order (event, then description).

    Raises ConfigError for two callbacks with one name, VerificationFailed for a file that does not
    decode. Files whose prefix only looks like an event (``afterMigrateX.sql``) are skipped with a warning.
    """
    found: dict[str, Callback] = {}
    for path in paths:
        parsed = parse_callback_name(path.name, settings.naming.separator, settings.naming.suffixes)
        if parsed is None:
            log.warning("not a Flyway callback event, skipped", file=path.name)
            continue
        event, description = parsed
        key = path.name[: path.name.rfind(".")] if "." in path.name else path.name
        if key in found:
            raise ConfigError(
                f"Found more than 1 SQL callback script called {key}!\nOffenders:\n-> {found[key].script.path}\n"
                f"-> {path}",
                hint="keep one callback of each name across the migration locations",
            )
        options = read_script_conf(path)
        text = strip_bom(decode(path.read_bytes(), options.encoding or settings.encoding, path.name))
        script = Script("repeatable", None, description or "", path.name, path, text, 0, options)
        found[key] = Callback(event, description, script)
        if event in NOT_FIRED:
            log.warning("callback event not supported by opskit, not run", file=path.name, callback_event=event)
    return tuple(sorted(found.values(), key=_order))


def _order(callback: Callback) -> tuple[int, int, bytes]:
    # Flyway's SqlScriptCallback.compareTo: by event, the one without a description first, then by
    # description as Java compares strings.
    return (
        CALLBACK_EVENTS.index(callback.event),
        0 if callback.description is None else 1,
        utf16_key(callback.description or ""),
    )


class CallbackRunner:
    """Fires callbacks on the engine's connection.

    Raises ConfigError when built for a callback mixing transactional and non-transactional
    statements without ``mixed``. ``reset`` restores role and ``search_path`` (the engine's session reset); ``values`` are the
    placeholder values of the run.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        callbacks: tuple[Callback, ...],
        settings: MigrationSettings,
        server_version_num: int,
        values: Mapping[str, str],
        reset: Callable[[], None],
    ) -> None:
        self.conn = conn
        self.callbacks = callbacks
        self.settings = settings
        self.server_version_num = server_version_num
        self.values = values
        self.reset = reset
        # Decided once, up front, as Flyway parses callbacks when it finds them: a callback mixing
        # both kinds of statement without ``mixed`` fails the command before anything runs.
        self._transactional = {
            c.script.path: runs_in_transaction(c.script, settings, server_version_num) for c in callbacks
        }

    def of(self, event: str) -> list[Callback]:
        """Return the callbacks of ``event``, in the order they run."""
        return [c for c in self.callbacks if c.event == event]

    def fire(self, event: str) -> None:
        """Run ``event``'s callbacks, each after a session reset and in its own transaction when it can.

        Raises MigrationFailed (exit 4) naming the callback when one fails.
        """
        for callback in self.of(event):
            transactional = self._transactional[callback.script.path]
            try:
                self.reset()
                if transactional:
                    with self.conn.transaction():
                        self._execute(callback, whole=True)
                else:
                    self._execute(callback, whole=False)
            except psycopg.Error as exc:
                raise callback_failure(callback, exc) from exc

    def fire_each(self, event: str, transactional: bool) -> None:
        """Run a per-migration event's callbacks in the migration's own context (its transaction, if any).

        ``transactional`` says whether the migration runs in a transaction: then the callback is
        sent whole inside it, else statement by statement in autocommit. Raises MigrationFailed.
        """
        for callback in self.of(event):
            try:
                self._execute(callback, whole=transactional)
            except psycopg.Error as exc:
                raise callback_failure(callback, exc) from exc

    def _execute(self, callback: Callback, whole: bool) -> None:
        text = executable_text(callback.script, self.values, self.settings.placeholder_syntax)
        log.info(
            "executing SQL callback",
            callback_event=callback.event,
            description=callback.description or "",
            file=callback.name,
            transactional=whole,
        )
        statements = split_statements(text)
        if whole:
            if statements:
                self.conn.execute(text)
            return
        for statement in statements:
            self.conn.execute(statement)


def callback_failure(callback: Callback, exc: psycopg.Error) -> MigrationFailed:
    """Return the MigrationFailed for ``callback`` failing with ``exc`` (Flyway's "Error while executing" message)."""
    reason = (exc.diag.message_primary or str(exc)).strip()
    return MigrationFailed(
        f"Error while executing {callback.event} callback ({callback.name}): {reason}",
        hint=f"fix {callback.script.path} and run the command again",
        migration=callback.name,
        database_error=reason,
    )
