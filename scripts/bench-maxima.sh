#!/usr/bin/env bash
# One Tenant at the documented maxima (256 namespaces x 64 Random secrets) on
# the local control plane (or the cluster of KUBECONFIG), with the controller's
# shipped defaults (--kube-qps 200 --kube-burst 400 since #27). Prints a Markdown table:
# time to Ready, the passes it took, the status size, time until the Tenant is
# gone (deletionPolicy Delete) and until its namespaces are.
#
#   scripts/bench-maxima.sh [palisade-binary]     (default target/release/palisade)
#   NAMESPACES=16 SECRETS=8 scripts/bench-maxima.sh target/debug/palisade
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/palisade}
NS=${NAMESPACES:-256}
SECRETS=${SECRETS:-64}
name=${TENANT:-maxima}
[ -x "$BIN" ] || { echo "no controller binary at $BIN (cargo build --release)" >&2; exit 2; }
if [ -z "${KUBECONFIG:-}" ]; then
  scripts/test-cluster.sh start >/dev/null
  eval "$(scripts/test-cluster.sh env)"
fi
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  kubectl delete tenant "$name" --wait=false >/dev/null 2>&1 || true
  kubectl patch tenant "$name" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
  kubectl delete namespace -l "palisade.dev/tenant=$name" --wait=false >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

{
  echo "apiVersion: palisade.dev/v1alpha1"
  echo "kind: Tenant"
  echo "metadata: {name: $name}"
  echo "spec:"
  echo "  deletionPolicy: Delete"
  echo "  namespaces:"
  for i in $(seq 0 $((NS - 1))); do echo "    - name: $name-$i"; done
  echo "  secrets:"
  for i in $(seq 0 $((SECRETS - 1))); do echo "    - {name: s$i, type: Random, length: 32, rotateEvery: 720h}"; done
} >"$tmp/tenant.yaml"

PALISADE_LOG=info "$BIN" controller --leader-election=false --log-format text \
  --admin-addr 127.0.0.1:0 >"$tmp/controller.log" 2>&1 &
pid=$!
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }

t0=$(now)
kubectl apply -f "$tmp/tenant.yaml" >/dev/null
# Progress is in status while it converges: count the passes that said so.
passes=0
until kubectl get tenant "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; do
  reason=$(kubectl get tenant "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}' 2>/dev/null || true)
  [ "$reason" = SecretsInProgress ] && passes=$((passes + 1))
  sleep 1
  if ! kill -0 "$pid" 2>/dev/null; then cat "$tmp/controller.log" >&2; exit 1; fi
done
t_ready=$(now)
status_bytes=$(kubectl get tenant "$name" -o json | python3 -c 'import json,sys; print(len(json.dumps(json.load(sys.stdin)["status"], separators=(",", ":"))))')
secrets=$(kubectl get secrets -A -l "palisade.dev/tenant=$name" --no-headers 2>/dev/null | wc -l)

t1=$(now)
kubectl delete tenant "$name" --timeout=3600s >/dev/null
t_gone=$(now)
while [ "$(kubectl get namespaces -l "palisade.dev/tenant=$name" --no-headers 2>/dev/null | wc -l)" -gt 0 ]; do sleep 2; done
t_ns=$(now)

echo "| tenant | Secrets written | time to Ready | seconds with SecretsInProgress seen | status size | Tenant deleted | namespaces gone |"
echo "|---|---:|---:|---:|---:|---:|---:|"
echo "| ${NS} namespaces x ${SECRETS} secrets | $secrets | $(secs "$t0" "$t_ready") s | $passes | ${status_bytes} B | $(secs "$t1" "$t_gone") s | $(secs "$t1" "$t_ns") s |"
