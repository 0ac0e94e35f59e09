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
    (vap,) = [o for o in objects(objs, "ValidatingAdmissionPolicy") if o["metadata"]["name"].endswith("-confinement")]
    (vapb,) = [o for o in objects(objs, "ValidatingAdmissionPolicyBinding") if o["metadata"]["name"].endswith("-confinement")]
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


def admission_names(values: dict) -> list[str]:
    out = render(values)
    return [
        d["metadata"]["name"]
        for d in yaml.safe_load_all(out["palisade/templates/rbac.yaml"])
        if d and d["kind"] == "ValidatingAdmissionPolicy"
    ]


def test_admission_policy_switch():
    names = admission_names({"rbac": {"admissionPolicy": False}})
    assert "palisade-confinement" not in names
    assert len(names) == len(rbac_table()["tenantPolicies"])


def test_tenant_policies_switch():
    assert admission_names({"rbac": {"tenantPolicies": False}}) == ["palisade-confinement"]


def tenant_policy_objects(objs) -> dict[str, dict]:
    """The tenant-namespace policies and bindings by name, without the chart's labels."""
    suffixes = [p["nameSuffix"] for p in rbac_table()["tenantPolicies"]]
    out = {}
    for o in objs:
        if o["kind"] in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding") and any(
            o["metadata"]["name"] == f"palisade-{s}" for s in suffixes
        ):
            out[f'{o["kind"]}/{o["metadata"]["name"]}'] = {"kind": o["kind"], "name": o["metadata"]["name"], "spec": o["spec"]}
    return out


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_chart_tenant_policies_are_the_kustomize_ones(values_file):
    """Rendered by the chart (release `palisade` in palisade-system) and by
    `palisade rbac --yaml`, every tenant-namespace policy and binding is the
    same object: the two install paths cannot differ."""
    table = rbac_table()["tenantPolicies"]
    assert table, "no tenant policies in `palisade rbac`"
    chart = tenant_policy_objects(rendered(values_file))
    base = tenant_policy_objects(kustomize("config/default"))
    assert len(base) == 2 * len(table), sorted(base)
    assert chart == base
    user = f"system:serviceaccount:{NAMESPACE}:palisade"
    for row in table:
        spec = chart[f"ValidatingAdmissionPolicy/palisade-{row['nameSuffix']}"]["spec"]
        assert spec["failurePolicy"] == "Fail"
        # Rows over tenant namespaces match only them; the one over new
        # (cluster-scoped) namespaces matches every such request.
        cluster = all(r["scope"] == "Cluster" for r in spec["matchConstraints"]["resourceRules"])
        assert cluster == (row["nameSuffix"] == "namespace-create")
        assert spec["matchConstraints"].get("namespaceSelector") == (
            None if cluster else {"matchLabels": {"app.kubernetes.io/managed-by": "palisade"}})
        assert spec["matchConstraints"] == row["spec"]["matchConstraints"]
        assert spec["variables"] == [{"name": "operator", "expression": f"'{user}'"}]
        assert spec["validations"] == row["spec"]["validations"]
        binding = chart[f"ValidatingAdmissionPolicyBinding/palisade-{row['nameSuffix']}"]["spec"]
        assert binding == {"policyName": f"palisade-{row['nameSuffix']}", "validationActions": ["Deny"]}


def test_backup_label_policies_cover_every_pod_template_kind():
    """Pods and every built-in kind with a pod template, CREATE and UPDATE,
    in tenant namespaces; every refusal says what and why."""
    covered = set()
    for row in rbac_table()["tenantPolicies"]:
        if not row["nameSuffix"].startswith("backup-labels-"):
            continue
        for r in row["spec"]["matchConstraints"]["resourceRules"]:
            assert r["operations"] == (["UPDATE"] if r["resources"] == ["pods/ephemeralcontainers"] else ["CREATE", "UPDATE"]), r
            covered |= {(g, res) for g in r["apiGroups"] for res in r["resources"]}
        for v in row["spec"]["validations"]:
            assert v["message"].startswith(
                "only Palisade's backup Jobs may label pods palisade.dev/backup-schedule: the label opens the backup egress policy"
            ), v
    assert covered == {("", "pods"), ("", "pods/ephemeralcontainers"), ("", "podtemplates"), ("", "replicationcontrollers"),
                       ("apps", "deployments"), ("apps", "replicasets"), ("apps", "statefulsets"), ("apps", "daemonsets"),
                       ("batch", "jobs"), ("batch", "cronjobs")}


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
                # Cluster-wide: exactly the one ClusterRole. In tenant namespaces
                # (bound per namespace): their Roles, all Palisade's, which
                # self-service owners get `bind` on by name (#25).
                if key == "tenantNamespaceRole" and e["resources"] == ["roles"]:
                    assert e["verbs"] == ["bind"], e
                    continue
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
    assert len(objects(objs, "ValidatingAdmissionPolicy")) == 1 + len(table["tenantPolicies"])
    assert len(objects(objs, "ValidatingAdmissionPolicyBinding")) == 1 + len(table["tenantPolicies"])
