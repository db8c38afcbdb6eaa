"""Every shipped runbook runs end to end (--yes) against the local PostgreSQL, step by step."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from opskit import catalog
from opskit.backup import backup
from opskit.cli import main
from opskit.config.load import load_config
from opskit.context import AppContext
from opskit.core.errors import ConfigError, RunbookFailed
from opskit.runbooks import runbook
from opskit.runbooks.model import RunbookResult
from tests.servers import REPO_ROOT

SERVER = "postgresql://postgres@127.0.0.1:5432"
RUNBOOKS = REPO_ROOT / "runbooks"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(f"{SERVER}/postgres", autocommit=True)


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    """Unique database names for the source, the 'new server' and a recovered copy; all dropped afterwards."""
    base = f"opskit_t_rb_{secrets.token_hex(4)}"
    dbs = {"app": base, "new": f"{base}_new", "recovered": f"{base}_rec"}
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{base}"')
    with psycopg.connect(f"{SERVER}/{base}", autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO orders (note) SELECT 'order ' || g FROM generate_series(1, 50) g")
    yield dbs
    with _admin() as conn:
        for name in dbs.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def ctx(names: dict[str, str], tmp_path: Path) -> AppContext:
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[targets.app]\ndsn = "{SERVER}/{names["app"]}"\nstaging = "staging"\nfingerprint_tables = ["*"]\n'
        f'[targets.staging]\ndsn = "{SERVER}/postgres"\n'
        f'[targets.newserver]\ndsn = "{SERVER}/{names["new"]}"\n'
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[tools]\nstate_dir = "{tmp_path}/state"\n'
    )
    context = AppContext(config=load_config(config))
    backup.run(context, target="app")
    return context


def run_book(ctx: AppContext, name: str, tmp_path: Path, **variables: str) -> RunbookResult:
    lines: list[str] = []
    result = runbook.run(
        ctx,
        name,
        variables=variables,
        yes=True,
        echo=lines.append,
        directory=RUNBOOKS,
        transcript_dir=tmp_path / "transcripts",
    )
    assert result.ok, "\n".join(lines)
    assert result.transcript is not None and result.transcript.is_file()
    assert len(result.results) == len(result.runbook.steps)
    return result


def test_the_quarterly_drill_runbook_drills_the_newest_backup(ctx: AppContext, tmp_path: Path) -> None:
    result = run_book(ctx, "quarterly-drill", tmp_path, report_dir=str(tmp_path / "reports"))

    assert len(list((tmp_path / "reports").glob("*.json"))) == 1
    transcript = result.transcript.read_text() if result.transcript else ""
    assert "drill restore" in transcript and "PASS" in transcript
    assert "-> yes (confirmed by --yes)" in transcript


def test_restore_to_new_server_replays_globals_then_the_database(
    ctx: AppContext, names: dict[str, str], tmp_path: Path
) -> None:
    run_book(ctx, "restore-to-new-server", tmp_path, new_server="newserver")

    with psycopg.connect(f"{SERVER}/{names['new']}") as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (50,)


def test_recover_before_incident_restores_the_backup_before_the_time_and_compares_tables(
    ctx: AppContext, names: dict[str, str], tmp_path: Path
) -> None:
    incident = datetime.now(UTC) + timedelta(seconds=1)
    with psycopg.connect(f"{SERVER}/{names['app']}", autocommit=True) as conn:
        conn.execute("DELETE FROM orders WHERE id > 40")  # the incident

    result = run_book(
        ctx,
        "recover-before-incident",
        tmp_path,
        before=catalog.format_time(incident),
        staging_db=names["recovered"],
        tables="public.orders",
    )

    production, recovered = (r.output for r in result.results if r.step.kind == "sql")
    assert "public.orders | 40" in production
    assert "public.orders | 50" in recovered


def test_database_corruption_keeps_evidence_verifies_and_drills(ctx: AppContext, tmp_path: Path) -> None:
    result = run_book(ctx, "database-corruption", tmp_path)

    store = ctx.storage("local")
    labels = [m.labels for m in catalog.list_backups(store, "app")]
    assert ("pre-repair",) in labels
    assert "invalid_indexes | checksum_failures" in result.results[1].output


def test_a_runbook_stops_at_the_first_failing_step_and_says_which(ctx: AppContext, tmp_path: Path) -> None:
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "failing.toml").write_text(
        'title = "fails"\n[vars]\nwho = "app"\n'
        '[[steps]]\nkind = "sql"\ntarget = "${who}"\nquery = "SELECT count(*) FROM orders"\nexpect = 49\n'
        '[[steps]]\nkind = "note"\ntext = "never shown"\n'
    )

    result = runbook.run(ctx, "failing", yes=True, directory=tmp_path / "books", transcript_dir=tmp_path)

    assert not result.ok and len(result.results) == 1
    assert result.results[0].error == "expected 49, got 50"
    assert result.exit_code == 5
    with pytest.raises(RunbookFailed, match="stopped at step 1") as caught:
        result.raise_for_outcome()
    assert caught.value.exit_code == 5
    assert ctx.config.source is not None
    cli = CliRunner().invoke(
        main,
        [
            "--config",
            str(ctx.config.source),
            "runbook",
            "run",
            "failing",
            "--yes",
            "--dir",
            str(tmp_path / "books"),
        ],
    )
    assert cli.exit_code == 5, cli.output
    assert "stopped at step 1" in cli.output
    assert "## Not run" in (result.transcript.read_text() if result.transcript else "")


def test_a_dry_run_shows_the_steps_and_runs_nothing(ctx: AppContext, tmp_path: Path) -> None:
    result = runbook.run(
        ctx,
        "restore-to-new-server",
        variables={"new_server": "newserver"},
        dry_run=True,
        directory=RUNBOOKS,
        transcript_dir=tmp_path,
    )

    assert result.ok and {r.status for r in result.results} <= {"dry-run", "ok"}
    assert any("would run: opskit restore latest --target app --to newserver" in r.output for r in result.results)


def test_a_required_variable_without_a_value_is_a_usage_error(ctx: AppContext) -> None:
    with pytest.raises(ConfigError, match="needs new_server"):
        runbook.run(ctx, "restore-to-new-server", yes=True, directory=RUNBOOKS)


def test_the_cli_lists_and_shows_the_shipped_runbooks(ctx: AppContext) -> None:
    assert ctx.config.source is not None
    runner = CliRunner()
    listed = runner.invoke(main, ["--config", str(ctx.config.source), "runbook", "list", "--dir", str(RUNBOOKS)])
    assert listed.exit_code == 0, listed.output
    for name in (
        "quarterly-drill",
        "restore-to-new-server",
        "recover-before-incident",
        "database-corruption",
    ):
        assert name in listed.output
    shown = runner.invoke(
        main,
        [
            "--config",
            str(ctx.config.source),
            "runbook",
            "show",
            "recover-before-incident",
            "--dir",
            str(RUNBOOKS),
        ],
    )
    assert "var before: (required)" in shown.output


def test_recover_before_incident_without_wal_skips_the_pitr_path_and_takes_the_logical_one(
    ctx: AppContext, tmp_path: Path
) -> None:
    result = runbook.run(
        ctx,
        "recover-before-incident",
        variables={"before": "2026-11-26T17:00:00Z"},
        dry_run=True,
        directory=RUNBOOKS,
        transcript_dir=tmp_path,
    )

    by_status = {r.step.name: (r.status, r.output) for r in result.results}
    pitr_status, pitr_output = by_status[
        "The WAL archive covers the moment: recover to it on a scratch server that stays up, and verify it"
    ]
    assert pitr_status == "skipped"
    assert "skipped (when: opskit wal covers --target app 2026-11-26T17:00:00Z)" in pitr_output
    assert "has no base backup with archived WAL" in pitr_output
    logical_status, logical_output = by_status[
        "No WAL covers the moment: restore the newest backup before it into staging, and verify it"
    ]
    assert logical_status == "dry-run"
    assert "would run: opskit drill restore --target app --before 2026-11-26T17:00:00Z" in logical_output


def test_a_step_with_both_when_and_unless_is_a_config_error(tmp_path: Path) -> None:
    from opskit.runbooks.loader import load

    path = tmp_path / "both.toml"
    path.write_text('title = "t"\n[[steps]]\nkind = "note"\ntext = "x"\nwhen = ["status"]\nunless = ["status"]\n')
    with pytest.raises(ConfigError, match="takes 'when' or 'unless', not both"):
        load(path)


def test_a_condition_that_cannot_be_answered_fails_the_step_instead_of_choosing_a_path(
    ctx: AppContext, tmp_path: Path
) -> None:
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "ask.toml").write_text(
        'title = "t"\n[[steps]]\nkind = "note"\ntext = "x"\nwhen = ["wal", "covers", "--target", "nope", "2026-11-26T17:00:00Z"]\n'
    )
    result = runbook.run(ctx, "ask", directory=tmp_path / "books", transcript_dir=tmp_path)

    (step,) = result.results
    assert step.status == "failed" and step.exit_code == 2
    assert (
        step.error
        == "its condition (when: opskit wal covers --target nope 2026-11-26T17:00:00Z) could not be answered: exit 2"
    )
