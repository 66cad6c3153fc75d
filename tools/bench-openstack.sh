#!/usr/bin/env bash
# OpenStack driver benchmark: Python Nodepool 11.0.0's launcher vs ours, each
# with an OpenStack provider on the real OpenStack of tools/openstack-env.sh
# (Debian's Keystone, Nova with its fake hypervisor, Placement, Glance on
# 127.0.0.1), one launcher at a time on its own ZooKeeper chroot. A Zuul-like
# client (tests/python/zuul_client.py) keeps one request outstanding;
# reported: request-to-fulfilled latency p50/p95 and req/s.
#
#   tools/bench-openstack.sh [COUNT]        (default 10 requests)
#
# Nova's fake hypervisor makes a server ACTIVE in under a second; on a real
# cloud the guest's boot adds the same time to both. Both launchers skip the
# host-key scan (the fake servers run nothing). Not part of the test suite.
set -euo pipefail
# shellcheck source=tools/bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
count="${1:-10}"

bench_test_env
bench_service openstack-env
bench_build -p np-launcher --bin nodepool-launcher

bench_work="$(mktemp -d)"
bench_env_python=(OS_CLIENT_CONFIG_FILE="$NP_OS_CLOUDS")
bench_env_rust=(OS_CLIENT_CONFIG_FILE="$NP_OS_CLOUDS")

config() { # impl
    cat <<YAML
labels:
  - name: small
providers:
  - name: bench-$1
    driver: openstack
    cloud: $NP_OS_CLOUD
    rate: 0.01
    cloud-images:
      - name: cirros
    pools:
      - name: $1
        max-servers: 5
        host-key-checking: false
        networks: [private]
        labels:
          - name: small
            cloud-image: cirros
            flavor-name: np-small
YAML
}

bench_compare os "$count" 8 small
