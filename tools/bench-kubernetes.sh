#!/usr/bin/env bash
# Kubernetes driver benchmark: Python Nodepool 11.0.0's launcher vs ours, each
# with a Kubernetes provider on the fake API server (the test suite's, run as
# `cargo run --example fake-kube`), one launcher at a time on its own
# ZooKeeper chroot. A Zuul-like client (tests/python/zuul_client.py) keeps one
# request outstanding; reported: request-to-fulfilled latency p50/p95 and
# req/s for namespace and pod labels.
#
#   tools/bench-kubernetes.sh [COUNT]        (default 10 requests per label)
#
# The fake's "controllers" answer after a number of reads (token after 1,
# pod running after 2), not after a time: on a real cluster the pod's own
# start (image pull, container start) adds the same time to both. Not part
# of the test suite.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
count="${1:-10}"

tools/setup.sh >/dev/null
started_zk=0
if ! tools/test-env.sh status >/dev/null 2>&1; then
    tools/test-env.sh start >/dev/null
    started_zk=1
fi
# shellcheck source=/dev/null
source .test-env/env.sh
cargo build --release -q -p np-launcher --bin nodepool-launcher
cargo build --release -q -p np-driver-kubernetes --example fake-kube

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$work"
    if [ "$started_zk" = 1 ]; then tools/test-env.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

target/release/examples/fake-kube "$work" bench >"$work/fake.out" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$work/fake.out" ] && break; sleep 0.1; done
venv="$(dirname "$(dirname "$NP_PYTHON")")"
tls_port="${NP_ZK_TLS_HOSTS##*:}"

config() { # impl
    cat <<YAML
zookeeper-servers:
  - host: 127.0.0.1
    port: $tls_port
    chroot: /bench-k8s-$1
zookeeper-tls:
  ca: $NP_ZK_TLS_CA
  cert: $NP_ZK_TLS_CERT
  key: $NP_ZK_TLS_KEY
labels:
  - name: ns
  - name: pod
providers:
  - name: bench-$1
    driver: kubernetes
    context: bench
    pools:
      - name: $1
        labels:
          - name: ns
            type: namespace
          - name: pod
            type: pod
            image: docker.io/fedora:40
            cpu: 1
            memory: 256
YAML
}

for impl in python rust; do
    config "$impl" >"$work/$impl.yaml"
    "$NP_PYTHON" - "$NP_ZK_HOSTS" "/bench-k8s-$impl" <<'PY'
import sys
from kazoo.client import KazooClient
k = KazooClient(hosts=sys.argv[1]); k.start(); k.ensure_path(sys.argv[2]); k.stop()
PY
    if [ "$impl" = python ]; then
        KUBECONFIG="$work/kubeconfig" PYTHONPATH="$venv/kubernetes-29" \
            "$venv/bin/nodepool-launcher" -c "$work/$impl.yaml" -f --no-webapp >"$work/$impl.log" 2>&1 &
    else
        KUBECONFIG="$work/kubeconfig" target/release/nodepool-launcher -c "$work/$impl.yaml" -f --no-webapp \
            >"$work/$impl.log" 2>&1 &
    fi
    pid=$!
    pids+=("$pid")
    sleep 5
    for label in ns pod; do
        printf '%-6s %-4s ' "$impl" "$label"
        "$NP_PYTHON" tests/python/zuul_client.py --hosts "$NP_ZK_HOSTS/bench-k8s-$impl" --labels "$label" \
            --count "$count" --outstanding 1
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
