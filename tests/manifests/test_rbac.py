"""The chart's and the kustomize base's RBAC are exactly `palisade rbac`
(src/operator_rbac.rs), so code and manifests cannot drift."""

from __future__ import annotations

import re

import pytest

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


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_chart_cluster_role_is_the_rust_table(values_file):
    table = rbac_table()
    objs = rendered(values_file)
    (cr,) = objects(objs, "ClusterRole")
    assert cr["rules"] == rules(table["clusterRole"] + table["garbageCollection"])
    (role,) = objects(objs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == rules(table["releaseNamespaceRole"])
    (crb,) = objects(objs, "ClusterRoleBinding")
    (sa,) = objects(objs, "ServiceAccount")
    assert crb["roleRef"]["name"] == cr["metadata"]["name"]
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    (rb,) = objects(objs, "RoleBinding")
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    dep = objects(objs, "Deployment")[0]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_gc_switch_drops_the_one_broad_rule():
    table = rbac_table()
    assert len(table["garbageCollection"]) == 1
    assert table["garbageCollection"][0]["resources"] == ["*"]
    out = render({"rbac": {"garbageCollection": False}})
    import yaml

    (cr,) = [d for d in yaml.safe_load_all(out["palisade/templates/rbac.yaml"]) if d and d["kind"] == "ClusterRole"]
    assert cr["rules"] == rules(table["clusterRole"])
    assert all("*" not in r["resources"] for r in cr["rules"])


def test_every_chart_rule_has_a_why_comment():
    text = render()["palisade/templates/rbac.yaml"]
    for block in text.split("\n---\n"):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^  - apiGroups:", line):
                assert lines[i - 1].startswith("  # ") and len(lines[i - 1]) > 6, f"rule without a why: {line}"


def test_no_escalation_verbs():
    for entries in rbac_table().values():
        for e in entries:
            assert not {"escalate", "bind", "impersonate", "*"} & set(e["verbs"]), e


@pytest.mark.parametrize("directory", OVERLAYS)
def test_kustomize_rbac_is_the_rust_table(directory):
    table = rbac_table()
    objs = kustomize(f"config/{directory}")
    (cr,) = objects(objs, "ClusterRole")
    assert cr["rules"] == rules(table["clusterRole"] + table["garbageCollection"])
    (role,) = objects(objs, "Role")
    assert role["rules"] == rules(table["releaseNamespaceRole"])
    assert role["metadata"]["namespace"] == NAMESPACE
    for binding in objects(objs, "ClusterRoleBinding") + objects(objs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "palisade", "namespace": NAMESPACE}]
