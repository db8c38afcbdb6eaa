"""The streaming stages: what goes in comes out, both hashes are checked, corruption is named."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pyrage
import pytest

from opskit.catalog import Artifact
from opskit.catalog.artifacts import read_artifact
from opskit.core.errors import Cancelled, RestoreFailed, VerificationFailed
from opskit.pipeline import HashingReader, StreamStats, compress_and_store, recipient_fingerprint
from opskit.secrets.references import Secret
from opskit.storage.base import StorageConfig
from opskit.storage.local import LocalStorage
from opskit.storage.registry import open_storage

PAYLOAD = os.urandom(300_000) + b"compressible " * 200_000


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    opened = open_storage(StorageConfig(name="disk", url=f"file://{tmp_path}/store"))
    assert isinstance(opened, LocalStorage)
    return opened


def store(storage: LocalStorage, recipients: tuple[str, ...] = ()) -> Artifact:
    result = compress_and_store(io.BytesIO(PAYLOAD), storage, "t/x/db.dump.zst", recipients=recipients, level=3)
    encryption = {"format": "age", "recipients": [recipient_fingerprint(r) for r in recipients]} if recipients else None
    return Artifact(
        "db",
        "t/x/db.dump.zst",
        result.stored.size,
        result.stored.sha256,
        result.plain.size,
        result.plain.sha256,
        encryption=encryption,
    )


def test_stored_bytes_decompress_back_to_the_plain_bytes(storage: LocalStorage) -> None:
    artifact = store(storage)
    sink = io.BytesIO()

    read_artifact(storage, artifact, sink)

    assert sink.getvalue() == PAYLOAD
    assert artifact.size < artifact.plain_size


def test_encrypted_bytes_need_a_matching_identity(storage: LocalStorage) -> None:
    identity = pyrage.x25519.Identity.generate()
    stranger = pyrage.x25519.Identity.generate()
    artifact = store(storage, (str(identity.to_public()),))
    sink = io.BytesIO()

    read_artifact(storage, artifact, sink, identities=[identity])
    with pytest.raises(RestoreFailed, match="the configured identity matches none"):
        read_artifact(storage, artifact, io.BytesIO(), identities=[stranger])
    with pytest.raises(RestoreFailed, match="no identity is configured"):
        read_artifact(storage, artifact, io.BytesIO())

    assert sink.getvalue() == PAYLOAD


def test_a_flipped_byte_is_reported_as_a_stored_checksum_mismatch(storage: LocalStorage, tmp_path: Path) -> None:
    artifact = store(storage)
    path = tmp_path / "store" / artifact.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(VerificationFailed, match=r"db\.dump\.zst"):
        read_artifact(storage, artifact, io.BytesIO())


def test_a_truncated_object_is_reported_even_though_zstd_stops_quietly(storage: LocalStorage, tmp_path: Path) -> None:
    artifact = store(storage)
    path = tmp_path / "store" / artifact.key
    path.write_bytes(path.read_bytes()[: artifact.size // 2])

    with pytest.raises(VerificationFailed, match="mismatch"):
        read_artifact(storage, artifact, io.BytesIO())


def test_a_failure_before_commit_leaves_no_object(storage: LocalStorage) -> None:
    def refuse() -> None:
        raise RestoreFailed("pg_dump exited with code 1")

    with pytest.raises(RestoreFailed):
        compress_and_store(io.BytesIO(PAYLOAD), storage, "t/y/db.dump.zst", before_commit=refuse)

    assert list(storage.list("")) == []


def test_a_cancelled_run_commits_nothing(storage: LocalStorage) -> None:
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(Cancelled):
        compress_and_store(io.BytesIO(PAYLOAD), storage, "t/z/db.dump.zst", cancel=cancel)

    assert list(storage.list("")) == []


def test_an_identity_file_with_comments_parses(tmp_path: Path) -> None:
    from opskit.pipeline import parse_identities

    identity = pyrage.x25519.Identity.generate()
    text = f"# created: today\n# public key: {identity.to_public()}\n{identity}\n"

    parsed = parse_identities(Secret(text, "file:/k"))

    assert [str(p.to_public()) for p in parsed] == [str(identity.to_public())]


def test_a_pipe_is_stored_whole_and_its_hashes_match_the_bytes(storage: LocalStorage) -> None:
    import hashlib
    import subprocess

    # A real pipe, as pg_dump's stdout is: read with readinto and grown to 1 MiB.
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        assert child.stdin is not None
        feeder = threading.Thread(target=lambda: (child.stdin.write(PAYLOAD), child.stdin.close()))  # type: ignore[union-attr]
        feeder.start()
        result = compress_and_store(child.stdout, storage, "t/p/db.dump.zst")
        feeder.join()
    sink = io.BytesIO()
    artifact = Artifact(
        "db", "t/p/db.dump.zst", result.stored.size, result.stored.sha256, result.plain.size, result.plain.sha256
    )

    read_artifact(storage, artifact, sink)

    assert sink.getvalue() == PAYLOAD
    assert result.plain.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert result.plain.size == len(PAYLOAD)


def test_a_store_reports_the_cpu_seconds_of_every_stage(storage: LocalStorage) -> None:
    identity = pyrage.x25519.Identity.generate()

    plain = compress_and_store(io.BytesIO(PAYLOAD), storage, "t/c/db.dump.zst")
    encrypted = compress_and_store(
        io.BytesIO(PAYLOAD), storage, "t/e/db.dump.zst.age", recipients=(str(identity.to_public()),)
    )

    assert {"read", "sha256 plain", "zstd", "sha256 stored", "write", "other threads"} <= set(plain.cpu)
    assert "age" in encrypted.cpu
    assert all(seconds >= 0 for seconds in [*plain.cpu.values(), *encrypted.cpu.values()])
    assert sum(plain.cpu.values()) > 0


def test_a_source_that_only_implements_read_is_stored_whole(storage: LocalStorage) -> None:
    class ReadOnly(io.RawIOBase):
        """Like a storage reader: read() only; its inherited readinto raises NotImplementedError."""

        def __init__(self) -> None:
            super().__init__()
            self._data = io.BytesIO(PAYLOAD)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

    result = compress_and_store(ReadOnly(), storage, "t/r/db.dump.zst")

    assert result.plain.size == len(PAYLOAD)


def test_the_plain_reader_hashes_and_counts_what_read_returns() -> None:
    chunk = b"rows of a table " * 4096
    reader = HashingReader(io.BufferedReader(io.BytesIO(chunk * 3)))

    chunks = [reader.read(len(chunk)) for _ in range(4)]

    assert chunks == [chunk, chunk, chunk, b""]
    assert reader.stats() == StreamStats(3 * len(chunk), hashlib.sha256(chunk * 3).hexdigest())


def test_the_plain_reader_hands_on_the_sources_own_chunk_without_copying_it() -> None:
    # zstd's stream reader calls read(); RawIOBase's default read() would allocate and copy
    # every 1 MiB chunk twice, and the page faults of those copies cost ~0.5 CPU s per 283 MiB.
    chunk = b"x" * 1_000_000

    class Source(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return chunk

    assert HashingReader(Source()).read(len(chunk)) is chunk
