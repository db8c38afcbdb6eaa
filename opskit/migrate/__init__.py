"""Flyway-compatible migrations: scripts (names, checksums, placeholders), history table and lock, engine."""
