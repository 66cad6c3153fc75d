#!/usr/bin/env bash
# The chaos suite: real processes, real faults, figures.
#
#   tools/chaos.sh                 every scenario; writes doc/reliability.md
#   tools/chaos.sh --ci            the short deterministic subset (.ci/run)
#   tools/chaos.sh --only NAME     one scenario (repeatable; --list names them)
#   tools/chaos.sh --only NAME --reuse .test-env/chaos/<time>
#                                  NAME re-run, the report's other rows from
#                                  that earlier full run
#   CHAOS_PROFILE=debug tools/chaos.sh   with the debug binaries (no release build)
#   NP_CHAOS_NO_BUILD=1 tools/chaos.sh   with the binaries as they are
#
# Installs what is missing (tools/setup.sh), builds the release binaries
# (the debug ones with --ci: the test run has just built them), then runs
# tools/chaos/chaos.py, which starts its own private ZooKeepers
# (tools/test-env.sh with NP_ZK_ENV_DIR under .test-env/), our launchers,
# the Zuul-like client and the faults of each scenario, and checks the
# outcome with tools/chaos/history.py. The raw material of each run (its
# configurations, every process's log, the client's history, the figures as
# JSON) stays in .test-env/chaos/<time>/. Exit status 0 only when every
# scenario shows 0 lost, 0 double, 0 leaked and the checker's self-test
# catches every fault injected into it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

ci=0
args=()
for a in "$@"; do
    case "$a" in
        --ci) ci=1; args+=("$a") ;;
        *) args+=("$a") ;;
    esac
done

tools/setup.sh

if [ "${NP_CHAOS_NO_BUILD:-0}" = 1 ]; then
    # The binaries as they are (a tree being edited may not build).
    bin_dir="$REPO/target/${CHAOS_PROFILE:-release}"
elif [ "$ci" = 1 ] || [ "${CHAOS_PROFILE:-release}" = debug ]; then
    # --all-targets: the same feature set as the test build (`cargo test
    # --workspace --all-targets`), so after tools/test.sh this builds
    # nothing. `--bins` alone resolves features without the
    # dev-dependencies and rebuilt every dependency (a second cold build,
    # about 10 minutes of CI).
    cargo build --workspace --all-targets
    bin_dir="$REPO/target/debug"
else
    cargo build --release --workspace --bins
    bin_dir="$REPO/target/release"
fi

out="$REPO/.test-env/chaos/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
doc=()
# The report is the full suite's; a CI or partial run leaves it alone.
# --reuse DIR with --only: the named scenarios re-run (after a fix), the
# others' rows taken from the full run in DIR; that report is the suite's.
case " ${args[*]:-} " in
    *" --reuse "*) doc=(--doc "$REPO/doc/reliability.md") ;;
    *" --ci "* | *" --only "* | *" --list "*) ;;
    *) doc=(--doc "$REPO/doc/reliability.md") ;;
esac

exec "$REPO/.venv/bin/python" "$REPO/tools/chaos/chaos.py" \
    --out "$out" --bin-dir "$bin_dir" "${doc[@]}" "${args[@]}"
