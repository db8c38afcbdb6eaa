"""The validation vocabulary of the configuration: Section, ConfigErrors, environment names."""

from __future__ import annotations

import builtins
import enum
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar, overload

from opskit.core.errors import ConfigError
from opskit.core.units import parse_duration, parse_size
from opskit.secrets.references import SecretRef

_D = TypeVar("_D")
_V = TypeVar("_V")
_V2 = TypeVar("_V2")
_V3 = TypeVar("_V3")
_V4 = TypeVar("_V4")


class _Required(enum.Enum):
    """The default of a getter called without one: the key must be present."""

    REQUIRED = enum.auto()


# An enum member rather than object(), so a getter's overloads can name it as a Literal type.
_REQUIRED: Final = _Required.REQUIRED


# --------------------------------------------------------------------------- validation helpers


class ConfigErrors:
    """Collects every problem found so they can be reported at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        # {path: value | secret | table} of every key a getter asked for, when set to a dict:
        # how config/environ.py learns the keys without a second list of them.
        self.asked: dict[str, str] | None = None

    def note(self, path: str, kind: str) -> None:
        """Remember that a parser asked for the key at ``path`` (only while ``asked`` records)."""
        if self.asked is not None:
            self.asked.setdefault(path, kind)

    def add(self, path: str, message: str) -> None:
        """Record ``message`` for the key at ``path``."""
        self.problems.append(f"At '{path}': {message}")

    def raise_if_any(self, source: Path | None) -> None:
        """Raise one ConfigError listing every problem (in ``problems``), if there were any."""
        if not self.problems:
            return
        where = f" in {source}" if source else ""
        count = len(self.problems)
        message = f"{count} problem{'s' if count > 1 else ''} in the configuration{where}: " + "; ".join(self.problems)
        raise ConfigError(message, hint="fix them and run 'opskit config check'", problems=self.problems)


class Section:
    """A TOML table being validated. Typed getters record errors instead of raising.

    Every key read is remembered; ``finish()`` reports the keys nobody read as unknown.

    A getter called without a default makes the key required: when it is missing or of the
    wrong kind the getter records the error and returns None, which is why the required form
    is typed ``X | None``. A getter with a default returns it for a missing key and for a
    value it rejected (the error recorded), so its type is ``X | type of the default``.
    """

    def __init__(self, raw: object, path: builtins.str, errors: ConfigErrors) -> None:
        self.path = path
        self.errors = errors
        self.seen: set[builtins.str] = set()
        if isinstance(raw, Mapping):
            self.raw: Mapping[builtins.str, Any] = raw
        else:
            errors.add(path, f"must be a table, not {type(raw).__name__}")
            self.raw = {}

    def key_path(self, key: builtins.str) -> builtins.str:
        """Return the dotted path of ``key`` in this section."""
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: builtins.str) -> builtins.bool:
        """Return True when the key is present (and mark it seen)."""
        self.seen.add(key)
        self.errors.note(self.key_path(key), "value")
        return key in self.raw

    @overload
    def get(self, key: builtins.str, kinds: type[_V], default: _D, what: builtins.str) -> _V | _D: ...
    @overload
    def get(
        self, key: builtins.str, kinds: tuple[type[_V], type[_V2]], default: _D, what: builtins.str
    ) -> _V | _V2 | _D: ...
    @overload
    def get(
        self, key: builtins.str, kinds: tuple[type[_V], type[_V2], type[_V3]], default: _D, what: builtins.str
    ) -> _V | _V2 | _V3 | _D: ...
    @overload
    def get(
        self,
        key: builtins.str,
        kinds: tuple[type[_V], type[_V2], type[_V3], type[_V4]],
        default: _D,
        what: builtins.str,
    ) -> _V | _V2 | _V3 | _V4 | _D: ...
    def get(self, key: builtins.str, kinds: type | tuple[type, ...], default: object, what: builtins.str) -> object:
        """Return ``raw[key]`` if it is an instance of one of ``kinds``, else ``default``.

        A missing key returns ``default``; a value of another kind records the error
        ``must be <what>`` and returns ``default``.
        """
        return self._lookup(key, kinds, default, what)

    def _lookup(self, key: builtins.str, kinds: type | tuple[type, ...], default: object, what: builtins.str) -> object:
        """Return ``raw[key]`` if it has one of ``kinds``; else record an error and return default.

        With ``default`` ``_REQUIRED`` a missing key is an error too, and None stands in for the value.
        """
        self.seen.add(key)
        self.errors.note(self.key_path(key), "value")
        if key not in self.raw:
            if default is _REQUIRED:
                self.errors.add(self.key_path(key), f"is required ({what})")
                return None
            return default
        value = self.raw[key]
        # bool is an int in Python; a TOML `true` is never a valid number here.
        if isinstance(value, kinds) and not (
            isinstance(value, builtins.bool) and builtins.bool not in _as_tuple(kinds)
        ):
            return value
        self.errors.add(self.key_path(key), f"must be {what}, not {_describe(value)}")
        return _fallback(default)

    @overload
    def str(self, key: builtins.str) -> builtins.str | None: ...
    @overload
    def str(self, key: builtins.str, default: _D) -> builtins.str | _D: ...
    def str(self, key: builtins.str, default: object = _REQUIRED) -> object:
        """Return a string value (None for a required key that is missing or not a string)."""
        return self._lookup(key, builtins.str, default, "a string")

    def bool(self, key: builtins.str, default: builtins.bool = False) -> builtins.bool:
        """Return a boolean value (``default`` when missing or not a boolean)."""
        return bool(self._lookup(key, builtins.bool, default, "true or false"))

    @overload
    def int(
        self, key: builtins.str, *, minimum: builtins.int | None = None, maximum: builtins.int | None = None
    ) -> builtins.int | None: ...
    @overload
    def int(
        self,
        key: builtins.str,
        default: _D,
        minimum: builtins.int | None = None,
        maximum: builtins.int | None = None,
    ) -> builtins.int | _D: ...
    def int(
        self,
        key: builtins.str,
        default: object = _REQUIRED,
        minimum: builtins.int | None = None,
        maximum: builtins.int | None = None,
    ) -> object:
        """Return an integer within [minimum, maximum]; out of range records an error and returns the default."""
        value = self._lookup(key, builtins.int, default, "an integer")
        if isinstance(value, builtins.int) and key in self.raw:
            if minimum is not None and value < minimum:
                self.errors.add(self.key_path(key), f"must be at least {minimum}, not {value}")
                return _fallback(default)
            if maximum is not None and value > maximum:
                self.errors.add(self.key_path(key), f"must be at most {maximum}, not {value}")
                return _fallback(default)
        return value

    @overload
    def duration(self, key: builtins.str) -> timedelta | None: ...
    @overload
    def duration(self, key: builtins.str, default: _D) -> timedelta | _D: ...
    def duration(self, key: builtins.str, default: object = _REQUIRED) -> object:
        """Return a timedelta from a string such as ``90m`` or ``30d``."""
        value = self._lookup(key, builtins.str, default, "a duration such as '1h' or '30d'")
        if isinstance(value, builtins.str):
            try:
                return parse_duration(value)
            except ValueError as exc:
                self.errors.add(self.key_path(key), str(exc))
                return _fallback(default)
            except OverflowError:  # e.g. '99999999999999999999d' does not fit a timedelta
                self.errors.add(self.key_path(key), f"'{value}' is too long a duration")
                return _fallback(default)
        return value

    @overload
    def size(self, key: builtins.str) -> builtins.int | None: ...
    @overload
    def size(self, key: builtins.str, default: _D) -> builtins.int | _D: ...
    def size(self, key: builtins.str, default: object = _REQUIRED) -> object:
        """Return a byte count from an integer or a string such as ``64MiB``."""
        value = self._lookup(key, (builtins.str, builtins.int), default, "a size such as '64MiB'")
        if isinstance(value, builtins.str | builtins.int) and key in self.raw:
            try:
                return parse_size(value)
            except ValueError as exc:
                self.errors.add(self.key_path(key), str(exc))
                return _fallback(default)
            except OverflowError:  # e.g. '1e999 TiB' is an infinite float
                self.errors.add(self.key_path(key), f"'{value}' is too large a size")
                return _fallback(default)
        return value

    def str_list(self, key: builtins.str, default: tuple[builtins.str, ...] = ()) -> tuple[builtins.str, ...]:
        """Return a list of strings as a tuple."""
        value = self.get(key, list, list(default), "a list of strings")
        if not all(isinstance(item, builtins.str) for item in value):
            self.errors.add(self.key_path(key), "must contain only strings")
            return default
        return tuple(value)

    def secret(self, key: builtins.str) -> SecretRef | None:
        """Return a secret reference (``env:X``, ``file:/path``, ``aws-sm://...``, or a literal).

        ``OPSKIT_<PATH>`` / ``OPSKIT_<PATH>_FILE`` in the environment (Docker's convention; see
        :func:`secret_env_name`) override the file's value; both set is an error.
        """
        value = self.get(key, builtins.str, None, "a secret reference such as 'env:NAME' or 'file:/run/secrets/x'")
        if self.errors.asked is not None:
            self.errors.asked[self.key_path(key)] = "secret"
        ref = SecretRef(value) if isinstance(value, builtins.str) else None
        name = secret_env_name(self.key_path(key))
        direct, from_file = os.environ.get(name), os.environ.get(f"{name}_FILE")
        if direct and from_file:
            self.errors.add(self.key_path(key), f"both {name} and {name}_FILE are set; unset one")
            return None
        if direct:
            # A reference to the variable, not its value: resolved on use, logged as 'env:NAME'.
            ref = SecretRef(f"env:{name}")
        elif from_file:
            ref = SecretRef(f"file:{from_file}")
        problem = ref.problem() if ref is not None else None
        if problem:
            self.errors.add(self.key_path(key), problem)
            return None
        return ref

    def table(self, key: builtins.str) -> Section:
        """Return the sub-table ``key`` as a Section (empty when absent)."""
        self.seen.add(key)
        if self.errors.asked is not None:
            self.errors.asked[self.key_path(key)] = "table"
        return Section(self.raw.get(key, {}), self.key_path(key), self.errors)

    def tables(self, key: builtins.str) -> Iterator[tuple[builtins.str, Section]]:
        """Yield (name, Section) for every sub-table of the table ``key`` (``[targets.NAME]``)."""
        parent = self.table(key)
        for name in parent.raw:
            parent.seen.add(name)
            yield name, Section(parent.raw[name], parent.key_path(name), self.errors)

    def finish(self) -> None:
        """Record an error for every key that no getter asked for."""
        for key in self.raw:
            if key not in self.seen:
                self.errors.add(self.key_path(key), "unknown key")


def secret_env_name(path: str) -> str:
    """Return the environment variable that overrides the secret at ``path``.

    ``targets.app.password`` -> ``OPSKIT_TARGETS_APP_PASSWORD`` (``_FILE`` appended for the
    file form); every character that is not a letter or digit becomes ``_``.
    """
    return "OPSKIT_" + "".join(c if c.isascii() and c.isalnum() else "_" for c in path).upper()


def _fallback(default: object) -> object:
    """Return what a getter gives back for a value it rejected: its default, or None when required."""
    return None if default is _REQUIRED else default


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _describe(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)
