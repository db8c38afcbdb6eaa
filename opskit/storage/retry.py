"""The retry policy every cloud storage backend shares.

Transient failures (5xx, throttling, connection resets, timeouts) are retried with
tenacity: exponential backoff with jitter, a bounded number of attempts (the storage's
``max_attempts`` option, default 5), and one structlog warning per retry. A backend
decides what is transient (it knows its SDK's exceptions); this module decides how long
to wait and when to give up. The SDKs' own retry loops are switched off by the backends
so that attempts are neither multiplied nor silent.

What is retried is always one self-contained request (one part, one block, one list
page), never a whole object: a 5xx on part 900 of a large upload costs one part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

T = TypeVar("T")

DEFAULT_MAX_ATTEMPTS = 5

# HTTP statuses worth another try: request timeout, too many requests, and server-side errors.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

log = structlog.get_logger("opskit.storage")


def _never(_exc: BaseException) -> bool:
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How a storage retries one request.

    ``is_transient`` says whether an exception is worth another attempt; ``initial_wait``
    and ``max_wait`` (seconds) bound the exponential backoff. ``storage`` names the
    storage in the log lines.
    """

    storage: str
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    is_transient: Callable[[BaseException], bool] = _never
    initial_wait: float = 0.5
    max_wait: float = 20.0

    def call(self, fn: Callable[[], T], action: str, key: str | None = None) -> T:
        """Return ``fn()``, retrying it while it raises transient errors.

        Raises the last exception unchanged when attempts run out or the error is not
        transient; translating it into an opskit error is the caller's job.
        """
        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.max_attempts)),
            # initial, 2x, 4x ... up to max_wait, plus jitter so parallel part uploads do not retry in step.
            wait=wait_exponential(multiplier=self.initial_wait, max=self.max_wait) + wait_random(0, self.initial_wait),
            retry=retry_if_exception(self.is_transient),
            before_sleep=self._log_retry(action, key),
            reraise=True,
        )
        return retrying(fn)

    def _log_retry(self, action: str, key: str | None) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            self.log_retry(action, key, state.attempt_number, exc, wait)

        return before_sleep

    def log_retry(self, action: str, key: str | None, attempt: int, exc: BaseException | None, wait: float) -> None:
        """Log one retry as a warning: which request, which attempt, why, and the wait before the next."""
        log.warning(
            "storage request failed, retrying",
            storage=self.storage,
            action=action,
            key=key,
            attempt=attempt,
            max_attempts=self.max_attempts,
            wait_seconds=round(wait, 2),
            error=f"{type(exc).__name__}: {exc}" if exc else None,
        )

    def attempts_made(self, exc: BaseException) -> str:
        """Return how the request that raised ``exc`` was tried, for an error line.

        ``after 5 attempts`` for an error this policy retries (it gave up after the last), and
        ``(not retried)`` for one it does not (a missing bucket, denied access: another attempt
        gets the same answer), so the line does not send the operator after a flaky network.
        """
        if not self.is_transient(exc):
            return "(not retried)"
        attempts = max(1, self.max_attempts)
        return f"after {attempts} attempt{'s' if attempts != 1 else ''}"

    def backoff(self, attempt: int) -> float:
        """Return the wait in seconds after failed attempt number ``attempt`` (1-based), without jitter."""
        return min(self.initial_wait * 2 ** (attempt - 1), self.max_wait)


def max_attempts_option(options: Mapping[str, Any]) -> int:
    """Return the ``max_attempts`` option of a storage's options (default 5)."""
    value = options.get("max_attempts")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return DEFAULT_MAX_ATTEMPTS
