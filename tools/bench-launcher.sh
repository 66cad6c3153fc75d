#!/usr/bin/env bash
# Launcher benchmark: Python Nodepool 11.0.0 (the venv's nodepool-launcher) vs
# ours (target/release/nodepool-launcher), same nodepool.yaml, one private
# ZooKeeper on loopback, one launcher at a time on its own chroot.
#
#   tools/bench-launcher.sh [--quick] [bench_launcher.py options]
#   (rewrite doc/benchmarks.md from a finished run after editing
#   tools/bench/notes.md: .venv/bin/python tools/bench/bench_launcher.py
#   --zk-hosts - --zk-tls-hosts - --out .test-env/bench/<run> --doc
#   doc/benchmarks.md --report-only)
#
# Scenarios (per launcher): fake-lat1 and static-lat1 (one request
# outstanding), fake-churn and static-churn (300 requests, 20 outstanding),
# fake-burst (200 requests at once); churn and burst with two clients
# (tests/python/zuul_client.py and the leaner zuul_client_fast.py).
# Reports req/s, latency p50/p95/p99, launcher CPU seconds and peak RSS.
#
# Output: a markdown table on stdout and in doc/benchmarks.md, raw JSON and
# logs in .test-env/bench/<UTC time>/. --quick: small counts, report to
# .test-env/bench/<time>/benchmarks.md only. Other options go to
# tools/bench/bench_launcher.py (e.g. --impls rust, --only fake-burst,
# --clients fast, --churn-count 100). The whole run is bounded by
# NP_BENCH_TIMEOUT seconds (default 3600); every launcher and client it starts
# is stopped on exit. Not part of the test suite.
set -euo pipefail
# shellcheck source=tools/bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"

quick=0
args=()
for a in "$@"; do
    case "$a" in
        --quick) quick=1 ;;
        *) args+=("$a") ;;
    esac
done

bench_pid=""
# shellcheck disable=SC2317 # invoked by bench_stop, on exit
bench_on_exit() {
    if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
        # The orchestrator stops its launchers on TERM; then its group.
        kill -TERM "$bench_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$bench_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$bench_pid" 2>/dev/null || true
    fi
}
trap 'exit 130' INT TERM

bench_test_env
bench_build -p np-launcher

out=".test-env/bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
doc="doc/benchmarks.md"
if [ "$quick" = 1 ]; then
    doc="$out/benchmarks.md"
    args=(--lat1-count 5 --churn-count 60 --burst-count 60 "${args[@]}")
fi

# Own process group (setsid), so a stuck run can be killed as a whole.
setsid timeout -k 20 "${NP_BENCH_TIMEOUT:-3600}" "$NP_PYTHON" tools/bench/bench_launcher.py \
    --zk-hosts "$NP_ZK_HOSTS" --zk-tls-hosts "$NP_ZK_TLS_HOSTS" \
    --zk-pid "$(cat .test-env/zk.pid 2>/dev/null || echo 0)" \
    --out "$out" --doc "$doc" "${args[@]}" &
bench_pid=$!
rc=0
wait "$bench_pid" || rc=$?
bench_pid=""
[ "$rc" = 0 ] || echo "bench: FAILED (exit $rc); partial results in $out" >&2
exit "$rc"
