"""The Kubernetes manifests, checked against the Kubernetes API's own schemas (kubernetes-validate).

No cluster runs here: these prove each object would be accepted by the API server (strict: no
unknown field) and that the pieces agree with each other, not that the pods start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.servers import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still supported upstream when this was written
yaml = pytest.importorskip("yaml")


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in documents(path.name) if doc["kind"] == kind]


def pod_specs() -> list[dict[str, Any]]:
    specs = [doc["spec"]["template"]["spec"] for doc in by_kind("Deployment")]
    return specs + [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] for doc in by_kind("CronJob")]


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda path: path.name)
def test_every_core_object_passes_the_kubernetes_schema_strictly(path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in documents(path.name):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Operator's CRDs have no schema in kubernetes-validate: checked below
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    (deployment,) = by_kind("Deployment")
    deployment["spec"]["template"]["spec"]["automountServiceAcountToken"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_backup_prune_and_verify_each_have_a_forbid_cronjob() -> None:
    cronjobs = {doc["metadata"]["name"]: doc for doc in by_kind("CronJob")}
    assert set(cronjobs) == {"opskit-backup", "opskit-prune", "opskit-verify"}
    verbs = {
        name: doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
        for name, doc in cronjobs.items()
    }
    assert verbs["opskit-backup"][2:4] == ["backup", "now"]
    assert verbs["opskit-prune"][2] == "prune" and "--dry-run" not in verbs["opskit-prune"]
    assert verbs["opskit-verify"][2:4] == ["backup", "verify"]
    assert all(doc["spec"]["concurrencyPolicy"] == "Forbid" for doc in cronjobs.values())


def test_every_pod_can_read_its_0400_secret_and_is_bounded() -> None:
    for spec in pod_specs():
        # A 0400 secret file is root's unless fsGroup makes it the pod group's (0440).
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"] == 10001
        assert spec["automountServiceAccountToken"] is False
        assert all(volume["emptyDir"]["sizeLimit"] for volume in spec["volumes"] if "emptyDir" in volume)
        for container in spec["containers"]:
            assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]


def test_the_daemon_keeps_a_replica_through_disruptions() -> None:
    (deployment,) = by_kind("Deployment")
    (budget,) = by_kind("PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_service_monitor_scrapes_the_daemon_service_port() -> None:
    (service,) = by_kind("Service")
    (monitor,) = by_kind("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_the_prometheus_rule_is_the_shipped_alerts_file() -> None:
    (rule,) = by_kind("PrometheusRule")
    alerts = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    assert rule["spec"] == alerts, "regenerate deploy/k8s/prometheus-operator.yaml (see deploy/README.md)"
