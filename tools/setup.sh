#!/usr/bin/env bash
# Idempotent installation of everything the test suite needs on a fresh
# Debian 12 machine:
#   * Debian packages: zookeeper (3.8, with a JRE), openssl, openssh-server,
#     netcat-openbsd (apt is skipped when they are all installed already);
#   * a Python venv at ${NP_VENV:-<repo>/.venv} with kazoo, nodepool==11.0.0,
#     cachetools and moto[server] (the EC2 API server of the AWS driver tests) (pip is skipped when the right versions are present);
#   * kubernetes==29.0.0 in <venv>/kubernetes-29 (for Python Nodepool's Kubernetes driver).
#
# Output is kept short: the details go to <repo>/.test-env/setup.log, whose
# tail is printed when a step fails.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NP_VENV:-$REPO/.venv}"
NODEPOOL_VERSION="11.0.0"
APT_PACKAGES=(zookeeper openssl openssh-server netcat-openbsd)
PIP_PACKAGES=(kazoo "nodepool==$NODEPOOL_VERSION" cachetools "moto[server]")

STATE_DIR="$REPO/.test-env"
mkdir -p "$STATE_DIR"
LOG="$STATE_DIR/setup.log"
: >"$LOG"

# Two setups at once (say, two shells of one developer) would fight over apt
# and pip: take turns.
exec 9>"$STATE_DIR/setup.lock"
flock 9

say() { printf 'setup: %s\n' "$*"; }

# Run a command with its output in the log; on failure show the log's tail.
run() {
    printf '+ %s\n' "$*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        printf 'setup: FAILED: %s\n--- last lines of %s ---\n' "$*" "$LOG" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# ---------------------------------------------------------------- apt
missing=()
for p in "${APT_PACKAGES[@]}"; do
    pkg_installed "$p" || missing+=("$p")
done
# `python3 -m venv` needs ensurepip, which Debian's own python3 splits out.
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    start=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    # Keep package scripts from starting daemons (sshd, zookeeper) on their
    # default ports: the tests start their own, on loopback. This is the
    # standard policy-rc.d switch; only put it up if nobody else has one.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
        own_policy=1
    fi
    cleanup_policy() { if [ "$own_policy" = 1 ]; then as_root rm -f "$policy"; fi; }
    trap cleanup_policy EXIT
    run as_root apt-get update -q
    run as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
    cleanup_policy
    trap - EXIT
    say "Debian packages installed in $((SECONDS - start))s"
fi

# ---------------------------------------------------------------- venv
venv_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$NODEPOOL_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
assert version("nodepool") == sys.argv[1]
version("kazoo")
version("cachetools")
version("moto")
import kazoo.recipe.lock  # noqa: F401
import moto.server  # noqa: F401
import nodepool.zk.zookeeper  # noqa: F401
EOF
}

if ! venv_ok; then
    say "setting up the Python venv at $VENV (kazoo, nodepool==$NODEPOOL_VERSION, cachetools, moto[server])"
    start=$SECONDS
    if [ ! -x "$VENV/bin/python" ]; then
        run python3 -m venv "$VENV"
    fi
    # Keep git from ever listing the venv, wherever it lives.
    [ -e "$VENV/.gitignore" ] || printf '*\n' >"$VENV/.gitignore"
    run "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
    if ! venv_ok; then
        say "FAILED: the venv at $VENV still lacks a working nodepool==$NODEPOOL_VERSION" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
    say "venv ready in $((SECONDS - start))s"
fi

# Python Nodepool 11's Kubernetes driver fails with the kubernetes client the
# venv gets (37.x validates request bodies with pydantic and refuses the
# role binding's `userNames`); the Python-beside-ours Kubernetes test runs it
# with the last client before that, from its own directory on PYTHONPATH.
K8S_OLD="$VENV/kubernetes-29"
if [ ! -f "$K8S_OLD/kubernetes/__init__.py" ]; then
    say "installing kubernetes==29.0.0 for the Python launcher's Kubernetes driver at $K8S_OLD"
    run "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target "$K8S_OLD" "kubernetes==29.0.0"
fi

say "ok (venv: $VENV)"
