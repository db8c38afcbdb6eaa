"""Stored records read back through the catalog: checks in both spellings, drill reports, pins, verifications."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from opskit import catalog
from opskit.catalog import Check, DrillRecord, Pin, Verification
from opskit.storage.base import Storage, StorageConfig
from opskit.storage.registry import open_storage

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
BACKUP_ID = "20261126T120000Z-abcd"


def local(tmp_path: Path) -> Storage:
    return open_storage(StorageConfig(name="local", url=f"file://{tmp_path}"))


def test_a_check_reads_the_same_from_a_verify_record_and_from_a_drill_report() -> None:
    check = Check("db", "stored sha256", "aa", "aa", True)

    assert check.to_verify_dict() == {
        "artifact": "db",
        "check": "stored sha256",
        "expected": "aa",
        "actual": "aa",
        "ok": True,
    }
    assert check.to_drill_dict() == {
        "phase": "db",
        "name": "stored sha256",
        "ok": True,
        "expected": "aa",
        "actual": "aa",
    }
    assert Check.from_dict(check.to_verify_dict()) == check
    assert Check.from_dict(check.to_drill_dict()) == check


def test_drill_reports_are_read_defensively() -> None:
    assert DrillRecord.from_report({"verdict": "passed", "finished_at": "2026-10-01T06:20:00Z"}) is not None
    assert DrillRecord.from_report({"verdict": "pass"}) is None  # no time: not a report
    assert DrillRecord.from_report(["not", "a", "report"]) is None
    assert DrillRecord.from_report({"kind": "verify", "started_at": "2026-10-01T06:00:00Z"}) is None
    facts = DrillRecord.from_report({"passed": True, "started_at": "2026-10-01T06:00:00Z", "estimated_rto_seconds": 60})
    assert facts is not None and facts.passed and facts.estimated_rto_seconds == 60


def test_every_legacy_pass_spelling_reads_as_pass_and_anything_else_as_fail() -> None:
    for verdict in ("pass", "passed", "OK", "success", "succeeded", True):
        record = DrillRecord.from_report({"verdict": verdict, "finished_at": "2026-10-01T06:20:00Z"})
        assert record is not None and record.verdict == catalog.DRILL_PASS
    for verdict in ("fail", "failed", False, None):
        record = DrillRecord.from_report({"verdict": verdict, "finished_at": "2026-10-01T06:20:00Z"})
        assert record is not None and record.verdict == catalog.DRILL_FAIL


def test_the_latest_drill_is_the_newest_readable_report(tmp_path: Path) -> None:
    store = local(tmp_path)
    older = {"kind": "drill", "drill_id": "20261125T060000Z-aaaa", "started_at": "2026-11-25T06:00:00Z"}
    newer = {**older, "drill_id": "20261126T060000Z-bbbb", "started_at": "2026-11-26T06:00:00Z", "verdict": "pass"}
    catalog.write_json(store, catalog.drill_report_key("app", older["drill_id"], "json"), older)
    catalog.write_json(store, catalog.drill_report_key("app", newer["drill_id"], "json"), newer)
    with store.writer(catalog.drill_report_key("app", "20261127T060000Z-cccc", "json")) as out:
        out.write(b"{not json")

    latest = catalog.latest_drill(store, "app")

    assert latest is not None and latest.drill_id == "20261126T060000Z-bbbb" and latest.passed
    assert [r.drill_id for r in catalog.list_drills(store, "app")] == ["20261126T060000Z-bbbb", "20261125T060000Z-aaaa"]
    assert catalog.newest_drill([None, latest, catalog.list_drills(store, "app")[1]]) == latest


def test_of_two_drills_started_in_the_same_second_the_later_start_is_the_latest(tmp_path: Path) -> None:
    # The ids share their second; the random suffix of the later one sorts first by chance.
    store = local(tmp_path)
    first = {"kind": "drill", "drill_id": "20261126T060000Z-ffff", "started_at": "2026-11-26T06:00:00.100000Z"}
    second = {**first, "drill_id": "20261126T060000Z-0000", "started_at": "2026-11-26T06:00:00.900000Z"}
    for report in (first, second):
        catalog.write_json(store, catalog.drill_report_key("app", report["drill_id"], "json"), report)

    latest = catalog.latest_drill(store, "app")

    assert latest is not None and latest.drill_id == "20261126T060000Z-0000"


def test_a_drill_report_is_stored_in_every_rendering(tmp_path: Path) -> None:
    store = local(tmp_path)

    keys = catalog.write_drill_report(store, "app", "20261126T060000Z-bbbb", {"json": b"{}\n", "md": b"# drill\n"})

    assert keys == ["app/drills/20261126T060000Z-bbbb.json", "app/drills/20261126T060000Z-bbbb.md"]
    assert all(store.exists(key) for key in keys)


def test_pins_are_found_from_a_listing_and_written_once(tmp_path: Path) -> None:
    store = local(tmp_path)
    pin = Pin("app", BACKUP_ID, T0, note="before the migration")

    assert catalog.write_pin(store, pin)
    assert not catalog.write_pin(store, Pin("app", BACKUP_ID, T0 + timedelta(hours=1)))
    assert catalog.read_json(store, catalog.pin_key("app", BACKUP_ID)) == pin.to_dict()
    assert catalog.pinned_ids(store, "app") == frozenset({BACKUP_ID})
    assert catalog.pinned_ids(store, "other") == frozenset()
    assert catalog.remove_pin(store, "app", BACKUP_ID)
    assert not catalog.remove_pin(store, "app", BACKUP_ID)
    assert catalog.pinned_ids(store, "app") == frozenset()


def test_a_verification_round_trips_and_the_newest_verify_run_skips_drill_verdicts(tmp_path: Path) -> None:
    store = local(tmp_path)
    checks = (Check("db", "stored size", 10, 10, True),)
    run = Verification("app", BACKUP_ID, "local", T0, "verify", "full", "pass", checks)
    drill = Verification("app", BACKUP_ID, "local", T0 + timedelta(hours=1), "drill", "restore", "fail")

    key = catalog.record_verification(store, run)
    catalog.record_verification(store, drill)

    assert catalog.read_verification(store, key) == Verification(**{**run.__dict__, "key": key})
    assert catalog.latest_verify_run(store, "app") == catalog.read_verification(store, key)
