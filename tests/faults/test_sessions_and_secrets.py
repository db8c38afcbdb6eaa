"""Faults: secrets in a DSN, role timeouts, malformed DSNs and connection errors (issue 17, items 1-4).

A ``sslpassword`` (or ``password``) written in the DSN never reaches pg_dump's or pg_dumpall's
argv or environment: it travels in 0600 files opskit removes afterwards. A role's timeouts never
end a session opskit holds. A malformed DSN's error never quotes a piece of the password, not
even in ``--debug``'s traceback. A closed port says "Connection refused", on one line, and an
IPv6 host prints bracketed.
"""

from __future__ import annotations

import os
import stat
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from opskit.config.model import TargetConfig
from opskit.core.errors import ConfigError, UnreachableError
from opskit.pg import connection
from opskit.storage.base import StorageConfig
from tests.faults.helpers import PG_ADMIN_DSN, PG_HOST, Setup, one_line_error, write_setup

REAL_BIN = "/usr/lib/postgresql/15/bin"
SECRET = "Sekr3t-sslpw"
PASSWORD = "Pa55-w0rd-x"


def spying_bin_dir(tmp_path: Path, delay: float = 0) -> Path:
    """Return a bin dir whose pg_dump/pg_dumpall record their own /proc cmdline, environ and service file.

    Each wrapper is the child opskit starts (``exec`` keeps its pid), so what it reads from
    ``/proc/$$`` is exactly what any local user's ``ps`` or a root ``cat /proc/PID/environ`` sees.
    """
    bin_dir = tmp_path / "bin"
    spy = tmp_path / "spy"
    bin_dir.mkdir()
    spy.mkdir()
    for tool in ("pg_dump", "pg_dumpall", "pg_restore"):
        script = bin_dir / tool
        script.write_text(
            textwrap.dedent(
                f"""\
                #!/bin/sh
                if [ "$1" != "--version" ]; then
                  tr '\\0' '\\n' < /proc/$$/cmdline > {spy}/{tool}.cmdline
                  tr '\\0' '\\n' < /proc/$$/environ > {spy}/{tool}.environ
                  if [ -n "$PGSERVICEFILE" ]; then
                    stat -c %a "$PGSERVICEFILE" > {spy}/{tool}.service.mode
                    cat "$PGSERVICEFILE" > {spy}/{tool}.service
                  fi
                  sleep {delay}
                fi
                exec {REAL_BIN}/{tool} "$@"
                """
            )
        )
        script.chmod(0o755)
    return bin_dir


def secret_setup(tmp_path: Path, database: str, storage: StorageConfig, dsn: str, bin_dir: Path) -> Setup:
    """Return a Setup whose target ``app`` uses ``dsn`` and the spying tools in ``bin_dir``."""
    setup = write_setup(tmp_path, database, storage, target_extra=f'pg_bin_dir = "{bin_dir}"')
    text = setup.path.read_text().replace(f'dsn = "host={PG_HOST} user=postgres dbname={database}"', f'dsn = "{dsn}"')
    setup.path.write_text(text)
    return setup


@pytest.fixture
def local_store(tmp_path: Path) -> StorageConfig:
    """A file:// storage under the test's directory."""
    return StorageConfig(name="local", url=f"file://{tmp_path / 'backups'}")


@pytest.fixture
def timeout_role() -> Iterator[str]:
    """Yield a throwaway superuser role (password PASSWORD) for ALTER ROLE ... SET timeouts; drop it after."""
    name = f"w5_timeouts_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {name}")
        conn.execute(f"CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(f"DROP ROLE IF EXISTS {name}")


# --------------------------------------------------------------------------- 1. secrets never in argv or env


def test_sslpassword_and_password_in_the_dsn_never_reach_the_dump_tools_argv_or_environment(
    tmp_path: Path, database: str, local_store: StorageConfig
) -> None:
    dsn = f"host={PG_HOST} user=postgres dbname={database} password={PASSWORD} sslpassword={SECRET}"
    setup = secret_setup(tmp_path, database, local_store, dsn, spying_bin_dir(tmp_path))

    result = setup.run("backup", "now")

    assert result.returncode == 0, result.stderr
    spy = tmp_path / "spy"
    for tool in ("pg_dump", "pg_dumpall"):
        seen = (spy / f"{tool}.cmdline").read_text() + (spy / f"{tool}.environ").read_text()
        assert SECRET not in seen and PASSWORD not in seen, tool
        assert "PGSERVICEFILE=" in seen and "PGPASSFILE=" in seen
        # The secret went to a file only opskit's user may read, which is gone now.
        assert (spy / f"{tool}.service").read_text() == f"[opskit]\nsslpassword={SECRET}\n"
        assert (spy / f"{tool}.service.mode").read_text().strip() == "600"
    assert list((setup.state_dir / "pgpass").iterdir()) == []
    assert SECRET not in result.stderr and PASSWORD not in result.stderr


def test_a_dsn_naming_its_own_service_and_an_sslpassword_is_refused_with_what_to_do(tmp_path: Path) -> None:
    target = TargetConfig(name="app", dsn=f"service=prod sslpassword={SECRET}")

    with pytest.raises(ConfigError) as raised, connection.password_env(target, tmp_path):
        pass

    assert "move sslpassword into that service's entry" in raised.value.one_line()
    assert SECRET not in raised.value.one_line()


# --------------------------------------------------------------------------- 2. role timeouts


def test_a_role_idle_in_transaction_timeout_does_not_end_the_snapshot_session_of_a_slow_starting_dump(
    tmp_path: Path, database: str, local_store: StorageConfig, timeout_role: str
) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {timeout_role} SET idle_in_transaction_session_timeout = '2s'")
    dsn = f"host={PG_HOST} user={timeout_role} dbname={database} password={PASSWORD}"
    # pg_dump starts 3 s after the snapshot was exported: the role's 2 s would end that session.
    setup = secret_setup(tmp_path, database, local_store, dsn, spying_bin_dir(tmp_path, delay=3))

    result = setup.run("backup", "now")

    assert result.returncode == 0, result.stderr
    assert len(setup.backups()) == 1


def test_sessions_opskit_opens_switch_off_the_roles_statement_lock_and_idle_timeouts(
    database: str, timeout_role: str
) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {timeout_role} SET statement_timeout = '300ms'")
        conn.execute(f"ALTER ROLE {timeout_role} SET lock_timeout = '300ms'")
        conn.execute(f"ALTER ROLE {timeout_role} SET idle_in_transaction_session_timeout = '2s'")
    target = TargetConfig(name="app", dsn=f"host={PG_HOST} user={timeout_role} dbname={database} password={PASSWORD}")

    with connection.connect(target, autocommit=True) as conn:
        conn.execute("SELECT pg_sleep(0.6)")  # longer than the role's statement_timeout
        settings = conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        ).fetchone()

    assert settings == ("0", "0", "0")


def test_a_timeout_the_dsn_itself_configures_is_kept_and_named_when_the_server_ends_the_session(
    database: str,
) -> None:
    options = "-c idle_in_transaction_session_timeout=500ms"
    target = TargetConfig(name="app", dsn=f"host={PG_HOST} user=postgres dbname={database} options='{options}'")

    with connection.connect(target, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_sleep(1)")
        conn.execute("SELECT 1")  # ends the statement; the session now idles in its transaction
        time.sleep(1.5)
        with pytest.raises(psycopg.Error) as raised:
            conn.execute("SELECT 1")

    assert connection.server_cause(raised.value) is not None
    assert "idle_in_transaction_session_timeout" in str(connection.server_cause(raised.value))


# --------------------------------------------------------------------------- 3. malformed DSNs


def test_a_malformed_dsn_never_prints_a_piece_of_its_password_not_even_in_the_debug_traceback(
    tmp_path: Path, database: str, local_store: StorageConfig
) -> None:
    dsn = f"host={PG_HOST} user=postgres dbname={database} password=open sesame{SECRET}"
    setup = secret_setup(tmp_path, database, local_store, dsn, Path(REAL_BIN))

    plain = setup.run("backup", "now")
    debug = setup.run("--debug", "backup", "now")

    assert plain.returncode == 2 and debug.returncode == 2
    line = one_line_error(plain.stderr)
    assert "invalid dsn" in line and 'missing "="' in line
    for output in (plain.stderr, debug.stderr):
        assert SECRET not in output and "sesame" not in output


def test_a_debug_traceback_is_redacted_like_the_error_line(tmp_path: Path) -> None:
    config = tmp_path / "opskit.toml"
    config.write_text(
        '[targets.app]\ndsn = "postgresql://u:Pa%zz55-w0rd-x@db/app"\nstorages = ["s"]\n'
        '[storages.s]\nurl = "file:///tmp/x"\n'
    )
    setup = Setup(config, "app", StorageConfig(name="s", url="file:///tmp/x"), tmp_path)

    result = setup.run("--debug", "backup", "now")

    assert result.returncode == 2, result.stderr
    assert "Pa%zz55" not in result.stderr and "w0rd" not in result.stderr
    assert "Traceback" in result.stderr


# --------------------------------------------------------------------------- 4. connection errors


@pytest.mark.parametrize(
    ("host", "shown"), [("127.0.0.1", "postgres@127.0.0.1:1/app"), ("::1", "postgres@[::1]:1/app")]
)
def test_a_closed_port_keeps_libpqs_cause_on_one_line_and_brackets_an_ipv6_host(host: str, shown: str) -> None:
    target = TargetConfig(name="app", dsn=f"host={host} port=1 user=postgres dbname=app")

    with pytest.raises(UnreachableError) as raised:
        connection.connect(target)

    line = raised.value.one_line()
    assert f"({shown}): Connection refused;" in line
    assert "\t" not in line and "Is the server running" not in line


def test_the_pgpass_directory_stays_private(tmp_path: Path) -> None:
    target = TargetConfig(name="app", dsn=f"host={PG_HOST} sslpassword={SECRET}")

    with connection.password_env(target, tmp_path) as env:
        mode = stat.S_IMODE(os.stat(env["PGSERVICEFILE"]).st_mode)

    assert mode == 0o600
    assert not Path(env["PGSERVICEFILE"]).exists()
