"""SQL statement splitting, the statements that cannot run in a transaction (``docs/flyway-compat.md`` §4.1 item 5),
and which statements may change the database (``docs/migrations.md``, "Guarded runs").

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
        literal = _literal_at(text, i)
        if literal is not None:
            i = literal[1]
        elif text[i] == ";":
            statements.append(text[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if strip_leading_comments(s)]


def _literal_at(text: str, i: int) -> tuple[str, int] | None:
    """Return (kind, end) of the comment, string or quoted identifier starting at ``text[i]``, else None.

    ``kind`` is ``comment``, ``string`` ('', E'', $tag$ quoted) or ``identifier`` ("quoted"); an
    unterminated one ends at the end of ``text``.
    """
    n = len(text)
    char = text[i]
    if char == "-" and text.startswith("--", i):
        end = text.find("\n", i)
        return "comment", n if end == -1 else end + 1
    if char == "/" and text.startswith("/*", i):
        depth, i = 1, i + 2
        while i < n and depth:
            if text.startswith("/*", i):
                depth, i = depth + 1, i + 2
            elif text.startswith("*/", i):
                depth, i = depth - 1, i + 2
            else:
                i += 1
        return "comment", i
    if char == "'":
        backslash = i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
        i += 1
        while i < n:
            if (backslash and text[i] == "\\") or text.startswith("''", i):
                i += 2
            elif text[i] == "'":
                return "string", i + 1
            else:
                i += 1
        return "string", i
    if char == '"':
        end = text.find('"', i + 1)
        while end != -1 and text.startswith('""', end):
            end = text.find('"', end + 2)
        return "identifier", n if end == -1 else end + 1
    if char == "$" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
        match = _DOLLAR_TAG_RE.match(text, i)
        if match:
            end = text.find(match.group(0), match.end())
            return "string", n if end == -1 else end + len(match.group(0))
    return None


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


# --------------------------------------------------------------------------- what a statement may change
#
# A non-transactional migration runs statement by statement in autocommit, so what the statements
# before a failure did stays. ``opskit migrate --restore-on-failure`` restores the pre-migrate backup
# only when something may have changed (docs/migrations.md, "Guarded runs"), so these functions say
# False only when PostgreSQL's own rules leave no doubt; anything else counts as a change.

# Statements that never change data or schema, whatever follows the keyword: session settings
# (SET and RESET, including SET ROLE and SET LOCAL) and SHOW.
_SESSION_ONLY = frozenset({"SET", "RESET", "SHOW"})
# Statements that read, when nothing in them writes or calls a function (checked below).
_QUERIES = frozenset({"SELECT", "VALUES", "TABLE", "WITH", "("})
# Words that make a query write or lock: SELECT ... INTO creates a table, FOR UPDATE/SHARE
# (FOR NO KEY UPDATE, FOR KEY SHARE) writes row locks into the rows, a WITH may hold an
# INSERT, UPDATE, DELETE or MERGE.
_WRITING_WORDS = frozenset({"INTO", "UPDATE", "SHARE", "INSERT", "DELETE", "MERGE"})
# Keywords a parenthesis may follow without calling a function. Any other word before "(" is
# taken for a function call (setval(...), my_func()): a function may write, and which one runs
# depends on the search_path and the catalog; but see _READ_ONLY_BUILTINS.
_PAREN_KEYWORDS = frozenset(
    {
        "ALL", "AND", "ANY", "ARRAY", "AS", "BETWEEN", "BY", "DISTINCT", "ELSE", "EXCEPT", "EXISTS",
        "FROM", "HAVING", "ILIKE", "IN", "INTERSECT", "IS", "JOIN", "LATERAL", "LIKE", "MATERIALIZED",
        "NOT", "ON", "OR", "RECURSIVE", "ROW", "SELECT", "SIMILAR", "SOME", "THEN", "UNION", "USING",
        "VALUES", "WHEN", "WHERE", "WITH",
    }
)  # fmt: skip
# Built-in functions and type modifiers that only read, allowed unqualified (a qualified
# app.count(...) is a call like any other). They are pg_catalog's, which PostgreSQL searches
# before the search_path unless a search_path names pg_catalog later: a check such as
# "SELECT count(*) FROM t" or "SELECT 1.5::numeric(10, 2)" reads, and restoring a backup over
# it would only throw away what other sessions wrote meanwhile.
_READ_ONLY_BUILTINS = frozenset(
    {
        "COUNT", "SUM", "AVG", "MIN", "MAX", "BOOL_AND", "BOOL_OR", "EVERY", "ARRAY_AGG", "STRING_AGG",
        "COALESCE", "NULLIF", "GREATEST", "LEAST", "CAST", "EXTRACT", "NOW", "CURRENT_SETTING",
        "LENGTH", "LOWER", "UPPER", "ABS", "ROUND", "DATE_TRUNC", "TO_CHAR",
        "NUMERIC", "DECIMAL", "VARCHAR", "CHAR", "CHARACTER", "TIMESTAMP", "TIMESTAMPTZ", "TIME", "INTERVAL",
    }
)  # fmt: skip
# The command status tags of the statements above: a statement taken for read-only whose tag is
# another one (INSERT 0 1, ...) was not what the check read, so it counts as a change.
_READ_ONLY_TAGS = frozenset({"SELECT", "SHOW", "SET", "RESET", "EXPLAIN"})
_WORD_RE = re.compile(r'[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*|"(?:[^"]|"")*"|\S')


def may_write(statement: str) -> bool:
    """Return False only for a statement that cannot change data or schema, True for any other.

    Read-only are ``SET``/``RESET`` (session settings), ``SHOW``, ``EXPLAIN`` without ``ANALYZE``
    (it plans, it does not run) and ``SELECT``/``VALUES``/``TABLE``/``WITH`` queries without
    ``INTO``, a locking clause, a data-modifying ``WITH`` or a function call other than a few
    read-only built-ins (``count``, ``max``, ``now``, ...: ``_READ_ONLY_BUILTINS``). Conservative on
    purpose: ``SELECT setval(...)``, ``SELECT my_func()``, ``DO`` blocks, ``CALL`` and every
    other statement count as writes. What a query runs implicitly (a function behind a view, an
    operator or a cast) is not seen.
    """
    words = [w.upper() for w in _WORD_RE.findall(_code_of(statement))]
    if not words:
        return False  # only comments: nothing runs
    first = words[0]
    if first in _SESSION_ONLY:
        return False
    if first == "EXPLAIN":
        return "ANALYZE" in words or "ANALYSE" in words  # EXPLAIN ANALYZE runs the statement
    if first not in _QUERIES:
        return True
    if _WRITING_WORDS.intersection(words):
        return True
    return any(
        following == "(" and _is_call(word, before)
        for before, word, following in zip(["", *words], words, words[1:], strict=False)
    )


def _is_call(word: str, before: str) -> bool:
    """Return True when ``word`` followed by "(" calls a function that may write (``before`` is the word before it)."""
    if not (word[0].isalpha() or word[0] in '_"') or word in _PAREN_KEYWORDS:
        return False
    return before == "." or word not in _READ_ONLY_BUILTINS


def read_only_tag(status: str | None) -> bool:
    """Return True when ``status`` (a command status tag: ``SELECT 1``, ``SET``) is one a read-only statement returns."""
    if not status:
        return False
    return status.split(None, 1)[0].upper() in _READ_ONLY_TAGS


def leaves_changes_on_error(statement: str) -> bool:
    """Return True for a statement that may leave part of its work behind when it fails in autocommit.

    A failing statement in autocommit is rolled back, except those that commit on their way:
    ``CREATE INDEX CONCURRENTLY`` and ``REINDEX ... CONCURRENTLY`` leave an INVALID index, ``DROP
    INDEX CONCURRENTLY`` an invalid one, ``DETACH PARTITION ... CONCURRENTLY`` a pending detach
    (every statement PostgreSQL refuses in a transaction counts, as it runs several), and ``CALL``
    or ``DO`` may have run a ``COMMIT`` before the error.
    """
    body = strip_leading_comments(statement)
    if any(pattern.match(body) for pattern in _NON_TRANSACTIONAL):
        return True
    return re.match(r"(CALL|DO)\b", body, re.I) is not None


def _code_of(statement: str) -> str:
    """Return ``statement`` with comments removed and every string literal (quotes, dollar quotes) replaced by ``''``.

    Quoted identifiers stay, so ``"my func"(1)`` still reads as a call.
    """
    out: list[str] = []
    i = 0
    while i < len(statement):
        literal = _literal_at(statement, i)
        if literal is None:
            out.append(statement[i])
            i += 1
            continue
        kind, end = literal
        out.append({"comment": " ", "string": " '' "}.get(kind, statement[i:end]))
        i = end
    return "".join(out)
