#!/usr/bin/env bash
# Measures node create/write and lock acquire+release round trips on a private
# loopback ZooKeeper, for np-zk (Rust) and for kazoo as Python Nodepool uses it.
#   tools/bench-zk.sh [ITERATIONS]
set -euo pipefail
# shellcheck source=tools/bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
N="${1:-2000}"
bench_test_env
bench_build -p np-zk --example zk_bench
echo "== np-zk (Rust)"
target/release/examples/zk_bench "$NP_ZK_HOSTS" "$N"
echo "== kazoo 2.x (Python Nodepool's client)"
"$NP_PYTHON" - "$NP_ZK_HOSTS" "$N" <<'PY'
import sys, time, json, uuid
from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock
hosts, n = sys.argv[1], int(sys.argv[2])
root = "/np-bench-py-" + uuid.uuid4().hex
zk = KazooClient(hosts=hosts); zk.start()
data = json.dumps({"state": "ready", "provider": "bench", "type": ["label"]}).encode()
path = zk.create(root + "/nodepool/nodes/", data, sequence=True, makepath=True)
def report(name, s):
    s.sort(); p = lambda q: s[int((len(s) - 1) * q)] * 1e6
    print(f"{name:<28} n={len(s):<6} mean={sum(s)/len(s)*1e6:>8.1f}us p50={p(0.5):>8.1f}us p99={p(0.99):>8.1f}us")
c, w, l = [], [], []
for _ in range(n):
    t = time.perf_counter(); zk.create(root + "/nodepool/nodes/", data, sequence=True); c.append(time.perf_counter() - t)
for _ in range(n):
    t = time.perf_counter(); zk.set(path, data); w.append(time.perf_counter() - t)
for _ in range(n):
    t = time.perf_counter(); lk = Lock(zk, path + "/lock"); lk.acquire(blocking=False); lk.release(); l.append(time.perf_counter() - t)
report("node create", c); report("node write (set)", w); report("lock acquire+release", l)
zk.delete(root, recursive=True); zk.stop()
PY
