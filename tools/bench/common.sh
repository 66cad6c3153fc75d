# shellcheck shell=bash
# What the benchmark scripts (tools/bench-*.sh) share. They source it right
# after `set -euo pipefail`; it enters the repository and sets an EXIT trap
# that stops whatever the script started (see bench_stop).
#
#   bench_test_env        the venv and the private ZooKeeper, sourced
#   bench_service NAME    tools/NAME.sh's service, sourced
#   bench_build ARGS...   cargo build --release -q ARGS, retried (NP_BENCH_NO_BUILD=1: skipped)
#   bench_compare ...     Python's launcher vs ours, one after the other
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

# Processes to stop on exit (TERM, then KILL half a second later).
bench_pids=()
# A scratch directory (mktemp -d), removed on exit.
bench_work=""
# The services bench_service started, stopped on exit.
bench_started=()
# What a script does on exit besides, before the services stop.
# shellcheck disable=SC2317 # invoked by bench_stop
bench_on_exit() { :; }

# shellcheck disable=SC2317 # invoked by the trap
bench_stop() {
    local p name
    if [ "${#bench_pids[@]}" -gt 0 ]; then
        for p in "${bench_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        sleep 0.5
        for p in "${bench_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    fi
    if [ -n "$bench_work" ]; then rm -rf "$bench_work"; fi
    bench_on_exit
    if [ "${#bench_started[@]}" -gt 0 ]; then
        for name in "${bench_started[@]}"; do "tools/$name.sh" stop >/dev/null 2>&1 || true; done
    fi
}
trap bench_stop EXIT

# bench_service NAME: tools/NAME.sh's service (test-env: the private
# ZooKeeper; openstack-env: the real OpenStack), started if its status says
# it is not running (and then stopped on exit); its .NAME/env.sh sourced.
bench_service() {
    local name="$1"
    if ! "tools/$name.sh" status >/dev/null 2>&1; then
        "tools/$name.sh" start >/dev/null
        bench_started+=("$name")
    fi
    # shellcheck source=/dev/null
    source ".$name/env.sh"
}

# The test venv (tools/setup.sh) and the private ZooKeeper.
bench_test_env() {
    tools/setup.sh >/dev/null
    bench_service test-env
}

# bench_build ARGS...: `cargo build --release -q ARGS`, tried up to five
# times a minute apart (another build may hold the tree mid-edit).
# NP_BENCH_NO_BUILD=1 uses the release binaries as they are (a tree others
# are editing may not build; the binaries must exist).
bench_build() {
    local attempt
    if [ "${NP_BENCH_NO_BUILD:-0}" = 1 ]; then
        echo "bench: NP_BENCH_NO_BUILD=1: not building ($*)" >&2
        return 0
    fi
    for attempt in 1 2 3 4 5; do
        if cargo build --release -q "$@"; then return 0; fi
        [ "$attempt" = 5 ] && break
        echo "bench: build failed (work in progress elsewhere?); retrying in 60 s" >&2
        sleep 60
    done
    echo "bench: cargo build $* failed" >&2
    exit 1
}

# bench_compare NAME COUNT WAIT LABEL...: Python Nodepool 11's launcher,
# then ours, each alone on the ZooKeeper chroot /bench-NAME-IMPL (TLS, as
# Python needs) with the providers the script's `config IMPL` prints; the
# environment arrays bench_env_python and bench_env_rust (VAR=value) are
# added to each launcher's. After WAIT seconds for the launcher to start, a
# Zuul-like client (tests/python/zuul_client.py) makes COUNT requests for
# each LABEL, one outstanding, and prints its latencies and rate.
bench_compare() {
    local name="$1" count="$2" wait="$3" impl chroot pid label
    shift 3
    local venv tls_port
    venv="$(dirname "$(dirname "$NP_PYTHON")")"
    tls_port="${NP_ZK_TLS_HOSTS##*:}"
    for impl in python rust; do
        chroot="/bench-$name-$impl"
        {
            cat <<YAML
zookeeper-servers:
  - host: 127.0.0.1
    port: $tls_port
    chroot: $chroot
zookeeper-tls:
  ca: $NP_ZK_TLS_CA
  cert: $NP_ZK_TLS_CERT
  key: $NP_ZK_TLS_KEY
YAML
            config "$impl"
        } >"$bench_work/$impl.yaml"
        "$NP_PYTHON" - "$NP_ZK_HOSTS" "$chroot" <<'PY'
import sys
from kazoo.client import KazooClient
k = KazooClient(hosts=sys.argv[1]); k.start(); k.ensure_path(sys.argv[2]); k.stop()
PY
        if [ "$impl" = python ]; then
            env "${bench_env_python[@]}" "$venv/bin/nodepool-launcher" -c "$bench_work/$impl.yaml" -f \
                --no-webapp >"$bench_work/$impl.log" 2>&1 &
        else
            env "${bench_env_rust[@]}" target/release/nodepool-launcher -c "$bench_work/$impl.yaml" -f \
                --no-webapp >"$bench_work/$impl.log" 2>&1 &
        fi
        pid=$!
        bench_pids+=("$pid")
        sleep "$wait"
        for label in "$@"; do
            printf '%-6s %-4s ' "$impl" "$label"
            "$NP_PYTHON" tests/python/zuul_client.py --hosts "$NP_ZK_HOSTS$chroot" --labels "$label" \
                --count "$count" --outstanding 1
        done
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
