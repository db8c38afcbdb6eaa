"""Run records: ``<target>/runs/<UTC time>-<verb>-<result>-<hex>.json``, one small object per run.

Every run of a verb the daemon can schedule leaves one, from the daemon and from the command
line alike, so ``opskit metrics --textfile`` in a CronJob counts runs it did not make
(``opskit_backup_runs_total``). Counting reads only the listing: the verb and result are in
the key, the JSON body (exit code, error, duration, job) is for people and later tools.
Prune's sweep never touches ``runs/`` (it sweeps backup-id folders only).
"""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from opskit.catalog.layout import format_time
from opskit.storage.base import Storage, join_key

RUNS_DIR = "runs"
RUN_RESULTS = ("success", "failure", "aborted")
_KEY_RE = re.compile(r"^\d{8}T\d{6}Z-(?P<verb>[a-z_-]+?)-(?P<result>success|failure|aborted)-[0-9a-f]{4}\.json$")


@dataclass(frozen=True)
class RunRecord:
    """One finished run of a verb on a target, as stored."""

    target: str
    verb: str
    result: str  # one of RUN_RESULTS
    started_at: datetime
    finished_at: datetime
    exit_code: int
    job: str | None = None
    error: str | None = None
    backup_id: str | None = None

    def key(self) -> str:
        """Return the record's object key (time first, so key order is time order)."""
        stamp = self.finished_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{stamp}-{self.verb}-{self.result}-{secrets.token_hex(2)}.json"
        return join_key(self.target, RUNS_DIR, name)

    def to_dict(self) -> dict[str, object]:
        """Return the stored JSON document."""
        return {
            "kind": "run",
            "target": self.target,
            "verb": self.verb,
            "result": self.result,
            "exit_code": self.exit_code,
            "job": self.job,
            "started_at": format_time(self.started_at),
            "finished_at": format_time(self.finished_at),
            "duration_seconds": round((self.finished_at - self.started_at).total_seconds(), 3),
            "error": self.error,
            "backup_id": self.backup_id,
        }


def write_run(storage: Storage, record: RunRecord) -> str:
    """Store ``record`` (create-if-absent, so two runs never overwrite each other) and return its key.

    Raises StorageError when the storage cannot take it.
    """
    key = record.key()
    storage.create(key, json.dumps(record.to_dict(), indent=2).encode("utf-8"))
    return key


def count_runs(storage: Storage, target: str, verb: str) -> Counter[str]:
    """Return {result: number of stored runs} of ``verb`` on ``target``, from the listing alone.

    Raises StorageError when the storage cannot be listed.
    """
    counts: Counter[str] = Counter()
    for info in storage.list(join_key(target, RUNS_DIR) + "/"):
        match = _KEY_RE.match(info.key.rsplit("/", 1)[-1])
        if match and match["verb"] == verb:
            counts[match["result"]] += 1
    return counts
