"""``[wal] slot`` (room for the second slot's suffix) and ``[wal] archive_wait_timeout``."""

from __future__ import annotations

from datetime import timedelta

from opskit.config.load import parse_config
from opskit.config.wal import WalSettings
from tests.config.test_load import problems_of


def test_the_streamer_s_second_slot_is_named_after_the_first() -> None:
    assert parse_config('[wal]\nslot = "sidecar_1"\n').wal == WalSettings(slot="sidecar_1")
    assert WalSettings(slot="sidecar_1").shipped_slot == "sidecar_1_shipped"


def test_a_slot_name_postgresql_would_refuse_or_with_no_room_for_the_suffix_is_a_config_error() -> None:
    expected = [
        "At 'wal.slot': must be 1 to 55 characters of a-z, 0-9 and _ (a replication slot name, with room for '_shipped')"
    ]
    assert problems_of('[wal]\nslot = "Opskit-1"\n') == expected
    assert problems_of(f'[wal]\nslot = "{"s" * 56}"\n') == expected


def test_the_archive_wait_of_a_base_backup_is_ten_minutes_unless_set_and_at_least_a_second() -> None:
    assert WalSettings().archive_wait_timeout == timedelta(minutes=10)
    assert parse_config('[wal]\narchive_wait_timeout = "90s"\n').wal == WalSettings(
        archive_wait_timeout=timedelta(seconds=90)
    )
    assert problems_of('[wal]\narchive_wait_timeout = "0s"\n') == ["At 'wal.archive_wait_timeout': must be at least 1s"]
