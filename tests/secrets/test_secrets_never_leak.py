"""The proof of issue 8: secrets appear nowhere but where they are consumed.

A throwaway cluster with scram-sha-256 passwords, an S3 secret key and an age identity,
all given as ``file:`` references. The real CLI runs backup, list, verify, restore,
migrate, a drill, config check and a failing command with ``--debug``, in JSON and in
console log format. While each runs, a watcher reads ``/proc/<pid>/cmdline`` and
``/proc/<pid>/environ`` of the CLI and of every child it starts. Then the test asserts
that no secret is in any log line, any output, any error message, any object in the
storage (manifests, verification records, drill reports), any report file, or any
child's argv or environment; and that every temporary PGPASSFILE is gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyrage
import pytest
from psycopg import sql

from tests.pgcluster import ScramCluster
from tests.servers import S3_REGION, s3_client


@dataclass
class SeenProcess:
    pid: int
    argv: list[str]
    environ: dict[str, str]


@dataclass
class ProcWatcher:
    """Samples /proc for the descendants of ``root_pid`` until stopped; records argv and environment."""

    root_pid: int
    seen: dict[tuple[int, str], SeenProcess] = field(default_factory=dict)
    pgpass_modes: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ProcWatcher:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.01)  # pg_dump and pg_restore live far longer than this

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    stat = handle.read().decode("utf-8", "replace")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        pending = [self.root_pid]
        while pending:
            pid = pending.pop()
            pending.extend(children.get(pid, []))
            self._record(pid)

    def _record(self, pid: int) -> None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
            with open(f"/proc/{pid}/environ", "rb") as handle:
                raw_env = handle.read()
        except OSError:
            return  # exited between listing and reading
        key = (pid, " ".join(argv))
        if key in self.seen or not argv:
            return
        environ = {}
        for item in raw_env.split(b"\0"):
            name, sep, value = item.decode("utf-8", "replace").partition("=")
            if sep:
                environ[name] = value
        self.seen[key] = SeenProcess(pid, argv, environ)
        passfile = environ.get("PGPASSFILE")
        if passfile and passfile not in self.pgpass_modes:
            with contextlib.suppress(OSError):  # already removed: checked again after the run
                self.pgpass_modes[passfile] = os.stat(passfile).st_mode & 0o777

    def programs(self) -> set[str]:
        """Return the base names of every program seen (``pg_dump``, ``pg_restore``, ``python`` ...)."""
        return {os.path.basename(p.argv[0]) for p in self.seen.values()}


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def leak_setup(scram_cluster: ScramCluster, s3_server: str, tmp_path: Path) -> Iterator[dict[str, object]]:
    """Write the config, secrets (as files), migrations and a source database; drop the databases after."""
    prefix = f"opskit_t_leak_{secrets.token_hex(3)}"
    dbname = f"{prefix}_app"
    with scram_cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    with scram_cluster.connect(dbname) as conn:
        conn.execute(
            "CREATE TABLE orders (id serial PRIMARY KEY, note text); "
            "INSERT INTO orders (note) SELECT 'n' || g FROM generate_series(1, 50) g"
        )

    s3_secret = "S3sk-" + secrets.token_urlsafe(30)
    bucket = f"opskit-t-leak-{secrets.token_hex(4)}"
    s3_client(s3_server).create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    identity = pyrage.x25519.Identity.generate()

    secrets_dir = tmp_path / "run-secrets"
    secrets_dir.mkdir(mode=0o700)
    for name, value in {"db": scram_cluster.password, "s3": s3_secret, "age": str(identity)}.items():
        (secrets_dir / name).write_text(value + "\n")
        (secrets_dir / name).chmod(0o600)

    migrations = tmp_path / "sql"
    migrations.mkdir()
    (migrations / "V1__add_customers.sql").write_text("CREATE TABLE customers (id int PRIMARY KEY, name text);\n")
    (migrations / "V2__seed.sql").write_text("INSERT INTO customers VALUES (1, 'a'), (2, 'b');\n")

    reports = tmp_path / "reports"
    config = tmp_path / "opskit.toml"
    config.write_text(f"""
[targets.app]
dsn = "{scram_cluster.dsn(dbname)}"
password = "file:{secrets_dir / "db"}"
storages = ["s3"]
staging = "staging"

[targets.staging]
dsn = "{scram_cluster.dsn("postgres")}"
password = "file:{secrets_dir / "db"}"
storages = ["s3"]

[storages.s3]
url = "s3://{bucket}/backups"
endpoint_url = "{s3_server}"
region = "{S3_REGION}"
access_key_id = "opskit-test-access-key"
secret_access_key = "file:{secrets_dir / "s3"}"

[encryption]
recipients = ["{identity.to_public()}"]
identity = "file:{secrets_dir / "age"}"

[tools]
state_dir = "{tmp_path / "state"}"

[migrations]
locations = ["filesystem:{migrations}"]
baseline_on_migrate = true
baseline_version = "0"
""")
    try:
        yield {
            "config": config,
            "secrets": {
                "db password": scram_cluster.password,
                "s3 secret key": s3_secret,
                "age identity": str(identity),
            },
            "bucket": bucket,
            "s3_server": s3_server,
            "reports": reports,
            "cluster": scram_cluster,
        }
    finally:
        with scram_cluster.connect() as conn:
            names = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname LIKE %s",
                (prefix + "%", "opskit_drill_app_%"),
            ).fetchall()
            for (name,) in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_cli(config: Path, log_format: str, *args: str, watcher_runs: list[ProcWatcher]) -> Run:
    """Run ``opskit --debug --log-format F --config C ARGS`` while watching its process tree."""
    argv = [sys.executable, "-m", "opskit", "--debug", "--log-format", log_format, "--config", str(config), *args]
    # No AWS_* credentials in the environment: the S3 secret must come from the file reference.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPSKIT_", "PG"))}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    with ProcWatcher(proc.pid) as watcher:
        stdout, stderr = proc.communicate(timeout=240)
    watcher_runs.append(watcher)
    return Run(list(args), proc.returncode, stdout, stderr)


def test_secrets_appear_in_no_log_output_report_object_or_child_process(leak_setup: dict[str, object]) -> None:
    config = leak_setup["config"]
    assert isinstance(config, Path)
    reports = leak_setup["reports"]
    watchers: list[ProcWatcher] = []
    runs: list[Run] = []

    def cli(log_format: str, *args: str, expect: int = 0) -> Run:
        result = run_cli(config, log_format, *args, watcher_runs=watchers)
        assert result.returncode == expect, (
            f"opskit {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
        runs.append(result)
        return result

    cli("json", "backup", "now", "-t", "app", "--label", "leak-test")
    cli("console", "backup", "list")
    cli("json", "backup", "verify", "latest", "--target", "app", "--json")
    cli("console", "restore", "latest", "-t", "app", "--json")
    cli("json", "migrate", "-t", "app", "--backup-first")
    cli("console", "migrate", "-t", "app", "info")
    cli("json", "drill", "restore", "-t", "app", "--report-dir", str(reports), "--json")
    cli("console", "config", "check")
    # Failures print error messages: a restore into an unreachable server, an unknown backup.
    cli("console", "restore", "latest", "-t", "app", "--to", "host=127.0.0.1 port=1 dbname=x user=y", expect=3)
    cli("json", "restore", "20000101T000000Z-dead", "-t", "app", expect=2)

    # The watcher really saw the children that consume the secrets, and their password files.
    programs = set().union(*(w.programs() for w in watchers))
    assert {"pg_dump", "pg_restore"} <= programs, programs
    assert any(w.pgpass_modes for w in watchers), "no child with a PGPASSFILE was caught alive"

    values = leak_setup["secrets"]
    assert isinstance(values, dict)
    leaks: list[str] = []

    def scan(where: str, text: str) -> None:
        for name, value in values.items():
            if value in text:
                leaks.append(f"{name} in {where}")

    for run in runs:
        scan(f"stdout of opskit {' '.join(run.argv)}", run.stdout)
        scan(f"stderr (logs, errors) of opskit {' '.join(run.argv)}", run.stderr)
    for watcher in watchers:
        for process in watcher.seen.values():
            scan(f"argv of {process.argv[0]} (pid {process.pid})", "\0".join(process.argv))
            scan(
                f"environment of {process.argv[0]} (pid {process.pid})",
                "\0".join(f"{k}={v}" for k, v in process.environ.items()),
            )
            assert "PGPASSWORD" not in process.environ, process.argv
        for passfile, mode in watcher.pgpass_modes.items():
            assert mode == 0o600, f"{passfile} had mode {oct(mode)}"
            assert not os.path.exists(passfile), f"{passfile} was left behind"

    client = s3_client(str(leak_setup["s3_server"]))
    listed = client.list_objects_v2(Bucket=leak_setup["bucket"])  # type: ignore[attr-defined]
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert any(k.endswith("manifest.json") for k in keys) and any("/drills/" in k for k in keys), keys
    for key in keys:
        body = client.get_object(Bucket=leak_setup["bucket"], Key=key)["Body"].read()  # type: ignore[attr-defined]
        scan(f"storage object {key}", body.decode("latin-1"))
    assert isinstance(reports, Path)
    report_files = [p for p in reports.rglob("*") if p.is_file()]
    assert report_files
    for path in report_files:
        scan(f"report file {path.name}", path.read_text(encoding="latin-1"))

    assert not leaks, "\n".join(leaks)
