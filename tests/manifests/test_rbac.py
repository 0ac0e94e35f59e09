"""The chart's and the kustomize base's RBAC are exactly `palisade rbac`
(src/operator_rbac.rs), so code and manifests cannot drift."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import CHART, NAMESPACE, ROOT, VALUES_FILES, kustomize, palisade, rbac_table, render, rendered

OVERLAYS = ["default", "overlays/dev", "overlays/staging", "overlays/prod"]


def rules(entries: list[dict]) -> list[dict]:
    return [{"apiGroups": e["apiGroups"], "resources": e["resources"], "verbs": e["verbs"]} for e in entries]


def objects(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def test_checked_in_rbac_json_is_generated():
    assert (CHART / "files" / "rbac.json").read_text() == palisade("rbac"), "run `make generate`"


def test_checked_in_kustomize_rbac_is_generated():
    assert (ROOT / "config" / "default" / "rbac.yaml").read_text() == palisade("rbac", "--yaml"), "run `make generate`"


def gc_rules(kinds) -> list[dict]:
    return [{"apiGroups": [k["apiGroup"]], "resources": [k["resource"]], "verbs": ["get", "list", "watch", "delete"]} for k in kinds]


def chart_cluster_rules(table, tenant_role: str) -> list[dict]:
    out = []
    for e in table["clusterRole"]:
        r = {"apiGroups": e["apiGroups"], "resources": e["resources"], "verbs": e["verbs"]}
        if e.get("resourceNames"):
            r["resourceNames"] = [tenant_role]
        out.append(r)
    return out


def with_names(entries: list[dict]) -> list[dict]:
    return [
        {"apiGroups": e["apiGroups"], "resources": e["resources"], "verbs": e["verbs"], **({"resourceNames": e["resourceNames"]} if e.get("resourceNames") else {})}
        for e in entries
    ]


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_chart_cluster_roles_are_the_rust_table(values_file):
    table = rbac_table()
    objs = rendered(values_file)
    crs = {o["metadata"]["name"]: o for o in objects(objs, "ClusterRole")}
    assert len(crs) == 2, list(crs)
    (main,) = [o for n, o in crs.items() if not n.endswith("-tenant-namespace")]
    (tenant,) = [o for n, o in crs.items() if n.endswith("-tenant-namespace")]
    assert main["rules"] == chart_cluster_rules(table, tenant["metadata"]["name"])
    assert tenant["rules"] == rules(table["tenantNamespaceRole"]) + gc_rules(table["garbageCollectionDefaultKinds"])
    (role,) = objects(objs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == rules(table["releaseNamespaceRole"])
    (crb,) = objects(objs, "ClusterRoleBinding")
    (sa,) = objects(objs, "ServiceAccount")
    assert crb["roleRef"]["name"] == main["metadata"]["name"]
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    (rb,) = objects(objs, "RoleBinding")
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    dep = objects(objs, "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["PALISADE_SERVICE_ACCOUNT"] == f"{NAMESPACE}/{sa['metadata']['name']}"
    assert env["PALISADE_TENANT_NAMESPACE_ROLE"] == tenant["metadata"]["name"]
    assert env["PALISADE_GC_KINDS"] == ",".join(f"{k['apiGroup']}/{k['resource']}" for k in table["garbageCollectionDefaultKinds"])
    # The admission policy confines exactly this ServiceAccount.
    (vap,) = objects(objs, "ValidatingAdmissionPolicy")
    (vapb,) = objects(objs, "ValidatingAdmissionPolicyBinding")
    assert vapb["spec"]["policyName"] == vap["metadata"]["name"]
    assert vapb["spec"]["validationActions"] == ["Deny"]
    user = f"system:serviceaccount:{NAMESPACE}:{sa['metadata']['name']}"
    assert vap["spec"]["matchConditions"][0]["expression"] == f"request.userInfo.username == '{user}'"
    assert [v["expression"] for v in vap["spec"]["validations"]] == [v["expression"] for v in table["admissionPolicy"]["validations"]]


def test_values_default_gc_kinds_are_the_rust_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["rbac"]["garbageCollectionKinds"] == rbac_table()["garbageCollectionDefaultKinds"]


def test_gc_switch_and_allow_list():
    table = rbac_table()
    out = render({"rbac": {"garbageCollection": False}})
    docs = [d for d in yaml.safe_load_all(out["palisade/templates/rbac.yaml"]) if d]
    (tenant,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-tenant-namespace")]
    assert tenant["rules"] == rules(table["tenantNamespaceRole"])
    dep = [d for d in yaml.safe_load_all(out["palisade/templates/deployment.yaml"]) if d][0]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PALISADE_GC_KINDS"] == ""
    kinds = [{"apiGroup": "ci.example.com", "resource": "runs"}]
    out = render({"rbac": {"garbageCollectionKinds": kinds}})
    docs = [d for d in yaml.safe_load_all(out["palisade/templates/rbac.yaml"]) if d]
    (tenant,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-tenant-namespace")]
    assert tenant["rules"][-1] == gc_rules(kinds)[0]


def test_admission_policy_switch():
    out = render({"rbac": {"admissionPolicy": False}})
    kinds = [d["kind"] for d in yaml.safe_load_all(out["palisade/templates/rbac.yaml"]) if d]
    assert "ValidatingAdmissionPolicy" not in kinds and "ClusterRole" in kinds


def test_nothing_sensitive_is_cluster_wide():
    """The rows of the review that found the operator cluster-admin in all but name."""
    cluster = rbac_table()["clusterRole"]

    def held(group, resource, verb):
        return any(
            group in e["apiGroups"] and resource in e["resources"] and verb in e["verbs"] and not e.get("resourceNames")
            for e in cluster
        )

    for g, r, v in [("", "secrets", "get"), ("", "secrets", "list"), ("", "pods", "create"), ("", "pods/exec", "create"),
                    ("apps", "deployments", "delete"), ("apps", "deployments", "patch"), ("", "configmaps", "delete"),
                    ("", "nodes/proxy", "get"), ("", "namespaces", "delete")]:
        assert not held(g, r, v), (g, r, v)


def test_every_chart_rule_has_a_why_comment():
    text = render()["palisade/templates/rbac.yaml"]
    for block in text.split("\n---\n"):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^  - apiGroups:", line) and "kind: ValidatingAdmissionPolicy" not in block:
                assert lines[i - 1].startswith("  # ") and len(lines[i - 1]) > 6, f"rule without a why: {line}"


def test_no_escalation_verbs():
    table = rbac_table()
    for key in ("clusterRole", "tenantNamespaceRole", "releaseNamespaceRole"):
        for e in table[key]:
            assert not {"escalate", "impersonate", "*"} & set(e["verbs"]), e
            assert "*" not in e["resources"] and "*" not in e["apiGroups"], e
            if "bind" in e["verbs"]:
                assert e["resources"] == ["clusterroles"] and e["resourceNames"] == ["palisade-tenant-namespace"], e


@pytest.mark.parametrize("directory", OVERLAYS)
def test_kustomize_rbac_is_the_rust_table(directory):
    table = rbac_table()
    objs = kustomize(f"config/{directory}")
    crs = {o["metadata"]["name"]: o for o in objects(objs, "ClusterRole")}
    assert crs["palisade"]["rules"] == with_names(table["clusterRole"])
    assert crs["palisade-tenant-namespace"]["rules"] == rules(table["tenantNamespaceRole"]) + gc_rules(table["garbageCollectionDefaultKinds"])
    (role,) = objects(objs, "Role")
    assert role["rules"] == rules(table["releaseNamespaceRole"])
    assert role["metadata"]["namespace"] == NAMESPACE
    for binding in objects(objs, "ClusterRoleBinding") + objects(objs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "palisade", "namespace": NAMESPACE}]
    assert len(objects(objs, "ValidatingAdmissionPolicy")) == 1
