#!/usr/bin/env bash
# One real diskimage-builder build through nodepool-builder, end to end:
# builds debian-minimal (vm, simple-init) with diskimage-builder 3.43.0,
# uploads it to a fake provider, and prints what `nodepool dib-image-list`
# and `nodepool image-list` show, the build time and the builder's RSS.
# Not part of the test suite: it needs root, loop devices, a Debian mirror
# and about 3 minutes and 2.5 GB of disk.
#
#   tools/real-dib-build.sh [WORKDIR]          (default /var/tmp/np-real-dib)
#
# Environment:
#   SHIMS_DIR       directory with kpartx and dmsetup replacements, installed
#                   into /usr/local/sbin when the kernel has no device-mapper
#   EXTRA_ELEMENTS  more elements (e.g. one that adds a proxy's CA)
#   ELEMENTS_DIR    where those elements live (elements-dir)
# The Debian mirror is the one apt uses on this machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
W=${1:-/var/tmp/np-real-dib}
t() { echo "[$(date +%T)] $*"; }
mkdir -p "$W"/{images,logs,tmp,cache}

t "host packages"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    debootstrap kpartx squashfs-tools dosfstools gdisk parted fdisk e2fsprogs qemu-utils sudo procps util-linux >/dev/null
t "diskimage-builder"
[ -x "$W/venv/bin/disk-image-create" ] || { python3 -m venv "$W/venv"; "$W/venv/bin/pip" install -q diskimage-builder==3.43.0; }
if [ -n "${SHIMS_DIR:-}" ] && ! /usr/sbin/dmsetup version >/dev/null 2>&1; then
    install -m755 "$SHIMS_DIR/kpartx" "$SHIMS_DIR/dmsetup" /usr/local/sbin/
fi
# The mirrors apt uses here (deb822 sources or sources.list).
uris() {
    { awk '/^URIs:/{for(i=2;i<=NF;i++)print $i}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
      awk '$1=="deb"{for(i=2;i<=NF;i++) if($i ~ /^(http|https|file):/){print $i; break}}' \
          /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } | sed 's#/*$##'
}
MAIN=$(uris | grep -v -- '-security' | grep '/debian$' | head -1 || true)
SEC=$(uris | grep -- '/debian-security$' | head -1 || true)
[ -n "$MAIN" ] || { echo "no Debian mirror found in apt's sources"; exit 1; }

tools/test-env.sh start >/dev/null
# shellcheck disable=SC1091
source .test-env/env.sh
host=${NP_ZK_HOSTS%:*}; port=${NP_ZK_HOSTS##*:}
elements="debian-minimal, vm, simple-init"
for e in ${EXTRA_ELEMENTS:-}; do elements="$elements, $e"; done
cat > "$W/nodepool.yaml" <<YAML
zookeeper-servers:
  - host: $host
    port: $port
    chroot: /real-dib-$(date +%s)
images-dir: $W/images
build-log-dir: $W/logs
${ELEMENTS_DIR:+elements-dir: $ELEMENTS_DIR}
labels:
  - name: debian
diskimages:
  - name: debian
    dib-cmd: $W/venv/bin/disk-image-create
    elements: [$elements]
    release: bookworm
    env-vars:
      PATH: $W/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      TMPDIR: $W/tmp
      DIB_IMAGE_CACHE: $W/cache
      DIB_DISTRIBUTION_MIRROR: $MAIN
      DIB_DEBIAN_SECURITY_MIRROR: $SEC
      DIB_INSTALLTYPE_glean: pip
providers:
  - name: fake-provider
    driver: fake
    cloud: fake
    diskimages:
      - name: debian
    pools:
      - name: main
        labels:
          - name: debian
            diskimage: debian
            min-ram: 1024
YAML
cargo build -q --release -p np-builder -p np-cli
t "nodepool-builder"
start=$(date +%s)
./target/release/nodepool-builder -c "$W/nodepool.yaml" > "$W/builder.out" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true' EXIT
peak=0
for _ in $(seq 1 1200); do
    rss=$(ps -o rss= -p $pid | tr -d ' ')
    [ -n "$rss" ] && [ "$rss" -gt "$peak" ] && peak=$rss
    ./target/release/nodepool -c "$W/nodepool.yaml" image-list 2>/dev/null | grep -q ' ready ' && break
    sleep 1
done
t "build and upload took $(( $(date +%s) - start ))s; builder peak RSS ${peak} KiB"
./target/release/nodepool -c "$W/nodepool.yaml" dib-image-list
./target/release/nodepool -c "$W/nodepool.yaml" image-list
ls -la "$W/images"
qemu-img info "$W"/images/debian-*.qcow2 | head -5
