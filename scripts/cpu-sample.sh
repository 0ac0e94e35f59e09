#!/bin/bash
# Samples every 5 s, until killed: machine CPU ticks from /proc/stat (user nice system idle
# iowait irq softirq steal) and the CPU ticks (utime + stime) of the local control plane's
# etcd, kube-apiserver and kube-controller-manager (their pid files) and of every running
# `palisade controller`. Run it beside a benchmark, then `scripts/cpu-phases.py LOG` sums
# each busy phase (docs/PERFORMANCE.md, "Where the time goes"):
#   scripts/cpu-sample.sh > /tmp/cpu.log & convergence_bench --cluster ...; kill %1
d=${PALISADE_TEST_CLUSTER_DIR:-${TMPDIR:-/tmp}/palisade-test-cluster}
while true; do
  t=$(date +%s)
  m=$(head -1 /proc/stat | awk '{print $2,$3,$4,$5,$6,$7,$8,$9}')
  p=""
  for n in etcd kube-apiserver kube-controller-manager; do
    pid=$(cat $d/$n.pid 2>/dev/null); p="$p $n=$(awk '{print $14+$15}' /proc/$pid/stat 2>/dev/null)"
  done
  c=0; for pid in $(pgrep -f "palisade controller"); do c=$((c + $(awk '{print $14+$15}' /proc/$pid/stat 2>/dev/null || echo 0))); done
  echo "$t $m |$p palisade=$c"
  sleep 5
done
