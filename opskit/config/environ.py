"""Every configuration key from the environment: ``OPSKIT_<SECTION>_<KEY>`` and ``OPSKIT_<TABLE>_<NAME>_<KEY>``.

The rule is the one secrets always had (:func:`opskit.config.schema.secret_env_name`): the key's
dotted path, upper-cased, every character that is not a letter or digit turned into ``_``::

    OPSKIT_COMPRESSION_LEVEL=6                 [compression] level = 6
    OPSKIT_STORAGES_OFFSITE_URL=s3://b/x       [storages.offsite] url = "s3://b/x"
    OPSKIT_TARGETS_APP_DSN="host=db dbname=app" [targets.app] dsn = "host=db dbname=app"
    OPSKIT_TARGETS_APP_STORAGES='["offsite"]'  [targets.app] storages = ["offsite"]
    OPSKIT_NOTIFY_PING_URLS_BACKUP=https://hc/x [notify.ping_urls] backup = "https://hc/x"

A value is read as a TOML value when it is one (``6``, ``true``, ``["a", "b"]``, ``"quoted"``),
else as the plain string. The environment wins over the file. A variable may create a target or
storage the file does not have; its name is the ``<NAME>`` part lower-cased (a name the file
already has is matched whatever its case). Where a name could end in several ways, the longest
key wins (``OPSKIT_STORAGES_S3_ENDPOINT_URL`` is storage ``s3``'s ``endpoint_url``). Secret keys
keep their own handling in ``Section.secret`` (``OPSKIT_<PATH>`` or ``OPSKIT_<PATH>_FILE``).

Any other ``OPSKIT_*`` variable is an error naming it, so a typo never silently does nothing.
Left alone: ``OPSKIT_CONFIG``, the run context opskit gives its hooks (``OPSKIT_VERB`` ...), and
every variable a secret reference names (``env:OPSKIT_WEBHOOK_URL``).

The known keys are learned by parsing a probe document once and recording every key the section
parsers ask for, so this module never keeps a second list of keys that could drift.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from opskit.config.schema import ConfigErrors, secret_env_name
from opskit.storage.registry import BACKENDS, COMMON_OPTIONS

PREFIX = "OPSKIT_"
# Variables opskit reads or sets itself that are not configuration keys.
RESERVED = frozenset(
    {
        "OPSKIT_CONFIG",
        "OPSKIT_HOOK",
        "OPSKIT_VERB",
        "OPSKIT_TARGET",
        "OPSKIT_JOB",
        "OPSKIT_BACKUP_ID",
        "OPSKIT_EXIT_CODE",
        "OPSKIT_ERROR",
    }
)
NAMED_TABLES = ("targets", "storages", "retention")
_PROBE_NAME = "p"
# Every section present (empty) and one table of each named kind, so every parser runs once.
PROBE_DOC: dict[str, Any] = {
    "targets": {_PROBE_NAME: {}},
    "storages": {_PROBE_NAME: {"url": "file:///opskit-probe"}},
    "retention": {_PROBE_NAME: {}},
    "objectives": {},
    "compression": {},
    "encryption": {},
    "tools": {},
    "migrations": {},
    "drill": {},
    "notify": {},
    "daemon": {},
    "hooks": {},
    "wal": {},
}

Probe = Callable[[ConfigErrors], None]


class Schema:
    """The configuration keys as the parsers asked for them: fixed paths, named-table keys, free tables."""

    def __init__(self, asked: Mapping[str, str]) -> None:
        self.fixed: dict[str, tuple[str, str]] = {}  # env name -> (path, kind)
        self.named: dict[str, dict[str, str]] = {table: {} for table in NAMED_TABLES}  # table -> {key: kind}
        self.free: list[str] = []  # tables of free keys (notify.ping_urls, migrations.placeholders)
        for path, kind in asked.items():
            parts = path.split(".")
            if len(parts) >= 3 and parts[0] in NAMED_TABLES and parts[1] == _PROBE_NAME:
                self.named[parts[0]][".".join(parts[2:])] = kind
                continue
            if kind == "table":
                if not any(other.startswith(path + ".") for other in asked):
                    self.free.append(path)
                continue
            self.fixed[secret_env_name(path)] = (path, kind)
        # A storage's options depend on its scheme: the registry lists them all.
        for backend in BACKENDS.values():
            for option in backend.options | COMMON_OPTIONS:
                kind = "secret" if option in backend.secret_options else "value"
                self.named["storages"].setdefault(option, kind)


_schema: Schema | None = None


def schema(probe: Probe) -> Schema:
    """Return the key schema, learned once per process by running ``probe`` on a recording collector."""
    global _schema
    if _schema is None:
        errors = ConfigErrors()
        errors.asked = {}
        probe(errors)
        _schema = Schema(errors.asked)
    return _schema


def config_variables(environ: Mapping[str, str]) -> list[str]:
    """Return the ``OPSKIT_*`` names in ``environ`` that may configure opskit (reserved ones left out)."""
    return sorted(name for name in environ if name.startswith(PREFIX) and name not in RESERVED)


def overlay(raw: Mapping[str, Any], environ: Mapping[str, str], errors: ConfigErrors, probe: Probe) -> dict[str, Any]:
    """Return a copy of the parsed document ``raw`` with every ``OPSKIT_*`` key of ``environ`` set in it.

    Records on ``errors`` one problem per variable that names no key (the variable's name as
    its path). Secret keys are left for ``Section.secret``, which reads them itself; a named
    table they belong to is created so its parser asks for them.
    """
    doc: dict[str, Any] = copy.deepcopy(dict(raw))
    names = config_variables(environ)
    if not names:
        return doc
    keys = schema(probe)
    values = {name: _value(environ[name]) for name in names}
    referenced = set(_references(raw)) | {ref for value in values.values() for ref in _references(value)}
    for name in names:
        if name in referenced:
            continue
        found = _resolve(name, keys, doc)
        if found is None and name.endswith("_FILE"):
            found = _resolve(name.removesuffix("_FILE"), keys, doc)
            if found is not None and found[1] != "secret":
                found = None  # only secrets have the _FILE form
        if found is None:
            errors.add(
                name,
                "this environment variable names no configuration key (the rule: OPSKIT_<SECTION>_<KEY> or "
                "OPSKIT_<TABLE>_<NAME>_<KEY>, e.g. OPSKIT_STORAGES_LOCAL_URL); unset or rename it",
            )
            continue
        path, kind = found
        if kind == "secret":
            _table_at(doc, path[:-1])  # Section.secret reads the variable; its table must exist
            continue
        _table_at(doc, path[:-1])[path[-1]] = values[name]
    return doc


def _resolve(name: str, keys: Schema, doc: Mapping[str, Any]) -> tuple[list[str], str] | None:
    """Return (path parts, kind) of the key variable ``name`` sets, or None when it names none."""
    fixed = keys.fixed.get(name)
    if fixed is not None:
        return fixed[0].split("."), fixed[1]
    for table in NAMED_TABLES:
        head = secret_env_name(table) + "_"
        if not name.startswith(head):
            continue
        rest = name[len(head) :]
        existing = {_env_part(n): n for n in doc.get(table, {}) if isinstance(doc.get(table), Mapping)}
        candidates: list[tuple[bool, int, str, str, str]] = []
        for key, kind in keys.named[table].items():
            tail = "_" + _env_part(key)
            if rest.endswith(tail) and len(rest) > len(tail):
                part = rest[: -len(tail)]
                candidates.append((part in existing, len(key), existing.get(part, part.lower()), key, kind))
        if candidates:
            _, _, table_name, key, kind = max(candidates)
            return [table, table_name, *key.split(".")], kind
    for free in keys.free:
        head = secret_env_name(free) + "_"
        if name.startswith(head) and len(name) > len(head):
            return [*free.split("."), name[len(head) :].lower()], "value"
    return None


def _env_part(text: str) -> str:
    return secret_env_name(text).removeprefix(PREFIX)


def _table_at(doc: dict[str, Any], path: list[str]) -> dict[str, Any]:
    node = doc
    for part in path:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    return node


def _value(text: str) -> Any:
    """Return ``text`` as the TOML value it spells, else as the string itself."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["v"] if set(parsed) == {"v"} else text


def _references(value: Any) -> Iterator[str]:
    """Yield the variable names of every ``env:NAME`` reference inside a parsed TOML value."""
    if isinstance(value, str):
        if value.startswith("env:"):
            yield value.removeprefix("env:")
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)
