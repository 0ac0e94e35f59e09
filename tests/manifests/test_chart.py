"""charts/palisade rendered by the real Helm engine for every values file."""

from __future__ import annotations

import json

import helm_python as helm
import pytest
import yaml

from conftest import (
    CHART, NAMESPACE, ROOT, VALUES_FILES, chart_crds, docs, render, rendered, validate, values_of,
)

ALERTS = {
    "PalisadeBackupFailed",
    "PalisadeBackupTooOld",
    "PalisadeRestoreTestFailed",
    "PalisadeRestoreTestTooOld",
    "PalisadeSecretRotationOverdue",
    "PalisadeReconcileErrors",
}
METRICS = {
    "palisade_backup_last_success_timestamp_seconds",
    "palisade_backup_last_failure_timestamp_seconds",
    "palisade_restore_test_last_success_timestamp_seconds",
    "palisade_restore_test_last_result",
    "palisade_secret_next_rotation_timestamp_seconds",
    "palisade_reconcile_errors_total",
    "palisade_reconciles_total",
}


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str) -> dict:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_lint_is_clean(values_file):
    report = helm.lint(str(CHART), values_of(values_file), strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_every_rendered_object_validates_strictly(values_file):
    objs = rendered(values_file)
    assert objs, "nothing rendered"
    how = {f'{o["kind"]}/{o["metadata"]["name"]}': validate(o) for o in objs}
    skipped = {k for k, v in how.items() if v == "skipped"}
    assert all(k.split("/")[0] in ("ServiceMonitor", "PrometheusRule") for k in skipped), skipped
    for o in objs:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            assert o["metadata"].get("namespace") == NAMESPACE, o["metadata"]


def test_chart_crds_validate_and_match_crds_dir():
    assert chart_crds(), "charts/palisade/crds is empty"
    for crd in chart_crds():
        assert validate(crd) == "builtin"
    src = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == src
    for name in src:
        assert (CHART / "crds" / name).read_text() == (ROOT / "crds" / name).read_text(), (
            f"charts/palisade/crds/{name} differs from crds/: run `make generate`"
        )


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_deployment_security_and_probes(values_file):
    dep = one(rendered(values_file), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http-admin": 8080}
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http-admin"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-admin"}
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        assert c["args"][0] == "controller"


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_metrics_service_targets_admin_port(values_file):
    objs = rendered(values_file)
    svc = one(objs, "Service")
    assert svc["spec"]["ports"] == [{"name": "http-admin", "port": 8080, "targetPort": "http-admin", "protocol": "TCP"}]
    dep = one(objs, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


@pytest.mark.parametrize("values_file", ["values.yaml", "values-staging.yaml", "values-prod.yaml"])
def test_ha_environments(values_file):
    objs = rendered(values_file)
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] >= 2
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PALISADE_LEADER_ELECTION"] == "true"
    pod = dep["spec"]["template"]["spec"]
    assert pod.get("affinity", {}).get("podAntiAffinity") or pod.get("topologySpreadConstraints")
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    lease_role = [r for r in by_kind(objs, "Role") if r["metadata"]["namespace"] == NAMESPACE]
    assert any("leases" in rule["resources"] for r in lease_role for rule in r["rules"])


def test_prod_turns_on_monitoring():
    objs = rendered("values-prod.yaml")
    one(objs, "ServiceMonitor")
    rule = one(objs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == ALERTS
    exprs = " ".join(r["expr"] for r in alerts.values())
    for metric in METRICS:
        assert metric in exprs, metric
    for a in alerts.values():
        assert "{{ $labels." in a["annotations"]["summary"], "Prometheus templates must survive Helm"
    readme = (CHART / "README.md").read_text()
    for name in ALERTS | METRICS:
        assert name in readme, f"{name} is not documented in charts/palisade/README.md"


def test_dev_is_single_replica_with_debug_logs():
    objs = rendered("values-dev.yaml")
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PALISADE_LOG"].startswith("debug")
    assert not by_kind(objs, "PodDisruptionBudget")
    assert not by_kind(objs, "ServiceMonitor") and not by_kind(objs, "PrometheusRule")


def test_operator_network_policy():
    pol = one(rendered("values.yaml"), "NetworkPolicy")
    assert set(pol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = {(p["port"], p["protocol"]) for e in pol["spec"]["egress"] for p in e.get("ports", [])}
    assert {(443, "TCP"), (53, "UDP"), (53, "TCP")} <= ports
    (ingress,) = pol["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http-admin", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    # Helm merges maps with the defaults: null removes the default key.
    custom = rendered_with(
        {"networkPolicy": {"metrics": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": None, "team": "obs"}}}}}
    )
    pol = one(custom, "NetworkPolicy")
    assert pol["spec"]["ingress"][0]["from"][0]["namespaceSelector"] == {"matchLabels": {"team": "obs"}}


def rendered_with(values: dict) -> list[dict]:
    out = render(values)
    return [d for k, v in sorted(out.items()) if not k.endswith("NOTES.txt") for d in docs(v)]


@pytest.mark.parametrize(
    "typo",
    [
        {"replicaCont": 2},
        {"controller": {"logFromat": "text"}},
        {"networkPolicy": {"dns": {"namespaceSelector": {"matchLabel": {"a": "b"}}}}},
        {"prometheusRule": {"severity": {"backups": "critical"}}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"controller": {"logFormat": "xml"}},
        {"replicaCount": "two"},
    ],
)
def test_values_typo_fails(typo):
    with pytest.raises(helm.HelmValuesError):
        render(typo)


def test_more_than_one_replica_needs_leader_election():
    with pytest.raises(helm.HelmError, match="leaderElection"):
        render({"replicaCount": 2, "leaderElection": {"enabled": False}})
    render({"replicaCount": 1, "leaderElection": {"enabled": False}})


def test_schema_closes_every_object():
    """additionalProperties: false wherever the schema names properties; maps
    are typed; Kubernetes passthrough objects say so."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object":
                if "properties" in node:
                    assert node.get("additionalProperties") is False, f"{path} is open"
                else:
                    assert isinstance(node.get("additionalProperties"), dict) or "passthrough" in node.get(
                        "$comment", ""
                    ), f"{path}: untyped map"
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(schema, "")


def test_values_yaml_is_fully_described_by_the_schema():
    """Every key of values.yaml is in the schema (the chart's own defaults pass)."""
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(values, node, path):
        if isinstance(values, dict) and "properties" in node:
            for k, v in values.items():
                assert k in node["properties"], f"{path}.{k} missing from values.schema.json"
                walk(v, node["properties"][k], f"{path}.{k}")

    walk(chart_values, schema, "")


@pytest.mark.parametrize(
    "values",
    [
        {"rbac": {"create": False}},
        {"serviceAccount": {"create": False, "name": "existing-sa"}},
        {"networkPolicy": {"enabled": False}},
        {"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]}}},
        {"podAntiAffinity": "hard", "topologySpreadConstraints": []},
        {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}}},
        {"image": {"digest": "sha256:" + "a" * 64}},
        {"podDisruptionBudget": {"maxUnavailable": 1}},
        {"controller": {"extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}], "extraArgs": ["--concurrency=4"]}},
        {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}, "fullnameOverride": "pal"},
        {"imagePullSecrets": [{"name": "regcred"}], "tolerations": [{"key": "x", "operator": "Exists"}]},
    ],
    ids=lambda v: ",".join(v),
)
def test_toggles_render_valid_objects(values):
    objs = rendered_with(values)
    for o in objs:
        validate(o)
    dep = one(objs, "Deployment")
    if values.get("serviceAccount", {}).get("create") is False:
        assert not by_kind(objs, "ServiceAccount")
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "existing-sa"
    if values.get("rbac", {}).get("create") is False:
        assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "Role")
    if "digest" in values.get("image", {}):
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@sha256:" + "a" * 64)


def test_job_image_defaults_to_the_operator_image():
    def env(objs):
        container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        return container["image"], {e["name"]: e.get("value") for e in container["env"]}

    image, variables = env(rendered_with({"image": {"repository": "registry.example/palisade", "tag": "1.2.3"}}))
    assert image == "registry.example/palisade:1.2.3"
    assert variables["PALISADE_JOB_IMAGE"] == image
    image, variables = env(rendered_with({"image": {"digest": "sha256:" + "a" * 64}}))
    assert variables["PALISADE_JOB_IMAGE"] == image and "@sha256:" in image
    _, variables = env(rendered_with({"controller": {"jobImage": "registry.example/jobs:9"}}))
    assert variables["PALISADE_JOB_IMAGE"] == "registry.example/jobs:9"
