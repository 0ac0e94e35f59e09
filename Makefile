# Palisade developer entry points. `make test` is what CI runs (after `make lint`).
CARGO ?= cargo
PG_BIN ?= $(shell ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)

.PHONY: all build fmt lint test unit generate check-generated e2e cluster-up cluster-down bench bench-backup bench-gc bench-convergence bench-rates bench-faults bench-maxima render image clean

all: build

build:
	$(CARGO) build --workspace

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Everything that runs on this machine: unit, CRD sync, CLI, controller tests
## on the in-process API server, snapshot engine tests on real PostgreSQL + S3,
## chart/manifest tests. e2e tests compile and skip without PALISADE_E2E=1.
test:
	PATH="$(PG_BIN):$$PATH" $(CARGO) test --workspace --all-targets
	@if [ -x scripts/test-manifests.sh ]; then scripts/test-manifests.sh; fi

## Regenerate crds/ (and the chart's copy) from the Rust types, and the
## operator's RBAC (chart and kustomize base) from src/operator_rbac.rs.
generate:
	$(CARGO) run --quiet -- crds --dir crds --api-doc docs/API.md
	@for d in charts/palisade/crds config/default/crds; do \
	  if [ -d $$d ]; then rm -f $$d/*.yaml; cp crds/*.yaml $$d/; fi; done
	$(CARGO) run --quiet -- rbac > charts/palisade/files/rbac.json.tmp
	mv charts/palisade/files/rbac.json.tmp charts/palisade/files/rbac.json
	$(CARGO) run --quiet -- rbac --yaml > config/default/rbac.yaml.tmp
	mv config/default/rbac.yaml.tmp config/default/rbac.yaml
	python3 scripts/gen-argocd-health.py

## Every generated file against its source (what `make generate` writes): the
## CRDs and docs/API.md, the chart's and kustomize's CRD copies, the operator
## RBAC (chart JSON, kustomize YAML), the Argo CD health snippets.
check-generated:
	$(CARGO) test --test cli checked_in_
	python3 scripts/gen-argocd-health.py --check

## The e2e suite on a real API server: the cluster of $KUBECONFIG when set,
## else the local control plane of scripts/test-cluster.sh (built from Go
## modules on first use, started if not running, left running for the next
## run; `make cluster-down` stops it).
e2e:
	@if [ -z "$$KUBECONFIG" ]; then scripts/test-cluster.sh start; fi
	@if [ -z "$$KUBECONFIG" ]; then eval "$$(scripts/test-cluster.sh env)"; fi; \
	  PALISADE_E2E=$${PALISADE_E2E:-1} $(CARGO) test --test e2e -- --test-threads=1 --nocapture

## The local real control plane (etcd, kube-apiserver, kube-controller-manager).
cluster-up:
	scripts/test-cluster.sh start
	@echo 'use it: eval "$$(scripts/test-cluster.sh env)"'

cluster-down:
	scripts/test-cluster.sh stop

## Benchmarks (release builds; not part of CI). SIZE_GB sizes the snapshot databases.
SIZE_GB ?= 1
REPEAT ?= 3
# Once-only rows the backup benchmark leaves out (pg_dump -Fc: gzip, 140 s per GB of
# incompressible data). SKIP= measures them too.
SKIP ?= pg_dump_Fc
TENANTS ?= 100,1000
bench: bench-convergence bench-faults bench-backup bench-gc

## Tenant convergence at scale: the release controller binary vs a bare client
## applying the same rendered objects, resync/restart writes, edit latency,
## RSS -> docs/PERFORMANCE.md.
# Both on the in-process API server and on a real one: the cluster of
# KUBECONFIG when set (no other Tenants, no Palisade running there), else the
# local control plane of scripts/test-cluster.sh. One report, rows side by side.
bench-convergence:
	$(CARGO) build --release --bin palisade --example convergence_bench
	@if [ -z "$$KUBECONFIG" ]; then scripts/test-cluster.sh start; fi
	@if [ -z "$$KUBECONFIG" ]; then eval "$$(scripts/test-cluster.sh env)"; fi; \
	  target/release/examples/convergence_bench --cluster --tenants $(TENANTS) --binary target/release/palisade --out docs/PERFORMANCE.md
	$(MAKE) bench-rates

## The client rate limit as shipped next to others (RATES: qps:burst, `shipped` =
## no flags; 0:0 = unlimited), RATE_TENANTS per row, with the API server's
## priority-and-fairness figures -> docs/PERFORMANCE.md, "The shipped rate limit".
RATES ?= shipped,0:0,50:100,100:200,200:400
RATE_TENANTS ?= 200
bench-rates:
	$(CARGO) build --release --bin palisade --example convergence_bench
	@if [ -z "$$KUBECONFIG" ]; then scripts/test-cluster.sh start; fi
	@if [ -z "$$KUBECONFIG" ]; then eval "$$(scripts/test-cluster.sh env)"; fi; \
	  target/release/examples/convergence_bench --cluster --rates $(RATES) --tenants $(RATE_TENANTS) --binary target/release/palisade --out docs/PERFORMANCE.md

## Faults mid-convergence on the local control plane (kube-apiserver killed 20 s,
## etcd 15 s, the leader SIGKILLed with two replicas, SIGTERM + restart), the
## controller with its shipped defaults -> docs/PERFORMANCE.md, "Faults".
## Always scripts/test-cluster.sh's cluster: it restarts that cluster's processes.
bench-faults:
	$(CARGO) build --release --bin palisade --example convergence_bench
	scripts/test-cluster.sh start
	eval "$$(scripts/test-cluster.sh env)"; \
	  target/release/examples/convergence_bench --cluster --faults --tenants $(RATE_TENANTS) --binary target/release/palisade --cluster-script scripts/test-cluster.sh --out docs/PERFORMANCE.md

## TTL garbage collection: 10,000 objects on the in-process API server
## (requests per collected object, RSS, idle traffic) -> docs/PERFORMANCE-GC.md.
bench-gc:
	$(CARGO) run --quiet --example gc_bench -- docs/PERFORMANCE-GC.md

## One Tenant at the documented maxima (256 namespaces x 64 secrets) with the
## controller's shipped defaults: time to Ready, status size, deletion
## (docs/PERFORMANCE.md, "At the documented maxima"). BIN= picks the binary.
BIN ?= target/release/palisade
bench-maxima:
	@if [ "$(BIN)" = target/release/palisade ]; then $(CARGO) build --release --bin palisade; fi
	scripts/bench-maxima.sh $(BIN)

## Snapshot engine vs pg_dump baselines (docs/BACKUP.md).
bench-backup:
	$(CARGO) build --release --bin palisade --example backup_s3_server
	python3 benches/backup_bench.py --size-gb $(SIZE_GB) --repeat $(REPEAT) $(if $(SKIP),--skip $(SKIP)) $(if $(BENCH_JSON),--json $(BENCH_JSON))

render:
	$(CARGO) run --quiet -- render -f config/samples/

image:
	docker build -t palisade:dev .

clean:
	$(CARGO) clean
