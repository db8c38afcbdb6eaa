"""Helpers for the fault-injection suite: real databases, configs, and the CLI as a subprocess.

Every fault test runs ``python -m opskit`` in a subprocess, because what a user sees in a
bad night is the exit code, the one printed line, and what is (or is not) left in the
storage. Each test gets its own small database (``opskit_t_faults_<hex>``, pgbench scale
1) on the shared PostgreSQL server, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from opskit.storage.base import StorageConfig
from tests.servers import REPO_ROOT

PG_HOST = "127.0.0.1"
PG_ADMIN_DSN = f"host={PG_HOST} user=postgres dbname=test"


def _real_pg_bin() -> str:
    # /usr/bin/pg_dump on Debian is a Perl wrapper that execs the versioned binary; use that directly
    # so the process a test kills is pg_dump itself.
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"), key=lambda p: int(p.parent.parent.name))
    return str(versions[-1].parent) if versions else "/usr/bin"


REAL_PG_BIN = _real_pg_bin()


# --------------------------------------------------------------------------- databases


def create_database(scale: int = 1) -> str:
    """Create a database filled by ``pgbench -i -s scale``; return its name."""
    name = f"opskit_t_faults_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(scale), "-h", PG_HOST, "-U", "postgres", name],
        check=True,
        capture_output=True,
    )
    return name


def add_random_bytes(database: str, mebibytes: int) -> None:
    """Add a table ``noise`` of ``mebibytes`` MiB of random bytea: data zstd cannot shrink.

    pgbench's tables compress about 100x, so a test that needs real bytes in the
    storage (a full disk, multipart uploads under way) adds these.
    """
    with psycopg.connect(f"host={PG_HOST} user=postgres dbname={database}", autocommit=True) as conn:
        conn.execute("CREATE TABLE noise (id int PRIMARY KEY, payload bytea)")
        conn.execute(
            "INSERT INTO noise SELECT i, (SELECT decode(string_agg(md5(random()::text || i || j), ''), 'hex')"
            " FROM generate_series(1, 65536) AS j) FROM generate_series(1, %s) AS i",
            (mebibytes,),
        )


def drop_database(name: str) -> None:
    """Drop ``name`` if it exists, disconnecting its sessions."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def databases_like(prefix: str) -> list[str]:
    """Return the databases whose name starts with ``prefix``."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)).fetchall()
    return [row[0] for row in rows]


@pytest.fixture
def database() -> Iterator[str]:
    """Yield a fresh pgbench (scale 1, ~13 MB) database; drop it and any restore of it afterwards."""
    name = create_database(1)
    try:
        yield name
    finally:
        for restored in databases_like(name + "_restore_"):
            drop_database(restored)
        drop_database(name)


# --------------------------------------------------------------------------- configs and the CLI


def storage_toml(storage: StorageConfig, part_size: str | None = None, max_attempts: int | None = None) -> str:
    """Return the ``[storages.<name>]`` table for a storage config made by tests/servers.py."""
    lines = [f"[storages.{storage.name}]", f'url = "{storage.url}"']
    for key, value in storage.options.items():
        text = value.reference if hasattr(value, "reference") else value
        lines.append(f'{key} = "{text}"')
    if part_size:
        lines.append(f'part_size = "{part_size}"')
    if max_attempts is not None:
        lines.append(f"max_attempts = {max_attempts}")
    return "\n".join(lines) + "\n"


@dataclass
class Setup:
    """One test's opskit configuration: a target ``app`` on its own database, backing up to one storage."""

    path: Path
    database: str
    storage: StorageConfig
    state_dir: Path

    def run(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m opskit --config <this> ARGS`` and return the finished process."""
        return run_opskit(self.path, *args, timeout=timeout, env=env)

    def argv(self, *args: str) -> list[str]:
        """Return the command line for ``opskit ARGS`` with this config."""
        return [sys.executable, "-m", "opskit", "--config", str(self.path), *args]

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start ``opskit ARGS`` in the background (in its own process group) and return it."""
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=self.path.parent,
            start_new_session=True,
        )

    def backups(self) -> list[dict[str, object]]:
        """Return what ``opskit backup list --json`` shows (asserting it succeeded)."""
        result = self.run("backup", "list", "--json")
        assert result.returncode == 0, result.stderr
        listed: list[dict[str, object]] = json.loads(result.stdout)
        return listed


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a CLI subprocess: JSON logs, the repo importable, no stray PG* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and not k.startswith("OPSKIT_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env | (extra or {})


def run_opskit(
    config: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m opskit --config CONFIG ARGS`` in the config's folder (:func:`cli_env`, plus ``env``).

    Returns the finished process; raises subprocess.TimeoutExpired after ``timeout`` seconds.
    """
    return subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        cwd=config.parent,
    )


def write_setup(
    tmp_path: Path,
    database: str,
    storage: StorageConfig,
    *,
    extra: str = "",
    target_extra: str = "",
    part_size: str | None = None,
    max_attempts: int | None = None,
    state_dir: Path | None = None,
) -> Setup:
    """Write an opskit.toml for target ``app`` on ``database`` and return the Setup.

    ``extra`` is appended at the top level (e.g. an ``[encryption]`` table);
    ``target_extra`` goes inside ``[targets.app]``.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    state = state_dir or tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(
        f"""\
        [tools]
        state_dir = "{state}"

        [retention.std]
        keep_last = 10

        [targets.app]
        dsn = "host={PG_HOST} user=postgres dbname={database}"
        storages = ["{storage.name}"]
        retention = "std"
        """
    )
    text += target_extra + "\n" + storage_toml(storage, part_size, max_attempts) + "\n" + extra
    path = tmp_path / "opskit.toml"
    path.write_text(text)
    return Setup(path, database, storage, state)


def one_line_error(stderr: str) -> str:
    """Return the single ``opskit: error: ...`` line of a failed run (asserting there is exactly one)."""
    lines = [line for line in stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    print(lines[0])  # shown by `pytest -rP`: the lines quoted in docs/reliability.md
    return lines[0]


# --------------------------------------------------------------------------- storage inspection


def local_root(storage: StorageConfig) -> Path:
    """Return the directory of a ``file://`` storage."""
    return Path(storage.url.removeprefix("file://"))


def local_files(storage: StorageConfig) -> list[Path]:
    """Return every file under a local storage (temporary files included), run records excepted.

    A run record (``<target>/runs/``, catalog.runs) is the signal a run leaves, failed or not,
    never its data: "nothing left" means no artifact, manifest or temporary file.
    """
    root = local_root(storage)
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "runs")


def s3_objects(storage: StorageConfig) -> list[str]:
    """Return every key in the storage's bucket."""
    from tests.servers import s3_client

    bucket = storage.url.removeprefix("s3://").split("/", 1)[0]
    client = s3_client(str(storage.options["endpoint_url"]))
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)  # type: ignore[attr-defined]
    # Run records (catalog.runs) are a run's signal, not its data; see local_files.
    return [item["Key"] for page in pages for item in page.get("Contents", []) if "/runs/" not in item["Key"]]


def s3_uploads(storage: StorageConfig) -> list[str]:
    """Return the keys of the bucket's incomplete multipart uploads."""
    from tests.servers import s3_client

    bucket = storage.url.removeprefix("s3://").split("/", 1)[0]
    client = s3_client(str(storage.options["endpoint_url"]))
    response = client.list_multipart_uploads(Bucket=bucket)  # type: ignore[attr-defined]
    return [upload["Key"] for upload in response.get("Uploads", [])]


def upload_in_progress(storage: StorageConfig) -> bool:
    """Return True once a run is visibly writing: an open S3 multipart upload, or a non-empty temp file."""
    if storage.kind == "s3":
        return bool(s3_uploads(storage))
    return any(p.name.startswith(".opskit-tmp-") and p.stat().st_size > 0 for p in local_files(storage))


def leftovers(storage: StorageConfig) -> list[str]:
    """Return what failed runs left: open S3 multipart uploads, or local temp files."""
    if storage.kind == "s3":
        return s3_uploads(storage)
    return [str(p) for p in local_files(storage) if p.name.startswith(".opskit-tmp-")]


# --------------------------------------------------------------------------- a slow pg_dump


def slow_tools_dir(tmp_path: Path, bytes_per_second: int = 2 * 1024 * 1024) -> Path:
    """Return a directory whose ``pg_dump`` is the real one with its output throttled.

    The throttle makes "mid-stream" a wide window: the real pg_dump stays alive (and the
    upload stays in progress) for seconds, so a test can kill either of them there. The
    wrapper's exit status is pg_dump's (``pipefail``), so a killed pg_dump is a failed one.
    """
    tools = tmp_path / "slow-bin"
    tools.mkdir()
    throttle = tools / "throttle.py"
    throttle.write_text(
        textwrap.dedent(
            f"""\
            import sys, time
            rate = {bytes_per_second}
            chunk = 64 * 1024
            start = time.monotonic()
            sent = 0
            while True:
                data = sys.stdin.buffer.read1(chunk)
                if not data:
                    break
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
                sent += len(data)
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            """
        )
    )
    script = tools / "pg_dump"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            set -o pipefail
            if [ "$1" = "--version" ]; then exec {REAL_PG_BIN}/pg_dump --version; fi
            {REAL_PG_BIN}/pg_dump "$@" | {sys.executable} {throttle}
            """
        )
    )
    script.chmod(0o755)
    return tools


def fake_old_pg_dump_dir(tmp_path: Path, version: str = "9.2.24") -> Path:
    """Return a directory with ``pg_dump``/``pg_dumpall`` scripts that claim an old version and dump nothing."""
    tools = tmp_path / "old-bin"
    tools.mkdir()
    for name in ("pg_dump", "pg_dumpall"):
        script = tools / name
        script.write_text(f'#!/bin/sh\necho "{name} (PostgreSQL) {version}"\nexit 0\n')
        script.chmod(0o755)
    return tools


def descendants(pid: int) -> list[tuple[int, str]]:
    """Return (pid, command line) of every descendant of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[tuple[int, str]] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            try:
                cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            found.append((child, cmdline))
            stack.append(child)
    return found


def wait_for(predicate: Callable[[], object], timeout: float = 30, what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; return it, or fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def real_pg_dump_pid(cli_pid: int) -> int | None:
    """Return the pid of the real pg_dump the CLI (or its wrapper) started, once it exists."""
    for pid, cmdline in descendants(cli_pid):
        if cmdline.startswith(f"{REAL_PG_BIN}/pg_dump ") and "--snapshot=" in cmdline:
            return pid
    return None


def kill_cli(process: subprocess.Popen[str]) -> None:
    """SIGKILL the CLI process alone (as the OOM killer would) and reap it.

    Its children (pg_dump) are orphaned and die of SIGPIPE; whatever is still alive in
    the CLI's process group is killed afterwards so the test leaves nothing running.
    """
    process.kill()
    process.communicate(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def have_tmpfs() -> bool:
    """Return True when this process may mount a tmpfs (root in a permissive container)."""
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Yield a function that mounts a tmpfs of the given size (``"2m"``) and returns its path; unmounts after."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if not have_tmpfs():
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
