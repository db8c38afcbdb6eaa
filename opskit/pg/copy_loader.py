"""Loading the data section of a dump over several connections, one big table included.

``pg_restore -j N`` gives each table to one worker, so a database whose size is mostly one table
loads no faster with it. Here pg_restore still reads the archive (``--section=data --file=-``
turns its data blocks into a plain SQL script), and :class:`ScriptSplitter` cuts that script's
``COPY ... FROM stdin`` data into blocks of whole rows. :class:`CopyLoader` hands the blocks to
N connections, each with its own ``COPY`` of the same statement, so one table's rows are
inserted by N backends at once. The SQL between the COPY blocks (``setval`` of sequences, the
session settings at the top) is kept for the caller to run once; its ``SET`` lines are also run
on every loading connection, so they parse the data as pg_restore's session would.

Nothing here knows about storage or archives; ``opskit.actions.restore_parallel`` wires it up.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from opskit.core.log import get_logger
from opskit.core.slots import Slots

log = get_logger(__name__)

BLOCK_SIZE = 4 * 1024 * 1024
_TERMINATOR = b"\\.\n"


class ScriptError(Exception):
    """pg_restore's script is not shaped as expected (a COPY that does not end, an unknown statement)."""


class ScriptSplitter:
    """Cuts a data-section SQL script into COPY blocks and the SQL around them.

    ``copy_statements`` are the COPY statements the archive's TOC lists; a ``COPY`` line that
    is not one of them is an error, so a table's data can never be mistaken for SQL or the
    other way round. ``on_block(statement, rows)`` receives whole rows, at most about
    ``block_size`` bytes at a time; ``on_sql(text)`` receives everything else, cut at line
    ends, except psql meta-commands (``\\restrict``), which are not SQL. ``on_end(statement)``,
    if given, is called once a COPY's last block has been handed on. Everything stays bytes: the
    script is in the archive's encoding, which need not be UTF-8.
    """

    def __init__(
        self,
        copy_statements: Iterable[bytes],
        on_block: Callable[[bytes, bytes], None],
        on_sql: Callable[[bytes], None],
        block_size: int | None = None,
        on_end: Callable[[bytes], None] | None = None,
    ) -> None:
        # A COPY statement spans several lines when a quoted table or column name holds a newline,
        # so statements are looked up by their first line and then matched whole.
        self._statements: dict[bytes, list[bytes]] = {}
        for statement in {s.strip() for s in copy_statements}:
            self._statements.setdefault(statement.split(b"\n", 1)[0], []).append(statement)
        self._on_block = on_block
        self._on_sql = on_sql
        self._on_end = on_end
        self._block_size = block_size or BLOCK_SIZE
        self._buf = bytearray()
        self._scan_from = 0
        self._copying: bytes | None = None  # the COPY statement whose rows are arriving

    def feed(self, data: bytes) -> None:
        """Take the next piece of the script. Raises ScriptError."""
        self._buf += data
        # Each step either moves to the next state (True) or needs more bytes (False).
        while self._start_copy() if self._copying is None else self._take_rows():
            pass

    def finish(self) -> None:
        """Flush the end of the script. Raises ScriptError when it stops inside a COPY."""
        if self._copying is not None:
            raise ScriptError(f"the script ends inside the data of '{_show(self._copying)}'")
        self._emit_sql(bytes(self._buf))
        self._buf.clear()

    def _start_copy(self) -> bool:
        """Find the next COPY line; emit the SQL before it. Return True when a COPY began."""
        at = self._buf.find(b"\nCOPY ", max(self._scan_from - 5, 0))
        if at < 0:
            # Keep the last line: it may be the start of a COPY line cut in two.
            cut = self._buf.rfind(b"\n")
            if cut > 0:
                self._emit_sql(bytes(self._buf[:cut]))
                del self._buf[:cut]
            self._scan_from = len(self._buf)
            return False
        statement = self._statement_at(at + 1)
        if statement is None:
            self._scan_from = at
            return False
        self._emit_sql(bytes(self._buf[: at + 1]))
        del self._buf[: at + 1 + len(statement) + 1]
        self._copying = statement
        self._scan_from = 0
        return True

    def _statement_at(self, start: int) -> bytes | None:
        """Return the TOC's COPY statement that the buffer holds whole at ``start``, or None until it has arrived.

        Raises ScriptError when no statement of the TOC is there (an unknown table's data).
        """
        first_end = self._buf.find(b"\n", start)
        if first_end < 0:
            return None
        first_line = bytes(self._buf[start:first_end]).strip()
        candidates = self._statements.get(first_line.split(b"\n", 1)[0], [])
        # The longest first: "a\nb" must not stop at a statement that is only its first line.
        for statement in sorted(candidates, key=len, reverse=True):
            end = start + len(statement)
            if len(self._buf) <= end:
                if self._buf.startswith(statement[: len(self._buf) - start], start):
                    return None  # it may be this one: wait for the rest of it
                continue
            if self._buf.startswith(statement, start) and self._buf[end] == 0x0A:
                return statement
        raise ScriptError(f"unexpected COPY statement in pg_restore's output: {_show(first_line)}")

    def _take_rows(self) -> bool:
        """Emit complete rows of the current COPY. Return True when its end marker was reached."""
        end = self._find_terminator()
        rows_end = len(self._buf) if end < 0 else end
        while rows_end >= self._block_size:
            # Cut at the last row end within the block (or after the first row, if one row is bigger).
            cut = self._buf.rfind(b"\n", 0, self._block_size) + 1 or self._buf.find(b"\n", self._block_size) + 1
            if cut <= 0 or cut > rows_end:
                break
            self._emit_rows(self._take(cut))
            rows_end -= cut
        if end < 0:
            # The marker may straddle this piece and the next: look again from just before the end.
            self._scan_from = max(len(self._buf) - len(_TERMINATOR), 0)
            return False
        if rows_end:
            self._emit_rows(self._take(rows_end))
        del self._buf[: len(_TERMINATOR)]
        if self._on_end is not None and self._copying is not None:
            self._on_end(self._copying)
        self._copying = None
        self._scan_from = 0
        return True

    def _take(self, count: int) -> bytes:
        """Remove and return the first ``count`` bytes of the buffer (one copy, not two)."""
        with memoryview(self._buf) as view:
            taken = bytes(view[:count])
        del self._buf[:count]
        return taken

    def _find_terminator(self) -> int:
        """Return where the line holding only "\\." starts, or -1 when it has not arrived yet."""
        start = self._scan_from
        while True:
            at = self._buf.find(_TERMINATOR, start)
            if at < 0 or at == 0 or self._buf[at - 1] == 0x0A:
                return at
            start = at + 1

    def _emit_rows(self, rows: bytes) -> None:
        assert self._copying is not None
        self._on_block(self._copying, rows)

    def _emit_sql(self, text: bytes) -> None:
        lines = [line for line in text.splitlines(keepends=True) if not line.startswith(b"\\")]
        if lines:
            self._on_sql(b"".join(lines))


def _show(statement: bytes) -> str:
    return statement.decode("utf-8", "replace")[:200]


def session_settings(sql_text: bytes) -> list[bytes]:
    """Return the ``SET``/``set_config`` lines of pg_restore's preamble, to run on every loading connection."""
    return [
        line.strip()
        for line in sql_text.splitlines()
        if line.startswith(b"SET ") or line.startswith(b"SELECT pg_catalog.set_config(")
    ]


@dataclass
class LoadStats:
    """What the loaders did: rows per COPY statement, blocks, and COPY errors (when carrying on past them)."""

    rows: dict[bytes, int] = field(default_factory=dict)
    blocks: int = 0
    errors: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the workers' own CPU (handing rows to libpq, commits), all threads together


class LoadFailed(Exception):
    """A COPY failed and the load stops (``exit_on_error``)."""


_STOP = None


class _Failed:
    """What a worker gets instead of a block once the load has failed."""


_FAILED = _Failed()


class _Idle:
    """What a worker gets when no block came and its open COPY has no more rows to come."""


_IDLE = _Idle()


class CopyLoader:
    """N threads, each with its own connection, loading COPY blocks from one bounded queue.

    A worker keeps its COPY open while the blocks it takes belong to the same statement and
    commits it when the next block belongs to another, or when the statement has no more rows
    to come (autocommit: one transaction per COPY, as pg_restore does). ``connect()`` must
    return a new autocommit connection to the destination database.

    ``slots``, if given, is shared with other work on the same server (index builds): a worker
    holds one while it writes a block, so the loads and that work together keep at most as many
    backends busy as there are slots. ``on_loaded(statement, size)`` is called once every row of
    a statement that :meth:`finished` was told about is committed, with the bytes it loaded.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        jobs: int,
        settings: list[bytes],
        exit_on_error: bool = True,
        table_names: dict[bytes, str] | None = None,
        slots: Slots | None = None,
        on_loaded: Callable[[bytes, int], None] | None = None,
    ) -> None:
        self._connect = connect
        self._slots = slots
        self._on_loaded = on_loaded
        # Per statement: blocks queued or written but not yet committed, bytes queued, and
        # whether the script has moved past it; on_loaded fires when all three say "done".
        self._uncommitted: dict[bytes, int] = {}
        self._size: dict[bytes, int] = {}
        self._ended: set[bytes] = set()
        self._table_names = table_names or {}
        self._settings = settings
        self._exit_on_error = exit_on_error
        self._queue: queue.Queue[tuple[bytes, bytes] | None] = queue.Queue(maxsize=2 * jobs)
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._failed = threading.Event()
        self._skipped: set[bytes] = set()
        self._connections: list[psycopg.Connection[Any]] = []
        # Nobody loads before every connection is open: a refused connection fails the load at
        # once, and the first blocks are shared out instead of all going to the quickest worker.
        self._ready = threading.Barrier(jobs)
        self.stats = LoadStats()
        self._threads = [threading.Thread(target=self._work, name=f"opskit-copy-{i}", daemon=True) for i in range(jobs)]
        for thread in self._threads:
            thread.start()

    def put(self, statement: bytes, rows: bytes) -> None:
        """Queue a block; block while the workers are busy. Raises LoadFailed once a COPY failed."""
        with self._lock:
            self._uncommitted[statement] = self._uncommitted.get(statement, 0) + 1
            self._size[statement] = self._size.get(statement, 0) + len(rows)
        while True:
            if self._failed.is_set():
                raise LoadFailed(str(self._failure))
            try:
                self._queue.put((statement, rows), timeout=0.2)
                return
            except queue.Full:
                continue

    def finished(self, statement: bytes) -> None:
        """Say that every block of ``statement`` has been put: once they are committed, on_loaded is called."""
        with self._lock:
            self._ended.add(statement)
        self._settle(statement, 0)

    def _settle(self, statement: bytes, blocks: int) -> None:
        """Count ``blocks`` of ``statement`` as committed (or given up); call on_loaded when it is complete."""
        with self._lock:
            left = self._uncommitted.get(statement, 0) - blocks
            self._uncommitted[statement] = left
            complete = left == 0 and statement in self._ended
            if complete:
                self._ended.discard(statement)
        if complete and self._on_loaded is not None:
            self._on_loaded(statement, self._size.get(statement, 0))

    def close(self) -> LoadStats:
        """Wait until every block is loaded and committed. Raises LoadFailed (or a connection error)."""
        for _ in self._threads:
            self._put_stop()
        for thread in self._threads:
            thread.join()
        if self._failure is not None:
            raise self._failure
        return self.stats

    def abort(self) -> None:
        """Stop loading now: cancel running COPYs and wait briefly for the workers."""
        self._fail(LoadFailed("the load was stopped"))
        for conn in list(self._connections):
            try:
                conn.cancel_safe(timeout=5)
            except Exception as exc:  # the connection may be gone already; the caller drops the database
                log.debug("cancel failed", error=str(exc))
        for thread in self._threads:
            thread.join(timeout=10)

    def _put_stop(self) -> None:
        # After a failure the workers stop by themselves (see _next); a full queue must not block us.
        while not self._failed.is_set():
            try:
                self._queue.put(_STOP, timeout=0.2)
                return
            except queue.Full:
                continue

    def _next(self, current: bytes | None) -> tuple[bytes, bytes] | _Failed | _Idle | None:
        """Return the next block, None to stop, or _FAILED as soon as any worker or the caller failed.

        Returns _IDLE when no block comes while the worker holds the open COPY of a statement that
        has no more rows to come: committing it then lets that table's index builds start.
        """
        while not self._failed.is_set():
            try:
                return self._queue.get(timeout=0.2)
            except queue.Empty:
                if current is not None and current in self._ended:
                    return _IDLE
        return _FAILED

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
        self._failed.set()
        self._ready.abort()

    def _work(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._fail(exc)
            return
        self._connections.append(conn)
        try:
            for setting in self._settings:
                conn.execute(setting)
            self._ready.wait()
            self._load(conn)
        except threading.BrokenBarrierError:
            pass  # another worker failed first; its error is the one reported
        except BaseException as exc:
            self._fail(exc)
        finally:
            conn.close()
            with self._lock:
                self.stats.cpu_seconds += time.thread_time()

    def _load(self, conn: psycopg.Connection[Any]) -> None:
        cursor = conn.cursor()
        current: bytes | None = None
        copy_cm: Any = None
        copy: Any = None
        written = 0  # blocks written into the open COPY, committed with it
        while True:
            item = self._next(current if copy_cm is not None else None)
            if isinstance(item, _Failed):
                if copy_cm is not None:
                    with contextlib.suppress(Exception):  # CopyFail: nothing of this COPY is committed
                        copy_cm.__exit__(LoadFailed, LoadFailed("stopped"), None)
                return
            statement = item[0] if isinstance(item, tuple) else None
            if copy_cm is not None and statement != current:
                self._end_copy(copy_cm, cursor, current)
                assert current is not None
                self._settle(current, written)
                copy_cm = copy = None
                written = 0
            if item is None:
                return
            if isinstance(item, _Idle):
                continue
            if item[0] in self._skipped:
                self._settle(item[0], 1)
                continue
            try:
                if copy_cm is None:
                    current = item[0]
                    copy_cm = cursor.copy(current)
                    copy = copy_cm.__enter__()
                if self._slots is None:
                    copy.write(item[1])
                else:
                    with self._slots.hold():
                        copy.write(item[1])
                written += 1
            except psycopg.Error as exc:
                if copy_cm is not None:
                    with contextlib.suppress(Exception):
                        copy_cm.__exit__(type(exc), exc, exc.__traceback__)
                copy_cm = copy = None
                self._copy_failed(item[0], exc)
                self._settle(item[0], written + 1)
                written = 0
            with self._lock:
                self.stats.blocks += 1

    def _end_copy(self, copy_cm: Any, cursor: psycopg.Cursor[Any], statement: bytes | None) -> None:
        assert statement is not None
        try:
            if self._slots is None:
                copy_cm.__exit__(None, None, None)
            else:
                with self._slots.hold():  # the commit flushes the COPY's last rows: server work like a block's
                    copy_cm.__exit__(None, None, None)
        except psycopg.Error as exc:
            self._copy_failed(statement, exc)
            return
        with self._lock:
            self.stats.rows[statement] = self.stats.rows.get(statement, 0) + max(cursor.rowcount, 0)

    def _copy_failed(self, statement: bytes, exc: psycopg.Error) -> None:
        # Worded as pg_restore words it, so a drill's allowed_restore_errors match either.
        table = self._table_names.get(statement) or _show(statement).removeprefix("COPY ").removesuffix(" FROM stdin;")
        message = f'COPY failed for table "{table}": ERROR:  {str(exc).strip().splitlines()[0]}'
        if self._exit_on_error:
            raise LoadFailed(message) from exc
        log.warning("COPY failed; carrying on", statement=statement, error=str(exc))
        with self._lock:
            self._skipped.add(statement)
            self.stats.errors.append(f"pg_restore: error: {message}")
