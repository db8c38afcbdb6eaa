"""``opskit wal verify``: the chain has no gap, and every stored WAL file it needs reads back intact.

The chain check (:mod:`opskit.wal.chain`) only lists the archive; a corrupt or truncated
object, or a ``.sha256`` record that disagrees with it, would pass it and be found only by the
restore that needs it. So by default every stored WAL file a kept base backup needs is also
read, the way ``wal fetch`` reads it, and checked:

- what is read: what ``prune`` keeps (:func:`opskit.wal.retention.plan_wal_deletes`): every
  segment, partial, ``.backup`` and ``.history`` file from the oldest base backup's first
  segment on, and every history file; all of the archive when there is no base backup (no
  anchor to cut at, and reading is the only check that says anything then);
- how (an object not encrypted, or ``[encryption] identity`` configured): streamed in 1 MiB
  chunks, decrypted, zstd-decoded to the end of its frame (a frame cut short is an error,
  where the decoder alone would hand back a short segment), the plain size and sha256
  compared with the ``<name>.sha256`` record push wrote before the object. The streamer's
  ``.partial`` has no record: decoding it whole (its frame checksum) is its check;
- an encrypted object with no identity configured: ``wal push`` records only the plain
  sha256 (it never reads an encrypted object back), so without the key nothing but the
  object's age header can be checked; such files are counted apart (``header_only``) and
  the output says to configure the identity.

``READERS`` objects are read at a time, each streamed, so memory stays a few chunks per
reader whatever the archive holds. Every problem is collected (the run does not stop at the
first); :func:`raise_for_problems` turns gaps and damaged files into exit 5.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyrage
import zstandard

from opskit.catalog import list_backups
from opskit.context import AppContext
from opskit.core.errors import ObjectNotFound, RestoreFailed, VerificationFailed
from opskit.core.log import get_logger
from opskit.core.progress import ByteProgress
from opskit.pipeline import HashingReader, Progress, parse_identities, pump
from opskit.storage.base import ObjectInfo, Storage
from opskit.wal import archive, chain, layout
from opskit.wal.retention import plan_wal_deletes

log = get_logger(__name__)

# Parallel readers: enough to hide a remote store's latency, few enough for a 2-core host (each
# decodes zstd and hashes at a few hundred MiB/s); the same count a fetch reads ahead with.
READERS = archive.PREFETCH_THREADS
MAX_NAMED = 5  # damaged files named in the one error line; the report lists every one
AGE_HEADER = b"age-encryption.org/v1\n"
# age's header (the version line, one stanza per recipient, the MAC line) is a few hundred bytes.
AGE_HEADER_LIMIT = 64 * 1024
_NO_KEY_MATCH = "no matching keys"  # pyrage's DecryptError when no identity fits the header


@dataclass(frozen=True)
class StoredWal:
    """One stored WAL object to read: its name, key and stored size, and whether a ``.sha256`` record exists."""

    name: str
    key: str
    size: int
    recorded: bool

    @property
    def encrypted(self) -> bool:
        """Return True for an age-encrypted object (``.zst.age``)."""
        return self.key.endswith(".age")


@dataclass(frozen=True)
class WalProblem:
    """A stored WAL file that does not read back as archived: its name, key and what is wrong."""

    name: str
    key: str
    problem: str

    def to_dict(self) -> dict[str, str]:
        """Return the JSON-ready form."""
        return {"name": self.name, "key": self.key, "problem": self.problem}


@dataclass
class ContentReport:
    """What reading the stored WAL found: how much was read, and every damaged file."""

    files: int = 0  # objects read
    bytes: int = 0  # their stored bytes
    unrecorded: int = 0  # decoded whole, but without a .sha256 record to compare (the streamer's partials)
    header_only: int = 0  # encrypted, no identity configured: only the age header could be checked
    key_mismatch: int = 0  # encrypted, and the configured identity fits none of the header's stanzas
    problems: list[WalProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True when every file read is intact."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "ok": self.ok,
            "files": self.files,
            "bytes": self.bytes,
            "unrecorded": self.unrecorded,
            "header_only": self.header_only,
            "problems": [p.to_dict() for p in sorted(self.problems, key=lambda p: p.name)],
        }


@dataclass
class WalVerifyReport:
    """The chain check's report and, unless ``--chain-only``, what reading the stored WAL found."""

    chain: chain.ArchiveReport
    content: ContentReport | None = None

    @property
    def ok(self) -> bool:
        """Return True when no chain has a gap and no file read is damaged."""
        return self.chain.ok and (self.content is None or self.content.ok)

    def to_dict(self) -> dict[str, Any]:
        """Return the chain report's JSON form, with ``content`` (null for ``--chain-only``) and the overall ``ok``."""
        data = self.chain.to_dict()
        data["ok"] = self.ok
        data["content"] = self.content.to_dict() if self.content is not None else None
        return data


@dataclass(frozen=True)
class _Outcome:
    """What reading one object found: a problem (or None), and how it could be checked."""

    problem: str | None = None
    unrecorded: bool = False
    header_only: bool = False
    key_mismatch: bool = False


def run(ctx: AppContext, target: str | None = None, storage: str | None = None, read: bool = True) -> WalVerifyReport:
    """Check ``target``'s WAL archive in ``storage`` (default: its primary) and return the report (no raise for damage).

    The archive is listed once; the chain is checked from it, and with ``read`` every stored
    file a kept base backup needs is read and checked (module docstring). Raises ConfigError
    for an unknown target or storage or an unusable identity, RestoreFailed (4) when the
    configured identity fits none of the encrypted files read (a wrong key says nothing about
    the WAL), StorageError or UnreachableError when the storage fails, Cancelled when the run
    is cancelled.
    """
    source = ctx.target(target)
    store = ctx.storage(storage or source.primary_storage)
    bases = [m for m in list_backups(store, source.name) if m.kind == "base"]
    listing = list(store.list(layout.wal_prefix(source.name)))
    report = WalVerifyReport(chain.check_listed(ctx, store, source.name, bases, listing))
    if read:
        unneeded = set(plan_wal_deletes([info.key for info in listing], bases))
        files = [f for f in stored_files(listing) if f.key not in unneeded]
        report.content = check_content(ctx, store, source.name, files)
        log.info(
            "wal verified",
            target=source.name,
            storage=store.name,
            files=report.content.files,
            damaged=len(report.content.problems),
            gaps=sum(1 for c in report.chain.chains if not c.ok),
        )
    return report


def stored_files(listing: Sequence[ObjectInfo]) -> list[StoredWal]:
    """Return the WAL objects of an archive listing, each marked with whether its ``.sha256`` record is listed."""
    records = {i.key.rsplit("/", 1)[-1].removesuffix(".sha256") for i in listing if i.key.endswith(".sha256")}
    files = []
    for info in listing:
        name = layout.name_of_key(info.key)
        if name is not None:
            files.append(StoredWal(name, info.key, info.size, name in records))
    return sorted(files, key=lambda f: f.name)


def check_content(ctx: AppContext, store: Storage, target: str, files: Sequence[StoredWal]) -> ContentReport:
    """Read every file of ``files`` (``READERS`` at a time) and return what was found.

    Raises as :func:`run` (a damaged file is a problem in the report, not a raise).
    """
    report = ContentReport()
    identities = _identities(ctx) if any(f.encrypted for f in files) else None
    expected = sum(f.size for f in files if identities is not None or not f.encrypted)
    with (
        ByteProgress(f"verify WAL of {target}", ctx.interactive, expected=expected) as progress,
        ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="wal-verify") as pool,
    ):

        def check(item: StoredWal) -> _Outcome:
            return check_file(store, target, item, identities, ctx.cancel, progress)

        try:
            # map() yields in order and holds only the small outcomes; each reader streams its object.
            for item, outcome in zip(files, pool.map(check, files), strict=True):
                report.files += 1
                report.bytes += item.size
                report.unrecorded += outcome.unrecorded
                report.header_only += outcome.header_only
                report.key_mismatch += outcome.key_mismatch
                if outcome.problem is not None:
                    report.problems.append(WalProblem(item.name, item.key, outcome.problem))
        except BaseException:
            # A storage failure or a cancel: do not read the rest of the archive before saying so.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    encrypted = sum(1 for f in files if f.encrypted)
    if identities and encrypted and report.key_mismatch == encrypted:
        raise RestoreFailed(
            f"the configured identity fits none of the {encrypted} encrypted WAL file(s) of target '{target}'; "
            "nothing was verified",
            hint="configure the age identity whose public key was a recipient when the WAL was archived",
        )
    return report


def _identities(ctx: AppContext) -> list[Any] | None:
    """Return the configured age identities, or None when none is configured. Raises ConfigError."""
    ref = ctx.config.encryption.identity
    return parse_identities(ref.resolve()) if ref is not None else None


def check_file(
    store: Storage,
    target: str,
    item: StoredWal,
    identities: Sequence[Any] | None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> _Outcome:
    """Read one stored WAL object and return what was found (see the module docstring for the checks).

    ``identities`` None: an encrypted object gets only its header checked. Raises StorageError
    when the storage fails, Cancelled when ``cancel`` is set; a damaged object is a problem.
    """
    try:
        record = archive.read_hash_record(store, target, item.name) if item.recorded else None
    except VerificationFailed as exc:
        return _Outcome(exc.message)
    if item.encrypted and identities is None:
        return _check_age_header(store, item)
    decoder = _Decoder()
    try:
        with store.reader(item.key) as raw:
            stored = _Source(HashingReader(raw, cancel=cancel, progress=progress))
            if item.encrypted:
                assert identities is not None
                try:
                    pyrage.decrypt_io(stored, decoder, list(identities))
                except pyrage.DecryptError as exc:
                    if _NO_KEY_MATCH in str(exc).lower():
                        return _Outcome(f"cannot be decrypted with the configured identity: {exc}", key_mismatch=True)
                    return _Outcome(f"does not decrypt (its age header is damaged): {exc}")
                except OSError as exc:
                    if exc in stored.raised:
                        raise  # the storage's read failed, not the payload
                    # The identity fitted (a wrong one is a DecryptError before any payload): the bytes are bad.
                    return _Outcome(f"does not decrypt (its age payload is corrupt or cut short): {exc}")
            else:
                pump(stored, decoder)
    except ObjectNotFound:
        return _Outcome("was listed but is gone from the storage")
    problem = decoder.problem()
    if problem is None and record is not None:
        problem = _record_mismatch(record, decoder)
    return _Outcome(problem, unrecorded=record is None and problem is None)


def _record_mismatch(record: dict[str, Any], decoder: _Decoder) -> str | None:
    """Return what differs between the decoded bytes and the ``.sha256`` record, or None when they agree."""
    sha256 = decoder.sha256.hexdigest()
    if record.get("sha256") != sha256:
        return f"does not match its recorded sha256 (recorded {record.get('sha256')}, read {sha256})"
    if "size" in record and record.get("size") != decoder.size:
        return f"holds {decoder.size} bytes, its record says {record.get('size')}"
    return None


def _check_age_header(store: Storage, item: StoredWal) -> _Outcome:
    """Check only that an encrypted object starts with a whole age header (all that can be checked without the key)."""
    try:
        with store.reader(item.key) as raw:
            head = raw.read(AGE_HEADER_LIMIT) or b""
    except ObjectNotFound:
        return _Outcome("was listed but is gone from the storage")
    if not head.startswith(AGE_HEADER) or b"\n--- " not in head:
        return _Outcome("is not an age file: its header is missing or damaged")
    return _Outcome(header_only=True)


class _Source:
    """The object's reader passed through to age, remembering what it raised.

    pyrage reports a corrupt or cut-short payload as a bare OSError, the class a failed storage
    read raises too; an exception this reader raised is the storage's, not the payload's.
    """

    def __init__(self, inner: HashingReader) -> None:
        self._inner = inner
        self.raised: list[BaseException] = []

    def read(self, size: int = -1) -> bytes:
        """Return ``inner.read(size)``; remember what it raised."""
        try:
            return self._inner.read(size)
        except BaseException as exc:
            self.raised.append(exc)
            raise


class _Decoder:
    """The write end of one object's read: zstd-decodes what it is given, hashing and counting the plain bytes.

    A decoding error is remembered (later data is ignored) rather than raised, so the read of
    the object ends normally and the problem is reported by :meth:`problem`.
    """

    def __init__(self) -> None:
        self._zstd = zstandard.ZstdDecompressor().decompressobj()
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.error: str | None = None

    def write(self, data: Any) -> int:
        """Decode ``data``; return its length (as a file's write does)."""
        if self.error is None:
            try:
                plain = self._zstd.decompress(bytes(data))
            except zstandard.ZstdError as exc:
                self.error = f"does not decompress: {exc}"
            else:
                self.sha256.update(plain)
                self.size += len(plain)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush (pyrage may call it)."""

    def problem(self) -> str | None:
        """Return what is wrong with the decoded stream (an error, a frame cut short, data after it), or None."""
        if self.error is not None:
            return self.error
        if not self._zstd.eof:
            return "is truncated: its zstd frame ends early"
        if self._zstd.unused_data:
            return f"has {len(self._zstd.unused_data)} bytes after the end of its zstd frame"
        return None


def raise_for_problems(report: WalVerifyReport) -> None:
    """Raise VerificationFailed (5) naming the first gap and the damaged files; return when the archive is intact."""
    if report.ok:
        return
    parts = []
    if not report.chain.ok:
        try:
            chain.raise_for_gaps(report.chain)
        except VerificationFailed as exc:
            parts.append(exc.message)
    damaged = sorted(report.content.problems, key=lambda p: p.name) if report.content else []
    if damaged:
        named = "; ".join(f"{p.name} {p.problem}" for p in damaged[:MAX_NAMED])
        more = f" (and {len(damaged) - MAX_NAMED} more)" if len(damaged) > MAX_NAMED else ""
        parts.append(f"{len(damaged)} stored WAL file(s) of target '{report.chain.target}' are damaged: {named}{more}")
    raise VerificationFailed(
        "; ".join(parts),
        hint="recovery cannot replay past a missing or damaged segment; take a new base backup now "
        "(and check archive_command and the storage)",
    )
