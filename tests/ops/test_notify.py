"""Notifications: what is sent where, and that a dead receiver is only a warning."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from structlog.testing import capture_logs

from opskit.config.load import parse_config
from opskit.config.notify import NotifySettings
from opskit.ops.notify import ABORTED, FAILURE, START, SUCCESS, Event, notify, ping_url
from opskit.secrets.references import SecretRef
from tests.servers import free_port

BASE = '[storages.local]\nurl = "file:///tmp/opskit-unit-never-written"\n[targets.app]\ndsn = "dbname=app"\n'


class Receiver:
    """A loopback HTTP server recording every request; ``status`` is what it answers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes, str]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, body, self.headers.get("Content-Type", "")))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


def settings(**kwargs: Any) -> NotifySettings:
    kwargs.setdefault("timeout", timedelta(seconds=2))
    return NotifySettings(**kwargs)


def event(kind: str) -> Event:
    error = "boom" if kind in (FAILURE, ABORTED) else None
    return Event(kind, "hourly-backup", "backup", "app", "2026-11-26T18:00:00+00:00", 1.5, error)


def test_pings_go_to_start_success_and_fail_urls(receiver: Receiver) -> None:
    config = settings(pings=(SecretRef(receiver.url + "/ping/abc"),))
    for kind in (START, SUCCESS, FAILURE):
        notify(event(kind), config)
    assert receiver.paths() == ["/ping/abc/start", "/ping/abc", "/ping/abc/fail"]
    assert b"hourly-backup" in receiver.requests[2][1]


def test_webhooks_fire_on_failure_only_unless_on_success(receiver: Receiver) -> None:
    hooks = (SecretRef(receiver.url + "/hook"),)
    notify(event(SUCCESS), settings(webhooks=hooks))
    notify(event(START), settings(webhooks=hooks, on_success=True))
    assert receiver.requests == []
    notify(event(FAILURE), settings(webhooks=hooks))
    notify(event(ABORTED), settings(webhooks=hooks))
    notify(event(SUCCESS), settings(webhooks=hooks, on_success=True))
    kinds = [json.loads(body)["event"] for _, body, _ in receiver.requests]
    assert kinds == [FAILURE, ABORTED, SUCCESS]
    payload = json.loads(receiver.requests[0][1])
    assert payload["job"] == "hourly-backup" and payload["error"] == "boom" and payload["target"] == "app"
    assert receiver.requests[0][2] == "application/json"


def test_the_slack_option_posts_a_text_message(receiver: Receiver) -> None:
    notify(event(FAILURE), settings(webhooks=(SecretRef(receiver.url),), slack=True))
    document = json.loads(receiver.requests[0][1])
    assert list(document) == ["text"]
    assert "hourly-backup" in document["text"] and "FAILED" in document["text"]


def test_webhook_urls_may_be_secret_references(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_T_HOOK_URL", receiver.url + "/from-env")
    notify(event(FAILURE), settings(webhooks=(SecretRef("env:OPSKIT_T_HOOK_URL"),)))
    assert receiver.paths() == ["/from-env"]


def test_a_server_error_is_retried_a_bounded_number_of_times(receiver: Receiver) -> None:
    receiver.status = 503
    notify(event(FAILURE), settings(webhooks=(SecretRef(receiver.url),), attempts=3))
    assert len(receiver.requests) == 3


def test_a_dead_webhook_is_a_warning_never_an_exception() -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    with capture_logs() as logs:
        notify(event(FAILURE), settings(webhooks=(SecretRef(dead),), pings=(SecretRef(dead),), attempts=2))
        notify(event(FAILURE), settings(webhooks=(SecretRef("env:OPSKIT_T_UNSET_VARIABLE"),)))
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == [
        "notification not delivered",
        "notification not delivered",
        "notification URL cannot be resolved",
    ]
    assert all("/hook" not in str(entry.get("url", "")) for entry in warnings)  # the path may hold a secret


def test_ping_urls_follow_the_healthchecks_convention() -> None:
    assert ping_url("https://hc-ping.com/uuid/", START) == "https://hc-ping.com/uuid/start"
    assert ping_url("https://hc-ping.com/uuid", SUCCESS) == "https://hc-ping.com/uuid"
    assert ping_url("https://hc-ping.com/uuid", ABORTED) == "https://hc-ping.com/uuid/fail"


def test_the_notify_table_is_parsed_and_validated() -> None:
    config = parse_config(
        BASE
        + """
        [notify]
        webhooks = ["https://hooks.example/x", "env:HOOK"]
        slack = true
        on_success = true
        pings = ["file:/run/secrets/hc"]
        timeout = "5s"
        attempts = 4
        """
    )
    notify_settings = config.notify
    assert isinstance(notify_settings, NotifySettings)
    assert [ref.reference for ref in notify_settings.webhooks] == ["https://hooks.example/x", "env:HOOK"]
    assert notify_settings.slack and notify_settings.on_success
    assert notify_settings.timeout == timedelta(seconds=5) and notify_settings.attempts == 4
    with pytest.raises(Exception, match=r"At 'notify\.webhooks\[0\]'"):
        parse_config(BASE + '[notify]\nwebhooks = ["ftp://nope"]\n')
