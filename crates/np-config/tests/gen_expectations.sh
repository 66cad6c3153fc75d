#!/usr/bin/env bash
# Records Python Nodepool's `config-validate` verdict for every upstream fixture config.
#
# Usage: crates/np-config/tests/gen_expectations.sh [FIXTURE_DIR]
#   FIXTURE_DIR   the filled corpus (default: $NP_UPSTREAM_FIXTURES, else the one the tests write
#                 from the venv's nodepool package, <target>/tmp/np-config-upstream-configs;
#                 `cargo nextest run -p np-config upstream` writes it, see tests/it/corpus.rs)
#   NODEPOOL_BIN  the Python `nodepool` program (default ${NP_VENV:-<repo>/.venv}/bin/nodepool,
#                 as tools/setup.sh installs it)
#
# Writes crates/np-config/tests/expectations/upstream.tsv with the columns
#   file, python_rc (0 accepted, 1 rejected), python_errors (error lines joined by " | ").
# The Rust tests compare our verdicts with this file; only python_drift.rs reruns Python, on a sample.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
fixtures="${1:-${NP_UPSTREAM_FIXTURES:-${CARGO_TARGET_DIR:-$repo/target}/tmp/np-config-upstream-configs}}"
nodepool="${NODEPOOL_BIN:-${NP_VENV:-$repo/.venv}/bin/nodepool}"
out="$here/expectations/upstream.tsv"

if [[ ! -x "$nodepool" ]]; then
    echo "Python nodepool not found at $nodepool (run tools/setup.sh, or set NODEPOOL_BIN)" >&2
    exit 2
fi
if ! compgen -G "$fixtures/*.yaml" >/dev/null; then
    echo "no fixture corpus at $fixtures (run \`cargo nextest run -p np-config upstream\` to write it, or pass FIXTURE_DIR)" >&2
    exit 2
fi

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
printf 'file\tpython_rc\tpython_errors\n' >"$tmp"
for f in "$fixtures"/*.yaml; do
    name="$(basename "$f")"
    set +e
    log="$("$nodepool" -c "$f" config-validate 2>&1)"
    rc=$?
    set -e
    # Keep the validator's ERROR messages and the exception lines of tracebacks.
    errors="$(printf '%s\n' "$log" \
        | sed -n -e 's/^.* ERROR nodepool\.cmd\.config_validator: //p' \
                 -e '/^[A-Za-z_.]*\(Error\|Invalid\|Exception\): /p' \
        | tr '\t' ' ' | paste -sd '|' - | sed 's/|/ | /g')"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$errors" >>"$tmp"
done
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out ($(($(wc -l <"$out") - 1)) fixtures)"
