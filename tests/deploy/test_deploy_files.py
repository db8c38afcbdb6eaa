"""What can be checked of the container and deployment files without a Docker engine or a cluster."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest

from opskit.config.load import parse_config
from opskit.daemon.jobs import parse_job
from opskit.ops.metrics import Metrics
from tests.servers import REPO_ROOT

REPO = REPO_ROOT
DEPLOY = REPO / "deploy"


def load_yaml_documents(path: Path) -> list[Any]:
    """Parse a YAML file with PyYAML when installed; otherwise check its structure cheaply."""
    text = path.read_text()
    try:
        import yaml
    except ImportError:
        assert "\t" not in text, f"{path} contains tabs"
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith(("#", "-", "|", ">")) and ":" not in line:
                # Only block-scalar content may lack a colon; it is indented under a `|` key.
                assert line.startswith("    "), f"{path}:{number}: not a YAML mapping line: {line!r}"
        return []
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_every_path_the_dockerfile_copies_from_the_context_exists() -> None:
    copies = [rest for word, rest in dockerfile_instructions() if word == "COPY" and "--from=" not in rest]
    assert copies
    for rest in copies:
        *sources, _destination = shlex.split(rest)
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_the_dockerfile_is_multi_stage_non_root_and_ships_the_tools() -> None:
    instructions = dockerfile_instructions()
    words = [word for word, _ in instructions]
    assert words.count("FROM") >= 2
    assert all("slim" in rest for word, rest in instructions if word == "FROM")
    user = [rest for word, rest in instructions if word == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    entrypoint = [rest for word, rest in instructions if word == "ENTRYPOINT"][-1]
    assert json.loads(entrypoint) == ["opskit"]
    healthcheck = [rest for word, rest in instructions if word == "HEALTHCHECK"][-1]
    assert "/livez" in healthcheck
    text = (REPO / "Dockerfile").read_text()
    assert 'PG_MAJORS="13 14 15 16 17 18"' in text
    assert "postgresql-client-%s" in text and "pgdg" in text
    assert re.search(r"install .*\bage zstd\b", text)


def test_the_entrypoint_is_the_console_script_and_it_imports() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module_name, _, attribute = scripts["opskit"].partition(":")
    main = getattr(importlib.import_module(module_name), attribute)
    assert {"daemon", "metrics"} <= set(main.list_commands(click.Context(main)))


def test_the_dockerignore_keeps_what_the_dockerfile_needs() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()}
    assert not ignored & {"opskit", "jobs", "deploy", "pyproject.toml", "README.md"}
    assert ".git" in ignored and ".venv" in ignored


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_deployment_file_is_yaml(path: Path) -> None:
    load_yaml_documents(path)


def test_the_alert_rules_cover_the_issue_and_use_only_exported_metrics() -> None:
    pytest.importorskip("yaml")
    (document,) = load_yaml_documents(DEPLOY / "prometheus-alerts.yml")
    rules = document["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    assert {
        "OpskitBackupOlderThanRPO",
        "OpskitBackupRunFailed",
        "OpskitBackupSizeDropped",
        "OpskitOffsiteCopyStale",
        "OpskitDrillStale",
        "OpskitDrillFailed",
        "OpskitJobFailing",
        "OpskitJobSlotsSkipped",
    } <= names
    # A counter family is named without its samples' _total suffix, which is what a rule selects.
    exported = {
        family.name + "_total" if family.type == "counter" else family.name for family in Metrics().registry.collect()
    }
    for rule in rules:
        for used in re.findall(r"\bopskit_\w+", rule["expr"]):
            assert used in exported, f"{rule['alert']} uses unknown metric {used}"


def test_the_kubernetes_examples_have_probes_secrets_and_a_forbid_cronjob() -> None:
    pytest.importorskip("yaml")
    deployment = load_yaml_documents(DEPLOY / "k8s" / "deployment.yaml")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert any(volume.get("secret", {}).get("secretName") == "opskit" for volume in volumes)
    cronjobs = load_yaml_documents(DEPLOY / "k8s" / "cronjob.yaml")
    assert all(job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid" for job in cronjobs)


def test_the_configs_and_jobs_shipped_in_the_examples_are_valid() -> None:
    pytest.importorskip("yaml")
    (configmap,) = load_yaml_documents(DEPLOY / "k8s" / "configmap.yaml")
    config = parse_config(configmap["data"]["opskit.toml"])
    for name, text in configmap["data"].items():
        if name != "opskit.toml":
            parse_job(name.removesuffix(".toml"), tomllib.loads(text), config)
    (compose,) = load_yaml_documents(DEPLOY / "docker-compose.sidecar.yml")
    parse_config(compose["configs"]["opskit_config"]["content"])
    assert compose["services"]["opskit"]["build"]["dockerfile"] == "Dockerfile"
