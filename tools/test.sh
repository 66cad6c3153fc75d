#!/usr/bin/env bash
# The project's one test command.
#
#   tools/test.sh                    everything
#   TEST_ARGS='np_zk::' tools/test.sh    only tests matching a filter
#   NP_CHAOS=0 tools/test.sh         without the chaos subset (tools/chaos.sh --ci)
#
# Installs what is missing (tools/setup.sh), starts a private ZooKeeper with
# TLS (tools/test-env.sh; the tests read the NP_ZK_* variables from
# .test-env/env.sh) and a real OpenStack on loopback (tools/openstack-env.sh;
# NP_OS_CLOUDS from .openstack-env/env.sh), runs the workspace's tests with
# cargo nextest (cargo test where nextest is missing), stops both again and
# exits with the tests' status. TEST_ARGS is split on blanks and passed after `--` (test name
# filters, --skip, --exact, --ignored: understood by both runners).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

tools/setup.sh

# Quietly: the runner's summary stays the last thing printed.
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    tools/test-env.sh stop >/dev/null 2>&1 || true
    NP_ZK_ENV_DIR="$REPO/.test-env/ensemble" tools/test-env.sh stop >/dev/null 2>&1 || true
    tools/openstack-env.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM
tools/test-env.sh start
# shellcheck source=/dev/null
source .test-env/env.sh
# A three-server ensemble beside it (the launcher's ensemble test), started
# while the tests compile; its hosts go to NP_ZK_ENSEMBLE_HOSTS.
ensemble_dir="$REPO/.test-env/ensemble"
ensemble_log="$(mktemp)"
NP_ZK_ENV_DIR="$ensemble_dir" NP_ZK_SERVERS=3 tools/test-env.sh start >"$ensemble_log" 2>&1 &
ensemble_pid=$!

# The real OpenStack (Keystone, Nova, Placement, Glance from Debian's
# packages; tools/openstack-env.sh) for the OpenStack driver's real-cloud
# tests. It installs and starts (about a minute the first time) while the
# tests compile.
# NP_OPENSTACK=0 skips it (the real-cloud tests then fail, naming the
# variable): for quick local runs of other tests.
os_log="$(mktemp)"
os_pid=""
if [ "${NP_OPENSTACK:-1}" != 0 ]; then
    tools/openstack-env.sh start >"$os_log" 2>&1 &
    os_pid=$!
fi

extra=()
if [ -n "${TEST_ARGS:-}" ]; then
    read -r -a filters <<<"$TEST_ARGS"
    extra=(-- "${filters[@]}")
fi

# The same build the runner does (it runs `cargo test --no-run` with these
# arguments), so that compiling overlaps with the OpenStack start.
cargo test --workspace --all-targets --no-run
if [ -n "$os_pid" ]; then
    if ! wait "$os_pid"; then
        cat "$os_log" >&2
        echo "tools/test.sh: the real OpenStack did not start (see above)" >&2
        exit 1
    fi
    tail -n 2 "$os_log"
    # shellcheck source=/dev/null
    source .openstack-env/env.sh
fi
rm -f "$os_log"
if ! wait "$ensemble_pid"; then
    cat "$ensemble_log" >&2
    echo "tools/test.sh: the ZooKeeper ensemble did not start (see above)" >&2
    exit 1
fi
rm -f "$ensemble_log"
NP_ZK_ENSEMBLE_HOSTS="$(
    # shellcheck source=/dev/null
    source "$ensemble_dir/env.sh"
    echo "$NP_ZK_HOSTS"
)"
export NP_ZK_ENSEMBLE_HOSTS

status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-targets --no-fail-fast --no-tests=warn "${extra[@]}" || status=$?
else
    cargo test --workspace --all-targets --no-fail-fast "${extra[@]}" || status=$?
fi

# The chaos suite's short subset (tools/chaos.sh --ci: one launcher kill -9,
# one ZooKeeper restart, 1,000 malformed znodes, the checker's self-test),
# on a full run only; NP_CHAOS=0 skips it.
if [ -z "${TEST_ARGS:-}" ] && [ "${NP_CHAOS:-1}" != 0 ]; then
    tools/chaos.sh --ci || status=$?
fi
exit "$status"
