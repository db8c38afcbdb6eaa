"""Reading a custom-format archive's table of contents with ``pg_restore --list`` from a stream.

Used by ``verify`` and drills: the decompressed dump is written into a :class:`TocReader`
while the caller hashes the whole stream, so the table of contents is checked without a
temporary file.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from typing import Any

from opskit.core.execute import Child, spawn
from opskit.pg.commands import pg_restore_list_argv
from opskit.pg.tools import Tool

# The count in the header pg_restore --list prints ("; TOC Entries: 4"), not the "; Selected TOC Entries:" title.
_HEADER_ENTRIES = re.compile(r"^;\s+TOC Entries: (\d+)\s*$", re.MULTILINE)


class TocReader:
    """A writable sink that feeds ``pg_restore --list`` and collects the table of contents it prints.

    pg_restore exits once it has read the table of contents at the start of a custom-format
    archive, so a broken pipe after that is expected: later writes are dropped, and the
    caller goes on hashing the rest of the stream.
    """

    def __init__(self, pg_restore: Tool) -> None:
        self.argv = pg_restore_list_argv(pg_restore)
        self._spawn = spawn(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._output: list[bytes] = []
        self._closed_early = False
        self.returncode: int | None = None
        self.stderr = ""

    def __enter__(self) -> TocReader:
        self._child: Child = self._spawn.__enter__()
        self._reader = threading.Thread(target=self._collect, name="opskit-toc", daemon=True)
        self._reader.start()
        return self

    def _collect(self) -> None:
        # Read stdout concurrently: a large table of contents would fill the pipe and block our writes.
        for chunk in iter(lambda: self._child.stdout.read(65536), b""):
            self._output.append(chunk)

    def write(self, data: Any) -> int:
        """Feed bytes to pg_restore; after it has stopped reading, drop them."""
        if not self._closed_early:
            try:
                self._child.stdin.write(data)
            except (BrokenPipeError, ValueError):
                self._closed_early = True
        return len(data)

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is not None:
            self._spawn.__exit__(*exc_info)  # kills and reaps pg_restore; the error propagates
            return
        try:
            if not self._closed_early:
                with contextlib.suppress(BrokenPipeError):
                    self._child.stdin.close()
            self.returncode = self._child.wait()
            self._reader.join(timeout=30)
            self.stderr = self._child.stderr_tail()
        finally:
            self._spawn.__exit__(None, None, None)

    @property
    def entries(self) -> int:
        """Return how many table-of-contents entries pg_restore listed."""
        return sum(1 for line in self._text().splitlines() if line.strip() and not line.startswith(";"))

    @property
    def header_entries(self) -> int | None:
        """Return the entry count the archive's header gives (``; TOC Entries: N``); None when no header was printed."""
        found = _HEADER_ENTRIES.search(self._text())
        return int(found.group(1)) if found else None

    @property
    def readable(self) -> bool:
        """Return True when pg_restore exited 0 after printing the archive's header, with at least one entry in it.

        The listed entries alone do not decide: a database without objects lists none, although
        its archive is whole. pg_dump always writes ENCODING, STDSTRINGS and SEARCHPATH entries,
        which the header counts and ``--list`` leaves out (pg_restore handles them itself). What
        is not a readable archive (not one at all, a cut header or TOC) makes pg_restore exit
        non-zero before it prints a header.
        """
        header = self.header_entries
        return self.returncode == 0 and header is not None and header > 0

    def describe(self) -> str:
        """Return what was found, for a check's 'actual' column."""
        if self.readable:
            if self.entries == 0:
                return f"0 entries (a database without objects: {self.header_entries} in the archive's header)"
            return f"{self.entries} entries"
        return f"exit {self.returncode}" + (f": {self.stderr}" if self.stderr else "") + f", {self.entries} entries"

    def _text(self) -> str:
        return b"".join(self._output).decode("utf-8", "replace")
