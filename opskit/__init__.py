"""opskit: keeps PostgreSQL data safe and recoverable."""

# The one place the version is written (pyproject.toml reads it from here): a literal, because
# importlib.metadata costs ~40 ms of start-up, paid by every archive_command and restore_command call.
__version__ = "0.1.0"
