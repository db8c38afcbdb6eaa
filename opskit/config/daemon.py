"""The optional ``[daemon]`` config table.

::

    [daemon]
    control_dsn = "postgresql://opskit@db/opskit"   # ledger database; default: the first target's
    control_password = "env:OPSKIT_CONTROL_PASSWORD" # optional secret reference
    listen = "0.0.0.0:9187"                          # /livez /readyz /metrics
    jobs_dir = "jobs"                                # one TOML file per job
    shutdown_grace = "5m"                            # SIGTERM: let the running job finish this long
    ledger_table = "opskit_job_runs"                 # schema-qualified names allowed: "ops.job_runs"

Every key is optional; ``opskit daemon --jobs-dir/--listen`` override the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from opskit.secrets.references import SecretRef

if TYPE_CHECKING:
    from opskit.config.schema import Section

DEFAULT_LISTEN = "0.0.0.0:9187"
DEFAULT_JOBS_DIR = "jobs"
DEFAULT_LEDGER_TABLE = "opskit_job_runs"
DEFAULT_SHUTDOWN_GRACE = timedelta(minutes=5)
# An unquoted PostgreSQL identifier, optionally schema-qualified. Stricter than PostgreSQL on
# purpose: the name is also used in advisory lock keys and log lines.
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


@dataclass(frozen=True)
class DaemonSettings:
    """How ``opskit daemon`` runs: where its ledger lives, where it listens, where its jobs are."""

    control_dsn: str | None = None
    control_password: SecretRef | None = None
    listen: str = DEFAULT_LISTEN
    jobs_dir: Path = Path(DEFAULT_JOBS_DIR)
    shutdown_grace: timedelta = DEFAULT_SHUTDOWN_GRACE
    ledger_table: str = DEFAULT_LEDGER_TABLE

    @property
    def ledger_table_parts(self) -> tuple[str, ...]:
        """Return the ledger table name split into (schema, table) or (table,)."""
        return tuple(self.ledger_table.split("."))


def parse_listen(text: str) -> tuple[str, int]:
    """Return (host, port) from ``HOST:PORT`` (``[::1]:9187`` for IPv6).

    Raises ValueError with a message fit for a config error.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"'{text}' is not HOST:PORT (for example 0.0.0.0:9187)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def parse_settings(section: Section) -> DaemonSettings:
    """Validate the ``[daemon]`` table and return its settings.

    Problems are recorded on the section's error collector (reported with every other config
    problem at once), never raised from here.
    """
    defaults = DaemonSettings()
    listen = section.str("listen", defaults.listen)
    try:
        parse_listen(listen)
    except ValueError as exc:
        section.errors.add(section.key_path("listen"), str(exc))
        listen = defaults.listen
    table = section.str("ledger_table", defaults.ledger_table)
    if not _TABLE_RE.match(table):
        section.errors.add(
            section.key_path("ledger_table"),
            f"'{table}' is not a plain table name (letters, digits, _; optionally schema.table)",
        )
        table = defaults.ledger_table
    grace = section.duration("shutdown_grace", defaults.shutdown_grace)
    settings = DaemonSettings(
        control_dsn=section.str("control_dsn", None),
        control_password=section.secret("control_password"),
        listen=listen,
        jobs_dir=Path(section.str("jobs_dir", DEFAULT_JOBS_DIR)),
        shutdown_grace=grace,
        ledger_table=table,
    )
    section.finish()
    return settings
