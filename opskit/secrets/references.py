"""Secrets: a value type that never prints itself, and resolvers for secret references.

A configured secret is a *reference* such as ``env:APP_DB_PASSWORD`` or
``file:/run/secrets/db``; it is parsed when the config loads (so a typo is a config
error) and resolved once per run, on first use, into a :class:`Secret`. Logs name the
reference, never the value. A value with no known scheme is taken literally (allowed,
but ``opskit config check`` warns about it), except one shaped like ``scheme://...`` with a
scheme opskit does not know (``vault://app/db``), which is a config error: it is a reference
meant for a secret manager, not a password (``http(s)://`` stays literal: webhook URLs).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opskit.core.errors import ConfigError, UnreachableError
from opskit.core.redaction import forget_secrets, remember_secret


class Secret:
    """A resolved secret value. ``str()`` and ``repr()`` never show it; call :meth:`reveal`."""

    __slots__ = ("_value", "reference")

    def __init__(self, value: str, reference: str = "literal") -> None:
        self._value = value
        self.reference = reference

    def reveal(self) -> str:
        """Return the plain value. Call it only where the value leaves for its consumer."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.reference!r})"

    def __str__(self) -> str:
        return "********"

    def redacted(self) -> str:
        """Return what logs show for this secret."""
        return str(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


Resolver = Callable[[str], str]


def _resolve_env(rest: str) -> str:
    try:
        return os.environ[rest]
    except KeyError:
        raise UnreachableError(f"secret env:{rest} is not set", hint=f"export {rest} or change the reference") from None


def _resolve_file(rest: str) -> str:
    path = Path(rest)
    try:
        # Files written by editors and by `echo` end with a newline that is not part of the secret.
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise UnreachableError(
            f"secret file:{rest} cannot be read: {exc.strerror or exc}",
            hint="check the path and that opskit's user may read it",
        ) from exc


# Scheme -> resolver. The cloud secret managers' resolvers are added on first use of their scheme,
# from opskit.secrets.managers.resolvers(), so their SDKs are imported only when needed.
RESOLVERS: dict[str, Resolver] = {"env": _resolve_env, "file": _resolve_file}
# Schemes that are references even though their resolver is registered lazily.
CLOUD_SCHEMES = ("aws-sm", "gcp-sm", "azure-kv")
# A literal that looks like scheme://... is refused unless it is a web URL (a webhook or ping URL
# is a secret that is written as one).
LITERAL_URL_SCHEMES = ("http", "https")
_URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class SecretRef:
    """A parsed secret reference. ``resolve()`` returns the cached :class:`Secret`."""

    reference: str

    @property
    def scheme(self) -> str:
        """Return the reference's scheme (``env``, ``file``, ``aws-sm`` ...) or ``literal``."""
        head, sep, _ = self.reference.partition(":")
        if sep and (head in RESOLVERS or head in CLOUD_SCHEMES):
            return head
        return "literal"

    @property
    def is_literal(self) -> bool:
        """Return True when the value was written into the config as plain text."""
        return self.scheme == "literal"

    def problem(self) -> str | None:
        """Return why the reference is malformed (for a config error), or None when it is well formed.

        Checks the shape only; nothing is read or fetched.
        """
        scheme = self.scheme
        head, _, rest = self.reference.partition(":")
        if scheme == "literal" and _URL_LIKE.match(self.reference) and head.lower() not in LITERAL_URL_SCHEMES:
            # vault://app/db would otherwise be sent as the password itself: a reference to a
            # manager opskit does not know is a mistake, not a literal (the value is not shown).
            return (
                f"'{head}://' is not a secret scheme opskit knows (use env:, file:, "
                f"{', '.join(s + '://' for s in CLOUD_SCHEMES)}); a literal value with '://' goes through env: or file:"
            )
        if scheme == "env" and not rest.strip():
            return "names no environment variable (use 'env:NAME')"
        if scheme == "file" and not rest.strip():
            return "names no file (use 'file:/run/secrets/NAME')"
        if scheme in CLOUD_SCHEMES:
            from opskit.secrets import managers

            try:
                managers.parse(self.reference)
            except ConfigError as exc:
                return exc.message
        return None

    def resolve(self) -> Secret:
        """Resolve the reference once per process and return the secret.

        Raises UnreachableError when the source cannot be read, ConfigError when the
        scheme needs an SDK that is not installed.
        """
        with _cache_lock:
            cached = _cache.get(self.reference)
            if cached is not None:
                return cached
        value = self._fetch()
        secret = Secret(value, reference=self.describe())
        with _cache_lock:
            _cache[self.reference] = secret
        remember_secret(value)
        return secret

    def _fetch(self) -> str:
        scheme = self.scheme
        if scheme == "literal":
            return self.reference
        _, _, rest = self.reference.partition(":")
        if scheme not in RESOLVERS:
            from opskit.secrets import managers

            for name, cloud_resolver in managers.resolvers().items():
                RESOLVERS.setdefault(name, cloud_resolver)
        resolver = RESOLVERS.get(scheme)
        if resolver is None:
            raise ConfigError(f"no resolver for secret scheme {scheme}:")
        return resolver(rest)

    def describe(self) -> str:
        """Return a loggable description: the reference itself, or 'literal' for inline values."""
        return "literal value" if self.is_literal else self.reference

    def __repr__(self) -> str:
        return f"SecretRef({self.describe()!r})"

    __str__ = describe
    redacted = describe


_cache: dict[str, Secret] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every resolved secret (tests, and the daemon between config reloads)."""
    with _cache_lock:
        _cache.clear()
    forget_secrets()
