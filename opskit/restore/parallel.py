"""``opskit restore --jobs N``: one streamed read of the backup, its data loaded over N connections.

The artifact streams out of storage once (hashes checked as it goes). Its head, the archive's
table of contents, is captured first; then the route is chosen:

- **Loader** (a new or empty database, and a data section of table data and sequence values
  only, which is what ``opskit backup`` writes): ``pg_restore --section=pre-data`` creates the
  schema from a TOC-only copy of the head; the stream goes on into ``pg_restore --section=data
  --file=-``, whose COPY data ``opskit.pg.copy_loader`` splits over N connections, so even a
  single large table loads N ways. As soon as a large table's rows are in, its indexes and
  constraints are built beside the load of the next tables (``opskit.restore.post_data``, the
  schedule of ``pg_restore --jobs``); then the sequences' ``setval``; then ``pg_restore
  --section=post-data --jobs N`` builds the rest from the same TOC-only copy. No spool file is
  written.
- **Spool** (large objects, an archive version opskit cannot read): the stream is written to a
  spool file in the state directory and ``pg_restore --jobs N`` restores from it.

``--clean`` never comes here: it restores in one transaction, which is one connection
(:func:`opskit.restore.restore.restore_backup` runs it with one job).

Either way the temporary files are removed whatever happens, and a failure raises, so the
caller drops a database it created.
"""

from __future__ import annotations

import errno
import os
import secrets as random_tokens
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from opskit.context import AppContext
from opskit.core.errors import RestoreFailed
from opskit.core.execute import Child, spawn
from opskit.core.log import get_logger
from opskit.core.progress import ByteProgress
from opskit.pg import connection, facts
from opskit.pg import toc as dump_toc
from opskit.pg.commands import PgRestoreCommand
from opskit.pg.copy_loader import CopyLoader, LoadFailed, ScriptError, ScriptSplitter, session_settings
from opskit.pipeline import process_cpu
from opskit.restore import post_data
from opskit.restore.reader import OpenedBackup
from opskit.restore.result import RestoreResult, failure_note

log = get_logger(__name__)

LOADER_DATA_ENTRIES = {"TABLE DATA", "SEQUENCE SET"}
READ_SIZE = 1024 * 1024

# The load's sessions do not wait for their WAL to reach disk at every COPY's commit: a crash
# mid-restore fails the run and drops the database anyway, and the run ends with one durable
# commit (flush_wal) before it reports success, which flushes every earlier record with it.
LOAD_SETTINGS = [b"SET synchronous_commit = off"]
MiB = 1024 * 1024
# maintenance_work_mem per index-building connection: a quarter of the plain dump's share
# per connection, between PostgreSQL's default and a bound that leaves the server its memory.
INDEX_MEMORY_MIN, INDEX_MEMORY_MAX = 64 * MiB, 512 * MiB


def index_build_options(plain_size: int, jobs: int) -> str:
    """Return the PGOPTIONS for ``pg_restore --section=post-data -j jobs``: the index builds' session settings.

    ``maintenance_work_mem`` is sized from the dump (an index sorts at most its table's
    rows), bounded so N connections cannot take the server's memory; parallel maintenance
    workers are left to the server's setting, since ``-j N`` already builds N at once.
    """
    memory = min(INDEX_MEMORY_MAX, max(INDEX_MEMORY_MIN, plain_size // (4 * max(jobs, 1))))
    return f"-c synchronous_commit=off -c maintenance_work_mem={memory // MiB}MB"


def loader_refusal(toc: dump_toc.ArchiveToc, clean: bool) -> str | None:
    """Return why the loader route cannot restore this archive, or None when it can."""
    if clean:
        return "--clean drops objects of every section before any is restored"
    for entry in toc.entries:
        if entry.section == "data" and entry.desc not in LOADER_DATA_ENTRIES:
            return f"its data section holds {entry.desc} entries"
        if entry.has_data and not (entry.desc == "TABLE DATA" and entry.copy_stmt):
            return f"the data of {entry.desc} {entry.tag} is not a COPY"
    return None


class ParallelRestore:
    """The sink the decompressed archive is written into; it picks and runs the route.

    ``command`` holds the pg_restore options every run shares (database, ``--exit-on-error``,
    ``--clean``, ``--no-owner``): the schema, data script, index and spool runs.
    """

    def __init__(
        self,
        ctx: AppContext,
        backup: OpenedBackup,
        command: PgRestoreCommand,
        env: dict[str, str],
        jobs: int,
        created: bool = True,
    ) -> None:
        manifest = backup.manifest
        self.ctx, self.manifest, self.command, self.env, self.jobs = ctx, manifest, command, env, jobs
        self.server, self.database = command.target, command.database
        self.clean, self.exit_on_error = command.clean, command.exit_on_error
        # What a failure leaves of the destination, for the hints (``created``: this run made it).
        self.left = failure_note(self.database, created, self.clean)
        token = random_tokens.token_hex(3)
        self.toc_path = Path(ctx.state_dir) / f"toc-{manifest.id}-{token}.dump"
        self.spool_path = Path(ctx.state_dir) / f"spool-{manifest.id}-{token}.dump"
        self.route: str | None = None  # "loader" or "spool", once the TOC has been read
        self.phases: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds of the loader's own threads (the read's are the caller's)
        self.error_lines: list[str] = []
        self._capture: dump_toc.TocCapture | None = dump_toc.TocCapture()
        self._downstream: IO[bytes] | None = None
        self._spool: BinaryIO | None = None
        self._data_cm: Any = None
        self._data_child: Child | None = None
        self._loader: CopyLoader | None = None
        self._splitter_thread: threading.Thread | None = None
        self._splitter_error: BaseException | None = None
        self._sql: list[bytes] = []
        self._tables: dict[bytes, dump_toc.TocEntry] = {}  # COPY statement -> its TABLE DATA entry
        self._builder: post_data.PostDataBuilder | None = None
        self._lists: list[Path] = []  # pg_restore -L files of the post-data runs
        self._children: set[Child] = set()  # post-data pg_restore runs in progress
        self._children_lock = threading.Lock()
        self.rows_loaded: dict[str, int] = {}
        self._started = time.monotonic()

    # -- the sink -------------------------------------------------------------------------------

    def write(self, data: Any) -> int:
        """Take the next bytes of the archive (holding the head back until the TOC is read)."""
        if self._downstream is None:
            assert self._capture is not None
            try:
                toc = self._capture.feed(data)
            except dump_toc.UnsupportedArchive as exc:
                self._choose(None, str(exc))
            else:
                if toc is None:
                    return len(data)
                self._choose(toc, None)
            return len(data)
        self._downstream.write(data)
        return len(data)

    def _choose(self, toc: dump_toc.ArchiveToc | None, unreadable: str | None) -> None:
        assert self._capture is not None
        head = bytes(self._capture.buffer)
        self._capture = None
        reason = unreadable or (loader_refusal(toc, self.clean) if toc is not None else None)
        if toc is None or reason is not None:
            log.info("restoring from a spool file with pg_restore --jobs", jobs=self.jobs, reason=reason)
            self.route = "spool"
            self._spool = self._open_spool()
            self._downstream = self._spool
        else:
            self.route = "loader"
            try:
                self.toc_path.write_bytes(head[: toc.end])
            except OSError as exc:
                raise RestoreFailed(
                    f"cannot write the table of contents to {self.toc_path}: {exc.strerror or exc}",
                    hint="check tools.state_dir: it must be writable and have a little free space",
                ) from exc
            self._restore_schema()
            self._start_data(toc)
        assert self._downstream is not None
        self._downstream.write(head)

    # -- the loader route -------------------------------------------------------------------------

    def _restore_schema(self) -> None:
        started = time.monotonic()
        with spawn(self.command.section_from_file("pre-data", self.toc_path), env=self.env) as child:
            self._finish_pg_restore(child, "creating the schema")
        self.phases["schema"] = time.monotonic() - started

    def _start_data(self, toc: dump_toc.ArchiveToc) -> None:
        self._data_cm = spawn(self.command.data_script(), env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._data_child = self._data_cm.__enter__()
        self._tables = {e.copy_stmt.strip(): e for e in toc.data_entries() if e.copy_stmt}
        plain_size = self.manifest.artifact("db").plain_size
        threshold = post_data.early_threshold(plain_size)
        self._builder = post_data.PostDataBuilder(toc, self._restore_entries, self.jobs, threshold)
        splitter = ScriptSplitter(list(self._tables), self._load_block, self._sql.append, on_end=self._table_ended)
        self._splitter_thread = threading.Thread(target=self._split, args=(splitter,), name="opskit-split", daemon=True)
        self._splitter_thread.start()
        self._downstream = self._data_child.stdin

    def _split(self, splitter: ScriptSplitter) -> None:
        assert self._data_child is not None
        try:
            stdout = self._data_child.stdout
            for chunk in iter(lambda: stdout.read1(READ_SIZE), b""):  # type: ignore[attr-defined]
                splitter.feed(chunk)
            splitter.finish()
        except BaseException as exc:
            self._splitter_error = exc
            # Unblock the stream: with nobody reading its output, pg_restore would stop reading its input.
            self._data_child.kill()
        finally:
            self.cpu["split COPY text"] = round(time.thread_time(), 3)

    def _load_block(self, statement: bytes, rows: bytes) -> None:
        assert self._builder is not None
        if self._builder.failure is not None:  # an index build failed: stop the stream, report the build
            raise self._builder.failure
        self._start_loader().put(statement, rows)

    def _table_ended(self, statement: bytes) -> None:
        self._start_loader().finished(statement)

    def _start_loader(self) -> CopyLoader:
        if self._loader is None:
            assert self._builder is not None
            settings = session_settings(b"".join(self._sql)) + LOAD_SETTINGS
            names = {statement: entry.tag for statement, entry in self._tables.items()}
            self._loader = CopyLoader(
                self._connect,
                self.jobs,
                settings,
                exit_on_error=self.exit_on_error,
                table_names=names,
                slots=self._builder.slots,
                on_loaded=self._builder.table_loaded,
            )
        return self._loader

    def _connect(self) -> Any:
        return connection.connect(self.server, dbname=self.database, autocommit=True, application_name="opskit restore")

    def _finish_data(self) -> None:
        assert self._data_child is not None and self._splitter_thread is not None
        self._data_child.stdin.close()
        self._splitter_thread.join()
        self._raise_data_failure()
        # Tables without rows sent no block, and count as 0.
        self.rows_loaded = {f"{e.namespace}.{e.tag}": 0 for e in self._tables.values()}
        if self._loader is not None:
            try:
                stats = self._loader.close()
            except LoadFailed as exc:
                raise self._load_failure(exc) from exc
            self.error_lines += stats.errors
            self.cpu["COPY rows"] = round(stats.cpu_seconds, 3)
            for statement, rows in stats.rows.items():
                entry = self._tables[statement]
                self.rows_loaded[f"{entry.namespace}.{entry.tag}"] += rows
            log.info(
                "data loaded",
                connections=self.jobs,
                tables=len(stats.rows),
                blocks=stats.blocks,
                rows=sum(stats.rows.values()),
            )
        if self.manifest.counts_children:
            self.rows_loaded = self._with_children(self.rows_loaded)
        self._run_sql()
        self.phases["data"] = time.monotonic() - self._started - self.phases.get("schema", 0.0)

    def _with_children(self, own_rows: dict[str, int]) -> dict[str, int]:
        """Return ``own_rows`` counted as an old manifest counted them: each table with its inheritance children.

        Each COPY holds one table's own rows; a manifest written before ``row_counts`` existed
        counted ``count(*)``, children included, so the loaded rows are summed the same way.
        """
        with self._connect() as conn:
            children = facts.inheritance_children(conn)
        return facts.include_children(own_rows, children)

    def _raise_data_failure(self) -> None:
        """Raise what stopped the data section, the first cause first: a COPY, pg_restore, or its output."""
        assert self._data_child is not None
        exc = self._splitter_error
        if isinstance(exc, LoadFailed):
            raise self._load_failure(exc) from exc
        # pg_restore's own error (a positive exit code) explains a cut-off script better than the cut.
        if self._data_child.wait() > 0 or exc is None:
            self._data_child.check(
                RestoreFailed,
                f"pg_restore could not read the data of backup {self.manifest.id}",
                hint=f"the message above is pg_restore's; {self.left}",
            )
        if isinstance(exc, ScriptError):
            raise RestoreFailed(
                f"restoring backup {self.manifest.id}: pg_restore's output was not what opskit expects: {exc}",
                hint=f"restore with --jobs 1 (pg_restore alone); {self.left}",
            ) from exc
        if exc is not None:
            raise exc

    def _load_failure(self, exc: LoadFailed) -> RestoreFailed:
        return RestoreFailed(
            f"restoring backup {self.manifest.id} into '{self.database}' failed: {exc}",
            hint=f"{self.left}; the message is PostgreSQL's",
        )

    def _run_sql(self) -> None:
        """Run the SQL around the COPY blocks (session settings, sequences' setval) as one script."""
        script = b"".join(self._sql)
        if not script.strip():
            return
        with self._connect() as conn:
            try:
                # Settings first, on their own: the server decodes a query in the encoding set before it.
                for setting in session_settings(script):
                    conn.execute(setting)
                conn.execute(script)
            except Exception as exc:
                message = f"pg_restore: error: {str(exc).strip().splitlines()[0]}"
                if self.exit_on_error:
                    raise RestoreFailed(
                        f"restoring backup {self.manifest.id} into '{self.database}' failed: {message}"
                    ) from exc
                self.error_lines.append(message)

    def _restore_indexes(self) -> None:
        """Build what post-data is left once the data is in (the early builds may still be running)."""
        started = time.monotonic()
        assert self._builder is not None
        self._builder.finish()
        self.phases["indexes"] = time.monotonic() - started

    def _restore_entries(self, entries: list[dump_toc.TocEntry], jobs: int) -> None:
        """Restore these post-data entries of the TOC-only copy with one ``pg_restore -L`` run. Raises RestoreFailed."""
        listing = self.toc_path.with_name(f"{self.toc_path.stem}-{entries[0].dump_id}-{len(entries)}.list")
        self._lists.append(listing)
        listing.write_text("".join(f"{entry.dump_id};\n" for entry in entries))
        argv = self.command.section_from_file("post-data", self.toc_path, jobs=jobs if jobs > 1 else None)
        argv[-1:-1] = [f"--use-list={listing}"]
        options = index_build_options(self.manifest.artifact("db").plain_size, self.jobs)
        # After the caller's own PGOPTIONS (the child's environment is ours plus self.env): ours win.
        existing = self.env.get("PGOPTIONS", os.environ.get("PGOPTIONS", ""))
        env = self.env | {"PGOPTIONS": f"{existing} {options}".strip()}
        with spawn(argv, env=env) as child:
            with self._children_lock:
                self._children.add(child)
            try:
                self._finish_pg_restore(child, "building indexes and constraints")
            finally:
                with self._children_lock:
                    self._children.discard(child)

    def _flush_wal(self) -> None:
        """Make the load durable: one synchronous commit that writes a record flushes all WAL before it."""
        with self._connect() as conn:
            conn.execute("SET synchronous_commit = on")
            conn.execute("BEGIN")
            conn.execute("SELECT pg_current_xact_id()")  # an xid, so the commit writes (and flushes) a record
            conn.execute("COMMIT")

    # -- the spool route --------------------------------------------------------------------------

    def _open_spool(self) -> BinaryIO:
        try:
            return open(self.spool_path, "xb")
        except OSError as exc:
            raise RestoreFailed(f"cannot create the spool file {self.spool_path}: {exc.strerror or exc}") from exc

    def _restore_from_spool(self) -> None:
        assert self._spool is not None
        self._spool.close()
        self.phases["fetch"] = time.monotonic() - self._started
        started = time.monotonic()
        with spawn(self.command.from_file(self.spool_path, self.jobs), env=self.env) as child:
            self._finish_pg_restore(child, "pg_restore")
        self.phases["restore"] = time.monotonic() - started

    def spool_full(self, exc: OSError, created: bool) -> RestoreFailed:
        """Return the error for a failed spool write (a full disk named as such)."""
        if exc.errno == errno.ENOSPC:
            return RestoreFailed(
                f"the spool disk is full ({self.spool_path.parent}) while fetching backup {self.manifest.id}; the "
                "spool file was removed" + (" and the new database dropped" if created else ""),
                hint="free space, set tools.state_dir to a larger volume, or restore with --jobs 1 (no spool)",
            )
        return RestoreFailed(f"writing the spool file {self.spool_path} failed: {exc.strerror or exc}")

    # -- both -------------------------------------------------------------------------------------

    def _finish_pg_restore(self, child: Child, what: str) -> None:
        code = child.wait()
        self.error_lines += child.error_lines
        if code == 0:
            return
        if self.exit_on_error or not child.error_lines:
            child.check(
                RestoreFailed,
                f"{what} for backup {self.manifest.id} in '{self.database}' failed",
                hint=f"the message above is pg_restore's; {self.left}",
            )

    def data_child_stopped(self, check_stored_bytes: Callable[[], None]) -> None:
        """Explain a broken pipe, and raise: the loader's failure, a corrupt object, or pg_restore's error."""
        if self._data_child is None:
            raise RestoreFailed(f"restoring backup {self.manifest.id}: the archive stream was cut off")
        self._data_child.wait()
        if self._splitter_thread is not None:
            self._splitter_thread.join(timeout=30)
        # The stream broke before its hashes could be checked. A corrupt object confuses pg_restore
        # and the COPYs into odd errors (a cut-off script, bad input): blame the object first.
        check_stored_bytes()
        self._raise_data_failure()
        raise RestoreFailed(f"pg_restore stopped reading the data of backup {self.manifest.id}")

    def finish(self) -> None:
        """After the whole stream was written: complete the chosen route. Raises RestoreFailed."""
        if self._capture is not None:  # the stream ended before the TOC was complete
            try:
                toc: dump_toc.ArchiveToc | None = self._capture.finish()
                unreadable = None
            except dump_toc.UnsupportedArchive as exc:
                toc, unreadable = None, str(exc)
            self._choose(toc, unreadable)
        if self.route == "loader":
            self._finish_data()
            self._restore_indexes()
            self._flush_wal()
        else:
            self._restore_from_spool()

    def cleanup(self, failed: bool) -> None:
        """Stop whatever still runs (after a failure) and remove the TOC copy and the spool file."""
        try:
            if failed and self._loader is not None:
                self._loader.abort()
            if failed and self._builder is not None:
                with self._children_lock:
                    for child in self._children:
                        child.kill()
                self._builder.stop()
            if self._data_cm is not None:
                if failed and self._data_child is not None:
                    self._data_child.kill()
                self._data_cm.__exit__(None, None, None)
            if self._splitter_thread is not None:
                self._splitter_thread.join(timeout=30)
            if self._spool is not None and not self._spool.closed:
                self._spool.close()
        finally:
            self.toc_path.unlink(missing_ok=True)
            self.spool_path.unlink(missing_ok=True)
            for listing in self._lists:
                listing.unlink(missing_ok=True)


def restore(
    ctx: AppContext,
    backup: OpenedBackup,
    command: PgRestoreCommand,
    env: dict[str, str],
    jobs: int,
    result: RestoreResult,
) -> None:
    """Restore ``backup`` with ``jobs`` connections into ``command.database``; fill ``result``.

    Raises RestoreFailed (4) for pg_restore, COPY or spool failures, VerificationFailed (5)
    when a hash differs.
    """
    manifest = backup.manifest
    plain_size = manifest.artifact("db").plain_size  # what the progress counts: percent and ETA
    job = ParallelRestore(ctx, backup, command, env, jobs, created=result.created)
    failed = True
    process_started = process_cpu()
    try:
        with ByteProgress(f"restore {manifest.id}", ctx.interactive, expected=plain_size) as progress:
            try:
                stats = backup.read("db", job, progress=progress)
            except BrokenPipeError:
                job.data_child_stopped(backup.check_stored_bytes)
            except OSError as exc:
                if job.route == "spool":
                    raise job.spool_full(exc, result.created) from exc
                raise
        result.bytes_restored = stats.plain.size
        job.finish()
        failed = False
        result.cpu = stats.cpu | job.cpu
        other = process_cpu() - process_started - sum(result.cpu.values())
        result.cpu["other threads"] = round(max(0.0, other), 3)
    finally:
        job.cleanup(failed)
        result.phases.update(job.phases)
        result.pg_restore_errors = job.error_lines
        result.route = job.route or "spool"
        if job.route == "loader" and not failed:
            result.rows_loaded = job.rows_loaded
