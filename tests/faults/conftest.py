"""Fixtures of the fault-injection suite (the helpers live in tests/faults/helpers.py)."""

from tests.faults.helpers import database, tiny_tmpfs

__all__ = ["database", "tiny_tmpfs"]
