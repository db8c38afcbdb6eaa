"""The background read-ahead of ``opskit wal fetch`` while a server recovers (pgBackRest's asynchronous archive-get).

PostgreSQL asks its restore_command for one WAL file at a time and waits for each. When the
data directory is recovering (``recovery.signal`` or ``standby.signal`` beside ``pg_wal``), a
fetch of segment N from the archive leaves a reader process behind that keeps the next
``WINDOW`` segments ready in ``pg_wal/opskit-prefetch/`` while the server replays, so fetching
and replay overlap. The restore_command's shell test (``archive.with_read_ahead``) moves a
ready segment into place and answers a miss the reader has just seen (``<name>.absent``)
with exit 1, so most of PostgreSQL's calls start no interpreter at all.

What the reader promises:

- a file in the directory is complete (written beside, fsynced, renamed): the shell may hand
  it to the server as it is;
- a miss is said only for a few seconds after the archive was seen to lack the file: a
  marker holds the Unix time it expires (``MARKER_SECONDS``), the shell believes it only
  before then, and the reader looks at the archive again shortly before (a marker used
  once would be gone when recovery asks twice in a row, as it does at the end). WAL
  archived meanwhile is found within seconds, as with PostgreSQL's own retry interval, and a
  marker left by a reader that died (a crash) is soon not believed;
- at the end of the archive, the last segment is kept (``<name>.keep``, which the shell
  copies), and the history files of the timeline and the next one are offered or marked
  absent: recovery reads the last segment again and probes those files when it ends;
- one reader per directory (``.reader`` holds its pid and the segments it is reading); a
  fetch outside its plan (another timeline) re-anchors it (``.restart``);
- it exits, and removes the directory, when recovery has ended (the signal file is gone
  and the control file says "in production"), when the server it served stopped (a recovery
  aborted on a file the fetch refused), when nothing was taken for ``IDLE_SECONDS``, or when
  the directory disappears;
- a read that fails (a corrupt, undecryptable or unreadable file) stops it and removes the
  directory: it never marks such a file absent, so the server's next request runs the fetch,
  which fails loudly (exit above 125) and aborts the recovery. Only a file the archive lacks
  gets a ``.absent`` marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from opskit.core.log import get_logger
from opskit.wal import layout

log = get_logger(__name__)

WINDOW = 8  # segments kept ready (8 x 16 MiB on disk at most)
THREADS = 4
POLL_SECONDS = 0.02
IDLE_SECONDS = 60.0
MARKER_SECONDS = 3
MARKER_REFRESH_SECONDS = 1.0  # the reader looks at the archive again this long before a marker expires
ABSENT_SUFFIX = ".absent"
KEEP_SUFFIX = ".keep"  # the last segment before the end, copied by the shell each time it is asked for
STATE_FILE = ".reader"
RESTART_FILE = ".restart"
SIGNAL_FILES = ("recovery.signal", "standby.signal")
# pg_control begins with the system identifier (8 bytes), two version numbers (4 + 4) and the
# cluster state (an enum, 4 bytes in the machine's byte order); DB_IN_PRODUCTION is 6 in every
# PostgreSQL release since 9.0.
CONTROL_STATE_OFFSET = 16
DB_IN_PRODUCTION = 6

# Reads one WAL file's plain bytes from the archive (None when absent); raises on other failures.
ReadWal = Callable[[str], bytes | None]
# Makes a ReadWal in the reader process (its own storage client: none is shared across a fork).
MakeReadWal = Callable[[], ReadWal]


def recovering(spool: Path) -> bool:
    """Return whether the data directory that holds ``pg_wal/<spool>`` is recovering.

    It is while a signal file is there, and after the server removed it until the control
    file says the cluster is in production: recovery still probes history files and reads
    the last segment again between the two (``postmaster.pid`` says "ready" long before,
    as soon as a hot standby takes read-only connections).
    """
    data_dir = spool.parent.parent
    if any((data_dir / name).exists() for name in SIGNAL_FILES):
        return True
    if not (data_dir / "postmaster.pid").exists():
        return False  # not running: nothing will ask
    try:
        with open(data_dir / "global" / "pg_control", "rb") as control:
            head = control.read(CONTROL_STATE_OFFSET + 4)
    except OSError:
        return False
    if len(head) < CONTROL_STATE_OFFSET + 4:
        return False
    return int.from_bytes(head[CONTROL_STATE_OFFSET:], sys.byteorder) != DB_IN_PRODUCTION


def reader_state(spool: Path) -> tuple[int, list[str]] | None:
    """Return (pid, segments being read) of the live reader of ``spool``, or None when none runs."""
    try:
        state = json.loads((spool / STATE_FILE).read_text(encoding="utf-8"))
        pid, reading = int(state["pid"]), [str(n) for n in state.get("reading", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid, reading


def wait_for(spool: Path, name: str, timeout: float = 120.0) -> bool | None:
    """Wait while the live reader reads ``name``; return True when it is ready, False when absent, None otherwise.

    None means the caller must fetch it itself: no reader runs, ``name`` is not in its
    plan, or the reader stopped without it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (spool / name).exists():
            return True
        if marker_valid(spool, name):
            return False
        state = reader_state(spool)
        if state is None or name not in state[1]:
            return None
        time.sleep(POLL_SECONDS)
    return None


def marker_valid(spool: Path, name: str, margin: float = 0.0) -> bool:
    """Return whether ``spool`` holds a ``<name>.absent`` marker valid for ``margin`` seconds more."""
    try:
        expires = int((spool / (name + ABSENT_SUFFIX)).read_text(encoding="ascii"))
    except (OSError, ValueError):
        return False
    return expires > time.time() + margin


def restart_at(spool: Path, name: str) -> None:
    """Ask the live reader to drop what it read and continue after segment ``name`` (best effort)."""
    with contextlib.suppress(OSError):
        _write_atomic(spool / RESTART_FILE, name.encode())


def start(make_read: MakeReadWal, after: str, segment_size: int, spool: Path) -> bool:
    """Leave a reader process behind for the segments after ``after``; return False when it could not start.

    Double-forked and in its own session, with its standard streams on /dev/null: the
    restore_command returns at once (PostgreSQL waits for the shell, not for the reader),
    and a caller that reads the command's output is not held until the reader ends.
    """
    try:
        spool.mkdir(exist_ok=True)
        ready_r, ready_w = os.pipe()
        child = os.fork()
    except OSError as exc:
        log.debug("wal read-ahead could not start", error=str(exc))
        return False
    if child:
        os.close(ready_w)
        with contextlib.suppress(OSError):
            os.read(ready_r, 1)  # the reader's state file is written: the next fetch sees it
        os.close(ready_r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)
        return True
    # The first child: a new session, then the reader itself in a grandchild, reparented to init.
    os.close(ready_r)
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        reader = Reader(make_read(), after, segment_size, spool.absolute())
        reader.publish([])
        os.write(ready_w, b"1")
        os.close(ready_w)
        reader.run()
    finally:
        os._exit(0)


def start_thread(
    read: ReadWal, first: str, segment_size: int, spool: Path, owner: tuple[int, int] | None = None
) -> Reader:
    """Run a reader in a thread of this process from segment ``first`` on (before the server asks for it).

    For ``restore --pitr --start``, which waits for the recovery anyway: the segments are
    ready before the server's first request. The caller creates ``spool`` (owned by the
    server's user, which renames files out of it); ``owner`` (uid, gid) is given every file
    written when this process is root. Returns the reader, its daemon thread started
    (``thread``; ``first_batch`` is set once the first segments are ready).
    """
    timeline, number = layout.segment_number(first, segment_size)
    before = layout.segment_name(timeline, max(number - 1, 0) * segment_size, segment_size)
    # Two threads: this process's peak memory holds what they read at once (segment 0 never
    # holds a backup's start, so ``before`` always exists).
    reader = Reader(read, before, segment_size, spool.absolute(), owner, threads=2)
    reader.publish([])
    reader.thread = threading.Thread(target=reader.run, name="opskit wal read-ahead", daemon=True)
    reader.thread.start()
    return reader


class Reader:
    """The read-ahead loop of one recovering data directory (see the module docstring)."""

    def __init__(
        self,
        read: ReadWal,
        after: str,
        segment_size: int,
        spool: Path,
        owner: tuple[int, int] | None = None,
        threads: int = THREADS,
    ) -> None:
        self.threads = threads
        self.read = read
        self.owner = owner
        self.segment_size = segment_size
        self.spool = spool
        self.previous = after  # the newest segment read (or taken from the archive by a fetch)
        self.timeline = int(after[:8], 16)
        self.waiting: set[str] = set()  # written here and not taken yet
        self.end: str | None = None  # the first segment the archive lacks
        self.last: str | None = None  # the segment before it, kept for reading again
        self.last_taken = time.monotonic()
        self.first_batch = threading.Event()
        self.thread: threading.Thread | None = None
        self.server_seen = False  # postmaster.pid was there: its going means the server stopped

    def run(self) -> None:
        """Keep the window full until recovery ends or nothing is taken for a while; then remove the directory."""
        try:
            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                while self.spool.is_dir() and recovering(self.spool) and not self._server_stopped():
                    self._notice_taken()
                    if time.monotonic() - self.last_taken > IDLE_SECONDS:
                        break
                    self._follow_restart()
                    # Recovery probes for the next timeline's history when it starts and when it ends.
                    self._offer_history(f"{self.timeline + 1:08X}.history")
                    if self.end is None:
                        self._fill(pool)
                    else:
                        self._at_end()
                    time.sleep(POLL_SECONDS)
        except Exception as exc:  # the server's fetches do it all themselves when the reader is gone
            log.warning("wal read-ahead stopped; each WAL file is fetched on request from now on", error=str(exc))
        finally:
            self.first_batch.set()
            shutil.rmtree(self.spool, ignore_errors=True)

    def _server_stopped(self) -> bool:
        """Return whether the server this reader serves has stopped: it was seen running and its pid file is gone.

        A reader started before the server (``start_thread``) waits for it; one whose
        server aborted recovery must not outlive it (the data directory is left to the operator).
        """
        running = (self.spool.parent.parent / "postmaster.pid").exists()
        self.server_seen = self.server_seen or running
        return self.server_seen and not running

    def publish(self, reading: list[str]) -> None:
        """Write the state file: this process's pid and the segments it is reading."""
        _write_atomic(
            self.spool / STATE_FILE, json.dumps({"pid": os.getpid(), "reading": reading}).encode(), self.owner
        )

    def _notice_taken(self) -> None:
        taken = {name for name in self.waiting if not (self.spool / name).exists()}
        if taken:
            self.waiting -= taken
            self.last_taken = time.monotonic()

    def _follow_restart(self) -> None:
        path = self.spool / RESTART_FILE
        try:
            name = path.read_text(encoding="utf-8").strip()
        except OSError:
            return
        path.unlink(missing_ok=True)
        if not layout.is_segment_name(name) or self._behind(name):
            return
        for stale in self.waiting:
            (self.spool / stale).unlink(missing_ok=True)
        for marker in self.spool.glob("*" + ABSENT_SUFFIX):
            marker.unlink(missing_ok=True)
        self._drop_keep()
        self.waiting.clear()
        self.previous, self.end, self.last = name, None, None
        self.timeline = int(name[:8], 16)
        self.last_taken = time.monotonic()

    def _behind(self, name: str) -> bool:
        """Return whether segment ``name`` is on this reader's timeline at or before its position (a re-read)."""
        timeline, number = layout.segment_number(name, self.segment_size)
        return timeline == self.timeline and number <= layout.segment_number(self.previous, self.segment_size)[1]

    def _fill(self, pool: ThreadPoolExecutor) -> None:
        room = WINDOW - len(self.waiting)
        if room < min(self.threads, WINDOW):
            return
        names = layout.next_segments(self.previous, self.segment_size, room)
        self.publish(names)

        def read_and_write(name: str) -> bytes | None:
            # Each in its own thread, fsync included, so a segment is ready as soon as it is
            # durable and not after the one before it (on a busy disk an fsync takes long).
            data = self.read(name)
            if data is not None:
                _write_atomic(self.spool / name, data, self.owner, sync=True)
            return data

        for name, data in zip(names, pool.map(read_and_write, names), strict=True):
            if data is None:
                self.end = name  # one after it may be there too (a gap): never asked for before it
                break
            self.waiting.add(name)
            self.previous, self.last = name, name
        if self.end is not None:
            # At once, before the next round: a short replay reaches the end right after this batch.
            self._mark_absent(self.end)
            self._keep_last()
            self._offer_history(f"{self.timeline:08X}.history")
        self.publish([])
        self.first_batch.set()

    def _at_end(self) -> None:
        assert self.end is not None
        if not marker_valid(self.spool, self.end, MARKER_REFRESH_SECONDS):
            data = self.read(self.end)  # archived meanwhile?
            if data is not None:
                self._offer(self.end, data)
                self._drop_keep()
                self.previous, self.last, self.end = self.end, self.end, None
                return
            self._mark_absent(self.end)
        self._offer_history(f"{self.timeline:08X}.history")  # the parent of the timeline a promotion makes
        self._keep_last()

    def _keep_last(self) -> None:
        # Recovery reads the last segment again as it ends, right after the miss, sometimes
        # twice: the shell copies it from here each time (a rename would be gone the second).
        if self.last is not None:
            keep = self.spool / (self.last + KEEP_SUFFIX)
            if not keep.exists():
                data = self.read(self.last)  # again: 16 MiB held in memory for this alone would double the peak
                if data is not None:
                    _write_atomic(keep, data, self.owner, sync=True)

    def _drop_keep(self) -> None:
        if self.last is not None:
            (self.spool / (self.last + KEEP_SUFFIX)).unlink(missing_ok=True)

    def _offer_history(self, name: str) -> None:
        if name in self.waiting or marker_valid(self.spool, name, MARKER_REFRESH_SECONDS):
            return
        data = self.read(name)
        if data is None:
            self._mark_absent(name)
        else:
            self._offer(name, data)

    def _offer(self, name: str, data: bytes) -> None:
        _write_atomic(self.spool / name, data, self.owner, sync=True)
        self.waiting.add(name)

    def _mark_absent(self, name: str) -> None:
        expires = int(time.time()) + MARKER_SECONDS
        _write_atomic(self.spool / (name + ABSENT_SUFFIX), str(expires).encode(), self.owner)


def _write_atomic(path: Path, data: bytes, owner: tuple[int, int] | None = None, sync: bool = False) -> None:
    """Write ``data`` to ``path`` complete or not at all (beside it, then renamed), owned by ``owner`` if given."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        if owner is not None:
            os.fchown(out.fileno(), *owner)
        if sync:
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)
