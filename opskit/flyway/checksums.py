"""Flyway's script checksums (``docs/flyway-compat.md`` §1) and the strict decoding they start from.

Strict decoding (malformed input is an error naming the file), Java ``BufferedReader.readLine``
line splitting, the BOM dropped from the first line only, one CRC32 over the UTF-8 lines with no
separator, read as a signed 32-bit int.

Nothing in this module touches a database or the disk.
"""

from __future__ import annotations

import re
import zlib

from opskit.core.errors import ConfigError, VerificationFailed

_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
BOM = "\ufeff"


def java_lines(text: str) -> list[str]:
    """Return the lines Java's ``BufferedReader.readLine`` yields for ``text``.

    Lines end at ``\\r\\n``, ``\\r`` or ``\\n`` only (never U+2028, U+0085, VT or FF); a trailing
    terminator adds no empty line; an empty text has no lines.
    """
    if not text:
        return []
    lines = _LINE_BREAK_RE.split(text)
    if text.endswith(("\n", "\r")):
        lines.pop()
    return lines


def checksum_text(text: str) -> int:
    """Return Flyway's checksum of already-decoded ``text`` (``docs/flyway-compat.md`` §1.1 steps 2-5): a signed int32."""
    crc = 0
    for index, line in enumerate(java_lines(text)):
        if index == 0 and line.startswith(BOM):
            line = line[1:]
        crc = zlib.crc32(line.encode("utf-8"), crc)
    return to_int32(crc)


def to_int32(value: int) -> int:
    """Return the unsigned 32-bit ``value`` read as a signed Java int."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def decode(data: bytes, encoding: str, name: str) -> str:
    """Decode a script strictly, as Java's CharsetDecoder with REPORT does; a BOM is kept.

    Raises VerificationFailed naming the file when the bytes are not valid in ``encoding``.
    """
    codec = "utf-8" if encoding.replace("-", "").replace("_", "").lower() == "utf8" else encoding
    try:
        return data.decode(codec, errors="strict")
    except LookupError as exc:
        raise ConfigError(f"unknown encoding '{encoding}' for {name}", hint="set migrations.encoding") from exc
    except UnicodeDecodeError as exc:
        raise VerificationFailed(
            f"Unable to calculate checksum of {name}: it is not valid {encoding} ({exc.reason} at byte {exc.start})",
            hint="configure the correct file encoding (migrations.encoding or a per-script .conf)",
        ) from exc


def checksum_bytes(data: bytes, encoding: str = "UTF-8", name: str = "<script>") -> int:
    """Return Flyway's checksum of a script's raw bytes. Raises VerificationFailed on malformed input."""
    return checksum_text(decode(data, encoding, name))


def strip_bom(text: str) -> str:
    """Return ``text`` without one leading U+FEFF: Flyway drops it before parsing, as for the checksum."""
    return text.removeprefix(BOM)
