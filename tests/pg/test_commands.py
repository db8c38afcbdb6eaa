"""The client tools' command lines: what each builder passes, per major where it differs."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from opskit.config.model import TargetConfig
from opskit.pg import commands, connection
from opskit.pg.tools import Tool

TARGET = TargetConfig(name="app", dsn="host=db.internal port=5433 user=backup dbname=app password=s3cret")
DBNAME = f"--dbname={connection.conninfo(TARGET)}"  # libpq's parameter order, without the password


def tool(name: str, major: int) -> Tool:
    return Tool(name, f"/usr/lib/postgresql/{major}/bin/{name}", major, f"{major}.1")


@pytest.mark.parametrize("major", [13, 15, 16, 17])
def test_pg_dump_streams_an_uncompressed_custom_archive_of_the_exported_snapshot(major: int) -> None:
    argv = commands.pg_dump_argv(tool("pg_dump", major), TARGET, snapshot="00000003-0000001B-1")

    assert argv == [
        f"/usr/lib/postgresql/{major}/bin/pg_dump",
        DBNAME,
        "--format=custom",
        "--compress=0",
        "--snapshot=00000003-0000001B-1",
        "--no-password",
    ]


def test_no_command_line_carries_the_password() -> None:
    restore = commands.PgRestoreCommand(tool("pg_restore", 15), TARGET, "app_copy")
    lines = [
        commands.pg_dump_argv(tool("pg_dump", 15), TARGET, snapshot="S"),
        commands.pg_dumpall_globals_argv(tool("pg_dumpall", 15), TARGET, database="app", superuser=False),
        restore.from_stdin(),
        commands.psql_script_argv(tool("psql", 15), TARGET),
    ]

    assert all("s3cret" not in arg for argv in lines for arg in argv)


def test_the_recorded_command_line_names_no_host() -> None:
    argv = commands.pg_dump_argv(tool("pg_dump", 15), TARGET, snapshot="S")

    assert commands.without_connection(argv) == [
        "/usr/lib/postgresql/15/bin/pg_dump",
        "--format=custom",
        "--compress=0",
        "--snapshot=S",
        "--no-password",
    ]


def test_pg_dumpall_leaves_out_role_passwords_unless_the_role_is_a_superuser() -> None:
    pg_dumpall = tool("pg_dumpall", 16)

    as_superuser = commands.pg_dumpall_globals_argv(pg_dumpall, TARGET, database="app", superuser=True)
    as_owner = commands.pg_dumpall_globals_argv(pg_dumpall, TARGET, database="app", superuser=False)

    assert as_superuser == [pg_dumpall.path, DBNAME, "--database=app", "--globals-only", "--no-password"]
    assert as_owner == [*as_superuser, "--no-role-passwords"]


def test_pg_restore_connects_to_the_destination_database_with_the_chosen_options() -> None:
    pg_restore = tool("pg_restore", 17)
    dest = f"--dbname={connection.conninfo(TARGET, 'app_copy')}"

    plain = commands.PgRestoreCommand(pg_restore, TARGET, "app_copy")
    everything = commands.PgRestoreCommand(
        pg_restore, TARGET, "app_copy", exit_on_error=False, clean=True, no_owner=True
    )

    assert plain.from_stdin() == [pg_restore.path, dest, "--no-password", "--exit-on-error"]
    assert everything.from_stdin() == [
        pg_restore.path,
        dest,
        "--no-password",
        "--clean",
        "--if-exists",
        "--single-transaction",
        "--no-owner",
        "--no-privileges",
    ]


def test_pg_restore_runs_of_a_parallel_restore_share_the_options_and_name_the_archive_last() -> None:
    pg_restore = tool("pg_restore", 15)
    command = commands.PgRestoreCommand(pg_restore, TARGET, "app_copy", no_owner=True)
    options = command.options()
    toc, spool = Path("/state/toc-1.dump"), Path("/state/spool-1.dump")

    assert command.section_from_file("pre-data", toc) == [*options, "--section=pre-data", str(toc)]
    assert command.section_from_file("post-data", toc, jobs=4) == [
        *options,
        "--section=post-data",
        "--jobs=4",
        str(toc),
    ]
    assert command.from_file(spool, jobs=4) == [*options, "--jobs=4", str(spool)]
    # The data script connects nowhere: none of the restore's options apply.
    assert command.data_script() == [pg_restore.path, "--section=data", "--file=-"]


def test_pg_restore_lists_the_table_of_contents_of_stdin() -> None:
    assert commands.pg_restore_list_argv(tool("pg_restore", 15)) == ["/usr/lib/postgresql/15/bin/pg_restore", "--list"]


def test_psql_replays_a_script_past_its_errors_without_reading_psqlrc() -> None:
    assert commands.psql_script_argv(tool("psql", 15), TARGET) == [
        "/usr/lib/postgresql/15/bin/psql",
        DBNAME,
        "--no-password",
        "--quiet",
        "--no-psqlrc",
        "-v",
        "ON_ERROR_STOP=0",
    ]


def test_another_database_on_the_same_server_keeps_the_connection_settings() -> None:
    tls = TargetConfig(name="tls", dsn="host=db sslmode=verify-full sslrootcert=/ca.pem dbname=app")

    argument = commands.dbname_arg(tls, "other")

    assert argument.startswith("--dbname=")
    assert conninfo_to_dict(argument.removeprefix("--dbname=")) == {
        "host": "db",
        "sslmode": "verify-full",
        "sslrootcert": "/ca.pem",
        "dbname": "other",
    }
