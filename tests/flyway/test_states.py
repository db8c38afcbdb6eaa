"""Info states and validation messages from history rows and scripts, without a database (docs/flyway-compat.md §4.2, §4.3)."""

from __future__ import annotations

from pathlib import Path

from opskit.flyway.checksums import checksum_text
from opskit.flyway.history import AppliedRow, java_string_hash, lock_key
from opskit.flyway.names import Version
from opskit.flyway.scripts import Script
from opskit.flyway.state import Resolved, Target, build_state
from opskit.flyway.validation import validation_errors


def script(name: str, text: str = "SELECT 1;") -> Resolved:
    kind = "repeatable" if name.startswith("R") else "versioned"
    stem = name[1:].split("__")
    version = Version(stem[0]) if kind == "versioned" else None
    s = Script(
        kind, version, stem[1].replace("_", " "), f"{name}.sql", Path(f"/m/{name}.sql"), text, checksum_text(text)
    )
    return Resolved(s, s.raw_checksum, None if version else s.raw_checksum)


def row(
    rank: int,
    version: str | None,
    description: str,
    kind: str = "SQL",
    checksum: int | None = None,
    success: bool = True,
    text: str = "SELECT 1;",
) -> AppliedRow:
    if checksum is None and kind == "SQL":
        checksum = checksum_text(text)
    return AppliedRow(
        rank, version, description, kind, f"V{version}__{description}.sql", checksum, "flyway", None, 5, success
    )


LATEST = Target("latest")


def states(
    resolved: list[Resolved], applied: list[AppliedRow], target: Target = LATEST, out_of_order: bool = False
) -> list[tuple[str, str]]:
    return [(i.label, i.state) for i in build_state(resolved, applied, target, out_of_order).infos]


def test_lock_key_is_flyways_for_the_default_table_and_derived_for_others() -> None:
    assert java_string_hash('"public"."flyway_schema_history"') == 2125624436
    assert lock_key("public", "flyway_schema_history") == 77433833903597
    assert lock_key("app", "flyway_schema_history") == 77431436970681


def test_applied_pending_and_out_of_order_states() -> None:
    resolved = [script("V1__a"), script("V2__b"), script("V3__c")]
    applied = [row(1, "1", "a"), row(2, "3", "c")]
    assert states(resolved, applied) == [("1", "Success"), ("3", "Success"), ("2", "Ignored")]
    assert states(resolved, applied, out_of_order=True) == [("1", "Success"), ("3", "Success"), ("2", "Pending")]
    applied.append(row(3, "2", "b"))
    assert states(resolved, applied)[2] == ("2", "Out of Order")


def test_baseline_rows_make_older_scripts_below_baseline_and_equal_ones_ignored() -> None:
    resolved = [script("V1__a"), script("V2__b"), script("V3__c")]
    applied = [row(1, "2", "<< Flyway Baseline >>", "BASELINE", checksum=None)]
    assert states(resolved, applied) == [
        ("2", "Baseline"),
        ("1", "Below Baseline"),
        ("2", "Ignored (Baseline)"),
        ("3", "Pending"),
    ]


def test_missing_future_failed_and_schema_markers() -> None:
    resolved = [script("V2__b")]
    applied = [
        row(0, None, "<< Flyway Schema Creation >>", "SCHEMA"),
        row(1, "1", "a"),
        row(2, "2", "b"),
        row(3, "3", "c"),
    ]
    assert states(resolved, applied) == [
        ("<< Flyway Schema Creation >>", "Success"),
        ("1", "Missing"),
        ("2", "Success"),
        ("3", "Future"),
    ]
    failed = [row(1, "2", "b", success=False)]
    assert states(resolved, failed) == [("2", "Failed")]


def test_delete_markers_cancel_the_row_and_let_the_script_run_again() -> None:
    resolved = [script("V1__a")]
    applied = [row(1, "1", "a"), row(2, "1", "a", "DELETE")]
    assert states(resolved, applied) == [("1", "Deleted"), ("1", "Success"), ("1", "Pending")]


def test_repeatables_are_outdated_when_their_checksum_changes_and_older_runs_superseded() -> None:
    current = script("R__v", "CREATE VIEW v AS SELECT 2;")
    applied = [
        row(1, None, "v", text="CREATE VIEW v AS SELECT 1;"),
        row(2, None, "v", text="CREATE VIEW v AS SELECT 1;"),
    ]
    assert states([current], applied) == [("v", "Superseded"), ("v", "Outdated"), ("v", "Pending")]
    up_to_date = [row(1, None, "v", text="CREATE VIEW v AS SELECT 2;")]
    assert states([current], up_to_date) == [("v", "Success")]


def test_a_repeatable_row_with_the_raw_checksum_still_matches() -> None:
    s = Script("repeatable", None, "v", "R__v.sql", Path("/m/R__v.sql"), "x${a}", checksum_text("x${a}"))
    resolved = Resolved(s, checksum_text("xA"), s.raw_checksum)
    assert states([resolved], [row(1, None, "v", checksum=s.raw_checksum)]) == [("v", "Success")]


def test_targets_mark_later_versions_above_target() -> None:
    resolved = [script("V1__a"), script("V2__b"), script("V3__c")]
    assert states(resolved, [], Target.parse("2")) == [("1", "Pending"), ("2", "Pending"), ("3", "Above Target")]
    assert states(resolved, [], Target.parse("next")) == [
        ("1", "Pending"),
        ("2", "Above Target"),
        ("3", "Above Target"),
    ]
    assert states(resolved, [row(1, "1", "a")], Target.parse("current"))[1:] == [
        ("2", "Above Target"),
        ("3", "Above Target"),
    ]


def test_validation_reports_flyways_messages() -> None:
    resolved = [script("V1__a", "SELECT 2;"), script("V2__b")]
    applied = [row(1, "1", "a"), row(2, "3", "gone")]
    state = build_state(resolved, applied, LATEST, False)
    errors = validation_errors(state, ["*:future"])
    assert errors[0].startswith("Migration checksum mismatch for migration version 1\n-> Applied to database : ")
    assert "Either revert the changes to the migration, or run repair" in errors[0]
    # V3 is Future (ignored by default); V2 is below the highest applied, so Ignored.
    assert errors[1].startswith("Detected resolved migration not applied to database: 2.\nTo ignore this migration")
    assert len(errors) == 2
    assert validation_errors(state, [])[1].startswith("Detected applied migration not resolved locally: 3.")


def test_pending_is_an_error_for_validate_but_not_during_migrate() -> None:
    state = build_state([script("V1__a")], [], LATEST, False)
    assert validation_errors(state, ["*:future"]) == [
        "Detected resolved migration not applied to database: 1.\nTo fix this error, either run migrate, or set "
        "-ignoreMigrationPatterns='*:pending'."
    ]
    assert validation_errors(state, ["*:future", "*:pending"]) == []


def test_description_mismatch_and_failed_rows_are_reported() -> None:
    state = build_state([script("V1__a")], [row(1, "1", "other")], LATEST, False)
    assert validation_errors(state, [])[0].startswith("Migration description mismatch for migration version 1")
    failed = build_state([script("V1__a")], [row(1, "1", "a", success=False)], LATEST, False)
    assert validation_errors(failed, [])[0].startswith("Detected failed migration to version 1 (a).")


def test_versions_at_or_below_the_baseline_skip_checksum_checks() -> None:
    resolved = [script("V1__a", "SELECT 2;")]
    applied = [row(1, "1", "a", checksum=1234), row(2, "1", "<< Flyway Baseline >>", "BASELINE", checksum=None)]
    state = build_state(resolved, applied, LATEST, False)
    assert validation_errors(state, ["*:future"]) == []
