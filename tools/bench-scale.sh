#!/usr/bin/env bash
# Scale benchmark (issue 13): how the launcher's cost grows with the pool.
#
#   tools/bench-scale.sh [--quick] [bench_scale.py options]
#
# For 100, 1,000 and 10,000 existing nodes (over 20 fake providers) runs
# Python Nodepool 11.0.0's launcher and ours, one after the other, each on
# a fresh chroot of a private ZooKeeper (its own, in .test-env/bench-scale-zk,
# so nothing else is disturbed): start-up to first fulfilment, churn (CPU
# per request, p50/p99, peak RSS, ZooKeeper packets per request), a burst
# of 2,000 requests and the listings (`nodepool list`, `/node-list`) at the
# largest size; then 1, 2 and 4 of our launchers on a three-server ensemble
# (requests/s, p50, and the chaos checker's lost and double counts), and the
# ceiling: static churn's ZooKeeper writes per request against the server's
# write limit (measured first, as tools/bench-zk.sh does). Writes the
# tables into doc/benchmarks.md (the "Scale"
# section) and raw JSON and logs into .test-env/bench/scale-<time>/.
# --quick: sizes 100 and 1000 only, ours only, report in the run directory.
# Other options go to tools/bench/bench_scale.py (e.g. --impls rust,
# --sizes 100,10000). Bounded by NP_BENCH_TIMEOUT seconds (default 7200).
# Not part of the test suite.
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

zk_dir="$REPO/.test-env/bench-scale-zk"
ensemble_dir="$REPO/.test-env/bench-scale-ensemble"
bench_pid=""
# shellcheck disable=SC2317 # invoked by bench_stop, on exit
bench_on_exit() {
    if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
        kill -TERM "$bench_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$bench_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$bench_pid" 2>/dev/null || true
    fi
    NP_ZK_ENV_DIR="$zk_dir" tools/test-env.sh stop >/dev/null 2>&1 || true
    NP_ZK_ENV_DIR="$ensemble_dir" tools/test-env.sh stop >/dev/null 2>&1 || true
}
trap 'exit 130' INT TERM

tools/setup.sh >/dev/null
bench_build -p np-launcher -p np-cli
bench_build -p np-zk --example zk_bench
NP_ZK_ENV_DIR="$ensemble_dir" NP_ZK_SERVERS=3 tools/test-env.sh start >/dev/null
ensemble="$(
    # shellcheck source=/dev/null
    source "$ensemble_dir/env.sh"
    echo "$NP_ZK_HOSTS $NP_ZK_TLS_HOSTS"
)"
NP_ZK_ENV_DIR="$zk_dir" tools/test-env.sh start >/dev/null
# shellcheck source=/dev/null
source "$zk_dir/env.sh"
# The server's write limit (the ceiling's yardstick), as tools/bench-zk.sh measures it.
limit="$(target/release/examples/zk_bench "$NP_ZK_HOSTS" 200 | sed -n 's/^write throughput.* \([0-9]*\) writes\/s$/\1/p')"
echo "bench-scale: ZooKeeper write limit ${limit:-?} writes/s"

out=".test-env/bench/scale-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
doc="doc/benchmarks.md"
if [ "$quick" = 1 ]; then
    doc="$out/benchmarks.md"
    args=(--sizes 100,1000 --impls rust --burst 200 --scaleout 1,2 --scaleout-count 200 --ceiling-count 500 "${args[@]}")
fi

setsid timeout -k 20 "${NP_BENCH_TIMEOUT:-7200}" "$NP_PYTHON" tools/bench/bench_scale.py \
    --zk-hosts "$NP_ZK_HOSTS" --zk-tls-hosts "$NP_ZK_TLS_HOSTS" \
    --tls "$NP_ZK_TLS_CA,$NP_ZK_TLS_CERT,$NP_ZK_TLS_KEY" \
    --ensemble-hosts "${ensemble% *}" --ensemble-tls-hosts "${ensemble#* }" \
    ${limit:+--zk-write-limit "$limit"} \
    --out "$out" --doc "$doc" "${args[@]}" &
bench_pid=$!
rc=0
wait "$bench_pid" || rc=$?
bench_pid=""
[ "$rc" = 0 ] || echo "bench-scale: FAILED (exit $rc); partial results in $out" >&2
exit "$rc"
