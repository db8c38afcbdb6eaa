"""Redaction of secrets from any text opskit prints or logs.

A leaf: it imports nothing from opskit. Three layers of defence, in order: values that know
how to show themselves (:class:`Redactable`: a resolved ``Secret``, a ``SecretRef``), keys
whose names say they hold a secret, and patterns (``user:password@`` in URLs, ``password=``
in libpq strings). Last, every secret value resolved so far is searched for verbatim:
``opskit.secrets.references`` registers each value here with :func:`remember_secret` when it
resolves it, and ``core.execute`` also keeps those values out of child environments.
"""

from __future__ import annotations

import re
import threading
from typing import Protocol, runtime_checkable

# Keys whose values are secrets whatever they contain.
_SECRET_KEY_RE = re.compile(r"(pass(word)?|secret|token|api[_-]?key|private[_-]?key|credential|identity|sas)", re.I)
# user:password@ in URLs and DSNs, and password=... in libpq key/value strings.
# The password runs to the LAST '@' before the host, so an unencoded '@' inside it is still hidden.
_URL_PASSWORD_RE = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>\S+?)(?=@[^@\s/?#]*(?:[/?#\s]|$))", re.I
)
# password=, sslpassword=, PGPASSWORD=, aws_secret_access_key=, token=, SAS sig= ...
_KV_PASSWORD_RE = re.compile(
    r"(?P<key>\b(?:\w*(?:password|secret|token|credential)\w*|sig|api_?key)\s*=\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'|\S+)",
    re.I,
)
REDACTED = "[redacted]"
# Resolved secrets shorter than this are not searched for in text: too likely to hit innocent words.
_MIN_SCRUB_LENGTH = 4


_known_secrets: set[str] = set()
_known_lock = threading.Lock()


@runtime_checkable
class Redactable(Protocol):
    """A value that knows how it may be shown (a resolved Secret, a SecretRef)."""

    def redacted(self) -> str:
        """Return the text that may be printed in place of the value."""
        ...


def remember_secret(value: str) -> None:
    """Record a resolved secret's plain value so that no text opskit prints can contain it."""
    if value:
        with _known_lock:
            _known_secrets.add(value)


def forget_secrets() -> None:
    """Forget every remembered secret value (tests, and the daemon between config reloads)."""
    with _known_lock:
        _known_secrets.clear()


def resolved_values() -> frozenset[str]:
    """Return the plain values of every secret resolved so far (to keep them out of text and child environments)."""
    with _known_lock:
        return frozenset(_known_secrets)


def redact_text(text: str) -> str:
    """Return ``text`` with passwords inside URLs and libpq key/value DSNs replaced."""
    text = _URL_PASSWORD_RE.sub(lambda m: m.group("scheme") + REDACTED, text)
    text = _KV_PASSWORD_RE.sub(lambda m: m.group("key") + REDACTED, text)
    # Last line of defence: a resolved secret quoted verbatim (by a library's error, say) is hidden too.
    for value in resolved_values():
        if len(value) >= _MIN_SCRUB_LENGTH and value in text:
            text = text.replace(value, REDACTED)
    return text


def redact_value(key: str, value: object) -> object:
    """Return ``value`` fit to print under ``key``: secrets by description, secret-looking keys hidden.

    Dicts and lists are redacted item by item (a tuple comes back as a list); other values are returned as they are.
    """
    if isinstance(value, Redactable):
        return value.redacted()
    if isinstance(value, str):
        if _SECRET_KEY_RE.search(key) and not value.startswith(
            ("env:", "file:", "aws-sm://", "gcp-sm://", "azure-kv://")
        ):
            return REDACTED
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    return value
