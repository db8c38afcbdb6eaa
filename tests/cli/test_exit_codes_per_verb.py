"""One exit-code rule for every verb: a store nobody answers at is exit 3, whether the verb writes or lists.

The store is a real S3 endpoint on a loopback port where nothing listens (no mock: botocore
really fails to connect), with one attempt so the test is quick.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.faults.helpers import PG_HOST, cli_env


def closed_port() -> int:
    """Return a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def unreachable_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return an opskit.toml whose only storage is an S3 endpoint that refuses connections."""
    folder = tmp_path_factory.mktemp("unreachable")
    path = folder / "opskit.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [tools]
            state_dir = "{folder / "state"}"

            [retention.std]
            keep_last = 3

            [targets.app]
            dsn = "host={PG_HOST} user=postgres dbname=postgres"
            storages = ["s3", "copy"]
            staging = "stage"
            retention = "std"

            [targets.stage]
            dsn = "host={PG_HOST} user=postgres dbname=postgres"
            storages = ["s3"]

            [storages.s3]
            url = "s3://bucket/x"
            endpoint_url = "http://127.0.0.1:{closed_port()}"
            max_attempts = 1

            [storages.copy]
            url = "file://{folder / "copy"}"
            """
        )
    )
    return path


VERBS = [
    ["backup", "now", "--target", "app"],
    ["backup", "list", "--target", "app"],
    ["backup", "pin", "latest", "--target", "app"],
    ["backup", "verify", "latest", "--target", "app"],
    ["restore", "latest", "--target", "app"],
    ["drill", "restore", "--target", "app"],
    # Verbs that carry on past a failing (target, storage): the target's other storage (a
    # reachable folder) works, and the one failure is the unreachable store, so 3 (not 4).
    ["prune", "--target", "app"],
    ["copy", "--target", "app"],
    # status reads every storage: one it cannot reach is 3, not a breach (6) of the others.
    ["status", "--target", "app"],
]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_an_unreachable_store_exits_3_for_every_verb(unreachable_config: Path, verb: list[str]) -> None:
    env = cli_env({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"})

    result = subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(unreachable_config), *verb],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )

    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(errors) == 1 and "cannot connect" in errors[0], result.stderr
