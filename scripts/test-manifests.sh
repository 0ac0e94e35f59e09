#!/usr/bin/env bash
# Chart and manifest tests: render charts/palisade with the real Helm engine
# (helm-python-sdk) for every values file, lint it, validate every object and
# every kustomize overlay with kubernetes-validate (strict), check security
# settings, the values schema and RBAC drift against `palisade rbac`.
#
# Tools: python with requirements-ci.txt (.ci/run puts .venv on PATH) and
# kubectl (for `kubectl kustomize`). In CI (CI=true) a missing tool is an
# error; elsewhere the script creates .venv itself.
set -euo pipefail
cd "$(dirname "$0")/.."

fatal() { echo "FATAL: $*" >&2; exit 1; }
have_tools() { "$1" -c 'import helm_python, kubernetes_validate, lupa, pytest, yaml' >/dev/null 2>&1; }

PY=""
for candidate in python3 python .venv/bin/python; do
  if command -v "$candidate" >/dev/null 2>&1 && have_tools "$candidate"; then PY="$candidate"; break; fi
done
if [ -z "$PY" ]; then
  if [ "${CI:-}" = "true" ]; then
    fatal "python packages of requirements-ci.txt are missing (helm-python-sdk, kubernetes-validate, lupa, pytest); .ci/run installs them into .venv"
  fi
  echo "creating .venv from requirements-ci.txt" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q -r requirements-ci.txt
  PY=.venv/bin/python
fi

if ! command -v kubectl >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    fatal "kubectl is missing: the kustomize overlays cannot be built (apt-get install kubectl, or put a kubectl >= 1.27 on PATH)"
  fi
  echo "WARNING: kubectl not found; the kustomize tests will be skipped" >&2
fi

# The binary the RBAC drift tests ask (`palisade rbac`). `make test` built it
# in its cargo step; build it here when run on its own.
if [ -z "${PALISADE_BIN:-}" ]; then
  if command -v cargo >/dev/null 2>&1; then
    cargo build --quiet --bin palisade
  fi
  PALISADE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/palisade"
fi
[ -x "$PALISADE_BIN" ] || fatal "no palisade binary at $PALISADE_BIN (cargo build --bin palisade)"
export PALISADE_BIN

# pytest exits 5 when it collected nothing: that is a failure here too.
exec "$PY" -m pytest tests/manifests -q -p no:cacheprovider "$@"
