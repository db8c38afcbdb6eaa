"""A notification never holds up a cancelled run: abandoned in flight, one short attempt after."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from opskit.config.notify import NotifySettings
from opskit.ops import notify as notify_mod
from opskit.ops.notify import ABORTED, START, Event, notify, send
from opskit.secrets.references import SecretRef

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def silent_url() -> Iterator[tuple[str, list[socket.socket]]]:
    """Yield (URL, accepted connections) of a server that accepts and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/ping", accepted
    listener.close()
    for conn in accepted:
        conn.close()


def settings(url: str) -> NotifySettings:
    """Return the defaults (three attempts of 10 s) with one ping URL."""
    return NotifySettings(pings=(SecretRef(url),), timeout=timedelta(seconds=10), attempts=3)


def test_a_request_in_flight_is_abandoned_when_the_run_is_cancelled(
    silent_url: tuple[str, list[socket.socket]],
) -> None:
    url, accepted = silent_url
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    assert send(url, b"x", "text/plain", settings(url), cancel) is False
    assert time.monotonic() - started < 2
    assert len(accepted) == 1  # no retry after the cancel


def test_after_a_cancel_the_final_signal_gets_one_short_attempt_and_no_start_is_sent(
    silent_url: tuple[str, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, accepted = silent_url
    monkeypatch.setattr(notify_mod, "CANCELLED_TIMEOUT", 0.5)
    cancel = threading.Event()
    cancel.set()
    notify(Event(START, "hourly", "backup", "app"), settings(url), cancel)
    started = time.monotonic()
    notify(Event(ABORTED, "hourly", "backup", "app", error="cancelled"), settings(url), cancel)
    took = time.monotonic() - started
    deadline = time.monotonic() + 2
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(accepted) == 1  # the aborted ping only, once
    assert took < 2
