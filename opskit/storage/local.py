"""Local-disk storage (``file:///var/backups/opskit``).

A writer streams into a hidden temporary file in the destination directory, fsyncs it and
renames it into place on success, so a crash never leaves a partial object under its
final name. Temporary files (``.opskit-tmp-*``) are invisible to ``list`` and are swept by
``prune`` like any other leftover.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat as stat_module
from builtins import list as builtins_list
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlsplit

from opskit.core.errors import ConfigError, ObjectNotFound, StorageError, UnreachableError
from opskit.storage.base import ObjectInfo, probe_round_trip

if TYPE_CHECKING:
    from opskit.storage.base import StorageConfig

TEMP_PREFIX = ".opskit-tmp-"


def root_from_url(url: str) -> Path:
    """Return the directory a ``file://`` URL names (``file:///abs`` or ``file://./relative``)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise ConfigError(f"not a file:// URL: {url}")
    # file://./backups and file://backups are relative paths; file:///x is absolute.
    path = unquote(parts.netloc + parts.path) if parts.netloc else unquote(parts.path)
    if not path:
        raise ConfigError(f"file:// URL has no path: {url}")
    return Path(path)


def _storage_error(action: str, key: str, exc: OSError, name: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(
            f"storage '{name}': no space left on device while {action} '{key}'",
            hint="free space on the backup volume or point the storage elsewhere; nothing was committed",
        )
    return StorageError(f"storage '{name}': {action} '{key}' failed: {exc.strerror or exc}")


def _volume_full(exc: StorageError) -> bool:
    """Return True when ``exc`` was raised for a full disk (ENOSPC), not a missing or read-only directory."""
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.ENOSPC


class LocalStorage:
    """Objects as files under a root directory."""

    kind = "file"

    def __init__(self, name: str, url: str, root: Path) -> None:
        self.name = name
        self.url = url
        self.root = root

    def _path(self, key: str) -> Path:
        clean = key.strip("/")
        if not clean or ".." in clean.split("/"):
            raise StorageError(f"storage '{self.name}': invalid object key '{key}'")
        return self.root / clean

    @contextmanager
    def writer(self, key: str, *, immutable: bool = False) -> Iterator[BinaryIO]:
        """Yield a file open for writing; rename it to ``key`` on success, delete it on error.

        ``immutable`` is accepted for the contract and ignored: a local disk has no retention.
        """
        final = self._path(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f"{TEMP_PREFIX}{final.name}.{secrets.token_hex(4)}"
            handle = open(tmp, "xb")  # noqa: SIM115 - closed below on every path
        except OSError as exc:
            raise _storage_error("creating", key, exc, self.name) from exc
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException as exc:
            # close() flushes what is still buffered: on a full disk it raises ENOSPC again,
            # which must not skip the unlink and the error mapping below.
            with contextlib.suppress(OSError):
                handle.close()
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _storage_error("writing", key, exc, self.name) from exc
            raise

    def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless a file is there; return False when one was.

        The bytes go to a hidden temp file first and are hard-linked to the final name:
        ``link`` fails with EEXIST when the name exists, atomically, and a reader never sees
        a half-written object. Raises StorageError.
        """
        final = self._path(key)
        tmp = final.parent / f"{TEMP_PREFIX}{final.name}.{secrets.token_hex(4)}"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            _fsync_dir(final.parent)
            return True
        except OSError as exc:
            raise _storage_error("creating", key, exc, self.name) from exc
        finally:
            # The temp name is never an object; when mkdir failed it cannot even be looked up.
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    @contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        """Yield the object's file open for reading."""
        path = self._path(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise ObjectNotFound(f"storage '{self.name}' has no object '{key}'") from None
        except OSError as exc:
            raise _storage_error("reading", key, exc, self.name) from exc
        with handle:
            yield handle

    def _root_exists(self) -> bool:
        """Return False when the root does not exist yet (an empty storage: writers create it).

        Raises StorageError (unreachable, exit 3) when the root is there but is not a directory
        (a file, or a path through a file) or cannot be read: that is a wrong URL or wrong
        permissions, never "no backups".
        """
        try:
            mode = self.root.stat().st_mode
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._root_error(exc.strerror or str(exc)) from exc
        if not stat_module.S_ISDIR(mode):
            raise self._root_error("not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise self._root_error("permission denied")
        return True

    def _root_error(self, why: str) -> StorageError:
        return StorageError(
            f"storage '{self.name}': its root {self.root} cannot be listed: {why}",
            hint=f"point storages.{self.name}.url at a directory opskit may read and write",
            unreachable=True,
        )

    def _walk_error(self, exc: OSError) -> None:
        """os.walk's onerror: a directory that vanished meanwhile is skipped, any other error raises."""
        if isinstance(exc, FileNotFoundError):
            return
        raise StorageError(
            f"storage '{self.name}': cannot list {exc.filename}: {exc.strerror or exc}",
            hint="check the permissions of the storage's directories",
            unreachable=isinstance(exc, PermissionError),
        ) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every committed file under the root whose key starts with ``prefix``.

        A root that does not exist yet lists nothing. Raises StorageError when the root is not a
        directory or a directory under it cannot be read (exit 3 for permissions and a wrong root).
        """
        if not self._root_exists():
            return
        # Walk only the deepest directory the prefix names, not the whole tree.
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not start.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(start, onerror=self._walk_error):
            for filename in filenames:
                path = Path(dirpath) / filename
                if filename.startswith(TEMP_PREFIX):
                    continue  # an unfinished write: not an object (swept by abort_incomplete_uploads)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                yield ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def delete(self, key: str) -> None:
        """Delete the file (and the directories left empty by it, up to the root)."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise _storage_error("deleting", key, exc, self.name) from exc
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def abort_incomplete_uploads(self, prefix: str, older_than: datetime, dry_run: bool) -> builtins_list[str]:
        """Remove temporary files of writes that never finished (a killed run) and were started before ``older_than``.

        Returns the keys they were meant for, as the S3 backend does for multipart uploads.
        """
        removed: builtins_list[str] = []
        emptied: set[Path] = set()
        if not self._root_exists():
            return removed
        for dirpath, _dirnames, filenames in os.walk(self.root, onerror=self._walk_error):
            for filename in filenames:
                if not filename.startswith(TEMP_PREFIX):
                    continue
                path = Path(dirpath) / filename
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                except FileNotFoundError:
                    continue
                if modified >= older_than:
                    continue
                final_name = filename[len(TEMP_PREFIX) :].rsplit(".", 1)[0]
                removed.append(str(Path(key).parent / final_name))
                if not dry_run:
                    path.unlink(missing_ok=True)
                    emptied.add(path.parent)
        if not dry_run:
            self._remove_empty_dirs(prefix, older_than, emptied)
        return removed

    def _remove_empty_dirs(self, prefix: str, older_than: datetime, emptied: set[Path]) -> None:
        """Remove empty directories under ``prefix`` last changed before ``older_than`` (deepest first).

        A killed run can leave its backup folder empty (made, then killed before a file landed, or
        holding only a temp file removed above); object stores have no folders, a disk does. The
        age check spares a folder a writer has just made (``emptied``: folders whose old temp
        files were just removed, so their own time is now); rmdir refuses a non-empty one.
        """
        for dirpath, _dirnames, _filenames in os.walk(self.root, topdown=False):
            path = Path(dirpath)
            if path == self.root or not (path.relative_to(self.root).as_posix() + "/").startswith(prefix):
                continue
            try:
                if path not in emptied and datetime.fromtimestamp(path.stat().st_mtime, UTC) >= older_than:
                    continue
                path.rmdir()
            except OSError:
                continue  # not empty, or gone already

    def exists(self, key: str) -> bool:
        """Return True when the file exists."""
        return self._path(key).is_file()

    def check_writable(self) -> None:
        """Create the root if needed, then write, read and delete a probe file."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnreachableError(
                f"storage '{self.name}' ({self.url}) cannot be created: {exc.strerror or exc}",
                hint="create the directory or fix its permissions",
            ) from exc
        try:
            probe_round_trip(self)
        except StorageError as exc:
            if _volume_full(exc):
                raise  # exit 4 with its "free space" hint: the directory is fine, the disk is not
            raise UnreachableError(
                f"storage '{self.name}' ({self.url}) is not writable: {exc.message}",
                hint="fix the directory's permissions or free space",
            ) from exc


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_storage(config: StorageConfig) -> LocalStorage:
    """Return the local storage a ``file://`` config names."""
    return LocalStorage(config.name, config.url, root_from_url(config.url))
