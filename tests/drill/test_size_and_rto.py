"""A drill after normal growth still restores; a drill that restored nothing measures no RTO anywhere.

Real backups of a real database that grows between them (incompressible rows, so the stored
dump grows too), drilled into the real staging server; the report, the status and the metrics
are read back from the storage the drill wrote to.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from opskit.catalog import DrillRecord
from opskit.cli import main
from opskit.config.drill import DrillSettings
from opskit.config.load import load_config, parse_config
from opskit.core.errors import ConfigError
from opskit.drill import drill
from opskit.drill.checks import size_range
from opskit.ops import metrics, status
from tests.drill.test_drill import SERVER, make_context, take_backup
from tests.servers import REPO_ROOT

SIZE_CHECK = "size within recent range"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(f"{SERVER}/postgres", autocommit=True)


@pytest.fixture
def growing_db() -> Iterator[str]:
    """A database with one table of random (incompressible) text, so its dump's size follows its rows."""
    name = f"opskit_t_grow_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    load_rows(name, 200)
    yield name
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_rows(database: str, rows: int) -> None:
    """Append ``rows`` rows of 64 random hex characters each to ``load`` (created when missing)."""
    with psycopg.connect(f"{SERVER}/{database}", autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS load (id bigserial PRIMARY KEY, payload text)")
        conn.execute(
            "INSERT INTO load (payload) SELECT md5(random()::text) || md5(random()::text) FROM generate_series(1, %s)",
            (rows,),
        )


# --------------------------------------------------------------------------- item 11: size range


def test_a_drill_after_a_data_load_restores_and_warns_about_the_size_jump(growing_db: str, tmp_path: Path) -> None:
    ctx = make_context(growing_db, tmp_path)
    small = take_backup(ctx)
    load_rows(growing_db, 5000)  # a data load: the dump grows about 20 times
    large = take_backup(ctx)
    assert large.artifact("db").size > 5 * small.artifact("db").size

    report = drill.run(ctx, target="app", trigger="schedule")

    assert report.verdict == "pass", [c for c in report.checks if not c.ok]
    assert [p.name for p in report.phases] == ["fetch", "decrypt", "restore", "verify"]
    (size,) = [c for c in report.checks if c.name == SIZE_CHECK]
    assert size.ok and "outside the range" in str(size.actual)
    assert any(w.startswith("size jump: the dump is") for w in report.warnings)
    assert any("size jump" in w for w in report.to_dict()["warnings"])


def test_with_size_jump_fail_the_same_load_fails_the_drill_before_restoring_and_measures_no_rto(
    growing_db: str, tmp_path: Path
) -> None:
    ctx = make_context(growing_db, tmp_path, size_jump="fail")
    take_backup(ctx)
    load_rows(growing_db, 5000)
    take_backup(ctx)

    report = drill.run(ctx, target="app")

    failed = [c.name for c in report.checks if not c.ok]
    assert failed == [SIZE_CHECK]
    assert report.exit_code == 5
    assert "restore" not in [p.name for p in report.phases]
    assert report.rto is None and report.measured_rto is None
    rto = report.to_dict()["rto"]
    assert rto["status"] == "not measured"
    assert rto["measured_seconds"] is None and rto["estimated_seconds"] is None
    assert not report.breaches


def test_backups_that_grow_at_a_steady_pace_stay_within_the_range() -> None:
    settings = DrillSettings()
    earlier = [1_000_000 + 60_000 * i for i in range(10)]  # 6% a day for ten days

    normal = size_range(earlier, settings)

    assert normal.low <= earlier[-1] + 60_000 <= normal.high
    assert normal.median == statistics_median(earlier)
    assert normal.count == 10


def statistics_median(values: list[int]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return (ordered[middle - 1] + ordered[middle]) / 2 if len(ordered) % 2 == 0 else float(ordered[middle])


def test_one_odd_backup_does_not_move_the_range_much_and_the_factor_is_configurable() -> None:
    earlier = [1000, 1010, 990, 1005, 40_000]  # one backup taken during a bulk load

    normal = size_range(earlier, DrillSettings())
    tight = size_range(earlier, DrillSettings(size_factor=1.2, size_spread=0))

    assert normal.median == 1005 and normal.high < 5000
    assert (tight.low, tight.high) == (837, 1206)


def test_the_size_keys_of_the_drill_table_are_validated_with_paths() -> None:
    config = parse_config('[drill]\nsize_window = 5\nsize_factor = 3\nsize_spread = 2.5\nsize_jump = "fail"\n')
    assert config.drill is not None
    assert (config.drill.size_window, config.drill.size_factor, config.drill.size_spread) == (5, 3.0, 2.5)
    assert config.drill.size_jump == "fail"

    with pytest.raises(ConfigError) as caught:
        parse_config('[drill]\nsize_window = 0\nsize_factor = 0.5\nsize_spread = "x"\nsize_jump = "stop"\n')
    problems = caught.value.problems
    assert "At 'drill.size_window': must be at least 1, not 0" in problems
    assert "At 'drill.size_factor': must be at least 1.0, not 0.5" in problems
    assert any(p.startswith("At 'drill.size_spread': must be a number") for p in problems)
    assert "At 'drill.size_jump': must be \"warn\" or \"fail\", not 'stop'" in problems


def test_the_example_config_documents_the_size_keys() -> None:
    settings = load_config(REPO_ROOT / "config.example.toml").drill

    assert settings is not None
    assert (settings.size_window, settings.size_factor, settings.size_spread, settings.size_jump) == (
        10,
        2.0,
        4.0,
        "warn",
    )
    text = (REPO_ROOT / "config.example.toml").read_text()
    for key in ("size_window", "size_factor", "size_spread", "size_jump"):
        assert f"\n{key} = " in text


# --------------------------------------------------------------------------- item 12: no RTO without a restore


def test_a_drill_that_restored_nothing_reports_no_rto_in_its_line_status_and_metrics(
    growing_db: str, tmp_path: Path
) -> None:
    ctx = make_context(growing_db, tmp_path)
    take_backup(ctx)
    good = drill.run(ctx, target="app")
    assert good.verdict == "pass" and good.rto is not None
    before = metrics.collect(ctx).registry.get_sample_value("opskit_drill_estimated_rto_seconds", {"target": "app"})
    assert before is not None and before > 0
    newest = take_backup(ctx)
    dump = tmp_path / "backups" / newest.artifact("db").key
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01  # the stored sha256 check fails: nothing is restored
    dump.write_bytes(bytes(data))

    bad = drill.run(ctx, target="app")

    assert bad.verdict == "fail" and bad.rto is None
    assert bad.to_dict()["rto"]["status"] == "not measured"
    now = status.run(ctx, target="app").targets[0]
    assert now.last_drill is not None and now.last_drill["drill_id"] == bad.drill_id
    assert now.last_drill["rto"]["measured_seconds"] is None and now.rto is None
    assert f"the last drill ({bad.drill_id}) restored nothing: the RTO is unmeasured" in now.warnings
    exported = metrics.collect(ctx).registry
    assert exported.get_sample_value("opskit_drill_estimated_rto_seconds", {"target": "app"}) is None
    assert exported.get_sample_value("opskit_drill_last_result", {"target": "app"}) == 0


def test_the_drill_summary_says_the_rto_was_not_measured_when_nothing_was_restored(
    growing_db: str, tmp_path: Path
) -> None:
    take_backup(make_context(growing_db, tmp_path))
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[targets.app]\ndsn = "{SERVER}/{growing_db}"\nstaging = "staging"\n'
        f'[targets.staging]\ndsn = "{SERVER}/postgres"\n'
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[tools]\nstate_dir = "{tmp_path}/state"\n'
    )
    (dump,) = (tmp_path / "backups").rglob("db.dump*")
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))

    result = CliRunner().invoke(main, ["--config", str(config), "drill", "restore"])

    assert result.exit_code == 5, result.output
    assert "  RTO not measured: the restore did not finish" in result.stdout.splitlines()
    assert "RTO measured" not in result.stdout


def test_an_old_report_of_a_drill_that_restored_nothing_is_read_as_measuring_no_rto() -> None:
    old = {
        "kind": "drill",
        "drill_id": "20240501T120000Z-abcd",
        "started_at": "2024-05-01T12:00:00Z",
        "verdict": "fail",
        "phases": [{"name": "fetch", "seconds": 0.1}],
        "rto": {"measured_seconds": 0.1, "estimated_seconds": 2400.1, "status": "ok"},
    }

    record = DrillRecord.from_report(old)

    assert record is not None
    assert record.measured_rto_seconds is None and record.estimated_rto_seconds is None
    assert record.rto_status == "not measured"
