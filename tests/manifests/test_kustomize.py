"""config/: the kustomize base and overlays build offline and validate strictly;
the GitOps examples point at paths that exist."""

from __future__ import annotations

import pytest
import yaml

from conftest import NAMESPACE, OVERLAYS, ROOT, docs, kustomize, validate

DIRS = ["config/default"] + [f"config/overlays/{o}" for o in OVERLAYS]


@pytest.mark.parametrize("directory", DIRS)
def test_builds_and_validates_strictly(directory):
    objs = kustomize(directory)
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
            "ServiceAccount", "Deployment", "Service", "NetworkPolicy"} <= kinds
    for o in objs:
        assert validate(o) == "builtin", f'{o["kind"]} has no schema'
        if o["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                             "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]


@pytest.mark.parametrize("directory", DIRS)
def test_manager_security(directory):
    (dep,) = [o for o in kustomize(directory) if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http-admin": 8080}
        env = {e["name"] for e in c["env"]}
        assert {"POD_NAME", "POD_NAMESPACE"} <= env


def test_overlays_differ_where_they_should():
    def dep(o):
        return next(x for x in kustomize(f"config/overlays/{o}") if x["kind"] == "Deployment")

    def env(d):
        return {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert dep("dev")["spec"]["replicas"] == 1
    assert env(dep("dev"))["PALISADE_LOG_FORMAT"] == "text"
    assert not [x for x in kustomize("config/overlays/dev") if x["kind"] == "PodDisruptionBudget"]
    for o in ("staging", "prod"):
        assert dep(o)["spec"]["replicas"] >= 2
        assert [x for x in kustomize(f"config/overlays/{o}") if x["kind"] == "PodDisruptionBudget"]
    aa = dep("prod")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert list(aa) == ["requiredDuringSchedulingIgnoredDuringExecution"]


def test_base_crds_are_the_generated_ones():
    src = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    base = ROOT / "config" / "default"
    assert sorted(p.name for p in (base / "crds").glob("*.yaml")) == src
    for name in src:
        assert (base / "crds" / name).read_text() == (ROOT / "crds" / name).read_text(), "run `make generate`"
    listed = yaml.safe_load((base / "kustomization.yaml").read_text())["resources"]
    assert sorted(r for r in listed if r.startswith("crds/")) == [f"crds/{n}" for n in src]


def test_samples_validate_against_the_crds():
    samples = sorted((ROOT / "config" / "samples").glob("*.yaml"))
    assert samples
    for p in samples:
        for d in docs(p.read_text()):
            assert validate(d) in ("crd", "builtin"), p


def test_gitops_examples():
    gitops = ROOT / "config" / "gitops"
    app = docs((gitops / "argocd-application.yaml").read_text())
    assert [(d["apiVersion"], d["kind"]) for d in app] == [("argoproj.io/v1alpha1", "Application")]
    assert (ROOT / app[0]["spec"]["source"]["path"] / "kustomization.yaml").exists()
    assert app[0]["spec"]["destination"]["namespace"] == NAMESPACE
    flux = docs((gitops / "flux-kustomization.yaml").read_text())
    kinds = {d["kind"]: d for d in flux}
    assert set(kinds) == {"GitRepository", "Kustomization"}
    assert kinds["Kustomization"]["spec"]["sourceRef"] == {"kind": "GitRepository", "name": kinds["GitRepository"]["metadata"]["name"]}
    assert (ROOT / kinds["Kustomization"]["spec"]["path"] / "kustomization.yaml").exists()
    for d in app + flux:
        assert validate(d) == "skipped"
