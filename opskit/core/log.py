"""structlog setup: a console renderer on a TTY, JSON lines otherwise, always to stderr.

Stdout is for results (tables, summaries, ``--json`` documents); logs go to stderr so a
script can pipe one without the other. A redaction processor runs before rendering so no
renderer can ever print a secret.
"""

from __future__ import annotations

import logging
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


def configure_logging(debug: bool = False, json_logs: bool | None = None) -> None:
    """Configure structlog for this process: level INFO (DEBUG with ``debug``), console or JSON.

    ``json_logs`` None means: JSON unless stderr is a terminal.
    """
    use_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    level = logging.DEBUG if debug else logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
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


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """Return a structlog logger (lazy: it picks up :func:`configure_logging` whenever that runs)."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
