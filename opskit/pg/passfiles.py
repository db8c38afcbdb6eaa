"""Temporary PGPASSFILEs: one directory opskit owns, swept of a killed run's files.

libpq reads a password from ``PGPASSFILE`` (https://www.postgresql.org/docs/current/libpq-pgpass.html),
which must not be group or world readable. opskit writes each tool's file into
``<tools.state_dir>/pgpass/`` (0700, refused when it is a symlink or owned by someone else),
named ``opskit-pgpass-<pid>-<random>``, and removes it when the tool exits. A run killed with
SIGKILL cannot remove its file, so the first password file a process writes in a directory
first sweeps the files of processes that are no longer alive: a plaintext password never
outlives the next run.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from opskit.core.errors import ConfigError
from opskit.core.log import get_logger

log = get_logger(__name__)

DIR_NAME = "pgpass"
PREFIX = "opskit-pgpass-"
_swept: set[Path] = set()
_swept_lock = threading.Lock()


def passfile_dir(state_dir: Path) -> Path:
    """Return ``<state_dir>/pgpass``, created 0700. Raises ConfigError when it cannot be made private."""
    folder = Path(state_dir) / DIR_NAME
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise ConfigError(
                f"{folder} is not a directory owned by this user: opskit will not write passwords there",
                hint="remove it, or point tools.state_dir at a directory of opskit's own user",
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    except OSError as exc:
        raise ConfigError(
            f"cannot prepare the password file directory {folder}: {exc.strerror or exc}",
            hint="tools.state_dir must be writable by opskit",
        ) from exc
    return folder


def sweep(folder: Path) -> list[Path]:
    """Remove password files in ``folder`` whose writing process is gone; return what was removed."""
    removed: list[Path] = []
    for path in folder.glob(PREFIX + "*"):
        pid = _pid_of(path.name)
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue  # a run in progress still needs it
        with suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    if removed:
        log.info("leftover password files removed", directory=str(folder), count=len(removed))
    return removed


@contextmanager
def password_file(secret_line: str, state_dir: Path) -> Iterator[Path]:
    """Yield the path of a 0600 file holding ``secret_line``; the file is removed on exit.

    Sweeps the directory of dead runs' files the first time this process uses it.
    Raises ConfigError when the directory cannot be prepared.
    """
    folder = passfile_dir(state_dir)
    with _swept_lock:
        if folder not in _swept:
            sweep(folder)
            _swept.add(folder)
    path = folder / f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret_line)
        yield path
    finally:
        with suppress(FileNotFoundError):
            path.unlink()


def _pid_of(name: str) -> int | None:
    """Return the pid in ``opskit-pgpass-<pid>-<random>``, or None for any other name."""
    head = name[len(PREFIX) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int) -> bool:
    """Return True when a process with ``pid`` exists (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
