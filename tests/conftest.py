"""Shared pytest configuration: the real test servers come from tests/servers.py."""

pytest_plugins = ["tests.servers", "tests.databases", "tests.pgcluster", "tests.wal.cluster"]
