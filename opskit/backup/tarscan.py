"""Read named members out of a tar stream while it passes through, without buffering the stream.

pg_basebackup writes ``backup_label`` and ``backup_manifest`` into the tar it streams to
stdout; a base backup keeps both as facts of its manifest, so they are picked out of the
stream on the way to storage instead of being read back afterwards.
"""

from __future__ import annotations

from typing import Any

BLOCK = 512


class TarMemberCapture:
    """A readable that passes ``source`` through and keeps the content of the tar members in ``wanted``.

    ``captured`` maps a member name (without a leading ``./``) to its bytes once it has passed;
    a member larger than ``limit`` bytes is not kept. Only ustar/GNU headers are understood
    (what pg_basebackup writes); other member kinds pass through untouched.
    """

    def __init__(self, source: Any, wanted: set[str], limit: int = 64 * 1024 * 1024) -> None:
        self._source = source
        self._wanted = wanted
        self._limit = limit
        self.captured: dict[str, bytes] = {}
        self._header = bytearray()
        self._skip = 0  # bytes of the current member (data and padding) still to pass
        self._data_left = 0  # of those, bytes of data of a member being kept
        self._keeping: str | None = None
        self._kept = bytearray()
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        """Return up to ``size`` bytes of the source, noting the members they belong to."""
        data = self._source.read(size)
        if data:
            self._feed(memoryview(data))
        return bytes(data)

    def _feed(self, view: memoryview) -> None:
        while view and not self._ended:
            if self._skip:
                take = min(self._skip, len(view))
                if self._keeping is not None and self._data_left:
                    keep = min(self._data_left, take)
                    self._kept += view[:keep]
                    self._data_left -= keep
                self._skip -= take
                view = view[take:]
                if not self._skip and self._keeping is not None:
                    self.captured[self._keeping] = bytes(self._kept)
                    self._keeping = None
                    self._kept = bytearray()
                continue
            need = BLOCK - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) == BLOCK:
                self._start_member(bytes(self._header))
                self._header = bytearray()

    def _start_member(self, header: bytes) -> None:
        if header == b"\0" * BLOCK:
            self._ended = True  # the end-of-archive blocks
            return
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            name = f"{prefix}/{name}" if prefix else name
        size = _size(header[124:136])
        self._skip = (size + BLOCK - 1) // BLOCK * BLOCK
        name = name.removeprefix("./")
        if header[156:157] in (b"0", b"\0") and name in self._wanted and size <= self._limit:
            self._keeping = name
            self._data_left = size
            if size == 0:
                self.captured[name] = b""
                self._keeping = None


def _size(field: bytes) -> int:
    """Return a tar header's size field: octal text, or GNU base-256 when the high bit is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip() or b"0"
    return int(text, 8)
