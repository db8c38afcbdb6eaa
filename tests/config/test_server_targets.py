"""Server targets in the configuration: derived targets, their dsn, and the errors that keep prefixes apart."""

from __future__ import annotations

import pytest

from opskit.config import databases
from opskit.config.load import build_config
from opskit.core.errors import ConfigError

STORAGES = {"local": {"url": "file:///tmp/opskit-server-targets"}}


def config(**targets: dict[str, object]) -> object:
    return build_config({"storages": STORAGES, "targets": targets}, environment=False)


def test_a_derived_target_is_its_server_target_with_the_database_replaced() -> None:
    loaded = config(app={"dsn": "postgresql://backup@db:5433/postgres?sslmode=require", "databases": ["*"]})

    derived = loaded.target("app.orders")  # type: ignore[attr-defined]

    assert derived.name == "app.orders" and derived.server == "app" and derived.database == "orders"
    assert derived.storages == ("local",) and not derived.is_server
    assert "dbname=orders" in derived.dsn and "port=5433" in derived.dsn and "sslmode=require" in derived.dsn


def test_a_database_name_that_cannot_be_stored_is_refused_naming_it() -> None:
    loaded = config(app={"dsn": "", "databases": ["*"]})

    with pytest.raises(ConfigError, match="database 'my db' of server target 'app'"):
        loaded.target("app.my db")  # type: ignore[attr-defined]


def test_a_target_named_like_a_derived_target_and_an_exclude_alone_are_errors() -> None:
    with pytest.raises(ConfigError) as raised:
        config(app={"dsn": "", "databases": ["*"]}, **{"app.orders": {"dsn": ""}}, other={"exclude_databases": ["x"]})

    problems = raised.value.problems
    assert any("targets.app.orders" in p and "derived target of database 'orders'" in p for p in problems)
    assert any("targets.other.exclude_databases" in p for p in problems)


def test_selection_never_takes_templates_and_reports_patterns_that_match_nothing() -> None:
    selection = databases.select(["*", "gone_*"], ["scratch*"], ["template1", "app", "scratch1", "zeta"])

    assert selection.databases == ("app", "zeta")
    assert selection.unmatched == ("gone_*",)
