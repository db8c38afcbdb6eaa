"""Soak: backups, ``prune --grace 0s``, pins, copies and verifies at once against one moto S3 repository.

Not a benchmark and not run in CI: it is the concurrency check of issue 14. Five loops run the
opskit CLI as subprocesses, as cron jobs, daemons and people would, on one target backed up to
two storages of a moto server on loopback (``s3`` primary, ``s3b`` secondary, ``keep_last = 3``):

- ``backup now`` (which also copies to ``s3b``), back to back;
- ``prune --grace 0s`` (both storages), every second or so;
- ``backup pin <a listed backup>``; each pin that exits 0 must survive to the end;
- ``copy``; ``backup verify latest``.

Exit 7 (a repository lock held by another run) is the protocol working and is counted, not
failed. At the end, with everything stopped: every listed backup in both storages verifies
(``backup verify --all``), every backup whose pin returned 0 is still listed and pinned, and no
lock object is left. Prints a summary; exits 1 when an invariant broke.

Usage: ``python bench/soak.py [--minutes 10] [--scale 1]``
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import _common as c

from tests.servers import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

TARGET = "soak"


def write_config(directory: Path, database: str, endpoint: c.S3Endpoint) -> Path:
    """Write the soak's opskit.toml (two S3 storages, keep_last = 3) and return its path."""
    storages = ""
    for name, prefix in (("s3", "primary"), ("s3b", "secondary")):
        storages += textwrap.dedent(
            f"""
            [storages.{name}]
            url = "s3://{endpoint.bucket}/{prefix}"
            endpoint_url = "{endpoint.url}"
            region = "{S3_REGION}"
            access_key_id = "{S3_ACCESS_KEY}"
            secret_access_key = "{S3_SECRET_KEY}"
            """
        )
    text = textwrap.dedent(
        f"""\
        [tools]
        state_dir = "{directory / "state"}"

        [retention.short]
        keep_last = 3

        [targets.{TARGET}]
        dsn = "host={c.PG_HOST} user={c.PG_USER} dbname={database}"
        storages = ["s3", "s3b"]
        retention = "short"
        """
    )
    path = directory / "opskit.toml"
    path.write_text(text + storages)
    return path


class Soak:
    """The loops, their outcomes (operation -> exit code -> count) and the pins that returned 0."""

    def __init__(self, config: Path, deadline: float) -> None:
        self.config = config
        self.deadline = deadline
        self.outcomes: dict[str, Counter[int]] = {}
        self.surprises: list[str] = []  # first lines of exits that are neither 0 nor 7
        self.pinned: set[str] = set()
        self.lock = threading.Lock()

    def opskit(
        self, operation: str, *args: str, expected: tuple[int, ...] = (0, 7)
    ) -> subprocess.CompletedProcess[str]:
        """Run one CLI command, count its exit code and keep the error line of an unexpected one."""
        done = subprocess.run(
            c.opskit_argv(self.config, *args), capture_output=True, text=True, env=c.opskit_env(), timeout=600
        )
        with self.lock:
            self.outcomes.setdefault(operation, Counter())[done.returncode] += 1
            if done.returncode not in expected:
                lines = [line for line in done.stderr.splitlines() if line.startswith("opskit:")]
                self.surprises.append(f"{operation} exit {done.returncode}: {(lines or ['?'])[-1][:300]}")
        return done

    def listed(self, storage: str = "s3") -> list[str]:
        """Return the ids ``backup list`` shows in ``storage`` (empty when the listing failed)."""
        done = subprocess.run(
            c.opskit_argv(self.config, "backup", "list", "--target", TARGET, "--storage", storage, "--json"),
            capture_output=True,
            text=True,
            env=c.opskit_env(),
        )
        if done.returncode != 0:
            return []
        return [str(item["id"]) for item in json.loads(done.stdout)]

    def loop(self, body: Callable[[], None], pause: float) -> threading.Thread:
        """Start a thread running ``body`` until the deadline, ``pause`` seconds (jittered) apart."""

        def run() -> None:
            while time.monotonic() < self.deadline:
                body()
                time.sleep(pause * random.uniform(0.5, 1.5))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def backup(self) -> None:
        # Exit 4 is "backup ok, copy to s3b failed" when s3b's prune held the lock; copy catches up.
        self.opskit("backup", "backup", "now", "--target", TARGET, expected=(0, 4, 7))

    def prune(self) -> None:
        self.opskit("prune", "prune", "--target", TARGET, "--grace", "0s")

    def pin(self) -> None:
        ids = self.listed()
        if not ids:
            return
        choice = random.choice(ids)
        # Exit 2: a prune deleted the backup between our listing and the pin, and the pin said so.
        done = self.opskit("pin", "backup", "pin", "--target", TARGET, choice, expected=(0, 2, 7))
        if done.returncode == 0:
            with self.lock:
                self.pinned.add(choice)

    def copy(self) -> None:
        self.opskit("copy", "copy", "--target", TARGET, expected=(0, 4, 7))

    def verify(self) -> None:
        # A prune may delete the backup being verified (verify locks only to write its record):
        # exit 2 (gone before it was found) or 4 (gone mid-read) then; exit 5 would be a lie.
        self.opskit("verify", "backup", "verify", "--target", TARGET, "latest", expected=(0, 2, 4, 7))


def final_checks(soak: Soak) -> list[str]:
    """Return every broken invariant once all loops have stopped (empty when all hold)."""
    broken: list[str] = []
    for storage in ("s3", "s3b"):
        done = subprocess.run(
            c.opskit_argv(soak.config, "backup", "verify", "--target", TARGET, "--all", "--storage", storage),
            capture_output=True,
            text=True,
            env=c.opskit_env(),
        )
        if done.returncode != 0:
            broken.append(f"verify --all on {storage} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    lies = [line for line in soak.surprises if line.startswith("verify exit 5") or " exit 1:" in line]
    broken += [f"during the run: {line}" for line in lies]
    listed = set(soak.listed("s3"))
    lost = sorted(soak.pinned - listed)
    if lost:
        broken.append(f"{len(lost)} pinned backup(s) lost from s3: {', '.join(lost)}")
    client = soak_endpoint_client(soak)
    locks = [key for key in client if "/locks/" in key]
    if locks:
        broken.append(f"{len(locks)} lock object(s) left: {', '.join(locks[:5])}")
    return broken


_ENDPOINT: c.S3Endpoint | None = None


def soak_endpoint_client(_soak: Soak) -> list[str]:
    """Return every key in the soak's bucket."""
    assert _ENDPOINT is not None
    client: object = _ENDPOINT.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=_ENDPOINT.bucket)  # type: ignore[attr-defined]
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def main(argv: list[str]) -> int:
    """Run the soak; return 0 when every invariant held, 1 otherwise."""
    global _ENDPOINT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="How long the loops run (default 10).")
    parser.add_argument("--scale", type=int, default=1, help="pgbench scale of the database (default 1).")
    args = parser.parse_args(argv)
    database = c.ensure_pgbench_database(args.scale)
    with c.moto_server("opskit-soak") as endpoint, tempfile.TemporaryDirectory(prefix="opskit-soak-") as tmp:
        _ENDPOINT = endpoint
        config = write_config(Path(tmp), database, endpoint)
        started = time.monotonic()
        soak = Soak(config, started + args.minutes * 60)
        print(f"soak: {args.minutes:g} min against {endpoint.url} (database {database})", flush=True)
        threads = [
            soak.loop(soak.backup, 1.0),
            soak.loop(soak.prune, 1.0),
            soak.loop(soak.pin, 3.0),
            soak.loop(soak.copy, 2.0),
            soak.loop(soak.verify, 2.0),
        ]
        for thread in threads:
            thread.join()
        broken = final_checks(soak)
        elapsed = time.monotonic() - started
        print(f"\nsoak finished after {elapsed / 60:.1f} min")
        c.print_table(
            ("OPERATION", "RUNS", "EXIT 0", "EXIT 7 (LOCKED)", "OTHER"),
            [
                (
                    name,
                    str(sum(codes.values())),
                    str(codes[0]),
                    str(codes[7]),
                    ", ".join(f"{code}x{n}" for code, n in sorted(codes.items()) if code not in (0, 7)) or "-",
                )
                for name, codes in sorted(soak.outcomes.items())
            ],
        )
        print(f"backups listed at the end: s3 {len(soak.listed('s3'))}, s3b {len(soak.listed('s3b'))}")
        print(f"pins that returned 0: {len(soak.pinned)}")
        for line in soak.surprises[:20]:
            print(f"unexpected: {line}")
        if broken:
            for line in broken:
                print(f"BROKEN: {line}")
            return 1
        print("every listed backup verifies, no pinned backup lost, no lock left: OK")
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
