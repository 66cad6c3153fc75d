#!/usr/bin/env bash
# The main job on a fresh machine: installs what is missing, starts a local
# ZooKeeper on loopback, and runs nodepool-launcher in the foreground with the
# example configuration (etc/nodepool/nodepool.yaml: a simulated cloud, so no
# cloud account is needed). Ctrl-C stops the launcher and ZooKeeper.
#   tools/run-launcher.sh [extra nodepool-launcher arguments]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
tools/setup.sh
started=0
if ! tools/test-env.sh status >/dev/null 2>&1; then
    tools/test-env.sh start
    started=1
fi
cleanup() { [ "$started" = 1 ] && tools/test-env.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
# shellcheck source=/dev/null
source .test-env/env.sh
port="${NP_ZK_HOSTS##*:}"
cfg=".test-env/nodepool.yaml"
sed "s/port: 2181/port: ${port}/" etc/nodepool/nodepool.yaml >"$cfg"
cargo build --release -q -p np-launcher
echo "nodepool-launcher: ZooKeeper at 127.0.0.1:${port}, config ${cfg}"
target/release/nodepool-launcher -c "$cfg" -f "$@"
