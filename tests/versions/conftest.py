"""The version matrix's session fixture (``pg_servers``) comes from tests/versions/servers.py."""

pytest_plugins = ["tests.versions.servers"]
