#!/usr/bin/env bash
# The project's one test command.
#
#   tools/test.sh                    everything
#   TEST_ARGS='np_zk::' tools/test.sh    only tests matching a filter
#
# Installs what is missing (tools/setup.sh), starts a private ZooKeeper with
# TLS (tools/test-env.sh; the tests read the NP_ZK_* variables from
# .test-env/env.sh), runs the workspace's tests with cargo nextest (cargo test
# where nextest is missing), stops ZooKeeper again and exits with the tests'
# status. TEST_ARGS is split on blanks and passed after `--` (test name
# filters, --skip, --exact, --ignored: understood by both runners).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

tools/setup.sh

# Quietly: the runner's summary stays the last thing printed.
# shellcheck disable=SC2317 # invoked by the trap
cleanup() { tools/test-env.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM
tools/test-env.sh start
# shellcheck source=/dev/null
source .test-env/env.sh

extra=()
if [ -n "${TEST_ARGS:-}" ]; then
    read -r -a filters <<<"$TEST_ARGS"
    extra=(-- "${filters[@]}")
fi

status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-targets --no-fail-fast --no-tests=warn "${extra[@]}" || status=$?
else
    cargo test --workspace --all-targets --no-fail-fast "${extra[@]}" || status=$?
fi
exit "$status"
