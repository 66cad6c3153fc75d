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
# shellcheck source=tools/bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
count="${1:-10}"

bench_test_env
bench_build -p np-launcher --bin nodepool-launcher
bench_build -p np-driver-kubernetes --example fake-kube

bench_work="$(mktemp -d)"
target/release/examples/fake-kube "$bench_work" bench >"$bench_work/fake.out" &
bench_pids+=($!)
for _ in $(seq 1 50); do [ -s "$bench_work/fake.out" ] && break; sleep 0.1; done
venv="$(dirname "$(dirname "$NP_PYTHON")")"
bench_env_python=(KUBECONFIG="$bench_work/kubeconfig" PYTHONPATH="$venv/kubernetes-29")
bench_env_rust=(KUBECONFIG="$bench_work/kubeconfig")

config() { # impl
    cat <<YAML
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

bench_compare k8s "$count" 5 ns pod
