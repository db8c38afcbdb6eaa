"""The recovery settings a point-in-time restore writes into ``postgresql.auto.conf``, and the restored server's log file.

opskit's settings sit in one marked block, which the next restore replaces, and name every
``recovery_target*`` setting (the unused ones as ''), so lines an earlier recovery left behind
(a base backup of a promoted copy carries them) cannot change this one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from opskit.restore.pitr_model import RecoveryTarget
from opskit.restore.server_user import server_user

# The time and LSN targets in postgresql.auto.conf, cleared to recover to the archive's end.
TARGET_LINE = re.compile(r"^(recovery_target_(?:time|lsn))\s*=.*$", re.MULTILINE)


AUTO_CONF = "postgresql.auto.conf"


RECOVERY_LOG = "opskit-recovery.log"  # the started server's log (pg_ctl -l), in its data directory


# opskit's recovery settings in postgresql.auto.conf sit between these lines; the next restore replaces them.
SETTINGS_BEGIN = "# opskit restore --pitr: recovery settings (begin; the next restore replaces this block)"


SETTINGS_END = "# opskit restore --pitr: recovery settings (end)"


# Every recovery target setting (PostgreSQL 15): all written, the unused ones as ''.
TARGET_SETTINGS = (
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
)


def read_text(path: Path) -> str:
    """Return the text of ``path`` ("" when it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def recovery_settings(restore_command: str, target: RecoveryTarget) -> dict[str, str]:
    """Return every setting opskit writes for a recovery to ``target``, in the order they must be written.

    Every ``recovery_target*`` is given, the unused ones as '' (PostgreSQL reads '' as "not
    set"), so a line an earlier recovery left in postgresql.auto.conf, which comes along in
    every base backup of a promoted copy, cannot change this one: of a setting given twice
    the server applies only the last line. The empty ones come first: PostgreSQL's check
    for "multiple recovery targets specified" runs as each line is applied, and an empty
    target applied after the chosen one would trip it.
    """
    chosen = target.settings()
    settings = {"restore_command": restore_command}
    settings |= {name: "" for name in TARGET_SETTINGS if name not in chosen}
    settings |= chosen
    settings |= {
        "recovery_target_inclusive": "on",
        "recovery_target_timeline": "latest",
        "recovery_target_action": "promote",
        # The copy must not archive into the archive it recovers from (its new timeline would
        # mix with the source's WAL): ARCHIVING_OFF says how to turn it on once it is a primary.
        "archive_mode": "off",
    }
    return settings


def write_recovery_settings(directory: Path, restore_command: str, target: RecoveryTarget, backup_id: str) -> None:
    """Write opskit's recovery block into ``postgresql.auto.conf``, create ``recovery.signal``; prepare the directory.

    The block (between SETTINGS_BEGIN and SETTINGS_END) replaces the one an earlier
    restore wrote, and lists every setting of :func:`recovery_settings`. The previous
    recovery's server log (RECOVERY_LOG, carried by a base backup of a restored copy) is
    removed, so the log read after this recovery is this recovery's alone: pg_basebackup
    cannot leave a file out, and dropping it from the tar would break backup_manifest.
    Raises OSError when the directory cannot be written.
    """
    conf = directory / AUTO_CONF
    kept = without_settings_block(read_text(conf))
    if kept and not kept.endswith("\n"):
        kept += "\n"
    lines = [SETTINGS_BEGIN, f"# base backup {backup_id}, recovering to {target.describe()}"]
    lines += [f"{key} = {quote_setting(value)}" for key, value in recovery_settings(restore_command, target).items()]
    lines.append(SETTINGS_END)
    partial = conf.with_name(f".{AUTO_CONF}.opskit")
    partial.write_text(kept + "\n".join(lines) + "\n", encoding="utf-8")
    partial.chmod(0o600)
    os.replace(partial, conf)  # all or nothing: a half-written block would be read by the server
    (directory / RECOVERY_LOG).unlink(missing_ok=True)
    (directory / "recovery.signal").touch()


def without_settings_block(text: str) -> str:
    """Return postgresql.auto.conf's ``text`` without opskit's recovery blocks (a block not closed is kept)."""
    out: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if block is None and line.strip() == SETTINGS_BEGIN:
            block = [line]
        elif block is not None:
            block.append(line)
            if line.strip() == SETTINGS_END:
                block = None
        else:
            out.append(line)
    return "".join(out + (block or []))


def quote_setting(value: str) -> str:
    """Return ``value`` as a quoted string of a PostgreSQL configuration file ('' and \\ escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def retarget_to_end(directory: Path) -> None:
    """Clear the time and LSN targets in ``postgresql.auto.conf`` (written at once), so the next start recovers to the end.

    Raises OSError when the file cannot be written.
    """
    conf = directory / AUTO_CONF
    text = TARGET_LINE.sub(r"\g<1> = ''", read_text(conf))
    partial = conf.with_name(f".{AUTO_CONF}.opskit")
    partial.write_text(text, encoding="utf-8")
    partial.chmod(0o600)
    user = server_user()
    if user is not None:
        os.chown(partial, user.pw_uid, user.pw_gid)  # the server reads it
    os.replace(partial, conf)
