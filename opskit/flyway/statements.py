"""SQL statement splitting, and the statements that cannot run in a transaction (``docs/flyway-compat.md`` §4.1 item 5).

Nothing in this module touches a database.
"""

from __future__ import annotations

import re

_NON_TRANSACTIONAL = [
    re.compile(r"(CREATE|DROP)\s+(DATABASE|TABLESPACE|SUBSCRIPTION)\b", re.I),
    re.compile(r"ALTER\s+SYSTEM\b", re.I),
    re.compile(r"(CREATE|DROP)\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY\b", re.I),
    re.compile(r"REINDEX\s+(\([^)]*\)\s*)?(VERBOSE\s+)?(SCHEMA|DATABASE|SYSTEM)\b", re.I),
    # Not in Flyway's list, but PostgreSQL 12+ refuses it inside a transaction just the same.
    re.compile(r"REINDEX\s+(\([^)]*\)\s*)?(VERBOSE\s+)?(INDEX|TABLE)\s+CONCURRENTLY\b", re.I),
    # ... and in the parenthesised option form, unless switched off: REINDEX (CONCURRENTLY) TABLE t.
    re.compile(r"REINDEX\s*\([^)]*\bCONCURRENTLY\b(?!\s*(FALSE|OFF|0)\b)[^)]*\)", re.I),
    # PostgreSQL 14+: ALTER TABLE ... DETACH PARTITION p CONCURRENTLY.
    re.compile(r"ALTER\s+TABLE\b.*\bDETACH\s+PARTITION\b.*\bCONCURRENTLY\s*\Z", re.I | re.S),
    re.compile(r"VACUUM\b", re.I),
    re.compile(r"DISCARD\s+ALL\b", re.I),
]
_ADD_ENUM_VALUE = re.compile(r"ALTER\s+TYPE\s+.*\bADD\s+VALUE\b", re.I | re.S)
_DOLLAR_TAG_RE = re.compile(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_LEADING_COMMENTS_RE = re.compile(r"\A(\s+|--[^\n]*(\n|\Z)|/\*.*?\*/)+", re.S)


def split_statements(text: str) -> list[str]:
    """Return the SQL statements of a script, split at top-level semicolons.

    Understands ``--`` and nested ``/* */`` comments, '' and E'' strings, "quoted" identifiers
    and $tag$ dollar quoting. Statements that hold only comments are dropped. A SQL-standard
    ``BEGIN ATOMIC ... END`` body is not understood; such scripts run whole in a transaction.
    """
    statements: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end + 1
        elif char == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif char == "'":
            backslash = i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            i += 1
            while i < n:
                if backslash and text[i] == "\\":
                    i += 2
                elif text[i] == "'":
                    if text.startswith("''", i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
        elif char == '"':
            end = text.find('"', i + 1)
            while end != -1 and text.startswith('""', end):
                end = text.find('"', end + 2)
            i = n if end == -1 else end + 1
        elif char == "$" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            match = _DOLLAR_TAG_RE.match(text, i)
            if match:
                end = text.find(match.group(0), match.end())
                i = n if end == -1 else end + len(match.group(0))
            else:
                i += 1
        elif char == ";":
            statements.append(text[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if strip_leading_comments(s)]


def strip_leading_comments(statement: str) -> str:
    """Return ``statement`` without leading whitespace and comments."""
    return _LEADING_COMMENTS_RE.sub("", statement, count=1)


def can_run_in_transaction(statement: str, server_version_num: int = 150000) -> bool:
    """Return False for statements PostgreSQL refuses inside a transaction block (``docs/flyway-compat.md`` §4.1 item 5)."""
    body = strip_leading_comments(statement)
    if any(pattern.match(body) for pattern in _NON_TRANSACTIONAL):
        return False
    return not (server_version_num < 120000 and _ADD_ENUM_VALUE.match(body))


# Statements that end the open transaction (ROLLBACK TO SAVEPOINT does not). BEGIN and START
# TRANSACTION inside one are only a warning, so they do not count.
_ENDS_TRANSACTION = re.compile(
    r"(COMMIT|END|ABORT|PREPARE\s+TRANSACTION)\b|ROLLBACK\b(?!\s+(WORK\s+|TRANSACTION\s+)?TO\b)", re.I
)
_BEGIN_ATOMIC = re.compile(r"\bBEGIN\s+ATOMIC\b", re.I)


def ends_transaction(statements: list[str], text: str) -> str | None:
    """Return the keyword (``COMMIT``, ``ROLLBACK``, ...) of the first statement that ends the open transaction, or None.

    ``statements`` are ``text``'s, from :func:`split_statements`. A SQL-standard ``BEGIN ATOMIC
    ... END`` body ends in an ``END`` the splitter takes for a statement, so ``END`` does not
    count in a script holding one.
    """
    atomic = _BEGIN_ATOMIC.search(text) is not None
    for statement in statements:
        body = strip_leading_comments(statement)
        match = _ENDS_TRANSACTION.match(body)
        if match and not (atomic and (match.group(1) or "").upper() == "END"):
            return body.split(None, 1)[0].upper()
    return None
