"""A runbook stopped by Ctrl-C/SIGTERM keeps its transcript; recovering "before" a future moment is refused.

The interrupt goes through the real CLI (``python -m opskit``), as an on-call terminal or a
CronJob's deadline would send it; the future moment runs the shipped ``recover-before-incident``
against the local PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from opskit.backup import backup
from opskit.config.load import load_config
from opskit.context import AppContext
from opskit.runbooks import runbook
from tests.servers import REPO_ROOT

SERVER = "postgresql://postgres@127.0.0.1:5432"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(f"{SERVER}/postgres", autocommit=True)


def test_a_runbook_interrupted_in_a_hanging_step_writes_its_transcript_and_exits_130(tmp_path: Path) -> None:
    books, transcripts = tmp_path / "books", tmp_path / "transcripts"
    books.mkdir()
    started = tmp_path / "started"
    (books / "hangs.toml").write_text(
        'title = "hangs"\n'
        '[[steps]]\nkind = "shell"\nname = "Write down what was done"\nargv = ["echo", "step one ran"]\n'
        f'[[steps]]\nkind = "shell"\nname = "Hangs"\nargv = ["/bin/sh", "-c", "touch {started}; exec sleep 120"]\n'
        '[[steps]]\nkind = "note"\nname = "Never reached"\ntext = "after"\n'
    )
    (tmp_path / "opskit.toml").write_text(f'[tools]\nstate_dir = "{tmp_path}/state"\n')
    cli = [sys.executable, "-m", "opskit", "--config", str(tmp_path / "opskit.toml")]
    run = subprocess.Popen(
        [*cli, "runbook", "run", "hangs", "--dir", str(books), "--transcript-dir", str(transcripts)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the hanging step never started"
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()

    assert run.returncode == 130, stderr
    written = list(transcripts.glob("hangs-*.md"))
    assert len(written) == 1
    assert [line for line in stderr.splitlines() if line.startswith("opskit:")] == [
        "opskit: interrupted; runbook 'hangs' stopped at step 2 of 3 (Hangs); what step 1 did stays done "
        f"(nothing is undone); transcript: {written[0]}"
    ]
    assert f"transcript: {written[0]}" in stdout.splitlines()
    text = written[0].read_text()
    assert "### 1. Write down what was done (shell): ok" in text
    assert "step one ran" in text
    assert "### 2. Hangs (shell): failed" in text and "Error: interrupted (SIGINT or SIGTERM)" in text
    assert "## Not run" in text and "- 3. Never reached (note)" in text


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[tuple[AppContext, str]]:
    """A backed-up database ``app`` with a staging target; the source and any recovered copy are dropped after."""
    name = f"opskit_t_rbfut_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(f"{SERVER}/{name}", autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO orders (note) SELECT 'order ' || g FROM generate_series(1, 20) g")
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[targets.app]\ndsn = "{SERVER}/{name}"\nstaging = "staging"\n'
        f'[targets.staging]\ndsn = "{SERVER}/postgres"\n'
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[tools]\nstate_dir = "{tmp_path}/state"\n'
    )
    context = AppContext(config=load_config(config))
    backup.run(context, target="app")
    yield context, name
    with _admin() as conn:
        for db in (name, f"{name}_rec"):
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_recover_before_incident_with_a_moment_in_the_future_stops_with_exit_2_and_restores_nothing(
    ctx: tuple[AppContext, str], tmp_path: Path
) -> None:
    context, name = ctx
    lines: list[str] = []

    result = runbook.run(
        context,
        "recover-before-incident",
        variables={"before": "2999-01-01T00:00:00Z", "staging_db": f"{name}_rec", "tables": "public.orders"},
        yes=True,
        echo=lines.append,
        directory=REPO_ROOT / "runbooks",
        transcript_dir=tmp_path / "transcripts",
    )

    assert result.exit_code == 2, "\n".join(lines)
    failed = result.results[-1]
    assert failed.step.name.startswith("No WAL covers the moment")
    assert "opskit: error: --before 2999-01-01T00:00:00Z is in the future" in failed.output
    with _admin() as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (f"{name}_rec",)).fetchone() is None
    assert not list((tmp_path / "backups" / "app").glob("*/verify-*.json"))
