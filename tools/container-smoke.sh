#!/usr/bin/env bash
# Builds every target of the Dockerfile with podman, from a Debian 12 made
# with debootstrap (no image registry is needed), and smoke-tests the images
# against the private test ZooKeeper (tools/test-env.sh):
#
#   1. launcher  the nodepool-launcher image, on a fake provider, fulfils a
#                node request made by a Zuul-like client (kazoo), and its web
#                app lists the node;
#   2. cli       the nodepool image's `nodepool list` shows that node,
#                allocated to the request;
#   3. builder   the nodepool-builder image runs a build with the builder
#                tests' fake dib-cmd (crates/np-builder/tests/fake-dib): the
#                image files appear and the nodepool image's
#                `nodepool dib-image-list` shows the build ready.
#
#   tools/container-smoke.sh
#
# Runs as root and installs what is missing: podman,
# buildah, runc, debootstrap (Debian's packages) and what tools/setup.sh
# installs (ZooKeeper, the venv with kazoo). The Rust toolchain is the
# host's own (`rustc --print sysroot`; the machine's rustup toolchain): it
# must be the workspace's rust-version or newer. Debian 12's rustc is too
# old for the workspace, and no Rust image can be pulled here.
#
# What it makes, all under .test-env/container/ (git ignores .test-env):
#   debian-bookworm.tar   the debootstrapped Debian 12 (minbase), kept so
#                         that later runs skip debootstrap; delete it to
#                         make a new one
#   containers.conf       podman settings for this script only (below)
#   run-<pid>/            configurations, images dir and container logs of a
#                         run (removed when every step passed)
# and these local images (podman's storage; later runs reuse them):
#   localhost/nodepool-rs/debootstrap:bookworm  the tarball, imported
#   localhost/nodepool-rs/debian:bookworm       + the host's local CA
#                         certificates (/usr/local/share/ca-certificates)
#                         and a pip.conf that trusts the system bundle: a
#                         network that intercepts TLS needs them for cargo,
#                         apt and pip in the builds. These images are for
#                         this machine only.
#   localhost/nodepool-rs/rust:<version>-bookworm  the debian image + gcc +
#                         the host's Rust toolchain (its bin, lib, libexec)
#   localhost/nodepool-rs/{nodepool,nodepool-launcher,nodepool-builder}:smoke
#                         the Dockerfile's targets, built with
#                         --build-arg RUST_IMAGE=<rust image>
#                         --build-arg BASE_IMAGE=<debian image>
# Crates come from crates.io during the build (the Dockerfile's cache mount
# keeps them, and the target directory, for the next build).
#
# The builds run under `nice -n ${NP_SMOKE_NICE:-15}` with --cpu-shares 128:
# a cold build of the release binaries is CPU-heavy and the machine may be
# busy with other work.
#
# Exit status: 0 when every step passed; 1 when a step failed (its log's
# tail is printed); 2 when a step cannot run on this machine (the message
# names the step and says why).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
STATE="$REPO/.test-env/container"
NICE="${NP_SMOKE_NICE:-15}"
MIRROR="${NP_SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
TARBALL="$STATE/debian-$SUITE.tar"
IMG=localhost/nodepool-rs
TIMEOUT="${NP_SMOKE_TIMEOUT:-180}"

say() { printf 'container-smoke: %s\n' "$*"; }
fail() {
    printf 'container-smoke: FAILED: %s\n' "$*" >&2
    exit 1
}
# cannot STEP WHY...: the step cannot run on this machine.
cannot() {
    local step=$1
    shift
    printf 'container-smoke: CANNOT RUN %s on this machine: %s\n' "$step" "$*" >&2
    exit 2
}
# run LOG CMD...: CMD with its output in LOG; on failure, LOG's tail.
run() {
    local log=$1
    shift
    printf '+ %s\n' "$*" >>"$log"
    if ! "$@" >>"$log" 2>&1; then
        printf 'container-smoke: FAILED in step %s: %s\n--- last lines of %s ---\n' "$CURRENT" "$*" "$log" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}
now() { date +%s; }
step() {
    CURRENT=$1
    STEP_START=$(now)
    say "== $1"
}
done_step() { say "   $CURRENT: $* ($(($(now) - STEP_START)) s)"; }

mkdir -p "$STATE"
RUN="$STATE/run-$$"
rm -rf "$RUN"
mkdir -p "$RUN"
LOG="$RUN/smoke.log"
: >"$LOG"
CURRENT=setup
LAUNCHER_CTR="np-smoke-launcher-$$"
BUILDER_CTR="np-smoke-builder-$$"
zk_started=0
CHROOT=""
passed=0

cleanup() {
    local rc=$?
    for c in "$LAUNCHER_CTR" "$BUILDER_CTR"; do
        if podman container exists "$c" 2>/dev/null; then
            podman logs "$c" >"$RUN/$c.log" 2>&1 || true
            podman rm -f -t 5 "$c" >/dev/null 2>&1 || true
        fi
    done
    if [ "$zk_started" = 1 ]; then
        tools/test-env.sh stop >/dev/null 2>&1 || true
    elif [ -n "$CHROOT" ]; then
        # The server goes on for others: this run's chroots go.
        "$PY" - "127.0.0.1:$ZK_PORT" "$CHROOT" >>"$LOG" 2>&1 <<'EOF' || true
import sys
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1])
zk.start(timeout=30)
for suffix in ("-launcher", "-builder"):
    try:
        zk.delete(sys.argv[2] + suffix, recursive=True)
    except Exception as e:
        print("could not remove %s: %r" % (sys.argv[2] + suffix, e))
zk.stop()
EOF
    fi
    if [ "$rc" = 0 ]; then
        rm -rf "$RUN"
    else
        say "the run's configurations and container logs are in $RUN" >&2
    fi
}
trap cleanup EXIT

# ------------------------------------------------------------------ setup
step setup
[ "$(id -u)" -eq 0 ] || cannot setup "run it as root: it installs packages and uses rootful podman (the images and the build's cache are root's)"
command -v apt-get >/dev/null 2>&1 || cannot setup "no apt-get: the script installs podman, buildah, runc and debootstrap from Debian's packages"
missing=()
for p in podman buildah runc debootstrap curl; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -q >>"$LOG" 2>&1 || cannot setup "apt-get update failed (are Debian's package mirrors reachable?); see $LOG"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$LOG" 2>&1 \
        || cannot setup "apt-get install ${missing[*]} failed; see $LOG"
fi
tools/setup.sh

# podman's settings for this script (CONTAINERS_CONF replaces the system's
# containers.conf for these commands only). Why each:
# * runtime runc: crun refuses to start containers on a host whose cgroups
#   are in hybrid mode (v1 controllers and a v2 hierarchy mounted), as
#   here ("cgroups in hybrid mode not supported").
# * ulimits no higher than podman's own: without CAP_SYS_RESOURCE (as in a
#   sandbox) the OCI runtime cannot raise them to podman's defaults
#   ("setrlimit RLIMIT_NOFILE: Operation not permitted"), and podman lowers
#   its own process limit to 32768.
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nofile" -gt 1048576 ] && nofile=1048576
nproc=$(ulimit -Hu)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
cat >"$STATE/containers.conf" <<EOF
# Written by tools/container-smoke.sh; used only by its podman commands.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$STATE/containers.conf"

# The Rust toolchain of the build stage.
command -v rustc >/dev/null 2>&1 || cannot "build (the Dockerfile's build stage)" "no rustc on this machine: the build stage uses the host's Rust toolchain (Debian 12's rustc is too old and no Rust image can be pulled)"
SYSROOT="$(rustc --print sysroot)"
RUST_VERSION="$(rustc --version | awk '{ print $2 }')"
NEED="$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
if [ -n "$NEED" ] && [ "$(printf '%s\n%s\n' "$NEED" "$RUST_VERSION" | sort -V | head -n 1)" != "$NEED" ]; then
    cannot "build (the Dockerfile's build stage)" "the host's rustc is $RUST_VERSION; the workspace needs $NEED or newer"
fi
for d in bin lib; do
    [ -d "$SYSROOT/$d" ] || cannot "build (the Dockerfile's build stage)" "the Rust toolchain at $SYSROOT has no $d/ to copy into the build image"
done
done_step "podman $(podman --version | awk '{ print $3 }'), rustc $RUST_VERSION ($SYSROOT)"

# ------------------------------------------------------------------ base
step base
if [ ! -s "$TARBALL" ]; then
    root="$STATE/rootfs-$$"
    rm -rf "$root"
    say "debootstrap $SUITE from $MIRROR (once; the tarball is kept)"
    if ! nice -n "$NICE" debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >>"$LOG" 2>&1; then
        rm -rf "$root"
        cannot base "debootstrap $SUITE from $MIRROR failed (is the Debian mirror reachable?); see $LOG"
    fi
    rm -f "$root"/var/cache/apt/archives/*.deb
    rm -rf "$root"/var/lib/apt/lists/*
    # The suites of Debian's own images: security and point updates too.
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
    run "$LOG" tar --numeric-owner -C "$root" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$root"
    podman rmi -f "$IMG/debootstrap:$SUITE" >/dev/null 2>&1 || true
fi
if ! podman image exists "$IMG/debootstrap:$SUITE"; then
    run "$LOG" podman import "$TARBALL" "$IMG/debootstrap:$SUITE"
fi
# Can containers run here at all?
if ! out=$(podman run --rm --network host "$IMG/debootstrap:$SUITE" true 2>&1); then
    cannot "every container step" "podman cannot start a container: $out"
fi
trust="$RUN/trust"
mkdir -p "$trust/ca-certificates"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$trust/ca-certificates/"
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$trust/pip.conf"
cat >"$trust/Containerfile" <<EOF
FROM $IMG/debootstrap:$SUITE
COPY ca-certificates/ /usr/local/share/ca-certificates/
COPY pip.conf /etc/pip.conf
EOF
run "$LOG" podman build --pull=never -t "$IMG/debian:$SUITE" "$trust"
done_step "$IMG/debian:$SUITE from $TARBALL"

# ------------------------------------------------------------------ rust
step rust
RUST_IMAGE="$IMG/rust:$RUST_VERSION-$SUITE"
cat >"$RUN/rust.Containerfile" <<EOF
FROM $IMG/debian:$SUITE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
 && rm -rf /var/lib/apt/lists/*
COPY bin /usr/local/rust/bin
COPY lib /usr/local/rust/lib
$([ -d "$SYSROOT/libexec" ] && echo "COPY libexec /usr/local/rust/libexec")
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN rustc --version && cargo --version
EOF
run "$LOG" nice -n "$NICE" podman build --network host --pull=never -f "$RUN/rust.Containerfile" -t "$RUST_IMAGE" "$SYSROOT"
done_step "$RUST_IMAGE"

# ------------------------------------------------------------------ build
step build
if ! curl -fsS -o /dev/null --max-time 30 https://index.crates.io/config.json 2>>"$LOG"; then
    cannot build "crates.io is not reachable from this machine, and the build stage fetches the crates of Cargo.lock from it"
fi
for target in nodepool nodepool-launcher nodepool-builder; do
    t0=$(now)
    run "$LOG" nice -n "$NICE" podman build --network host --pull=never --cpu-shares 128 \
        --build-arg RUST_IMAGE="$RUST_IMAGE" --build-arg BASE_IMAGE="$IMG/debian:$SUITE" \
        --target "$target" -t "$IMG/$target:smoke" .
    say "   $IMG/$target:smoke built in $(($(now) - t0)) s, $(podman image inspect --format '{{.Size}}' "$IMG/$target:smoke" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
done
done_step "3 targets"

# ------------------------------------------------------------------ ZooKeeper
step zookeeper
if ! tools/test-env.sh status >/dev/null 2>&1; then
    tools/test-env.sh start >>"$LOG" 2>&1 || cannot zookeeper "tools/test-env.sh start failed; see $LOG"
    zk_started=1
fi
# shellcheck source=/dev/null
source .test-env/env.sh
ZK_PORT="${NP_ZK_HOSTS%%,*}"
ZK_PORT="${ZK_PORT##*:}"
PY="$NP_PYTHON"
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
done_step "127.0.0.1:$ZK_PORT"

# Each run uses chroots of its own, so nothing else on the server is touched.
CHROOT="/nodepool-container-smoke-$$-$RANDOM"

# ------------------------------------------------------------------ launcher
step launcher
WEB_PORT=$(free_port)
cat >"$RUN/launcher.yaml" <<EOF
zookeeper-servers:
  - host: 127.0.0.1
    port: $ZK_PORT
    chroot: $CHROOT-launcher
webapp:
  port: $WEB_PORT
  listen_address: 127.0.0.1
labels:
  - name: smoke-node
    min-ready: 0
providers:
  - name: smoke-fake
    driver: fake
    rate: 0.01
    cloud: fake
    cloud-images:
      - name: fake-image
    pools:
      - name: main
        max-servers: 2
        labels:
          - name: smoke-node
            cloud-image: fake-image
            flavor-name: Fake Flavor
EOF
run "$LOG" podman run -d --name "$LAUNCHER_CTR" --network host \
    -v "$RUN/launcher.yaml:/etc/nodepool/nodepool.yaml:ro" "$IMG/nodepool-launcher:smoke"
# A Zuul-like request (zk-protocol 5.1): create it, wait until it is
# fulfilled, print "<request> <node>".
if ! answer=$("$PY" - "127.0.0.1:$ZK_PORT$CHROOT-launcher" "$TIMEOUT" 2>>"$LOG" <<'EOF'
import json, sys, time, uuid
from kazoo.client import KazooClient

hosts, timeout = sys.argv[1], float(sys.argv[2])
zk = KazooClient(hosts=hosts)
zk.start(timeout=30)
now = time.time()
req = {
    "requestor_data": {"job_uuid": uuid.uuid4().hex, "job_name": "container-smoke",
                       "tenant_name": "smoke", "pipeline_name": "check"},
    "node_types": ["smoke-node"], "requestor": "container-smoke",
    "created_time": now, "provider": None, "state": "requested", "state_time": now,
    "relative_priority": 0, "event_id": uuid.uuid4().hex, "tenant_name": "smoke",
}
path = zk.create("/nodepool/requests/100-", json.dumps(req).encode(), sequence=True, makepath=True)
deadline = time.time() + timeout
while time.time() < deadline:
    data = json.loads(zk.get(path)[0])
    if data["state"] == "fulfilled":
        print(path.rsplit("/", 1)[1], data["nodes"][0])
        zk.stop()
        sys.exit(0)
    if data["state"] == "failed":
        print("request failed: %s" % data, file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)
print("request not fulfilled in %.0f s: %s" % (timeout, data), file=sys.stderr)
sys.exit(1)
EOF
); then
    podman logs --tail 40 "$LAUNCHER_CTR" >&2 || true
    tail -n 5 "$LOG" >&2
    fail "launcher: the request was not fulfilled"
fi
read -r REQUEST NODE <<<"$answer"
say "   request $REQUEST fulfilled with node $NODE"
if ! curl -fsS --max-time 10 -H 'Accept: application/json' "http://127.0.0.1:$WEB_PORT/node-list" \
    >"$RUN/node-list.json" 2>>"$LOG" \
    || ! "$PY" -c 'import json, sys; sys.exit(not any(r.get("id") == sys.argv[2] and r.get("provider") == "smoke-fake" for r in json.load(open(sys.argv[1]))))' \
        "$RUN/node-list.json" "$NODE"; then
    cat "$RUN/node-list.json" >&2 || true
    fail "launcher: its web app's /node-list does not show node $NODE"
fi
done_step "served request $REQUEST with node $NODE; /node-list on port $WEB_PORT shows it"
passed=$((passed + 1))

# ------------------------------------------------------------------ cli
step cli
if ! podman run --rm --network host -v "$RUN/launcher.yaml:/etc/nodepool/nodepool.yaml:ro" \
    "$IMG/nodepool:smoke" nodepool list --detail >"$RUN/list.txt" 2>>"$LOG"; then
    tail -n 5 "$LOG" >&2
    fail "cli: nodepool list failed"
fi
if ! grep "| $NODE " "$RUN/list.txt" | grep -q "$REQUEST"; then
    cat "$RUN/list.txt" >&2
    fail "cli: nodepool list does not show node $NODE allocated to $REQUEST"
fi
grep "| $NODE " "$RUN/list.txt" | cut -c1-120 | sed 's/^/container-smoke:    /'
done_step "nodepool list shows node $NODE allocated to $REQUEST"
passed=$((passed + 1))
podman rm -f -t 10 "$LAUNCHER_CTR" >/dev/null

# ------------------------------------------------------------------ builder
step builder
mkdir -p "$RUN/images" "$RUN/logs"
cat >"$RUN/builder.yaml" <<EOF
zookeeper-servers:
  - host: 127.0.0.1
    port: $ZK_PORT
    chroot: $CHROOT-builder
images-dir: /var/lib/nodepool/images
build-log-dir: /var/log/nodepool/builds
diskimages:
  - name: smoke-image
    dib-cmd: /usr/local/bin/fake-dib
    elements: [vm]
    formats: [qcow2]
EOF
run "$LOG" podman run -d --name "$BUILDER_CTR" --network host \
    -v "$RUN/builder.yaml:/etc/nodepool/nodepool.yaml:ro" \
    -v "$REPO/crates/np-builder/tests/fake-dib:/usr/local/bin/fake-dib:ro" \
    -v "$RUN/images:/var/lib/nodepool/images" -v "$RUN/logs:/var/log/nodepool/builds" \
    "$IMG/nodepool-builder:smoke"
deadline=$(($(now) + TIMEOUT))
build=""
while [ "$(now)" -lt "$deadline" ]; do
    if podman run --rm --network host -v "$RUN/builder.yaml:/etc/nodepool/nodepool.yaml:ro" \
        "$IMG/nodepool:smoke" nodepool dib-image-list >"$RUN/dib-image-list.txt" 2>>"$LOG"; then
        build=$(awk -F'|' '$3 ~ /smoke-image/ && $6 ~ /ready/ { gsub(/ /, "", $2); print $2; exit }' "$RUN/dib-image-list.txt")
        [ -n "$build" ] && break
    fi
    if ! podman container exists "$BUILDER_CTR" || [ "$(podman inspect --format '{{.State.Running}}' "$BUILDER_CTR")" != true ]; then
        podman logs --tail 40 "$BUILDER_CTR" >&2 || true
        fail "builder: the nodepool-builder container stopped"
    fi
    sleep 2
done
if [ -z "$build" ]; then
    cat "$RUN/dib-image-list.txt" >&2 || true
    podman logs --tail 40 "$BUILDER_CTR" >&2 || true
    fail "builder: no ready build of smoke-image in $TIMEOUT s"
fi
if [ ! -s "$RUN/images/$build.qcow2" ] || [ ! -s "$RUN/images/$build.qcow2.sha256" ]; then
    fail "builder: $build is ready but $RUN/images has no $build.qcow2 with its checksum"
fi
grep -q '^Exit code: 0' "$RUN/logs/$build.log" 2>/dev/null \
    || fail "builder: the build log $RUN/logs/$build.log does not end with 'Exit code: 0'"
grep -q '^fake-dib: -x -t qcow2 ' "$RUN/logs/$build.log" \
    || fail "builder: the build log does not show the fake dib-cmd's command line"
# The image's own diskimage-builder (the fake stands in for it above).
dib_version=$(podman run --rm "$IMG/nodepool-builder:smoke" disk-image-create --version 2>>"$LOG") \
    || fail "builder: the image's disk-image-create does not run"
done_step "diskimage-builder $dib_version in the image; build $build ready: fake dib-cmd ran (log: Exit code: 0), $build.qcow2 written, dib-image-list shows it"
passed=$((passed + 1))
podman rm -f -t 10 "$BUILDER_CTR" >/dev/null

say "$passed passed, 0 failed"
