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
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
count="${1:-10}"

tools/setup.sh >/dev/null
started_zk=0
if ! tools/test-env.sh status >/dev/null 2>&1; then
    tools/test-env.sh start >/dev/null
    started_zk=1
fi
started_os=0
if ! tools/openstack-env.sh status >/dev/null 2>&1; then
    tools/openstack-env.sh start >/dev/null
    started_os=1
fi
# shellcheck source=/dev/null
source .test-env/env.sh
# shellcheck source=/dev/null
source .openstack-env/env.sh
cargo build --release -q -p np-launcher --bin nodepool-launcher

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$work"
    if [ "$started_zk" = 1 ]; then tools/test-env.sh stop >/dev/null 2>&1 || true; fi
    if [ "$started_os" = 1 ]; then tools/openstack-env.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

venv="$(dirname "$(dirname "$NP_PYTHON")")"
tls_port="${NP_ZK_TLS_HOSTS##*:}"

config() { # impl
    cat <<YAML
zookeeper-servers:
  - host: 127.0.0.1
    port: $tls_port
    chroot: /bench-os-$1
zookeeper-tls:
  ca: $NP_ZK_TLS_CA
  cert: $NP_ZK_TLS_CERT
  key: $NP_ZK_TLS_KEY
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

for impl in python rust; do
    config "$impl" >"$work/$impl.yaml"
    "$NP_PYTHON" - "$NP_ZK_HOSTS" "/bench-os-$impl" <<'PY'
import sys
from kazoo.client import KazooClient
k = KazooClient(hosts=sys.argv[1]); k.start(); k.ensure_path(sys.argv[2]); k.stop()
PY
    if [ "$impl" = python ]; then
        OS_CLIENT_CONFIG_FILE="$NP_OS_CLOUDS" \
            "$venv/bin/nodepool-launcher" -c "$work/$impl.yaml" -f --no-webapp >"$work/$impl.log" 2>&1 &
    else
        OS_CLIENT_CONFIG_FILE="$NP_OS_CLOUDS" target/release/nodepool-launcher -c "$work/$impl.yaml" -f \
            --no-webapp >"$work/$impl.log" 2>&1 &
    fi
    pid=$!
    pids+=("$pid")
    sleep 8
    printf '%-6s small ' "$impl"
    "$NP_PYTHON" tests/python/zuul_client.py --hosts "$NP_ZK_HOSTS/bench-os-$impl" --labels small \
        --count "$count" --outstanding 1
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
