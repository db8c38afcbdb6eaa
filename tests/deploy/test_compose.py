"""The sidecar Compose file, checked against the Compose specification and opskit's own config.

`docker compose config` needs the Compose plugin, which is not installable here without an engine;
compose-spec (the specification's models) rejects unknown keys and bad values the same way.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from opskit.config.load import parse_config
from opskit.daemon.jobs import parse_job
from tests.servers import REPO_ROOT

COMPOSE = REPO_ROOT / "deploy" / "docker-compose.sidecar.yml"
yaml = pytest.importorskip("yaml")


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_the_compose_file_follows_the_compose_specification() -> None:
    compose_spec = pytest.importorskip("compose_spec")
    compose_spec.PyCompose.from_yaml(COMPOSE.read_text()).validate()


def test_the_specification_check_rejects_a_misspelt_key() -> None:
    compose_spec = pytest.importorskip("compose_spec")
    broken = COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_perod:")
    with pytest.raises(ValueError, match="stop_grace_perod"):
        compose_spec.PyCompose.from_yaml(broken).validate()


def test_the_config_satisfies_every_job_mounted_into_the_daemon() -> None:
    service = compose()["services"]["opskit"]
    (jobs_mount,) = [volume for volume in service["volumes"] if volume.split(":")[1] == "/etc/opskit/jobs"]
    jobs_dir = (COMPOSE.parent / jobs_mount.split(":")[0]).resolve()
    config = parse_config(compose()["configs"]["opskit_config"]["content"])
    actions = set()
    for path in sorted(jobs_dir.glob("*.toml")):
        job = parse_job(path.stem, tomllib.loads(path.read_text()), config)
        actions.add(job.action)
    assert "drill" in actions
    app = config.targets["app"]
    # The drill job restores into the staging target, on a server the compose file starts.
    assert app.staging in config.targets and app.retention is not None
    staging_host = config.targets[app.staging].dsn.split("@", 1)[1].split(":", 1)[0]
    assert staging_host in compose()["services"]


def test_the_daemon_writes_its_backups_into_a_volume_its_uid_owns() -> None:
    service = compose()["services"]["opskit"]
    assert service["user"].split(":")[0] == "10001"
    (backups,) = [volume for volume in service["volumes"] if volume.startswith("backups:")]
    mount_point = backups.split(":")[1]
    # A fresh named volume is initialised from the image's directory, ownership included.
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "install -d -o opskit -g opskit" in dockerfile and mount_point in dockerfile
    config = parse_config(compose()["configs"]["opskit_config"]["content"])
    assert config.storages["local"].url == f"file://{mount_point}"
