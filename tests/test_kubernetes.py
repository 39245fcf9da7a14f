"""The Kubernetes manifests of deploy/kubernetes, validated offline.

Every object passes kubernetes-validate (strict: unknown fields fail) against the newest Kubernetes
schemas the package bundles; the security properties a policy scanner checks at high severity are
asserted here directly (checkov pins packaging<24, which pytest 9 cannot share an environment with, so
it is not a dev dependency); when a ``checkov`` executable is on PATH (or in DRONEDEPTH_CHECKOV) its scan
runs too and must fail nothing outside ``CHECKOV_ALLOWED``. Then the structure the deployment relies on:
Triton only in-cluster and only from gateway pods, the HPA on Triton's queue/compute ratio, the gateway
pointed at Triton's Service with its token from a Secret file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
NAMESPACE = "dronedepth"
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
RATIO_METRIC = "triton_queue_compute_ratio"

# Failed checkov checks that do not apply, each with the reason. Anything else fails the scan test.
CHECKOV_ALLOWED: dict[str, str] = {
    # Tags are pinned (NGC release, project version, coturn release); digests depend on the registry the
    # images are pushed to, and are set there with `kustomize edit set image NAME@sha256:...`.
    "CKV_K8S_43": "image digests are registry-specific; tags are pinned",
    # Triton and the export Job run as uid 1000, the Triton image's triton-server user, which owns the
    # model repository (as in docker-compose.yml). Non-root, no privilege escalation, no capabilities.
    "CKV_K8S_40": "uid 1000 is the Triton image's own unprivileged user",
}

Document = dict[str, Any]


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/kubernetes (the base, the example Secrets and monitoring/)."""
    return sorted(MANIFESTS.rglob("*.yaml"))


def cluster_files() -> list[Path]:
    """The files that hold Kubernetes objects: all but kustomization.yaml, which kubectl reads itself."""
    return [path for path in manifest_files() if path.name != "kustomization.yaml"]


def documents(path: Path) -> list[Document]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def all_objects() -> Iterator[tuple[Path, Document]]:
    for path in cluster_files():
        for doc in documents(path):
            yield path, doc


def find(kind: str, name: str) -> Document:
    matches = [doc for _, doc in all_objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: Document) -> Document:
    spec: Document = workload["spec"]["template"]["spec"]
    return spec


def workloads() -> list[Document]:
    return [doc for _, doc in all_objects() if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def containers(workload: Document) -> list[Document]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def labels_match(selector: Document, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and In expressions) selects pods with ``labels``."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In expressions are evaluated here"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def pod_labels(name: str) -> dict[str, str]:
    labels: dict[str, str] = find("Deployment", name)["spec"]["template"]["metadata"]["labels"]
    return labels


# --- schemas -----------------------------------------------------------------------------------------


def test_the_manifests_are_there_and_parse() -> None:
    names = {path.relative_to(MANIFESTS).as_posix() for path in manifest_files()}
    assert {"kustomization.yaml", "triton.yaml", "gateway.yaml", "network-policies.yaml"} <= names
    for path in cluster_files():
        for doc in documents(path):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path.name}: not a Kubernetes object"
    assert documents(MANIFESTS / "kustomization.yaml")[0]["kind"] == "Kustomization"


@pytest.mark.parametrize("path", cluster_files(), ids=lambda path: path.relative_to(MANIFESTS).as_posix())
def test_every_object_passes_kubernetes_validate_strictly(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    service = find("Service", "triton")
    broken = {**service, "spec": {**service["spec"], "ports": [{"port": TRITON_GRPC_PORT, "protocl": "TCP"}]}}
    with pytest.raises(kubernetes_validate.ValidationError, match="protocl"):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_base_manifest() -> None:
    """The base is everything at the top level except the Secret shapes (the real Secrets come from kubectl)."""
    kustomization = documents(MANIFESTS / "kustomization.yaml")[0]
    base = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(base)
    for path in base:
        for doc in documents(MANIFESTS / path):
            assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == NAMESPACE, path


# --- the security properties a policy scan checks at high severity -------------------------------------


@pytest.mark.parametrize("workload", workloads(), ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_workloads_run_unprivileged_with_limits(workload: Document) -> None:
    spec = pod_spec(workload)
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert spec["automountServiceAccountToken"] is False
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 0
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    assert all("hostPath" not in volume for volume in spec.get("volumes", []))
    for container in containers(workload):
        where = f"{workload['metadata']['name']}/{container['name']}"
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, where
        assert not security.get("privileged"), where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"], where
        assert all(container["resources"][bound].keys() >= {"cpu", "memory"} for bound in ("requests", "limits"))
        assert not any(port.get("hostPort") for port in container.get("ports", [])), where
        # Secrets reach processes as files: never as environment variables, literal or referenced.
        for variable in container.get("env", []):
            assert "valueFrom" not in variable, where
            assert not any(word in variable["name"].upper() for word in ("TOKEN", "KEY", "PASS", "SECRET")), where
        assert ":" in container["image"] and not container["image"].endswith(":latest"), where


def test_long_running_containers_have_probes() -> None:
    for name in ("triton", "gateway", "turn"):
        for container in pod_spec(find("Deployment", name))["containers"]:
            assert "livenessProbe" in container and "readinessProbe" in container, name


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    labels = find("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_secret_templates_hold_placeholders_only() -> None:
    secrets = [doc for _, doc in all_objects() if doc["kind"] == "Secret"]
    assert {doc["metadata"]["name"] for doc in secrets} == {"gateway-token", "triton-admin-key", "turn-config"}
    for secret in secrets:
        assert "data" not in secret, "no encoded values in the repository"
        assert all("REPLACE" in value for value in secret["stringData"].values()), secret["metadata"]["name"]


def test_namespace_denies_by_default() -> None:
    policy = find("NetworkPolicy", "default-deny")
    assert policy["spec"]["podSelector"] == {}
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in policy["spec"] and "egress" not in policy["spec"]


@pytest.mark.skipif(
    not (os.environ.get("DRONEDEPTH_CHECKOV") or shutil.which("checkov")),
    reason="no checkov executable (on PATH or in DRONEDEPTH_CHECKOV); its high-severity checks are asserted above",
)
def test_checkov_finds_nothing_outside_the_allow_list() -> None:
    checkov = os.environ.get("DRONEDEPTH_CHECKOV") or shutil.which("checkov")
    assert checkov is not None
    command = [checkov, "-d", str(MANIFESTS), "--framework", "kubernetes", "--compact", "--quiet", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = {(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]}
    assert {check_id for check_id, _ in failed} <= CHECKOV_ALLOWED.keys(), sorted(failed)
    assert report["summary"]["parsing_errors"] == 0


# --- the structure the deployment relies on ------------------------------------------------------------


def test_triton_is_reachable_in_cluster_only() -> None:
    service = find("Service", "triton")
    assert service["spec"]["type"] == "ClusterIP"
    assert {port["port"] for port in service["spec"]["ports"]} == {TRITON_GRPC_PORT, TRITON_METRICS_PORT}
    assert labels_match({"matchLabels": service["spec"]["selector"]}, pod_labels("triton"))
    exposed = [
        doc["metadata"]["name"]
        for _, doc in all_objects()
        if doc["kind"] == "Service"
        and doc["spec"].get("type") in ("NodePort", "LoadBalancer")
        and labels_match({"matchLabels": doc["spec"]["selector"]}, pod_labels("triton"))
    ]
    assert exposed == []


def test_triton_admits_gateway_pods_on_grpc_and_monitoring_on_metrics_only() -> None:
    triton = pod_labels("triton")
    policies = [
        doc
        for _, doc in all_objects()
        if doc["kind"] == "NetworkPolicy" and labels_match(doc["spec"]["podSelector"], triton)
    ]
    rules = [rule for policy in policies for rule in policy["spec"].get("ingress", [])]
    assert rules, "no policy selects the Triton pods"
    allowed: set[tuple[str, int]] = set()
    for rule in rules:
        assert rule.get("from"), "a Triton ingress rule without 'from' admits everyone"
        ports = {port["port"] for port in rule["ports"]}
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            if "namespaceSelector" in peer:
                assert "podSelector" not in peer
                assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
                allowed |= {("monitoring", port) for port in ports}
            else:
                assert labels_match(peer["podSelector"], pod_labels("gateway"))
                assert not labels_match(peer["podSelector"], pod_labels("turn"))
                allowed |= {("gateway", port) for port in ports}
    assert allowed == {("gateway", TRITON_GRPC_PORT), ("monitoring", TRITON_METRICS_PORT)}
    assert all(
        policy["spec"].get("egress", []) == [] for policy in policies if "Egress" in policy["spec"]["policyTypes"]
    )


def test_turn_relays_to_gateway_pods_only() -> None:
    policy = find("NetworkPolicy", "turn")
    assert labels_match(policy["spec"]["podSelector"], pod_labels("turn"))
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            assert labels_match(peer["podSelector"], pod_labels("gateway")) and "ipBlock" not in peer


def test_hpa_scales_triton_on_the_queue_compute_ratio() -> None:
    hpa = find("HorizontalPodAutoscaler", "triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == RATIO_METRIC
    assert "replicas" not in find("Deployment", "triton")["spec"], "the HPA owns Triton's replica count"

    adapter = yaml.safe_load(find("ConfigMap", "prometheus-adapter")["data"]["config.yaml"])
    [rule] = [rule for rule in adapter["rules"] if rule["name"]["as"] == RATIO_METRIC]
    numerator, denominator = rule["metricsQuery"].split(" / ")
    assert "rate(nv_inference_queue_duration_us{" in numerator
    assert "rate(nv_inference_compute_infer_duration_us{" in denominator
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_triton_serves_the_exported_repository_with_health_probes_on_a_gpu() -> None:
    deployment = find("Deployment", "triton")
    [triton] = pod_spec(deployment)["containers"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:") and triton["image"].endswith("-py3")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    script = triton["command"][-1]
    for flag in ("--model-control-mode=none", "--strict-readiness=true", "--grpc-restricted-protocol="):
        assert flag in script
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in triton["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    claim = volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"]

    job = find("Job", "export")
    [export] = pod_spec(job)["containers"]
    job_claims = {
        volume["persistentVolumeClaim"]["claimName"]
        for volume in pod_spec(job)["volumes"]
        if "persistentVolumeClaim" in volume
    }
    assert claim in job_claims and find("PersistentVolumeClaim", claim)
    assert export["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The plan only loads in the TensorRT of the NGC release that built it: one release for both images.
    assert export["image"].split(":")[1] == triton["image"].split(":")[1].removesuffix("-py3")


def test_gateway_reaches_triton_by_service_name_and_reads_its_token_from_a_secret_file() -> None:
    deployment = find("Deployment", "gateway")
    [gateway] = pod_spec(deployment)["containers"]
    args = dict(arg.split("=", 1) for arg in gateway["args"] if arg.startswith("--"))
    assert args["--triton-url"] == f"triton.{NAMESPACE}.svc.cluster.local:{TRITON_GRPC_PORT}"
    token_dir, token_name = args["--token-file"].rsplit("/", 1)
    [mount] = [mount for mount in gateway["volumeMounts"] if mount["mountPath"] == token_dir]
    [volume] = [volume for volume in pod_spec(deployment)["volumes"] if volume["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "gateway-token"
    assert [item["path"] for item in volume["secret"]["items"]] == [token_name]
    assert "--insecure-no-auth" not in gateway["args"]


def test_signalling_sticks_each_drone_to_one_gateway() -> None:
    service = find("Service", "gateway")
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    # Without it, the load balancer's SNAT would make every drone look like a node to the affinity.
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert labels_match({"matchLabels": service["spec"]["selector"]}, pod_labels("gateway"))
