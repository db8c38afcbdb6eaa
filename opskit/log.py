"""structlog setup: a console renderer on a TTY, JSON lines otherwise, always to stderr.

Stdout is for results (tables, summaries, ``--json`` documents); logs go to stderr so a
script can pipe one without the other. A redaction processor runs before rendering so no
renderer can ever print a secret.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

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


def redact_text(text: str) -> str:
    """Return ``text`` with passwords inside URLs and libpq key/value DSNs replaced."""
    from opskit.secrets import resolved_values

    text = _URL_PASSWORD_RE.sub(lambda m: m.group("scheme") + REDACTED, text)
    text = _KV_PASSWORD_RE.sub(lambda m: m.group("key") + REDACTED, text)
    # Last line of defence: a resolved secret quoted verbatim (by a library's error, say) is hidden too.
    for value in resolved_values():
        if len(value) >= _MIN_SCRUB_LENGTH and value in text:
            text = text.replace(value, REDACTED)
    return text


def _redact_value(key: str, value: Any) -> Any:
    from opskit.secrets import Secret, SecretRef

    if isinstance(value, Secret):
        return str(value)
    if isinstance(value, SecretRef):
        return value.describe()
    if isinstance(value, str):
        if _SECRET_KEY_RE.search(key) and not value.startswith(("env:", "file:", "aws-sm://", "gcp-sm://", "azure-kv://")):
            return REDACTED
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: redact secret-looking keys and DSN passwords in every field.

    A traceback (``exc_info``) is rendered to text here first, so it is redacted too.
    """
    if event_dict.get("exc_info"):
        event_dict = structlog.processors.format_exc_info(_logger, _method, event_dict)
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def configure_logging(debug: bool = False, json_logs: bool | None = None) -> None:
    """Configure structlog for this process: level INFO (DEBUG with ``debug``), console or JSON.

    ``json_logs`` None means: JSON unless stderr is a terminal.
    """
    use_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    level = logging.DEBUG if debug else logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_processor,
            structlog.processors.format_exc_info if use_json else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Library loggers (boto3, urllib3, azure) stay quiet unless debugging.
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "azure", "google", "s3transfer", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.INFO if debug else logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    """Return a structlog logger."""
    return structlog.get_logger(name)
