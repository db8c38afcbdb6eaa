"""Restore drills against the real PostgreSQL: a good backup passes, damage of any kind fails it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from opskit import catalog
from opskit.backup import backup
from opskit.catalog import Manifest
from opskit.cli import main
from opskit.config.drill import DrillSettings
from opskit.config.load import load_config
from opskit.config.model import Config, TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, ObjectiveBreached, VerificationFailed
from opskit.drill import drill
from opskit.storage.base import StorageConfig
from tests.servers import REPO_ROOT

SERVER = "postgresql://postgres@127.0.0.1:5432"
CHECKS_DIR = REPO_ROOT / "runbooks" / "checks"
SPEC_FIELDS = {
    "drill_id",
    "trigger",
    "opskit_version",
    "target",
    "backup",
    "staging",
    "started_at",
    "finished_at",
    "phases",
    "checks",
    "data_loss_seconds",
    "rpo",
    "rto",
    "verdict",
    "cleanup",
    "pg_restore_errors",
}


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(f"{SERVER}/postgres", autocommit=True)


def _database_exists(name: str) -> bool:
    with _admin() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


@pytest.fixture
def source_db() -> Iterator[str]:
    """A database with a serial-keyed table, a table without a key, an index, a view, and a Flyway history."""
    name = f"opskit_t_drill_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(f"{SERVER}/{name}", autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id serial PRIMARY KEY, note text, amount numeric,"
            " at timestamptz DEFAULT now(),"
            " ratio float8 DEFAULT 0.1, blob bytea DEFAULT '\\x00ff')"
        )
        conn.execute("INSERT INTO orders (note, amount) SELECT 'order ' || g, g * 1.5 FROM generate_series(1, 300) g")
        conn.execute("CREATE TABLE events (kind text, payload jsonb)")
        conn.execute("""INSERT INTO events VALUES ('a', '{"x": 1}'), ('b', NULL)""")
        conn.execute("CREATE INDEX orders_note ON orders (note)")
        conn.execute("CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100")
        conn.execute(
            "CREATE TABLE flyway_schema_history (installed_rank int PRIMARY KEY, version text,"
            " description text,"
            " type text, success boolean)"
        )
        conn.execute(
            "INSERT INTO flyway_schema_history VALUES (1, '1', 'init', 'SQL', true), (2, '2', 'more', 'SQL', true)"
        )
    yield name
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_context(
    db: str, tmp_path: Path, clock_offset: timedelta = timedelta(0), **drill_settings: object
) -> AppContext:
    storage = StorageConfig(name="local", url=f"file://{tmp_path}/backups")
    app = TargetConfig(
        name="app", dsn=f"{SERVER}/{db}", storages=("local",), staging="staging", fingerprint_tables=("*",)
    )
    staging = TargetConfig(name="staging", dsn=f"{SERVER}/postgres", storages=("local",))
    settings = replace(DrillSettings(checks_dir=str(CHECKS_DIR)), **drill_settings)  # type: ignore[arg-type]
    config = Config(targets={"app": app, "staging": staging}, storages={"local": storage}, drill=settings)
    return AppContext(config=config, clock=lambda: datetime.now(UTC) + clock_offset)


def take_backup(ctx: AppContext) -> Manifest:
    return backup.run(ctx, target="app").manifest


def test_the_backup_records_fingerprints_for_every_table_under_the_size_limit(source_db: str, tmp_path: Path) -> None:
    manifest = take_backup(make_context(source_db, tmp_path))
    prints = {t.qualified: t.fingerprint for t in manifest.tables}
    assert prints["public.orders"] and prints["public.orders"].startswith("sha256:")
    assert prints["public.events"] and prints["public.flyway_schema_history"]
    assert manifest.objects["tables"] == 3 and manifest.objects["views"] == 1


def test_a_drill_on_a_good_backup_passes_and_its_report_has_every_field(source_db: str, tmp_path: Path) -> None:
    ctx = make_context(source_db, tmp_path)
    manifest = take_backup(ctx)
    report = drill.run(ctx, target="app", report_dir=tmp_path / "reports", trigger="test")

    assert report.verdict == "pass", [c for c in report.checks if not c.ok]
    assert report.exit_code == 0
    report.raise_for_verdict()
    data = report.to_dict()
    assert set(data) >= SPEC_FIELDS
    assert data["backup"]["id"] == manifest.id and data["backup"]["sha256"] == manifest.artifact("db").sha256
    assert data["backup"]["storage"] == "local" and data["backup"]["size"] == manifest.size
    assert [p["name"] for p in data["phases"]] == ["fetch", "decrypt", "restore", "verify"]
    assert all(p["started_at"] and p["ended_at"] for p in data["phases"])
    names = {c["name"] for c in data["checks"]}
    assert {
        "stored sha256",
        "pg_restore --list reads it",
        "row counts",
        "content fingerprints",
        "object counts",
        "no invalid indexes",
        "sequences at or past their columns",
        "smoke query example.sql",
    } <= names
    assert data["rto"]["estimated_seconds"] >= data["rto"]["measured_seconds"] > 0
    assert 0 <= data["data_loss_seconds"] < 3600
    assert data["cleanup"]["action"] == "dropped"
    assert not _database_exists(report.staging_database)

    store = ctx.storage("local")
    for ext in ("json", "md", "html"):
        assert store.exists(f"app/drills/{report.drill_id}.{ext}")
        assert (tmp_path / "reports" / f"{report.drill_id}.{ext}").is_file()
    assert "timeline" in (tmp_path / "reports" / f"{report.drill_id}.html").read_text()
    latest = catalog.latest_drill(store, "app")
    assert latest is not None and latest.drill_id == report.drill_id and latest.verdict == "pass"


def test_a_drill_with_two_jobs_loads_over_two_connections_and_passes(source_db: str, tmp_path: Path) -> None:
    ctx = make_context(source_db, tmp_path, jobs=2)
    take_backup(ctx)

    report = drill.run(ctx, target="app", trigger="test")

    assert report.verdict == "pass", [c for c in report.checks if not c.ok]
    assert not _database_exists(report.staging_database)


def test_a_flipped_byte_in_the_artifact_fails_the_checksum_check_with_exit_5(source_db: str, tmp_path: Path) -> None:
    ctx = make_context(source_db, tmp_path)
    manifest = take_backup(ctx)
    path = tmp_path / "backups" / manifest.artifact("db").key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[targets.app]\ndsn = "{SERVER}/{source_db}"\nstaging = "staging"\n'
        f'[targets.staging]\ndsn = "{SERVER}/postgres"\n'
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[tools]\nstate_dir = "{tmp_path}/state"\n'
    )
    assert load_config(config).drill is None

    result = CliRunner().invoke(main, ["--config", str(config), "drill", "restore", "--json"])

    assert result.exit_code == VerificationFailed.exit_code, result.output
    report = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert failed == ["stored sha256"]
    assert report["verdict"] == "fail" and report["cleanup"]["action"] == "none"
    assert "restore" not in [p["name"] for p in report["phases"]]


def test_rows_deleted_in_staging_after_the_restore_fail_the_row_count_check(source_db: str, tmp_path: Path) -> None:
    ctx = make_context(source_db, tmp_path)
    take_backup(ctx)

    def delete_rows(server: TargetConfig, database: str) -> None:
        with psycopg.connect(f"{SERVER}/{database}", autocommit=True) as conn:
            conn.execute("DELETE FROM orders WHERE id % 10 = 0")

    report = drill.run(ctx, target="app", before_checks=delete_rows)

    failed = {c.name: c for c in report.checks if not c.ok}
    assert set(failed) == {"row counts", "content fingerprints"}
    assert failed["row counts"].actual == ["public.orders: expected 300, got 270"]
    assert report.exit_code == 5
    with pytest.raises(VerificationFailed):
        report.raise_for_verdict()
    assert not _database_exists(report.staging_database)


def test_keep_on_failure_keeps_the_staging_database_to_look_at(source_db: str, tmp_path: Path) -> None:
    ctx = make_context(source_db, tmp_path, keep_on_failure=True)
    take_backup(ctx)

    def break_sequence(server: TargetConfig, database: str) -> None:
        with psycopg.connect(f"{SERVER}/{database}", autocommit=True) as conn:
            conn.execute("SELECT setval('orders_id_seq', 5)")

    report = drill.run(ctx, target="app", before_checks=break_sequence)
    try:
        failed = [c for c in report.checks if not c.ok]
        assert [c.name for c in failed] == ["sequences at or past their columns"]
        assert report.cleanup["action"] == "kept" and _database_exists(report.staging_database)
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{report.staging_database}" WITH (FORCE)')


def test_a_backup_older_than_the_rpo_target_makes_the_drill_exit_6(source_db: str, tmp_path: Path) -> None:
    take_backup(make_context(source_db, tmp_path))
    later = make_context(source_db, tmp_path, clock_offset=timedelta(hours=2))

    report = drill.run(later, target="app")

    assert report.verdict == "pass"
    assert report.data_loss is not None and report.data_loss > timedelta(hours=1)
    assert report.exit_code == ObjectiveBreached.exit_code == 6
    assert report.to_dict()["rpo"]["status"] == "breached"
    with pytest.raises(ObjectiveBreached, match="RPO breached"):
        report.raise_for_verdict()


def test_a_drill_can_pick_the_newest_backup_before_a_time(source_db: str, tmp_path: Path) -> None:
    ctx = make_context(source_db, tmp_path)
    first = take_backup(ctx)
    second = take_backup(ctx)
    assert second.snapshot_time > first.snapshot_time
    store = ctx.storage("local")
    assert [m.id for m in catalog.list_backups(store, "app")] == [second.id, first.id]

    report = drill.run(ctx, target="app", before=second.snapshot_time)

    assert report.manifest is not None and report.manifest.id == first.id
    assert report.verdict == "pass"


def test_the_drill_table_of_the_config_is_validated_with_paths() -> None:
    from opskit.config.load import parse_config

    config = parse_config(
        '[drill]\nkeep_on_failure = true\nallowed_restore_errors = ["must be owner of extension"]\n'
        'checks_dir = "checks"\njobs = 4\nno_owner = true\n'
    )
    assert config.drill == DrillSettings(
        keep_on_failure=True,
        allowed_restore_errors=("must be owner of extension",),
        checks_dir="checks",
        jobs=4,
        no_owner=True,
    )
    with pytest.raises(ConfigError) as caught:
        parse_config('[drill]\nallowed_restore_errors = ["("]\njobs = 0\nkeep = true\n')
    problems = caught.value.problems
    assert any(p.startswith("At 'drill.allowed_restore_errors[0]': is not a regex") for p in problems)
    assert "At 'drill.jobs': must be at least 1, not 0" in problems
    assert "At 'drill.keep': unknown key" in problems


def test_an_encrypted_backup_drills_with_the_identity_and_fails_with_a_wrong_one(
    source_db: str, tmp_path: Path
) -> None:
    import pyrage

    from opskit.config.model import EncryptionConfig
    from opskit.secrets.references import SecretRef

    right, wrong = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    for name, identity in (("right", right), ("wrong", wrong)):
        (tmp_path / f"{name}.key").write_text(str(identity) + "\n")
    ctx = make_context(source_db, tmp_path)

    def with_identity(name: str) -> AppContext:
        encryption = EncryptionConfig(
            recipients=(str(right.to_public()),), identity=SecretRef(f"file:{tmp_path}/{name}.key")
        )
        return AppContext(config=replace(ctx.config, encryption=encryption))

    take_backup(with_identity("right"))

    good = drill.run(with_identity("right"), target="app")
    assert good.verdict == "pass", [c for c in good.checks if not c.ok]
    assert any(c.name == "decrypts with the configured identity" and c.ok for c in good.checks)

    bad = drill.run(with_identity("wrong"), target="app")
    failed = [c for c in bad.checks if not c.ok]
    assert [c.name for c in failed] == ["decrypts with the configured identity"]
    assert "matches none" in str(failed[0].actual)
    assert bad.exit_code == 5


def test_fingerprints_ignore_physical_order_and_session_settings(source_db: str) -> None:
    from opskit.pg import facts

    with psycopg.connect(f"{SERVER}/{source_db}", autocommit=True) as conn:
        for name in ("one", "two"):
            conn.execute(f"CREATE TABLE keyed_{name} (code text PRIMARY KEY, at timestamptz, f float8, b bytea)")
            conn.execute(f"CREATE TABLE loose_{name} (code text, at timestamptz)")
        rows = [
            ("b", "2026-01-02 03:04:05+00", 0.1, b"\x00"),
            ("A", "2026-05-06 07:08:09+02", 1e-20, b"\xff"),
        ]
        for table, ordered in (("one", rows), ("two", list(reversed(rows)))):
            for row in ordered:
                conn.execute(f"INSERT INTO keyed_{table} VALUES (%s, %s, %s, %s)", row)
                conn.execute(f"INSERT INTO loose_{table} VALUES (%s, %s)", row[:2])
    with psycopg.connect(f"{SERVER}/{source_db}") as conn:
        first = {t: facts.fingerprint_table(conn, "public", t) for t in ("keyed_one", "loose_one")}
    with psycopg.connect(f"{SERVER}/{source_db}") as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Tokyo'; SET extra_float_digits = 0")
        conn.execute("SET bytea_output = 'escape'; SET IntervalStyle = 'sql_standard'")
        conn.commit()
        second = {t: facts.fingerprint_table(conn, "public", t) for t in ("keyed_two", "loose_two")}
    assert first["keyed_one"] == second["keyed_two"]
    assert first["loose_one"] == second["loose_two"]
