"""The version matrix's session fixture (``pg_servers``), defined in tests/versions/servers.py."""

from tests.versions.servers import pg_servers

__all__ = ["pg_servers"]
