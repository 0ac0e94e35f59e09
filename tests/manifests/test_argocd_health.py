"""Argo CD health checks of config/gitops/argocd-health/: every health_test.yaml
case (Argo CD's own layout) run through a real Lua 5.1 interpreter (lupa; Argo
CD embeds gopher-lua, a Lua 5.1), the shipped argocd-cm and Helm snippets equal
to the health.lua files, and the Flux example's expressions cover every kind."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from conftest import ROOT, docs

import lupa.lua51 as lua51

HEALTH = ROOT / "config" / "gitops" / "argocd-health"
KINDS = ["Tenant", "RolePolicy", "BackupSchedule"]


def health(kind: str, obj: dict) -> dict:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    script = (HEALTH / "palisade.dev" / kind / "health.lua").read_text()
    # Argo CD hands the script a global `obj`.
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return {"status": result["status"], "message": result["message"]}


def cases():
    for kind in KINDS:
        spec = yaml.safe_load((HEALTH / "palisade.dev" / kind / "health_test.yaml").read_text())
        for case in spec["tests"]:
            yield pytest.param(kind, case, id=f"{kind}-{case['inputPath']}")


@pytest.mark.parametrize("kind,case", list(cases()))
def test_health_case(kind, case):
    obj = yaml.safe_load((HEALTH / "palisade.dev" / kind / case["inputPath"]).read_text())
    assert obj["kind"] == kind
    assert health(kind, obj) == case["healthStatus"]


def test_every_kind_covers_every_health_state():
    want = {
        "Tenant": {"Healthy", "Progressing", "Degraded", "Suspended"},
        "RolePolicy": {"Healthy", "Progressing", "Degraded"},
        "BackupSchedule": {"Healthy", "Progressing", "Degraded", "Suspended"},
    }
    for kind, states in want.items():
        spec = yaml.safe_load((HEALTH / "palisade.dev" / kind / "health_test.yaml").read_text())
        assert {c["healthStatus"]["status"] for c in spec["tests"]} == states, kind


def test_shipped_snippets_are_generated_from_the_lua_files():
    path = ROOT / "scripts" / "gen-argocd-health.py"
    spec = importlib.util.spec_from_file_location("gen_argocd_health", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for out, render in gen.OUTPUTS.items():
        assert out.read_text() == render(), f"{out.relative_to(ROOT)} is stale: run `make generate`"
    cm = docs((HEALTH / "argocd-cm.yaml").read_text())[0]
    values = yaml.safe_load((HEALTH / "argocd-health-values.yaml").read_text())
    for kind in KINDS:
        key = f"resource.customizations.health.palisade.dev_{kind}"
        lua = (HEALTH / "palisade.dev" / kind / "health.lua").read_text()
        assert cm["data"][key] == lua
        assert values["configs"]["cm"][key] == lua


def test_flux_example_checks_every_kind():
    flux = docs((ROOT / "config" / "gitops" / "flux-tenants.yaml").read_text())
    exprs = {e["kind"]: e for e in flux[0]["spec"]["healthCheckExprs"]}
    assert set(exprs) == set(KINDS)
    for e in exprs.values():
        assert "Stalled" in e["failed"] and "Ready" in e["current"]
    assert "LastBackupSucceeded" in exprs["BackupSchedule"]["failed"]
