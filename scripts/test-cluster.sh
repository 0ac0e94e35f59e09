#!/usr/bin/env bash
# A real Kubernetes control plane for tests, envtest-style: etcd, kube-apiserver
# and kube-controller-manager (no scheduler, no kubelet, no nodes) on loopback.
#
#   scripts/test-cluster.sh build   build (or find) the binaries; prints their dir
#   scripts/test-cluster.sh start   build if needed, start, wait until ready
#   scripts/test-cluster.sh env     print `export KUBECONFIG=… PATH=…` for a shell
#   scripts/test-cluster.sh stop    stop the processes this script started
#   scripts/test-cluster.sh status  exit 0 when the started cluster answers
#   scripts/test-cluster.sh restart-apiserver SECONDS   kill -9 kube-apiserver, wait, start it
#   scripts/test-cluster.sh restart-etcd SECONDS        the same for etcd (the fault scenarios
#                                   of docs/PERFORMANCE.md); kill-X / start-X (X: apiserver,
#                                   etcd) do one half each. Only this state dir's processes, by
#                                   their pid files; restart-X starts the process again also
#                                   when interrupted.
#
# Binaries: $KUBEBUILDER_ASSETS (envtest's convention) when it holds etcd,
# kube-apiserver and kube-controller-manager; otherwise they are built from Go
# modules (k8s.io/kubernetes $KUBE_VERSION) into a cache outside the repository
# ($PALISADE_TEST_CLUSTER_CACHE, default /var/cache/palisade-test-cluster or
# ~/.cache/palisade-test-cluster), once per version. kubectl is built beside them.
# State (certs, etcd data, logs, kubeconfig, pids): $PALISADE_TEST_CLUSTER_DIR,
# default ${TMPDIR:-/tmp}/palisade-test-cluster.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
STATE="${PALISADE_TEST_CLUSTER_DIR:-${TMPDIR:-/tmp}/palisade-test-cluster}"
if [ -z "${PALISADE_TEST_CLUSTER_CACHE:-}" ]; then
  if [ -w /var/cache ] || mkdir -p /var/cache/palisade-test-cluster 2>/dev/null; then
    PALISADE_TEST_CLUSTER_CACHE=/var/cache/palisade-test-cluster
  else
    PALISADE_TEST_CLUSTER_CACHE="$HOME/.cache/palisade-test-cluster"
  fi
fi
CACHE="$PALISADE_TEST_CLUSTER_CACHE/$KUBE_VERSION"

log() { printf '[test-cluster] %s\n' "$*" >&2; }
die() { printf '[test-cluster] FATAL: %s\n' "$*" >&2; exit 1; }

have_assets() {
  local d="$1"
  [ -n "$d" ] && [ -x "$d/etcd" ] && [ -x "$d/kube-apiserver" ] && [ -x "$d/kube-controller-manager" ]
}

# The directory holding the binaries, building them when needed.
bin_dir() {
  if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
    have_assets "$KUBEBUILDER_ASSETS" || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks etcd, kube-apiserver or kube-controller-manager"
    echo "$KUBEBUILDER_ASSETS"
    return
  fi
  if ! have_assets "$CACHE/bin" || [ ! -x "$CACHE/bin/kubectl" ]; then
    build >&2
  fi
  echo "$CACHE/bin"
}

# A wrapper module: k8s.io/kubernetes cannot be `go install`ed (its go.mod points
# every staging module at ./staging/…), so require it and replace each staging
# module with its published version.
build() {
  command -v go >/dev/null || die "go is required to build the control plane (or set KUBEBUILDER_ASSETS)"
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local staging="v0.${KUBE_VERSION#v1.}"
  local src="$CACHE/src" start=$SECONDS
  mkdir -p "$src" "$CACHE/bin"
  log "building the control plane $KUBE_VERSION into $CACHE/bin (cold: several minutes)"
  export GOFLAGS=-mod=mod
  go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >"$src/kubernetes.json"
  local kmod
  kmod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' "$src/kubernetes.json")
  [ -f "$kmod" ] || die "no go.mod for k8s.io/kubernetes@$KUBE_VERSION from the module proxy"
  {
    echo "module palisade.dev/testcluster"
    echo
    grep -E '^go [0-9.]+$' "$kmod"
    grep -E '^godebug ' "$kmod" || true
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$staging"'#p' "$kmod"
    echo ")"
  } >"$src/go.mod"
  cat >"$src/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  (cd "$src" && go mod tidy) || die "go mod tidy failed (if the checksum database is unreachable: GONOSUMDB=k8s.io,go.etcd.io)"
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  (
    cd "$src"
    export CGO_ENABLED=0
    go build -trimpath -ldflags "$ld" -o "$CACHE/bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    go build -trimpath -ldflags "$ld" -o "$CACHE/bin/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
    go build -trimpath -ldflags "$ld" -o "$CACHE/bin/kubectl" k8s.io/kubernetes/cmd/kubectl
    go build -trimpath -ldflags "-s -w" -o "$CACHE/bin/etcd" go.etcd.io/etcd/server/v3
  ) || die "go build failed"
  log "built in $((SECONDS - start)) s"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

certs() {
  local d="$STATE/pki"
  mkdir -p "$d"
  cd "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=palisade-test-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  # name, subject, extensions
  leaf() {
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  }
  leaf serving "/CN=kube-apiserver" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
  leaf admin "/O=system:masters/CN=palisade-test-admin" "extendedKeyUsage=clientAuth"
  leaf kcm "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  chmod 600 ./*.key
  cd - >/dev/null
}

kubeconfig() { # file user cert key
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: palisade-test
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $STATE/pki/$3.crt
    client-key: $STATE/pki/$3.key
contexts:
- name: palisade-test
  context: {cluster: palisade-test, user: $2}
current-context: palisade-test
EOF
}

running() {
  [ -f "$STATE/pids" ] || return 1
  local pid
  for pid in $(cat "$STATE/pids"); do kill -0 "$pid" 2>/dev/null || return 1; done
}

api() { # path
  curl -fsS --max-time 5 --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" \
    --key "$STATE/pki/admin.key" "https://127.0.0.1:$(cat "$STATE/apiserver-port")$1"
}

# One process of the control plane, started in the background; its pid goes
# to $STATE/<name>.pid (and $STATE/pids lists them all, for stop/running).
spawn() { # name command...
  local name="$1"; shift
  "$@" >>"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  cat "$STATE"/*.pid >"$STATE/pids"
}

start_etcd() {
  local bin; bin=$(cat "$STATE/bin-dir")
  local etcd_port etcd_peer
  read -r etcd_port etcd_peer <"$STATE/etcd-ports"
  spawn etcd "$bin/etcd" --data-dir "$STATE/etcd" --name palisade-test \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "palisade-test=http://127.0.0.1:$etcd_peer" \
    --unsafe-no-fsync --quota-backend-bytes=8589934592 --log-level=warn
}

start_apiserver() {
  local bin; bin=$(cat "$STATE/bin-dir")
  local etcd_port
  read -r etcd_port _ <"$STATE/etcd-ports"
  spawn kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$(cat "$STATE/apiserver-port")" \
    --cert-dir "$STATE/pki" \
    --tls-cert-file "$STATE/pki/serving.crt" --tls-private-key-file "$STATE/pki/serving.key" \
    --client-ca-file "$STATE/pki/ca.crt" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$STATE/pki/sa.pub" \
    --service-account-signing-key-file "$STATE/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none \
    --allow-privileged=true \
    --max-requests-inflight 2000 --max-mutating-requests-inflight 1000 \
    --v=1
}

start_kcm() {
  local bin; bin=$(cat "$STATE/bin-dir")
  spawn kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$STATE/kcm.kubeconfig" \
    --authentication-kubeconfig "$STATE/kcm.kubeconfig" \
    --authorization-kubeconfig "$STATE/kcm.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 \
    --controllers namespace,garbagecollector,resourcequota,job,serviceaccount,serviceaccount-token,validatingadmissionpolicy-status-controller \
    --use-service-account-credentials \
    --service-account-private-key-file "$STATE/pki/sa.key" \
    --root-ca-file "$STATE/pki/ca.crt" \
    --leader-elect=false \
    --resource-quota-sync-period 15s \
    --concurrent-namespace-syncs 40 \
    --kube-api-qps 200 --kube-api-burst 400 \
    --v=1
}

# Waits (up to 60 s) until kube-apiserver answers /readyz.
wait_apiserver() {
  local i
  for i in $(seq 1 120); do
    api /readyz >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  api /readyz >/dev/null || { tail -n 30 "$STATE/logs/kube-apiserver.log" >&2; die "kube-apiserver not ready after 60 s"; }
}

start() {
  if running && api /readyz >/dev/null 2>&1; then
    log "already running (KUBECONFIG=$STATE/kubeconfig)"
    return
  fi
  stop >/dev/null 2>&1 || true
  local bin t0=$SECONDS
  bin=$(bin_dir)
  rm -rf "$STATE"
  mkdir -p "$STATE/logs"
  chmod 700 "$STATE"
  echo "$bin" >"$STATE/bin-dir"
  certs
  echo "$(free_port) $(free_port)" >"$STATE/etcd-ports"
  APISERVER_PORT=$(free_port)
  echo "$APISERVER_PORT" >"$STATE/apiserver-port"
  start_etcd
  start_apiserver
  kubeconfig "$STATE/kubeconfig" palisade-test-admin admin
  kubeconfig "$STATE/kcm.kubeconfig" system:kube-controller-manager kcm
  local i
  for i in $(seq 1 120); do
    api /readyz >/dev/null 2>&1 && break
    running || { tail -n 30 "$STATE"/logs/*.log >&2; die "a control-plane process exited during start"; }
    sleep 0.5
  done
  api /readyz >/dev/null || { tail -n 30 "$STATE"/logs/*.log >&2; die "kube-apiserver not ready after 60 s"; }
  start_kcm
  # Ready when the ServiceAccount controller has made `default` in `default`:
  # proof that the controller manager runs and is authorized.
  for i in $(seq 1 120); do
    api /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1 && break
    running || { tail -n 30 "$STATE"/logs/*.log >&2; die "a control-plane process exited during start"; }
    sleep 0.5
  done
  api /api/v1/namespaces/default/serviceaccounts/default >/dev/null ||
    { tail -n 30 "$STATE/logs/kube-controller-manager.log" >&2; die "kube-controller-manager did not start its controllers within 60 s"; }
  log "ready in $((SECONDS - t0)) s: KUBECONFIG=$STATE/kubeconfig (logs in $STATE/logs)"
}

# The process name of a fault target: apiserver -> kube-apiserver, etcd -> etcd.
fault_target() {
  case "$1" in
    apiserver|kube-apiserver) echo kube-apiserver ;;
    etcd) echo etcd ;;
    *) die "unknown process $1 (apiserver or etcd)" ;;
  esac
}

# kill -9 one process of this cluster, by its pid file (never by name).
kill_one() { # name
  local name pidfile pid
  name=$(fault_target "$1")
  pidfile="$STATE/$name.pid"
  [ -f "$pidfile" ] || die "no $pidfile: is the cluster in $STATE running?"
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    log "killed $name (pid $pid)"
  else
    log "$name (pid $pid) was not running"
  fi
}

# Starts one process again (no-op if it runs) and waits until the API answers.
start_one() { # name
  local name pid
  name=$(fault_target "$1")
  [ -f "$STATE/bin-dir" ] || die "the cluster in $STATE was never started"
  pid=$(cat "$STATE/$name.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "$name runs (pid $pid)"
  else
    case "$name" in
      kube-apiserver) start_apiserver ;;
      etcd) start_etcd ;;
    esac
    log "started $name (pid $(cat "$STATE/$name.pid"))"
  fi
  wait_apiserver
  log "the API answers again"
}

# kill -9, wait SECONDS, start again: always, also on INT/TERM or an error.
FAULT_NAME=
restart_one() { # name seconds
  FAULT_NAME="$1"
  local seconds="${2:-}"
  [[ "$seconds" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "usage: $0 restart-$FAULT_NAME SECONDS"
  trap 'start_one "$FAULT_NAME"' EXIT
  trap 'exit 130' INT TERM
  kill_one "$FAULT_NAME"
  sleep "$seconds" &
  wait $!
  trap - EXIT INT TERM
  start_one "$FAULT_NAME"
}

stop() {
  [ -f "$STATE/pids" ] || { log "not running"; return 0; }
  local pid pids
  pids=$(tac "$STATE/pids")
  for pid in $pids; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
  done
  for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
  rm -f "$STATE/pids" "$STATE"/*.pid
  log "stopped"
}

case "${1:-}" in
  build) bin_dir ;;
  start) start ;;
  stop) stop ;;
  status) running && api /readyz >/dev/null ;;
  kill-apiserver) kill_one apiserver ;;
  kill-etcd) kill_one etcd ;;
  start-apiserver) start_one apiserver ;;
  start-etcd) start_one etcd ;;
  restart-apiserver) restart_one apiserver "${2:-}" ;;
  restart-etcd) restart_one etcd "${2:-}" ;;
  env)
    running || die "not running: scripts/test-cluster.sh start"
    echo "export KUBECONFIG=$STATE/kubeconfig"
    echo "export PATH=$(cat "$STATE/bin-dir"):\$PATH"
    ;;
  *) echo "usage: $0 build|start|stop|status|env|restart-apiserver SECONDS|restart-etcd SECONDS|kill-apiserver|start-apiserver|kill-etcd|start-etcd" >&2; exit 2 ;;
esac
