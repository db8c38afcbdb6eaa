"""``opskit daemon`` as a real subprocess: local PostgreSQL, the moto S3 server, real signals.

Proves issue 7: a 2-second backup job shows up in /metrics; two daemons sharing the ledger
run each slot once (counted in manifests); SIGTERM during a backup exits 0 in the grace
period leaving nothing visible; notifications arrive and a dead webhook fails nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opskit.catalog import list_backups
from opskit.daemon.ledger import ABORTED, SUCCESS, Ledger
from opskit.storage.base import StorageConfig
from opskit.storage.registry import open_storage
from tests.servers import REPO_ROOT, free_port

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- helpers


def storage_toml(storage: StorageConfig, part_size: str | None = None, endpoint: str | None = None) -> str:
    """Return the [storages.s3] table for the s3_bucket fixture (credentials from the environment)."""
    lines = [
        "[storages.s3]",
        f'url = "{storage.url}"',
        f'endpoint_url = "{endpoint or storage.options["endpoint_url"]}"',
        f'region = "{storage.options["region"]}"',
        'access_key_id = "env:AWS_ACCESS_KEY_ID"',
        'secret_access_key = "env:AWS_SECRET_ACCESS_KEY"',
    ]
    if part_size:
        lines.append(f'part_size = "{part_size}"')
    return "\n".join(lines) + "\n"


def fill(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS payload "
            "FROM generate_series(1, %s) g",
            (rows,),
        )


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def terminate(self, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(config: str, jobs: dict[str, str], name: str = "d") -> Daemon:
        workdir = tmp_path / name
        (workdir / "jobs").mkdir(parents=True)
        (workdir / "opskit.toml").write_text(config)
        for job, text in jobs.items():
            (workdir / "jobs" / f"{job}.toml").write_text(text)
        port = free_port()
        log_path = workdir / "daemon.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "opskit",
                    "--config",
                    "opskit.toml",
                    "--log-format",
                    "json",
                    "daemon",
                    "--jobs-dir",
                    "jobs",
                    "--listen",
                    f"127.0.0.1:{port}",
                ],
                cwd=workdir,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        daemon = Daemon(process, f"http://127.0.0.1:{port}", log_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=10)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def wait_for(condition: Callable[[], Any], timeout: float, what: str, daemon: Daemon | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if daemon is not None and daemon.process.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"; daemon log:\n{daemon.log()[-4000:]}" if daemon else ""))


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if match and match.group(1) == name:
            got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            if got == labels:
                return float(match.group(3))
    return None


class Receiver:
    """A loopback HTTP server that records webhook and ping requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hooks(self) -> list[dict[str, Any]]:
        return [json.loads(body) for path, body in list(self.requests) if path == "/hook"]

    def pings(self) -> list[tuple[str, str]]:
        return [(path, body.decode()) for path, body in list(self.requests) if path.startswith("/ping")]


class SlowRelay:
    """A TCP relay to ``upstream`` that lets at most ``rate`` bytes per second through towards it."""

    def __init__(self, upstream: str, rate: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.rate = rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, throttle: bool) -> None:
        try:
            while True:
                data = source.recv(16384)
                if not data:
                    break
                sink.sendall(data)
                if throttle:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


# --------------------------------------------------------------------------- tests


def test_a_scheduled_backup_reaches_metrics_and_notifications_and_a_dead_webhook_fails_nothing(
    pg_database: str, s3_bucket: StorageConfig, start_daemon: Callable[..., Daemon]
) -> None:
    fill(pg_database, 100)
    receiver = Receiver()
    dead_webhook = f"http://127.0.0.1:{free_port()}/hook"
    config = (
        storage_toml(s3_bucket)
        + f'[targets.app]\ndsn = "{pg_database}"\nstorages = ["s3"]\n'
        + f'[targets.ghost]\ndsn = "{pg_database}_does_not_exist"\nstorages = ["s3"]\n'
        + f'[daemon]\ncontrol_dsn = "{pg_database}"\n'
        + f'[notify]\nwebhooks = ["{dead_webhook}", "{receiver.url}/hook"]\npings = ["{receiver.url}/ping"]\n'
        + 'on_success = true\nattempts = 2\ntimeout = "2s"\n'
    )
    daemon = start_daemon(
        config,
        {
            "good": 'action = "backup"\ntarget = "app"\ninterval = "2s"\n',
            "broken": 'action = "backup"\ntarget = "ghost"\ninterval = "2s"\n',
        },
    )

    text = wait_for(
        lambda: (
            (body := get(daemon.url + "/metrics")[1])
            and metric(body, "opskit_backup_last_success_timestamp_seconds", target="app")
            and metric(body, "opskit_backup_runs_total", target="ghost", result="failure")
            and body
        ),
        60,
        "a successful backup of app and a failed one of ghost in /metrics",
        daemon,
    )
    last_success = metric(text, "opskit_backup_last_success_timestamp_seconds", target="app")
    assert last_success is not None and abs(time.time() - last_success) < 60
    assert metric(text, "opskit_storage_up", storage="s3") == 1
    assert get(daemon.url + "/livez")[0] == 200
    status, body = get(daemon.url + "/readyz")
    assert status == 200, body

    wait_for(lambda: any(h["event"] == "success" and h["job"] == "good" for h in receiver.hooks()), 20, "hook")
    hooks = receiver.hooks()
    assert any(h["event"] == "failure" and h["job"] == "broken" and h["target"] == "ghost" for h in hooks)
    paths = {path for path, _ in receiver.pings()}
    assert {"/ping/start", "/ping", "/ping/fail"} <= paths
    assert any("good" in body for path, body in receiver.pings() if path == "/ping")

    # The dead webhook was only a warning: every run of the good job succeeded.
    assert daemon.terminate() == 0
    runs = Ledger(pg_database).runs("good")
    assert runs and {run["result"] for run in runs} == {SUCCESS}
    assert any(e["event"] == "notification not delivered" for e in daemon.events())
    summaries = [e for e in daemon.events() if e["event"] == "job finished" and e["job"] == "good"]
    assert len(summaries) == len(runs)
    receiver.server.shutdown()


def test_two_daemons_sharing_the_ledger_run_each_slot_exactly_once(
    pg_database: str, s3_bucket: StorageConfig, start_daemon: Callable[..., Daemon]
) -> None:
    fill(pg_database, 100)
    config = storage_toml(s3_bucket) + f'[targets.app]\ndsn = "{pg_database}"\nstorages = ["s3"]\n'
    job = {"often": 'action = "backup"\ntarget = "app"\ninterval = "2s"\n'}
    daemons = [start_daemon(config, job, name="a"), start_daemon(config, job, name="b")]
    ledger = Ledger(pg_database)

    def enough_runs() -> bool:
        try:
            return len([r for r in ledger.runs("often") if r["result"] == SUCCESS]) >= 4
        except Exception:
            return False  # the table is created by the first daemon

    wait_for(enough_runs, 60, "four successful slots", daemons[0])
    for daemon in daemons:
        assert daemon.terminate() == 0, daemon.log()[-3000:]

    runs = ledger.runs("often")
    manifests = list_backups(open_storage(s3_bucket), "app")
    assert {run["result"] for run in runs} == {SUCCESS}
    assert len(manifests) == len(runs)  # one backup per slot, never two
    assert {m.id for m in manifests} == {run["details"]["backup_id"] for run in runs}
    assert len({run["slot"] for run in runs}) == len(runs)
    claimed_by_each = [sum(1 for e in d.events() if e["event"] == "job finished") for d in daemons]
    assert sum(claimed_by_each) == len(runs)


def test_sigterm_during_a_backup_exits_0_in_the_grace_period_leaving_nothing_visible(
    pg_database: str, s3_bucket: StorageConfig, s3_server: str, start_daemon: Callable[..., Daemon]
) -> None:
    # ~28 MiB of dump. zstd consumes its input in jobs of several MiB, and the backup checks
    # ctx.cancel as it reads pg_dump's output, so the dump must outlast the first job; through
    # the relay at 2 MiB/s its upload takes several seconds.
    fill(pg_database, 400_000)
    relay = SlowRelay(s3_server, rate=2 * 1024 * 1024)
    grace = 1.0
    config = (
        storage_toml(s3_bucket, part_size="256KiB", endpoint=relay.url)
        + f'[targets.app]\ndsn = "{pg_database}"\nstorages = ["s3"]\n'
        + f'[daemon]\nshutdown_grace = "{grace:.0f}s"\n'
    )
    # An hourly interval: the current slot is caught up at start, and nothing else runs.
    daemon = start_daemon(config, {"hourly": 'action = "backup"\ntarget = "app"\ninterval = "1h"\n'})
    wait_for(lambda: any(e["event"] == "backup started" for e in daemon.events()), 30, "backup start", daemon)
    time.sleep(0.5)
    stopped_at = time.monotonic()
    assert daemon.terminate() == 0, daemon.log()[-3000:]
    took = time.monotonic() - stopped_at
    relay.close()

    assert took < grace + 10, f"took {took:.1f}s to stop"
    assert [run["result"] for run in Ledger(pg_database).runs("hourly")] == [ABORTED]
    storage = open_storage(s3_bucket)
    assert list_backups(storage, "app") == []
    # No manifest, no artifact: only the run record of the aborted run (catalog.runs).
    left = [info.key for info in storage.list("app/")]
    assert [key.split("/")[1] for key in left] == ["runs"] and "-backup-aborted-" in left[0], daemon.log()[-6000:]
    assert not any(e["event"] == "backup committed" for e in daemon.events())
