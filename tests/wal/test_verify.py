"""``opskit wal verify`` reads the stored WAL: corrupt, truncated and mis-recorded files are named, exit 5.

A real archive written by a throwaway cluster's archive_command (``tests/wal/cluster.py``), and
archives pushed with the real ``opskit wal push`` into a ``file://`` storage (encrypted ones too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pyrage
import zstandard

from tests.wal.cluster import ArchivingCluster
from tests.wal.test_archive import opskit, wal_file, write_config

SEGMENTS = ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005"]


def corrupt(path: Path) -> None:
    """Overwrite 8 bytes in the middle of ``path`` (what a bad disk or a bit-rotting bucket does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    """Cut ``path`` to half its size (an upload that stopped short)."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def push_segments(tmp_path: Path, config: Path) -> Path:
    """Push ``SEGMENTS`` (16 MiB each, a little random WAL-like content) with the real CLI; return the WAL folder."""
    for name in SEGMENTS:
        content = os.urandom(256 * 1024) + b"\0" * (16 * 1024 * 1024 - 256 * 1024)
        pushed = opskit(config, "wal", "push", str(wal_file(tmp_path, content, name)))
        assert pushed.returncode == 0, pushed.stderr
    return tmp_path / "archive" / "app" / "wal"


def test_wal_verify_exits_5_naming_each_damaged_segment_when_the_chain_has_no_gap(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    before = cluster.switch_wal()  # a segment before the base backup: no kept backup needs it
    cluster.wait_archived(before)
    backup = cluster.opskit("backup", "now", "--kind", "base", "--json")
    assert backup.returncode == 0, backup.stderr
    segments = []
    for _ in range(3):
        with cluster.connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS id")
            conn.execute("INSERT INTO t VALUES (2)")
        segments.append(cluster.switch_wal())
        cluster.wait_archived(segments[-1])
    wal = cluster.archive_dir / "app" / "wal"
    intact = cluster.opskit("wal", "verify", "--json")
    corrupt(wal / f"{segments[0]}.zst")
    truncate(wal / f"{segments[1]}.zst")
    record = json.loads((wal / f"{segments[2]}.sha256").read_text())
    (wal / f"{segments[2]}.sha256").write_text(json.dumps({**record, "sha256": "0" * 64}) + "\n")
    corrupt(wal / f"{before}.zst")
    stored = sorted(p.name for p in wal.iterdir())

    text = cluster.opskit("wal", "verify")
    as_json = cluster.opskit("wal", "verify", "--json")
    chain_only = cluster.opskit("wal", "verify", "--chain-only")

    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert json.loads(intact.stdout)["content"]["problems"] == []
    assert text.returncode == 5, text.stdout + text.stderr
    assert f"WAL {segments[0]}: DAMAGED: does not decompress" in text.stdout
    assert f"WAL {segments[1]}: DAMAGED: is truncated: its zstd frame ends early" in text.stdout
    assert f"WAL {segments[2]}: DAMAGED: does not match its recorded sha256" in text.stdout
    assert before not in text.stdout  # not needed by the kept base backup: not read
    errors = [line for line in text.stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(errors) == 1
    assert "3 stored WAL file(s) of target 'app' are damaged" in errors[0]
    assert all(name in errors[0] for name in segments)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 5
    assert report["ok"] is False and report["chains"][0]["ok"] is True
    assert [p["name"] for p in report["content"]["problems"]] == segments
    assert report["content"]["problems"][1]["key"] == f"app/wal/{segments[1]}.zst"
    assert chain_only.returncode == 0, chain_only.stdout + chain_only.stderr
    assert "WAL content not read (--chain-only)" in chain_only.stdout
    assert sorted(p.name for p in wal.iterdir()) == stored  # verify changes nothing in the storage


def test_encrypted_wal_is_read_with_the_identity_and_only_its_header_is_checked_without_it(tmp_path: Path) -> None:
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "age.key"
    key_file.write_text(str(identity) + "\n")
    key_file.chmod(0o600)
    recipients = f'[encryption]\nrecipients = ["{identity.to_public()}"]\n'
    with_key = write_config(tmp_path, recipients + f'identity = "file:{key_file}"\n')
    wal = push_segments(tmp_path, with_key)
    corrupt(wal / f"{SEGMENTS[1]}.zst.age")
    without_key = tmp_path / "no-key.toml"
    without_key.write_text(with_key.read_text().replace(f'identity = "file:{key_file}"\n', ""))

    read = opskit(with_key, "wal", "verify", "--json")
    header_only = opskit(without_key, "wal", "verify")

    assert read.returncode == 5, read.stdout + read.stderr
    problems = json.loads(read.stdout)["content"]["problems"]
    assert [(p["name"], p["problem"].split(" (")[0]) for p in problems] == [(SEGMENTS[1], "does not decrypt")]
    assert header_only.returncode == 0, header_only.stdout + header_only.stderr
    assert "3 encrypted WAL files checked without the key (age header only)" in header_only.stdout


def test_wal_verify_exits_4_when_the_configured_identity_fits_none_of_the_encrypted_wal(tmp_path: Path) -> None:
    archived_with = pyrage.x25519.Identity.generate()
    other = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "other.key"
    key_file.write_text(str(other) + "\n")
    key_file.chmod(0o600)
    config = write_config(tmp_path, f'[encryption]\nrecipients = ["{archived_with.to_public()}"]\n')
    push_segments(tmp_path, config)
    config.write_text(config.read_text() + f'identity = "file:{key_file}"\n')

    result = opskit(config, "wal", "verify")

    assert result.returncode == 4, result.stdout + result.stderr
    assert "the configured identity fits none of the 3 encrypted WAL file(s) of target 'app'" in result.stderr


def test_a_truncated_partial_without_a_record_is_named_and_an_intact_one_passes(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    wal = push_segments(tmp_path, config)
    # What the streamer stores for the segment being written: <segment>.partial.zst, no .sha256 record.
    content = os.urandom(512 * 1024) + b"\0" * (16 * 1024 * 1024 - 512 * 1024)
    partial = wal / "000000010000000000000006.partial.zst"
    partial.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(content))

    intact = opskit(config, "wal", "verify", "--json")
    truncate(partial)
    cut = opskit(config, "wal", "verify")

    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert json.loads(intact.stdout)["content"] | {"bytes": 0} == {
        "ok": True,
        "files": 4,
        "bytes": 0,
        "unrecorded": 1,
        "header_only": 0,
        "problems": [],
    }
    assert cut.returncode == 5
    assert "WAL 000000010000000000000006.partial: DAMAGED: is truncated: its zstd frame ends early" in cut.stdout
