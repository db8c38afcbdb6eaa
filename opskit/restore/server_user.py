"""Who the restored server runs as: PostgreSQL refuses root, so opskit running as root hands the data directory to ``postgres``."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from opskit.core.errors import ConfigError


def server_user() -> pwd.struct_passwd | None:
    """Return the user the server runs as when opskit runs as root (PostgreSQL refuses root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ConfigError("running as root, restore --pitr needs a 'postgres' user to own the data directory") from exc


def give_to_server_user(directory: Path) -> None:
    """Make ``directory`` and everything in it the server user's when opskit runs as root (else nothing)."""
    user = server_user()
    if user is None:
        return
    for dirpath, _dirs, files in os.walk(directory):
        os.chown(dirpath, user.pw_uid, user.pw_gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def as_server_user(argv: list[str]) -> list[str]:
    """Return ``argv`` run as the server user (``runuser``) when opskit runs as root, else unchanged."""
    user = server_user()
    return ["runuser", "-u", user.pw_name, "--", *argv] if user is not None else argv
