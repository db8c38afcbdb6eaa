"""``opskit config check`` against real servers: each broken piece is caught, nothing secret is printed."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pyrage
import pytest
from click.testing import CliRunner

from opskit.cli import main
from opskit.config.load import build_config
from opskit.context import AppContext
from opskit.ops import config_check
from opskit.ops.config_check import FAIL, OK, WARN, CheckReport
from opskit.secrets import references as opskit_secrets
from tests.pgcluster import ScramCluster
from tests.servers import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, free_port


@pytest.fixture(autouse=True)
def fresh_secret_cache() -> Any:
    opskit_secrets.clear_cache()
    yield
    opskit_secrets.clear_cache()


@pytest.fixture
def password_file(scram_cluster: ScramCluster, tmp_path: Path) -> Path:
    path = tmp_path / "db_password"
    path.write_text(scram_cluster.password + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def good_config(scram_cluster: ScramCluster, password_file: Path, tmp_path: Path) -> dict[str, Any]:
    """A config where every check passes: scram target, local storage, matching age identity."""
    identity = pyrage.x25519.Identity.generate()
    identity_file = tmp_path / "age.key"
    identity_file.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    return {
        "targets": {"app": {"dsn": scram_cluster.dsn(), "password": f"file:{password_file}"}},
        "storages": {"local": {"url": f"file://{tmp_path / 'backups'}"}},
        "encryption": {"recipients": [str(identity.to_public())], "identity": f"file:{identity_file}"},
        "tools": {"state_dir": str(tmp_path / "state")},
    }


def check(raw: dict[str, Any]) -> CheckReport:
    return config_check.run(AppContext(config=build_config(raw)))


def result(report: CheckReport, name: str) -> config_check.CheckResult:
    matches = [r for r in report.results if r.check == name]
    assert matches, f"no check named {name!r} in {[r.check for r in report.results]}"
    return matches[0]


def test_a_good_config_passes_every_check(good_config: dict[str, Any], scram_cluster: ScramCluster) -> None:
    report = check(good_config)
    assert report.ok, report.failures
    assert report.exit_code == 0
    assert result(report, "secret targets.app.password").status == OK
    assert result(report, "target app").status == OK
    for tool in ("pg_dump", "pg_dumpall", "pg_restore"):
        assert result(report, f"target app {tool}").status == OK
    assert result(report, "storage local").status == OK
    assert result(report, "encryption").status == OK
    assert scram_cluster.password not in json.dumps(report.to_dict())


def test_a_wrong_password_fails_the_target_with_exit_3(
    good_config: dict[str, Any], password_file: Path, scram_cluster: ScramCluster
) -> None:
    password_file.write_text("not-the-password\n")
    report = check(good_config)
    failed = result(report, "target app")
    assert failed.status == FAIL
    assert "password authentication failed" in failed.detail
    assert "not-the-password" not in json.dumps(report.to_dict())
    assert report.exit_code == 3


def test_an_unreachable_host_fails_the_target_with_exit_3(good_config: dict[str, Any]) -> None:
    good_config["targets"]["app"]["dsn"] = f"host=127.0.0.1 port={free_port()} user=x dbname=postgres"
    report = check(good_config)
    failed = result(report, "target app")
    assert failed.status == FAIL
    assert "cannot connect to target 'app'" in failed.detail
    assert report.exit_code == 3
    # The other checks still ran.
    assert result(report, "storage local").status == OK


def test_a_pg_dump_older_than_the_server_fails(good_config: dict[str, Any], tmp_path: Path) -> None:
    bin_dir = tmp_path / "oldbin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text('#!/bin/sh\necho "pg_dump (PostgreSQL) 11.0"\n')
    fake.chmod(0o755)
    good_config["tools"]["pg_bin_dir"] = str(bin_dir)
    report = check(good_config)
    failed = result(report, "target app pg_dump")
    assert failed.status == FAIL
    assert "pg_dump 11.0" in failed.detail and "major version 15" in failed.detail
    assert result(report, "target app pg_restore").status == OK
    assert report.exit_code == 3


def test_a_missing_bucket_fails_the_storage(
    good_config: dict[str, Any], s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("OPSKIT_T_S3_SECRET", S3_SECRET_KEY)
    good_config["storages"]["s3"] = {
        "url": f"s3://opskit-t-missing-{secrets.token_hex(4)}/backups",
        "endpoint_url": s3_server,
        "region": S3_REGION,
        "access_key_id": S3_ACCESS_KEY,
        "secret_access_key": "env:OPSKIT_T_S3_SECRET",
    }
    report = check(good_config)
    failed = result(report, "storage s3")
    assert failed.status == FAIL
    assert "bucket" in failed.detail.lower()
    assert result(report, "storage local").status == OK
    assert result(report, "secret storages.s3.secret_access_key").status == OK
    assert result(report, "secret storages.s3.access_key_id").status == WARN  # written literally
    assert report.exit_code == 3


def test_a_wrong_age_identity_fails_encryption_with_exit_2(good_config: dict[str, Any], tmp_path: Path) -> None:
    other = pyrage.x25519.Identity.generate()
    wrong = tmp_path / "other.key"
    wrong.write_text(f"{other}\n")
    good_config["encryption"]["identity"] = f"file:{wrong}"
    report = check(good_config)
    failed = result(report, "encryption")
    assert failed.status == FAIL
    assert "matches none" in failed.detail
    assert str(other) not in json.dumps(report.to_dict())
    assert report.exit_code == 2


def test_a_secret_that_cannot_be_resolved_fails_and_names_the_reference(good_config: dict[str, Any]) -> None:
    good_config["targets"]["app"]["password"] = "env:OPSKIT_T_NEVER_SET"
    report = check(good_config)
    assert result(report, "secret targets.app.password").status == FAIL
    assert "env:OPSKIT_T_NEVER_SET" in result(report, "secret targets.app.password").detail
    assert report.exit_code == 3


def test_literal_secrets_and_dsn_passwords_are_warned_about(
    good_config: dict[str, Any], scram_cluster: ScramCluster
) -> None:
    good_config["targets"]["app"]["password"] = scram_cluster.password
    good_config["targets"]["inline"] = {"dsn": scram_cluster.dsn() + f" password={scram_cluster.password}"}
    report = check(good_config)
    assert report.ok, report.failures
    assert result(report, "secret targets.app.password").status == WARN
    assert result(report, "secret targets.inline.dsn").status == WARN
    assert result(report, "target inline").status == OK
    assert scram_cluster.password not in json.dumps(report.to_dict())


def _write_toml(path: Path, raw: dict[str, Any]) -> None:
    lines = []
    for section, body in raw.items():
        for name, table in body.items() if section in ("targets", "storages") else [(None, body)]:
            lines.append(f"[{section}.{name}]" if name else f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")


def test_the_cli_prints_a_table_and_exits_with_the_highest_failure(
    good_config: dict[str, Any], tmp_path: Path, password_file: Path, scram_cluster: ScramCluster
) -> None:
    password_file.write_text("wrong\n")
    good_config["storages"]["local"]["url"] = "file:///proc/opskit-not-writable"
    config_file = tmp_path / "opskit.toml"
    _write_toml(config_file, good_config)
    outcome = CliRunner().invoke(main, ["--config", str(config_file), "config", "check"])
    assert outcome.exit_code == 3, outcome.output
    assert "CHECK" in outcome.output and "STATUS" in outcome.output
    assert "FAIL" in outcome.output and "storage local" in outcome.output
    assert scram_cluster.password not in outcome.output


def test_the_cli_json_report_lists_every_check(good_config: dict[str, Any], tmp_path: Path) -> None:
    config_file = tmp_path / "opskit.toml"
    _write_toml(config_file, good_config)
    outcome = CliRunner().invoke(main, ["--config", str(config_file), "config", "check", "--json"])
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    assert document["ok"] is True and document["summary"]["fail"] == 0
    assert {c["check"] for c in document["checks"]} >= {"config", "target app", "storage local", "encryption"}


def test_an_invalid_config_is_reported_as_failed_checks_with_exit_2(tmp_path: Path) -> None:
    config_file = tmp_path / "opskit.toml"
    config_file.write_text('[targets.app]\ndsn = 5\npasword = "typo"\n')
    outcome = CliRunner().invoke(main, ["--config", str(config_file), "config", "check", "--json"])
    assert outcome.exit_code == 2
    document = json.loads(outcome.stdout)
    details = [c["detail"] for c in document["checks"] if c["status"] == FAIL]
    assert any("targets.app.dsn" in d for d in details)
    assert any("targets.app.pasword" in d and "unknown key" in d for d in details)


def test_the_daemon_control_database_is_checked_when_configured(
    good_config: dict[str, Any], scram_cluster: ScramCluster, password_file: Path
) -> None:
    good_config["daemon"] = {"control_dsn": scram_cluster.dsn(), "control_password": f"file:{password_file}"}
    assert result(check(good_config), "daemon control database").status == OK

    good_config["daemon"]["control_dsn"] = f"host=127.0.0.1 port={free_port()} user=x dbname=postgres"
    failed = result(check(good_config), "daemon control database")
    assert failed.status == FAIL and "cannot connect" in failed.detail
