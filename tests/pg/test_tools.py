"""Choosing PostgreSQL client tools: several configured directories, a logged fallback, messages that name the cause."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from opskit.core.errors import UnreachableError
from opskit.pg import tools


def fake_tool(directory: Path, name: str, version: str) -> Path:
    """Write a script that answers ``--version`` as PostgreSQL ``version``'s ``name`` would; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f'#!/bin/sh\necho "{name} (PostgreSQL) {version}"\n')
    path.chmod(0o755)
    return path


def test_of_several_configured_directories_the_lowest_new_enough_tool_is_chosen(tmp_path: Path) -> None:
    fake_tool(tmp_path / "a", "pg_dump", "12.4")
    wanted = fake_tool(tmp_path / "b", "pg_dump", "98.1")
    fake_tool(tmp_path / "c", "pg_dump", "99.0")

    tool = tools.find_tool("pg_dump", 50, [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")])

    assert (tool.path, tool.major) == (str(wanted), 98)


def test_a_configured_directory_without_the_tool_falls_back_to_the_search_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    with capture_logs() as logs:
        tool = tools.find_tool("pg_restore", 0, str(tmp_path / "empty"))

    assert not tool.path.startswith(str(tmp_path))
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert warnings and "no pg_restore in tools.pg_bin_dir" in warnings[0]["event"]
    assert warnings[0]["pg_bin_dir"] == [str(tmp_path / "empty")]


def test_a_configured_tool_too_old_is_refused_even_when_the_search_has_a_newer_one(tmp_path: Path) -> None:
    fake_tool(tmp_path / "old", "pg_dump", "9.2.24")

    with pytest.raises(UnreachableError, match=r"found: pg_dump 9.2 .*cannot safely handle a PostgreSQL 15 server"):
        tools.find_tool("pg_dump", 15, str(tmp_path / "old"))


def test_a_newer_archive_s_message_names_the_archive_not_the_server(tmp_path: Path) -> None:
    fake_tool(tmp_path / "old", "pg_restore", "15.4")

    with pytest.raises(UnreachableError) as raised:
        tools.find_tool(
            "pg_restore",
            18,
            str(tmp_path / "old"),
            needed_for="an archive of pg_dump 18.1 from a PostgreSQL 13 server",
        )

    assert "cannot safely handle an archive of pg_dump 18.1 from a PostgreSQL 13 server" in str(raised.value)
    assert "PostgreSQL 18 server" not in str(raised.value)


@pytest.mark.parametrize(
    ("restore_major", "server_major", "refused"),
    [(18, 13, True), (17, 16, True), (16, 13, False), (18, 17, False), (17, 18, False)],
)
def test_pg_restore_17_and_later_is_refused_only_for_servers_before_17(
    restore_major: int, server_major: int, refused: bool
) -> None:
    pg_restore = tools.Tool("pg_restore", f"/x/{restore_major}/pg_restore", restore_major, f"{restore_major}.1")

    reason = tools.restore_incompatibility(pg_restore, server_major)

    assert (reason is not None) == refused
    if refused:
        assert reason == (
            f"pg_restore {restore_major}.1 (/x/{restore_major}/pg_restore) sends SET transaction_timeout, which a "
            f"PostgreSQL {server_major} server rejects"
        )
