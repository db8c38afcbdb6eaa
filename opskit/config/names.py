"""Names that can be stored: target and storage names become object-key segments.

A target's backups live under ``<target>/<backup_id>/`` and a storage's name becomes a
metric label and part of ``OPSKIT_STORAGES_<NAME>_<KEY>``. A name such as ``a/b``, ``.``,
``..`` or ``""`` would be written under a key that listing never finds again (the backup
would be invisible to list, restore, verify and prune), so names are checked at load.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable

from opskit.config.schema import ConfigErrors

MAX_NAME_LENGTH = 64
# A letter or digit first (no ".", "..", hidden names or option-like "-x"), then letters,
# digits, "_", "-" and "."; nothing that a storage, a shell or a URL would reinterpret.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def name_problem(name: str) -> str | None:
    """Return why ``name`` cannot be a target or storage name, or None when it can."""
    if name == "":
        return "the name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name is longer than {MAX_NAME_LENGTH} characters"
    if _NAME_RE.fullmatch(name) is None:
        return (
            f"the name {name!r} cannot be stored as an object-key segment: use letters, digits, "
            "'_', '-' and '.', starting with a letter or digit (no '/', no '.' or '..', no spaces "
            "or control characters)"
        )
    return None


def label_problem(label: str) -> str | None:
    """Return why ``label`` cannot label a backup (``--label``, a job's ``labels``), or None when it can.

    ``backup list`` joins a backup's labels with commas in one table cell: a comma would make
    one label read as two, a newline or other control character would break the table, and an
    empty label would show as nothing at all.
    """
    if not label.strip():
        return "a label cannot be empty"
    bad = next((c for c in label if c == "," or _unprintable(c)), None)
    if bad is not None:
        return (
            f"{label!r} contains {bad!r}: labels are printable text without commas (backup list joins them with commas)"
        )
    return None


def _unprintable(char: str) -> bool:
    """Return True for a control, format or unassigned character, or a line or paragraph separator."""
    category = unicodedata.category(char)
    return category.startswith("C") or category in ("Zl", "Zp")


def check_names(section: str, names: Iterable[str], errors: ConfigErrors) -> None:
    """Record an ``At '<section>.<name>'`` error for every name that is not a safe key segment."""
    for name in names:
        problem = name_problem(name)
        if problem is not None:
            # Quote the name in the path: "targets.." would hide which name it was.
            errors.add(f"{section}.{json.dumps(name)}", problem)
