"""/livez, /readyz and /metrics over a real loopback socket."""

from __future__ import annotations

import http.client
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from opskit.daemon.http import HealthServer


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def state() -> dict[str, Any]:
    return {"alive": True, "ready": True}


@pytest.fixture
def server(state: dict[str, Any]) -> Iterator[str]:
    def readyz() -> tuple[bool, dict[str, Any]]:
        if state["ready"] == "raise":
            raise RuntimeError("probe crashed")
        return state["ready"], {"checks": {"control_database": "ok" if state["ready"] else "down"}}

    health = HealthServer(
        "127.0.0.1", 0, livez=lambda: (state["alive"], {}), readyz=readyz, metrics=lambda: b"opskit_up 1\n"
    )
    health.start()
    yield f"http://127.0.0.1:{health.address[1]}"
    health.stop()


def test_livez_and_readyz_answer_200_when_healthy(server: str) -> None:
    assert get(server + "/livez")[0] == 200
    status, body = get(server + "/readyz")
    assert status == 200 and json.loads(body)["ok"] is True


def test_an_unhealthy_check_answers_503_with_the_reason(server: str, state: dict[str, Any]) -> None:
    state.update(alive=False, ready=False)
    assert get(server + "/livez")[0] == 503
    status, body = get(server + "/readyz")
    assert status == 503 and json.loads(body)["checks"]["control_database"] == "down"
    state["ready"] = "raise"
    status, body = get(server + "/readyz")
    assert status == 503 and "probe crashed" in json.loads(body)["error"]


def test_metrics_are_served_in_the_prometheus_format(server: str) -> None:
    with urllib.request.urlopen(server + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.read().startswith(b"opskit_up 1\n")
    assert get(server + "/nothing")[0] == 404


def head(url: str) -> tuple[int, dict[str, str], bytes]:
    host, _, path = url.removeprefix("http://").partition("/")
    connection = http.client.HTTPConnection(host, timeout=5)
    try:
        connection.request("HEAD", "/" + path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_head_answers_every_route_with_the_get_headers_and_no_body(server: str, state: dict[str, Any]) -> None:
    status, headers, body = head(server + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain") and body == b""
    with urllib.request.urlopen(server + "/metrics", timeout=5) as response:
        assert int(headers["Content-Length"]) > 0 and len(response.read()) > 0
    assert head(server + "/livez")[0] == 200
    state["ready"] = False
    assert head(server + "/readyz")[0] == 503
    assert head(server + "/nothing")[0] == 404


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process_* metrics read /proc")
def test_the_daemon_exports_its_own_process_metrics_beside_the_catalog(server: str) -> None:
    status, body = get(server + "/metrics")
    text = body.decode()
    assert status == 200
    assert text.startswith("opskit_up 1\n")
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"):
        assert f"\n{name} " in text, f"{name} missing from /metrics"
