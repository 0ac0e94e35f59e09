"""Shared helpers of the chart and manifest tests (run by scripts/test-manifests.sh)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "palisade"
VALUES_FILES = ["values.yaml", "values-dev.yaml", "values-staging.yaml", "values-prod.yaml"]
OVERLAYS = ["dev", "staging", "prod"]
RELEASE = "palisade"
NAMESPACE = "palisade-system"
# The Kubernetes version Palisade is built against (k8s-openapi feature v1_33).
KUBE_VERSION = "1.33"

# Kinds kubernetes-validate has no schema for. Palisade's own kinds are checked
# against their CRD's openAPIV3Schema instead (see validate()); the rest are
# only parsed and checked for apiVersion/kind/metadata.name.
NO_BUILTIN_SCHEMA = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("argoproj.io/v1alpha1", "Application"),
    ("source.toolkit.fluxcd.io/v1", "GitRepository"),
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
    ("palisade.dev/v1alpha1", "Tenant"),
    ("palisade.dev/v1alpha1", "RolePolicy"),
    ("palisade.dev/v1alpha1", "BackupSchedule"),
}


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@lru_cache(maxsize=None)
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def values_of(values_file: str) -> dict | None:
    if values_file == "values.yaml":
        return None
    return yaml.safe_load((CHART / values_file).read_text())


def render(values: dict | None = None) -> dict[str, str]:
    """Template path -> rendered text, like `helm template` (schema enforced)."""
    return chart().render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@lru_cache(maxsize=None)
def _rendered_file(values_file: str) -> str:
    out = render(values_of(values_file))
    return "\n---\n".join(v for k, v in sorted(out.items()) if not k.endswith("NOTES.txt"))


def rendered(values_file: str) -> list[dict]:
    return copy.deepcopy(docs(_rendered_file(values_file)))


def chart_crds() -> list[dict]:
    return [d for p in sorted((CHART / "crds").glob("*.yaml")) for d in docs(p.read_text())]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is required in CI for the kustomize tests")
        pytest.skip("kubectl not installed")
    return path


@lru_cache(maxsize=None)
def _kustomized(directory: str) -> str:
    return subprocess.run(
        [kubectl(), "kustomize", str(ROOT / directory)],
        check=True, capture_output=True, text=True,
    ).stdout


def kustomize(directory: str) -> list[dict]:
    return copy.deepcopy(docs(_kustomized(directory)))


@lru_cache(maxsize=None)
def palisade(*args: str) -> str:
    binary = os.environ.get("PALISADE_BIN") or str(ROOT / "target" / "debug" / "palisade")
    if not Path(binary).exists():
        pytest.fail(f"palisade binary not found at {binary}: cargo build --bin palisade (or set PALISADE_BIN)")
    return subprocess.run([binary, *args], check=True, capture_output=True, text=True).stdout


def rbac_table() -> dict:
    return json.loads(palisade("rbac"))


@lru_cache(maxsize=None)
def crd_schemas() -> dict[tuple[str, str], dict]:
    out = {}
    for p in sorted((ROOT / "crds").glob("*.yaml")):
        for crd in docs(p.read_text()):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def _strip_k8s_extensions(schema):
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema: drop x-kubernetes-*,
    map `nullable`, and let int-or-string be either."""
    if isinstance(schema, list):
        return [_strip_k8s_extensions(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k.startswith("x-kubernetes-") or k == "nullable":
            continue
        if k in ("properties", "patternProperties", "definitions"):
            out[k] = {name: _strip_k8s_extensions(s) for name, s in v.items()}
        else:
            out[k] = _strip_k8s_extensions(v)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else out["type"] + ["null"]
    # Strict field validation (kubectl --validate=strict): unknown fields fail
    # unless the schema preserves them.
    if "properties" in out and "additionalProperties" not in out and not schema.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def validate(doc: dict) -> str:
    """Validates one object strictly; returns how ("builtin", "crd" or "skipped")."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key[0] and key[1], f"object without apiVersion/kind: {doc}"
    assert doc.get("metadata", {}).get("name"), f"{key} without metadata.name"
    if key in crd_schemas():
        import jsonschema

        schema = _strip_k8s_extensions(crd_schemas()[key])
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        props = {k: v for k, v in schema.get("properties", {}).items() if k not in ("apiVersion", "kind", "metadata")}
        jsonschema.validate(body, {**schema, "properties": props})
        return "crd"
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        return "builtin"
    except kubernetes_validate.SchemaNotFoundError:
        if key in NO_BUILTIN_SCHEMA:
            return "skipped"
        raise
