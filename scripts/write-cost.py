#!/usr/bin/env python3
"""kube-apiserver CPU per write, by kind of write, on the local control plane.

Makes N writes of each kind the controller makes to Tenants (create, the
finalizer's merge patch, the status merge patch on /status) and, as the
baseline in the same run, N server-side applies of a Role and of a
NetworkPolicy (the floor's kinds), 16 in flight, with no controller running;
prints kube-apiserver's CPU (utime + stime of its pid file) per write of each.
docs/PERFORMANCE.md, "Where the time goes", has a run.

    eval "$(scripts/test-cluster.sh env)"; scripts/write-cost.py [N]

Needs the CRDs installed (`kubectl apply -f crds/`) and no Palisade controller
running (it would reconcile the Tenants). Removes what it made, also on error,
and waits until it is gone. kube-apiserver's background rate, measured for 3 s before
each kind, is taken off its cost.
"""
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
STATE = os.environ.get("PALISADE_TEST_CLUSTER_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "palisade-test-cluster"))
PID = int(open(os.path.join(STATE, "kube-apiserver.pid")).read())
PORT = 18099
BASE = f"http://127.0.0.1:{PORT}"
NS = "write-cost"
TENANTS = "/apis/palisade.dev/v1alpha1/tenants"
NAMES = [f"write-cost-{i:05d}" for i in range(N)]


def cpu_seconds():
    fields = open(f"/proc/{PID}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def call(method, path, body=None, ctype="application/json", ok=(200, 201)):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        if e.code not in ok:
            raise RuntimeError(f"{method} {path}: {e.code} {e.read()[:300]!r}") from e


def measure(label, write):
    # kube-apiserver's own background rate, over 3 s after the previous
    # kind's echoes settled, is taken off what the writes cost.
    time.sleep(2)
    c0, t0 = cpu_seconds(), time.time()
    time.sleep(3)
    idle = (cpu_seconds() - c0) / (time.time() - t0)
    c0, t0 = cpu_seconds(), time.time()
    with cf.ThreadPoolExecutor(16) as ex:
        list(ex.map(write, NAMES))
    wall = time.time() - t0
    cpu = cpu_seconds() - c0 - idle * wall
    print(f"| {label} | {N} | {cpu:.2f} s | {1000 * cpu / N:.2f} ms | {wall:.1f} s | {idle:.3f} |", flush=True)
    return cpu / N


def tenant(name):
    return {
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "namespaces": [{"name": f"{name}-a"}, {"name": f"{name}-b"}],
            "quota": {"hard": {"requests.cpu": "4", "requests.memory": "8Gi", "pods": "40"}},
            "limits": {"default": {"cpu": "500m", "memory": "256Mi"}},
            "owners": [{"kind": "User", "name": f"{name}-owner"}],
            "deletionPolicy": "Delete",
        },
    }


# Shaped like a converged Tenant's status without secrets (src/controller/tenant/status.rs):
# its condition types and its two namespaces.
CONDITIONS = ["NamespacesReady", "NetworkIsolated", "QuotaEnforced", "Ready"]


def status(name):
    return {"status": {
        "observedGeneration": 1, "namespaceCount": 2,
        "namespaces": [{"name": f"{name}-{s}", "phase": "Active"} for s in "ab"],
        "conditions": [{"type": t, "status": "True", "reason": "Reconciled", "message": "all tenant objects are in place",
                        "lastTransitionTime": "2026-12-08T00:00:00Z", "observedGeneration": 1} for t in CONDITIONS]}}
MERGE, APPLY = "application/merge-patch+json", "application/apply-patch+yaml"


def role(name):
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": NS},
            "rules": [{"apiGroups": [""], "resources": ["pods", "services", "configmaps"], "verbs": ["get", "list", "watch"]}]}


def netpol(name):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}


def cleanup():
    def drop(name):
        call("PATCH", f"{TENANTS}/{name}", {"metadata": {"finalizers": None}}, MERGE, ok=(404,))
        call("DELETE", f"{TENANTS}/{name}", ok=(404,))
    with cf.ThreadPoolExecutor(16) as ex:
        list(ex.map(drop, NAMES))
    call("DELETE", f"/api/v1/namespaces/{NS}", ok=(404,))
    # Gone before this returns: a next run must not measure its deletion.
    for _ in range(600):
        try:
            call("GET", f"/api/v1/namespaces/{NS}", ok=())
        except RuntimeError:
            return
        time.sleep(0.2)
    print(f"warning: namespace {NS} still terminating", file=sys.stderr)


def main():
    proxy = subprocess.Popen(["kubectl", "proxy", "--port", str(PORT)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                call("GET", "/version")
                break
            except (OSError, RuntimeError):
                time.sleep(0.1)
        call("POST", "/api/v1/namespaces", {"metadata": {"name": NS}}, ok=(409,))
        print(f"kube-apiserver pid {PID}, {N} writes of each kind, 16 in flight\n")
        print("| write | count | kube-apiserver CPU (background taken off) | per write | wall | background (cores) |")
        print("|---|---|---|---|---|---|")
        base = measure("Role, server-side apply (create)", lambda n: call(
            "PATCH", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{n}?fieldManager=write-cost&force=true", role(n), APPLY))
        measure("NetworkPolicy, server-side apply (create)", lambda n: call(
            "PATCH", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{n}?fieldManager=write-cost&force=true", netpol(n), APPLY))
        costs = {
            "create": measure("Tenant create", lambda n: call("POST", TENANTS, tenant(n))),
            "finalizer": measure("Tenant finalizer (merge patch)", lambda n: call(
                "PATCH", f"{TENANTS}/{n}", {"metadata": {"finalizers": ["palisade.dev/tenant-cleanup"]}}, MERGE)),
            "status": measure("Tenant status (merge patch on /status)", lambda n: call(
                "PATCH", f"{TENANTS}/{n}/status", status(n), MERGE)),
        }
        print("\nper write, ÷ a Role's server-side apply: " + ", ".join(f"{k} {v / base:.1f}×" for k, v in costs.items()))
    finally:
        cleanup()
        proxy.terminate()


if __name__ == "__main__":
    main()
