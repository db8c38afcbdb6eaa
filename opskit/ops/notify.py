"""Notifications: webhooks and healthchecks.io-style heartbeat pings.

::

    [notify]
    webhooks = ["env:OPSKIT_WEBHOOK_URL"]   # URLs or secret references; JSON payload by default
    slack = false                          # true: post Slack-compatible {"text": "..."} instead
    on_success = false                     # webhooks fire on failure; true adds successes
    pings = ["file:/run/secrets/hc_url"]   # every run: <url>/start before, <url> on success, <url>/fail on failure
    ping_urls = { backup = "env:HC_BACKUP", "nightly-prune" = "file:/run/secrets/hc_prune" }
                                           # one check per job name (first) or verb: no two jobs flap one check
    timeout = "10s"                        # per HTTP request
    attempts = 3                           # tries per URL (tenacity, exponential backoff)

A ping follows the convention of the service its URL names, each with the exit code and a
short log (the summary line and the error):

- healthchecks.io and anything else: POST ``<url>/start``, ``<url>``, ``<url>/fail``, the
  log in the body (healthchecks.io shows it; Uptime Kuma's and Cronitor's hosts are told apart);
- Uptime Kuma (``/api/push/`` in the path): ``?status=up|down&msg=...`` at the end only (a push
  monitor has no start signal);
- Cronitor (``cronitor.link`` / ``cronitor.io``): ``?state=run|complete|fail&status_code=N&message=...``.

A notification is a side channel: whatever happens while sending it is logged as a
warning and never changes the result of the job it describes. Only the standard library
is used for HTTP, so the daemon needs no extra dependency to alert.

A notification never holds up a daemon's shutdown: given the run's ``cancel`` event, a request
in flight when it is set is abandoned and no retry follows; one sent after it (the final
``aborted`` signal) gets a single attempt of at most :data:`CANCELLED_TIMEOUT`. Without that a
receiver that accepts and never answers (3 attempts of 10 s) outlived the shutdown grace, so
the daemon exited 1 with the run's ledger row left ``running``.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opskit.config.notify import NotifySettings
from opskit.core.errors import OpskitError
from opskit.core.log import get_logger
from opskit.core.redaction import redact_text
from opskit.secrets.references import SecretRef

START, SUCCESS, FAILURE, ABORTED = "start", "success", "failure", "aborted"

log = get_logger(__name__)
EVENT_KINDS = (START, SUCCESS, FAILURE, ABORTED)
# The one attempt a notification sent after a cancel gets: well inside the daemon's 20 s abort wait.
CANCELLED_TIMEOUT = 5.0
# How often a request waiting on a receiver checks the run's cancel event.
_CANCEL_POLL = 0.1


@dataclass(frozen=True)
class Event:
    """One thing worth telling people about: a job run starting, succeeding, failing or aborted."""

    kind: str
    job: str
    action: str
    target: str | None = None
    slot: str | None = None
    duration_seconds: float | None = None
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def summary(self) -> str:
        """Return one human line: ``opskit backup job 'hourly-backup' (target app) FAILED: why``.

        A run from the command line has no job name (``job`` is empty): ``opskit backup (target app) ...``.
        """
        verb = {START: "started", SUCCESS: "succeeded", FAILURE: "FAILED", ABORTED: "was aborted"}[self.kind]
        where = f" (target {self.target})" if self.target else ""
        took = f" after {self.duration_seconds:.1f}s" if self.duration_seconds is not None else ""
        why = f": {self.error}" if self.error else ""
        job = f" job '{self.job}'" if self.job else ""
        return f"opskit {self.action}{job}{where} {verb}{took}{why}"

    def log_text(self) -> str:
        """Return the short log a ping carries: the summary line, then the exit code when the run ended."""
        lines = [self.summary()]
        if self.exit_code is not None:
            lines.append(f"exit code: {self.exit_code}")
        backup_id = self.details.get("backup_id")
        if backup_id:
            lines.append(f"backup: {backup_id}")
        return "\n".join(lines) + "\n"

    def payload(self) -> dict[str, Any]:
        """Return the JSON document a webhook receives."""
        return {
            "source": "opskit",
            "event": self.kind,
            "job": self.job,
            "action": self.action,
            "target": self.target,
            "slot": self.slot,
            "duration_seconds": self.duration_seconds,
            "error": self.error,
            "details": dict(self.details),
            "exit_code": self.exit_code,
            "summary": self.summary(),
        }


class _SendFailed(Exception):
    """One HTTP attempt failed in a way worth retrying."""


class _Abandoned(Exception):
    """The run was cancelled while a request waited on its receiver."""


def _post(url: str, body: bytes, content_type: str, timeout: float) -> None:
    # urllib.request (http.client, ssl) and tenacity load only when a notification is sent:
    # every verb imports this module, few runs send anything (~12 ms of start-up).
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        # A 4xx other than 408/429 will not get better by retrying; report it at once.
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise OpskitError(f"HTTP {exc.code} {exc.reason}") from exc
        raise _SendFailed(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _SendFailed(str(reason)) from exc


def send(
    url: str, body: bytes, content_type: str, settings: NotifySettings, cancel: threading.Event | None = None
) -> bool:
    """POST ``body`` to ``url`` with bounded retries; return True on success.

    With ``cancel`` (the run's event), a request in flight when it is set is abandoned and not
    retried, and a send that starts after it makes one attempt of at most :data:`CANCELLED_TIMEOUT`
    seconds: a notification never holds up a shutdown. Never raises: every failure becomes a
    structlog warning naming the URL without secrets.
    """
    import time

    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_when_event_set, wait_exponential
    from tenacity.stop import stop_base

    shown = _shown_url(url)
    timeout = settings.timeout.total_seconds()
    attempts = settings.attempts
    watch = cancel
    if cancel is not None and cancel.is_set():
        # The run is being aborted: this is its last word, so send it, but briefly and once.
        attempts, timeout, watch = 1, min(timeout, CANCELLED_TIMEOUT), None
    stop: stop_base = stop_after_attempt(attempts)
    if watch is not None:
        stop = stop | stop_when_event_set(watch)

    def sleep(seconds: float) -> None:
        # A backoff sleep ends early when the run is cancelled (the stop above then ends the loop).
        if watch is not None:
            watch.wait(seconds)
        else:
            time.sleep(seconds)

    retrying = Retrying(
        stop=stop,
        wait=wait_exponential(multiplier=0.5, max=5),
        retry=retry_if_exception_type(_SendFailed),
        reraise=True,
        sleep=sleep,
    )
    try:
        for attempt in retrying:
            with attempt:
                _post_watched(url, body, content_type, timeout, watch)
    except _Abandoned:
        log.warning("notification abandoned: the run was cancelled", url=shown)
        return False
    except (_SendFailed, OpskitError) as exc:
        if watch is not None and watch.is_set():
            log.warning("notification abandoned: the run was cancelled", url=shown, error=str(exc))
            return False
        log.warning("notification not delivered", url=shown, error=str(exc), attempts=attempts)
        return False
    return True


def _post_watched(url: str, body: bytes, content_type: str, timeout: float, cancel: threading.Event | None) -> None:
    """Run :func:`_post`; with ``cancel``, in a helper thread that is abandoned when it is set.

    Raises what _post raises, or _Abandoned. A socket read cannot be interrupted from another
    thread, so the abandoned request ends on its own timeout (a daemon thread: it never keeps
    the process alive).
    """
    if cancel is None:
        _post(url, body, content_type, timeout)
        return
    if cancel.is_set():
        raise _Abandoned()
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def post() -> None:
        try:
            _post(url, body, content_type, timeout)
            outcome.append(None)
        except BaseException as exc:  # handed to the waiting thread, which raises it
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=post, name="opskit-notify", daemon=True).start()
    while not done.wait(_CANCEL_POLL):
        if cancel.is_set():
            raise _Abandoned()
    if outcome and outcome[0] is not None:
        raise outcome[0]


def _shown_url(url: str) -> str:
    # Healthchecks ping URLs carry their secret in the path (a UUID); show scheme and host only.
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return redact_text(f"{scheme}{sep}{host}/...")


def _resolve(ref: SecretRef) -> str | None:
    try:
        return ref.resolve().reveal()
    except OpskitError as exc:
        log.warning("notification URL cannot be resolved", reference=ref.describe(), error=exc.message)
        return None


def ping_url(base: str, kind: str) -> str:
    """Return the healthchecks.io-style URL for an event: ``/start``, the base URL itself, or ``/fail``."""
    base = base.rstrip("/")
    if kind == START:
        return f"{base}/start"
    if kind == SUCCESS:
        return base
    return f"{base}/fail"


def ping_request(base: str, event: Event) -> str | None:
    """Return the URL that tells the check at ``base`` about ``event``, or None when its service has no such signal.

    The convention is chosen from the URL (see the module docstring); the body is always :meth:`Event.log_text`.
    """
    parsed = urllib.parse.urlsplit(base)
    host = parsed.hostname or ""
    message = event.summary()[:200]
    if "/api/push/" in parsed.path:  # Uptime Kuma push monitor: up or down, nothing at the start
        if event.kind == START:
            return None
        status = "up" if event.kind == SUCCESS else "down"
        return _with_query(base, {"status": status, "msg": message})
    if host == "cronitor.link" or host.endswith((".cronitor.link", ".cronitor.io")):
        state = {START: "run", SUCCESS: "complete"}.get(event.kind, "fail")
        query = {"state": state, "message": message}
        if event.exit_code is not None:
            query["status_code"] = str(event.exit_code)
        return _with_query(base, query)
    return ping_url(base, event.kind)


def _with_query(base: str, extra: Mapping[str, str]) -> str:
    parts = urllib.parse.urlsplit(base)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k not in extra] + list(extra.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def ping_refs(event: Event, settings: NotifySettings) -> list[SecretRef]:
    """Return the ping URLs of ``event``'s run: every ``pings`` entry, plus its job's (else its verb's) ``ping_urls`` one."""
    refs = list(settings.pings)
    own = settings.ping_urls.get(event.job) if event.job else None
    if own is None:
        own = settings.ping_urls.get(event.action)
    if own is not None:
        refs.append(own)
    return refs


def notify(event: Event, settings: NotifySettings | None, cancel: threading.Event | None = None) -> None:
    """Send ``event`` to every ping URL of its run and (for failures, or all with ``on_success``) webhook.

    ``cancel`` is the run's cancel event (see :func:`send`: a shutdown never waits on a receiver).
    Never raises and never changes the job's result; failures are logged as warnings.
    """
    if settings is None:
        return
    if event.kind == START and cancel is not None and cancel.is_set():
        return  # the run will not start: its final (aborted) signal says so
    try:
        text = event.log_text().encode("utf-8")
        for ref in ping_refs(event, settings):
            base = _resolve(ref)
            url = ping_request(base, event) if base is not None else None
            if url is not None:
                send(url, text, "text/plain; charset=utf-8", settings, cancel)
        wanted = event.kind in (FAILURE, ABORTED) or (event.kind == SUCCESS and settings.on_success)
        if not wanted:
            return
        document: dict[str, Any] = {"text": event.summary()} if settings.slack else event.payload()
        body = json.dumps(document, default=str).encode("utf-8")
        for ref in settings.webhooks:
            url = _resolve(ref)
            if url is not None:
                send(url, body, "application/json", settings, cancel)
    except Exception as exc:  # a bug here must not fail the job it reports on
        log.warning("notification failed unexpectedly", error=f"{type(exc).__name__}: {exc}")
