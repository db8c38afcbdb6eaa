"""Print when each statement of a restore ran, and the CPU its backend spent on it.

A restore's wall time is decided by its longest chain (a table's rows, then its slowest index
build), not by its CPU total. This script polls ``pg_stat_activity`` every 0.2 s for the
backends of databases whose name starts with a prefix, and prints one line per statement that
stayed active for more than half a second: start and end (seconds since the first poll), its
wall time, the CPU its backend spent in that interval (from ``/proc``, so the server must run
on this machine), the application and the statement. "Active" is not "busy": a COPY backend
waiting for its client is active too, which the CPU column tells apart.

Usage: start it, then the restore in another shell (into a database with that prefix)::

    python bench/timeline.py tr_ > timeline.txt &
    opskit restore latest --jobs 2 --to "dbname=tr_one"

It stops three seconds after the last such backend is gone, and ends with the CPU per application.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import psycopg

POLL_SECONDS = 0.2
SHORTEST = 0.5  # statements shorter than this are not printed (their CPU still counts)
QUIET_SECONDS = 3.0
TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float | None:
    """Return the CPU seconds (user + system) process ``pid`` has used, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def follow(prefix: str) -> None:
    """Poll until the databases named ``prefix...`` have had backends and then none for a while."""
    query = (
        "SELECT pid, application_name, left(regexp_replace(query, '\\s+', ' ', 'g'), 90), state"
        " FROM pg_stat_activity WHERE datname LIKE %s AND pid <> pg_backend_pid()"
    )
    # (pid, statement) -> [start, application, CPU at its first poll, CPU at its latest poll]
    running: dict[tuple[int, str], list[Any]] = {}
    cpu_by_application: dict[str, float] = {}
    started = time.monotonic()
    seen = False
    quiet_since: float | None = None
    with psycopg.connect(f"host={c.PG_HOST} user={c.PG_USER} dbname=postgres", autocommit=True) as conn:
        while True:
            now = time.monotonic() - started
            rows = conn.execute(query, (prefix + "%",)).fetchall()
            active = {(pid, statement): application for pid, application, statement, state in rows if state == "active"}
            for key, application in active.items():
                cpu = backend_cpu(key[0])
                running.setdefault(key, [now, application, cpu, cpu])[3] = cpu
            for key in [k for k in running if k not in active]:
                begun, application, cpu_then, cpu_last = running.pop(key)
                cpu_now = backend_cpu(key[0]) or cpu_last  # a backend that has exited keeps its last reading
                used = cpu_now - cpu_then if cpu_now is not None and cpu_then is not None else 0.0
                cpu_by_application[application] = cpu_by_application.get(application, 0.0) + used
                if now - begun > SHORTEST:
                    print(
                        f"{begun:7.1f} {now:7.1f} {now - begun:6.1f} s  cpu {used:6.1f}  {application[:14]:14}  {key[1]}"
                    )
            if rows:
                seen, quiet_since = True, None
            elif seen:
                quiet_since = quiet_since if quiet_since is not None else now
                if now - quiet_since > QUIET_SECONDS:
                    break
            time.sleep(POLL_SECONDS)
    print("backend CPU seconds by application:", {k: round(v, 1) for k, v in sorted(cpu_by_application.items())})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="follow the databases whose names start with this")
    follow(parser.parse_args().prefix)


if __name__ == "__main__":
    main()
