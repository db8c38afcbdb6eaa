"""structlog setup: a console renderer on a TTY, JSON lines otherwise, always to stderr.

Stdout is for results (tables, summaries, ``--json`` documents); logs go to stderr so a
script can pipe one without the other. A redaction processor runs before rendering so no
renderer can ever print a secret. The console renderer has no colours when ``NO_COLOR`` is
set to anything non-empty (https://no-color.org) or stderr is not a terminal.

Every JSON line has these fields (docs/logging.md is the schema):

- ``timestamp`` (ISO 8601, UTC), ``level``, ``logger`` (the module, ``opskit.backup.backup``);
- ``event`` (structlog's name) and ``message`` (the same text, for collectors that read
  ``message``: Elastic/ECS, Datadog, Google Cloud Logging, Loki's defaults);
- context bound per run: ``target``, ``backup_id``, ``job``; durations are always
  ``duration_seconds``, sizes ``bytes``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from opskit.core.redaction import redact_value


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: redact secret-looking keys and DSN passwords in every field.

    A traceback (``exc_info``) is rendered to text here first, so it is redacted too.
    """
    if event_dict.get("exc_info"):
        event_dict = structlog.processors.format_exc_info(_logger, _method, event_dict)
    for key in list(event_dict):
        event_dict[key] = redact_value(key, event_dict[key])
    return event_dict


class NamedPrintLogger(structlog.PrintLogger):
    """structlog's PrintLogger with the name given to :func:`get_logger` (for the ``logger`` field)."""

    def __init__(self, file: Any = None, name: str | None = None) -> None:
        super().__init__(file=file)
        self.name = name


def logger_name_processor(logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: put the module name given to :func:`get_logger` in the ``logger`` field."""
    name = getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def message_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: copy ``event`` to ``message`` (JSON lines only; ``event`` stays for compatibility)."""
    if "event" in event_dict:
        event_dict.setdefault("message", event_dict["event"])
    return event_dict


def colours_wanted(stream: Any = None) -> bool:
    """Return True when ``stream`` (default stderr) is a terminal and ``NO_COLOR`` is unset or empty."""
    stream = sys.stderr if stream is None else stream
    return bool(stream.isatty()) and not os.environ.get("NO_COLOR")


def configure_logging(debug: bool = False, json_logs: bool | None = None, quiet: bool = False) -> None:
    """Configure structlog for this process: level INFO (DEBUG with ``debug``, WARNING with ``quiet``).

    ``json_logs`` None means: JSON unless stderr is a terminal. ``debug`` wins over ``quiet``.
    """
    use_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=colours_wanted())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            logger_name_processor,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_processor,
            structlog.processors.format_exc_info if use_json else structlog.processors.StackInfoRenderer(),
            *([message_processor] if use_json else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # get_logger(name) hands `name` to the factory: the logger keeps it for logger_name_processor.
        logger_factory=lambda *args: NamedPrintLogger(file=sys.stderr, name=args[0] if args else None),
        cache_logger_on_first_use=False,
    )
    # Library loggers (boto3, urllib3, azure, google-auth) stay quiet unless debugging, and what
    # they do say is rendered as opskit's own lines: a raw "WARNING:google.auth._default:..."
    # would be the one line on stderr a JSON log collector cannot parse.
    _route_library_logging(renderer, use_json, logging.DEBUG if debug else logging.WARNING)
    for noisy in ("botocore", "boto3", "urllib3", "azure", "google", "s3transfer", "apscheduler"):
        library = logging.getLogger(noisy)
        library.setLevel(logging.INFO if debug else logging.WARNING)
        # google-auth turns propagation of "google" off when it first finds that logger
        # unconfigured (a GCS storage opened before this ran): its warnings would vanish.
        library.propagate = True


_LIBRARY_HANDLER = "opskit-library-records"


def _route_library_logging(renderer: Any, use_json: bool, level: int) -> None:
    """Send the standard library's log records (the SDKs') through ``renderer`` on stderr, at ``level`` and above."""
    formatter = structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_processor,
            *([message_processor] if use_json else []),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name(_LIBRARY_HANDLER)
    root = logging.getLogger()
    # configure_logging may run again (tests, the daemon): replace our handler, keep any other.
    root.handlers = [h for h in root.handlers if h.get_name() != _LIBRARY_HANDLER] + [handler]
    root.setLevel(level)


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """Return a structlog logger whose lines carry ``logger=name`` (lazy: it picks up
    :func:`configure_logging` whenever that runs)."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
