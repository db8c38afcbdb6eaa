"""Placeholders (``docs/flyway-compat.md`` §5) and the text a script runs as, with its resolved checksums.

``${name}`` is replaced case-insensitively, emulating Flyway's ``PlaceholderReplacingReader``;
a script's ``.conf`` may turn replacement off; a repeatable's checksum is taken after
replacement (§1.2).

Nothing in this module touches a database.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opskit.config.migrations import MigrationSettings, PlaceholderSyntax
from opskit.core.errors import PlaceholderError
from opskit.flyway.checksums import checksum_text
from opskit.flyway.scripts import Script


def replace_placeholders(
    text: str, values: Mapping[str, str], prefix: str = "${", suffix: str = "}", separator: str = ":"
) -> str:
    """Return ``text`` with ``${name}`` replaced, exactly as Flyway's PlaceholderReplacingReader does.

    ``values`` keys must be lowercase (names match case-insensitively). Chars read ahead while
    looking for the prefix are emitted and never re-examined, so ``$${a}`` stays as it is but
    ``$$${a}`` becomes ``$$<value>``. Raises PlaceholderError for a name with no value.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char != prefix[0]:
            out.append(char)
            i += 1
            continue
        # Read ahead while the buffer is still a prefix of the placeholder prefix.
        j = 1
        while j < len(prefix) and i + j < n and text[i + j] == prefix[j]:
            j += 1
        if j < len(prefix):
            consumed = min(j + 1, n - i)  # the mismatching char was read too, and is emitted as is
            out.append(text[i : i + consumed])
            i += consumed
            continue
        start = i + j
        end = text.find(suffix, start)
        if end == -1:
            # At EOF Flyway cuts len(suffix) chars off whatever it read.
            name = text[start : n - len(suffix)] if n - start >= len(suffix) else ""
            i = n
        else:
            name = text[start:end]
            i = end + len(suffix)
        out.append(_placeholder_value(name, values, prefix, suffix, separator))
    return "".join(out)


def _placeholder_value(name: str, values: Mapping[str, str], prefix: str, suffix: str, separator: str) -> str:
    key = name.lower()
    if key in values:
        return values[key] or ""
    if key.startswith("flyway" + separator):
        raise PlaceholderError(f"Failed to populate value for default placeholder: {prefix}{name}{suffix}")
    raise PlaceholderError(
        f"No value provided for placeholder: {prefix}{name}{suffix}.  Check your configuration!",
        hint=f"set it under [migrations.placeholders] or as FLYWAY_PLACEHOLDERS_{name.upper()}",
    )


def placeholder_values(
    settings: MigrationSettings, schema: str, user: str, database: str, timestamp: str
) -> dict[str, str]:
    """Return user placeholders (lowercase keys) with the ``flyway:*`` built-ins on top."""
    sep = settings.placeholder_syntax.separator
    values = {k.lower(): v for k, v in settings.placeholders.items()}
    builtins = {
        "defaultSchema": schema,
        "user": user,
        "database": database,
        "timestamp": timestamp,
        "workingDirectory": os.getcwd(),
        "table": settings.table,
        "environment": settings.environment,
    }
    values.update({f"flyway{sep}{k}".lower(): v for k, v in builtins.items()})
    return values


def script_values(script: Script, values: Mapping[str, str], syntax: PlaceholderSyntax) -> dict[str, str]:
    """Return the placeholder values for one script: ``values`` plus ``flyway:filename`` for it."""
    scoped = dict(values)
    scoped[f"flyway{syntax.separator}filename".lower()] = script.filename
    return scoped


def replaces_placeholders(script: Script, syntax: PlaceholderSyntax) -> bool:
    """Return True when placeholders are replaced in ``script`` (global switch, then its .conf)."""
    if script.options.placeholder_replacement is not None:
        return script.options.placeholder_replacement
    return syntax.enabled


def executable_text(script: Script, values: Mapping[str, str], syntax: PlaceholderSyntax) -> str:
    """Return the SQL to run: the script with placeholders replaced (when replacement is on)."""
    if not replaces_placeholders(script, syntax):
        return script.text
    return replace_placeholders(
        script.text, script_values(script, values, syntax), syntax.prefix, syntax.suffix, syntax.separator
    )


def resolved_checksums(script: Script, values: Mapping[str, str], syntax: PlaceholderSyntax) -> tuple[int, int | None]:
    """Return (checksum, equivalent checksum) as Flyway resolves them (``docs/flyway-compat.md`` §1.2).

    Versioned: the raw checksum, no equivalent. Repeatable: the checksum after placeholder
    replacement, with the raw checksum as the equivalent that also matches.
    """
    if script.version is not None:
        return script.raw_checksum, None
    if not replaces_placeholders(script, syntax):
        return script.raw_checksum, script.raw_checksum
    return checksum_text(executable_text(script, values, syntax)), script.raw_checksum


def check_placeholders(script: Script, values: Mapping[str, str], syntax: PlaceholderSyntax) -> None:
    """Raise PlaceholderError (exit 2) when running ``script`` would, for a placeholder with no value.

    Planning calls it for every pending script and callback, so a run that would stop on one
    half-way is refused before anything is applied or backed up.
    """
    executable_text(script, values, syntax)
