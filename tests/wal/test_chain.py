"""The WAL chain check: gaps named, timeline switches followed, and ``opskit wal verify`` on a real archive."""

from __future__ import annotations

import json
from collections.abc import Callable

from opskit.wal import layout
from opskit.wal.chain import find_gaps, parse_history
from tests.wal.cluster import ArchivingCluster

SEG = layout.DEFAULT_SEGMENT_SIZE


def names(timeline: int, segnos: range | list[int]) -> list[str]:
    return [layout.segment_name(timeline, n * SEG) for n in segnos]


def test_a_contiguous_chain_has_no_gap_and_ends_at_the_newest_segment() -> None:
    newest, missing = find_gaps(names(1, range(2, 9)), names(1, [2])[0], {})

    assert newest == "000000010000000000000008"
    assert missing == []


def test_a_segment_missing_in_the_middle_is_named() -> None:
    newest, missing = find_gaps(names(1, [2, 3, 5, 6]), names(1, [2])[0], {})

    assert newest == "000000010000000000000006"
    assert missing == ["000000010000000000000004"]


def test_the_chain_follows_a_promotion_onto_timeline_2_through_its_history_file() -> None:
    history = parse_history("1\t0/5000064\tno recovery target specified\n")
    archived = names(1, [2, 3, 4]) + names(2, [5, 6, 7])

    complete = find_gaps(archived, names(1, [2])[0], {2: history})
    broken = find_gaps([n for n in archived if n != "000000020000000000000006"], names(1, [2])[0], {2: history})

    assert complete == ("000000020000000000000007", [])
    assert broken == ("000000020000000000000007", ["000000020000000000000006"])


def test_wal_verify_passes_on_a_complete_archive_and_exits_5_naming_a_deleted_segment(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    backup = cluster.opskit("backup", "now", "--kind", "base", "--json")
    assert backup.returncode == 0, backup.stderr
    base = json.loads(backup.stdout)["base"]
    cluster.wait_archived(cluster.switch_wal())

    complete = cluster.opskit("wal", "verify", "--json")
    (cluster.archive_dir / "app" / "wal" / f"{base['wal_stop']}.zst").unlink()
    broken = cluster.opskit("wal", "verify")

    assert complete.returncode == 0, complete.stdout + complete.stderr
    assert json.loads(complete.stdout)["ok"] is True
    assert broken.returncode == 5
    assert f"segment {base['wal_stop']} is missing" in broken.stderr
