"""Flyway's own configuration files saved with a UTF-8 BOM are read as Flyway reads them."""

from __future__ import annotations

from pathlib import Path

from opskit.config.migrations import _build
from opskit.config.schema import ConfigErrors, Section


def test_a_flyway_conf_and_toml_saved_with_a_bom_keep_their_first_key(tmp_path: Path) -> None:
    (tmp_path / "flyway.conf").write_bytes("\ufeffflyway.table=conf_history\n".encode())
    (tmp_path / "flyway.toml").write_bytes("\ufeff[flyway]\noutOfOrder = true\n".encode())
    errors = ConfigErrors()
    settings = _build(Section({}, "migrations", errors), {}, tmp_path, Path("/nonexistent-home"))
    assert errors.problems == []
    assert settings.table == "conf_history"
    assert settings.out_of_order is True
