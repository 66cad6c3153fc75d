#!/usr/bin/env bash
# A real, minimal OpenStack (Debian 12's Zed packages) on 127.0.0.1 for the
# OpenStack driver's integration tests.
#
#   tools/openstack-env.sh start    install what is missing (apt), start the
#                                   stack, wait until it is usable, seed it,
#                                   write .openstack-env/{clouds.yaml,env.sh}
#   tools/openstack-env.sh stop     stop every process it started (pid files);
#                                   data stays, so the next start is fast
#   tools/openstack-env.sh status   exit 0 if all runs, 3 if nothing, 1 if part
#   tools/openstack-env.sh reset    stop and remove all data (next start is a
#                                   first start again)
#   tools/openstack-env.sh install  only install the Debian packages
#   tools/openstack-env.sh probe    REST checks against the running stack;
#                                   writes .openstack-env/observed.md
#   tools/openstack-env.sh rss      resident memory of the stack
#
# Works as root with no stdin (CI). Everything lives in <repo>/.openstack-env/
# (git ignores it): etc/ (configs), data/ (MariaDB, RabbitMQ, keys, images,
# Neutron stub state), run/ (pid files, MariaDB socket), logs/, bin/ (the
# Python helpers this script writes), clouds.yaml, env.sh, observed.md.
#
# What runs (all on 127.0.0.1 only; each in its own process group):
#   mariadb       13306  MariaDB (SQLite makes Nova fail with "database is locked")
#   epmd          14369  Erlang port mapper for RabbitMQ
#   rabbitmq      15679  RabbitMQ AMQP (distribution port 25679), no plugins
#   keystone      15000  Keystone (uwsgi), identity v3 at /v3
#   neutron       19696  a small Neutron v2.0 stub (Python, stateful): network
#                        "private" with subnet 127.10.0.0/24, ports, quotas;
#                        no router:external network, no floating IPs
#   cinder-api    18776  Cinder API (catalog type volumev3, /v3/<project>)
#   cinder-scheduler, cinder-volume (backend "fake": Cinder's own
#                        FakeLoggingVolumeDriver from python3-cinder, which
#                        records volumes and attachments and stores nothing;
#                        no LVM, no iSCSI target)
#   placement     18778  Placement (uwsgi)
#   glance        19292  Glance API, file store
#   nova-api      18774  Nova API (uwsgi), /v2.1
#   nova-conductor, nova-scheduler, nova-compute (host np-compute-1, driver
#                        fake.FakeDriver from python3-nova: servers become
#                        ACTIVE in about a second and run nothing)
#
# Cloud "devstack" in clouds.yaml: user admin / password secret, project
# admin, domain Default, region RegionOne, auth_url http://127.0.0.1:15000/v3.
# Seeded: flavors np-small (1 vcpu, 512 MB, 1 GB disk) and np-medium (2 vcpu,
# 2048 MB, 10 GB), a public active raw image "cirros" (4 KiB of zeros),
# default quotas (10 instances, 20 cores, 51200 MB RAM; Cinder's: 10 volumes,
# 1000 GB). Blank volumes can be created and attached to servers (Nova's
# fake hypervisor attaches nothing; both services record the attachment);
# boot from volume does not work: Cinder would copy the image onto an LVM
# device the fake backend does not have. Servers booted with
# networks [{"uuid": <id of "private">}] or "auto" get one address
# 127.10.0.N (loopback on purpose: nothing a test may connect to leaves the
# machine); with networks "none" they get no address.
#
# env.sh exports NP_OS_CLOUDS (absolute path of clouds.yaml), NP_OS_CLOUD
# (devstack) and NP_OPENSTACK_ENV_DIR.
#
# Knobs (environment): NP_OS_START_TIMEOUT (seconds per component, default
# 180), NP_OS_KEEP_ON_FAILURE=1 (do not stop what started when start fails),
# NP_OS_KEEP_SERVERS=1 (start does not delete servers left from before).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
S="$REPO/.openstack-env"
ETC="$S/etc"
DATA="$S/data"
RUN="$S/run"
LOGS="$S/logs"
BIN="$S/bin"
PY=/usr/bin/python3 # not a pyenv shim: the OpenStack services are Debian's
# A Unix socket path must stay under 108 bytes; a deep checkout gets one in /tmp.
SOCK="$RUN/mysql.sock"
if [ ${#SOCK} -gt 100 ]; then
    SOCK="/tmp/np-openstack-env-$(printf '%s' "$S" | md5sum | cut -c1-12).sock"
fi

P_KEYSTONE=15000
P_NOVA=18774
P_PLACEMENT=18778
P_GLANCE=19292
P_CINDER=18776
P_NEUTRON=19696
P_MYSQL=13306
P_AMQP=15679
P_RABBIT_DIST=25679
P_EPMD=14369
REGION=RegionOne
ADMIN_PASSWORD=secret
PROJECT="admin"
DB_USER=os
DB_PASS=os
COMPUTE_HOST=np-compute-1
TIMEOUT="${NP_OS_START_TIMEOUT:-180}"

PKGS=(keystone nova-api nova-conductor nova-scheduler placement-api glance-api
    rabbitmq-server mariadb-server mariadb-client python3-pymysql
    uwsgi-core uwsgi-plugin-python3 cinder-api cinder-scheduler cinder-volume)

# Start order; stop goes the other way.
COMPONENTS=(mariadb epmd rabbitmq keystone neutron placement glance
    cinder-api cinder-scheduler cinder-volume
    nova-api nova-conductor nova-scheduler nova-compute)

# Every process we start carries this in its environment; a pid from a pid
# file counts as ours only if it does (so a recycled pid is never killed).
export NP_OPENSTACK_ENV="$S"
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP VIRTUAL_ENV || true

say() { printf 'openstack-env: %s\n' "$*"; }
die() {
    printf 'openstack-env: ERROR: %s\n' "$*" >&2
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- processes

pidfile() { printf '%s/%s.pid' "$RUN" "$1"; }
logfile() { printf '%s/%s.log' "$LOGS" "$1"; }

# Print the pid of component $1 if it runs and is ours.
running_pid() {
    local f pid
    f="$(pidfile "$1")"
    [ -f "$f" ] || return 1
    pid="$(cat "$f" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/environ" ] || return 1
    # A zombie is not running.
    local line st
    { read -r line <"/proc/$pid/stat"; } 2>/dev/null || return 1
    line="${line##*) }"
    read -r st _ <<<"$line"
    [ "$st" != Z ] || return 1
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "NP_OPENSTACK_ENV=$S" || return 1
    printf '%s\n' "$pid"
}

# Pids of the live (not zombie) processes in process group $1.
group_pids() {
    local want="$1" f line st pg
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        line="${line##*) }" # the fields after "(comm) ": state ppid pgrp ...
        read -r st _ pg _ <<<"$line"
        if [ "$pg" = "$want" ] && [ "$st" != Z ]; then
            f="${f#/proc/}"
            printf '%s\n' "${f%/stat}"
        fi
    done
}

# launch NAME CMD... : run CMD in its own session (so its process group is
# its pid), stdin from /dev/null, output to logs/NAME.log, pid to run/NAME.pid.
launch() {
    local name="$1"
    shift
    local log
    log="$(logfile "$name")"
    printf '\n==== %s start %s\n' "$name" "$(date -Is)" >>"$log"
    setsid "$@" </dev/null >>"$log" 2>&1 &
    echo $! >"$(pidfile "$name")"
}

# stop_components NAME...: TERM their process groups at once, wait up to
# 20 s for them to end, then KILL what is left.
stop_components() {
    local name pid i left names=() pids=()
    for name in "$@"; do
        if pid="$(running_pid "$name")"; then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            names+=("$name")
            pids+=("$pid")
        else
            rm -f "$(pidfile "$name")"
        fi
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    for i in $(seq 1 100); do
        left=""
        for pid in "${pids[@]}"; do
            [ -n "$(group_pids "$pid")" ] && left=1 && break
        done
        [ -z "$left" ] && break
        sleep 0.2
    done
    for i in "${!pids[@]}"; do
        name="${names[$i]}" pid="${pids[$i]}"
        if [ -n "$(group_pids "$pid")" ]; then
            say "$name (pid $pid) did not stop in 20s; killing it"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$(pidfile "$name")"
        say "stopped $name (pid $pid)"
    done
}

# The OpenStack services first, then what they use.
stop_all() {
    stop_components nova-compute nova-scheduler nova-conductor nova-api \
        cinder-volume cinder-scheduler cinder-api glance placement neutron keystone
    stop_components rabbitmq
    stop_components epmd mariadb
}

# fail COMPONENT MESSAGE: name the component and its log, show the log's tail.
fail() {
    local name="$1"
    shift
    local log
    log="$(logfile "$name")"
    printf 'openstack-env: ERROR: %s: %s (log: %s)\n' "$name" "$*" "$log" >&2
    if [ -f "$log" ]; then
        printf -- '---- last lines of %s\n' "$log" >&2
        tail -n 25 "$log" >&2 || true
        printf -- '----\n' >&2
    fi
    exit 1
}

# Fail if component $1 is no longer running.
alive_or_fail() {
    running_pid "$1" >/dev/null || fail "$1" "the process exited"
}

# wait_http NAME URL: wait until URL answers with a status below 500.
wait_http() {
    local name="$1" url="$2" t0
    t0="$(now)"
    while :; do
        if "$PY" "$BIN/osctl.py" http-ok "$url" 2>/dev/null; then
            say "$name up at $url after $(since "$t0")s"
            return 0
        fi
        alive_or_fail "$name"
        if awk -v a="$t0" -v b="$(now)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a > t) }'; then
            fail "$name" "no answer from $url after ${TIMEOUT}s"
        fi
        sleep 0.5
    done
}

# wait_tcp NAME PORT
wait_tcp() {
    local name="$1" port="$2" t0
    t0="$(now)"
    while ! "$PY" "$BIN/osctl.py" tcp-ok "$port" 2>/dev/null; do
        alive_or_fail "$name"
        if awk -v a="$t0" -v b="$(now)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a > t) }'; then
            fail "$name" "nothing listens on 127.0.0.1:$port after ${TIMEOUT}s"
        fi
        sleep 0.5
    done
    say "$name listening on 127.0.0.1:$port after $(since "$t0")s"
}

# run_step NAME CMD...: run a one-shot command, output to logs/NAME.log.
run_step() {
    local name="$1" t0
    shift
    t0="$(now)"
    printf '\n==== %s %s: %s\n' "$name" "$(date -Is)" "$*" >>"$(logfile "$name")"
    if ! "$@" </dev/null >>"$(logfile "$name")" 2>&1; then
        fail "$name" "command failed: $*"
    fi
    say "$name done in $(since "$t0")s"
}

# ----------------------------------------------------------------- install

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# The system services these packages ship, which must not run on their
# default ports because of us.
SYSTEM_SERVICES=(mariadb rabbitmq-server keystone nova-api nova-conductor
    nova-scheduler placement-api glance-api epmd cinder-api cinder-scheduler cinder-volume)

do_install() {
    local missing=() p t0
    for p in "${PKGS[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "packages already installed (${PKGS[*]})"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "packages missing (${missing[*]}); run as root to install them"
    t0="$(now)"
    say "installing: ${missing[*]}"

    # Debian would start each service on its default port at install time;
    # make policy-rc.d deny that for the duration of the install.
    local policy=/usr/sbin/policy-rc.d saved="" created=""
    if [ -e "$policy" ]; then
        local rc=0
        "$policy" mariadb start >/dev/null 2>&1 || rc=$?
        if [ "$rc" != 101 ]; then
            saved="$policy.openstack-env-saved"
            mv "$policy" "$saved"
        fi
    fi
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# tools/openstack-env.sh: no service starts during the install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created=1
    fi
    local active_before=""
    if [ -d /run/systemd/system ]; then
        for p in "${SYSTEM_SERVICES[@]}"; do
            systemctl is-active --quiet "$p" 2>/dev/null && active_before="$active_before $p"
        done
    fi

    local rc=0
    (
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q -o DPkg::Lock::Timeout=300 &&
            apt-get install -y -q --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                -o DPkg::Lock::Timeout=300 \
                "${missing[@]}"
    ) </dev/null >"$S/install.log" 2>&1 || rc=$?

    [ -n "$created" ] && rm -f "$policy"
    [ -n "$saved" ] && mv "$saved" "$policy"

    # Stop any system service that started anyway (systemd hosts).
    if [ -d /run/systemd/system ]; then
        for p in "${SYSTEM_SERVICES[@]}"; do
            case " $active_before " in *" $p "*) continue ;; esac
            if systemctl is-active --quiet "$p" 2>/dev/null; then
                say "stopping system service $p that the install started"
                systemctl stop "$p" || true
            fi
        done
    fi
    if [ "$rc" != 0 ]; then
        tail -n 30 "$S/install.log" >&2
        die "apt-get install failed (exit $rc); log: $S/install.log"
    fi
    for p in "${PKGS[@]}"; do
        pkg_installed "$p" || die "package $p is still not installed; log: $S/install.log"
    done
    say "installed ${#missing[@]} packages in $(since "$t0")s (log: $S/install.log)"
}

# ------------------------------------------------------------------ config

write_configs() {
    mkdir -p "$ETC/keystone" "$ETC/nova" "$ETC/placement" "$ETC/glance" "$ETC/rabbitmq" "$ETC/cinder" \
        "$DATA" "$RUN" "$LOGS" "$BIN" "$DATA/lock" "$DATA/nova-state" "$DATA/images" \
        "$DATA/glance-staging" "$DATA/glance-tasks" "$DATA/rabbit" "$DATA/cinder"
    local db="mysql+pymysql://$DB_USER:$DB_PASS@127.0.0.1:$P_MYSQL"
    local ks="http://127.0.0.1:$P_KEYSTONE/v3"
    local auth
    auth="auth_url = $ks
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = $PROJECT
username = admin
password = $ADMIN_PASSWORD
region_name = $REGION"

    cat >"$ETC/keystone/keystone.conf" <<EOF
[DEFAULT]
log_file = $LOGS/keystone-app.log
[database]
connection = $db/keystone?charset=utf8
[fernet_tokens]
key_repository = $DATA/fernet-keys
[credential]
key_repository = $DATA/credential-keys
[token]
provider = fernet
expiration = 86400
[oslo_policy]
enforce_new_defaults = false
enforce_scope = false
EOF

    cat >"$ETC/placement/placement.conf" <<EOF
[DEFAULT]
log_file = $LOGS/placement-app.log
[api]
auth_strategy = keystone
[keystone_authtoken]
www_authenticate_uri = $ks
$auth
[placement_database]
connection = $db/placement?charset=utf8
EOF

    cp /etc/glance/glance-api-paste.ini "$ETC/glance/glance-api-paste.ini"
    cat >"$ETC/glance/glance-api.conf" <<EOF
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $P_GLANCE
workers = 1
log_file = $LOGS/glance-app.log
enabled_backends = fs:file
image_cache_dir = $DATA/glance-cache
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $DATA/images
[os_glance_staging_store]
filesystem_store_datadir = $DATA/glance-staging
[os_glance_tasks_store]
filesystem_store_datadir = $DATA/glance-tasks
[database]
connection = $db/glance?charset=utf8
[keystone_authtoken]
www_authenticate_uri = $ks
$auth
[paste_deploy]
flavor = keystone
config_file = $ETC/glance/glance-api-paste.ini
[oslo_concurrency]
lock_path = $DATA/lock
[oslo_policy]
enforce_new_defaults = false
enforce_scope = false
EOF

    cp /etc/cinder/api-paste.ini "$ETC/cinder/api-paste.ini"
    cat >"$ETC/cinder/cinder.conf" <<EOF
[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:$P_AMQP/
auth_strategy = keystone
osapi_volume_listen = 127.0.0.1
osapi_volume_listen_port = $P_CINDER
osapi_volume_workers = 1
api_paste_config = $ETC/cinder/api-paste.ini
state_path = $DATA/cinder
log_dir = $LOGS
host = $COMPUTE_HOST
enabled_backends = fake
glance_api_servers = http://127.0.0.1:$P_GLANCE
[database]
connection = $db/cinder?charset=utf8
[keystone_authtoken]
www_authenticate_uri = $ks
$auth
service_token_roles = admin
service_token_roles_required = true
[nova]
$auth
[oslo_concurrency]
lock_path = $DATA/lock
[oslo_messaging_notifications]
driver = noop
[oslo_policy]
enforce_new_defaults = false
enforce_scope = false
[fake]
volume_driver = cinder.tests.fake_driver.FakeLoggingVolumeDriver
volume_backend_name = fake
EOF

    cp /etc/nova/api-paste.ini "$ETC/nova/api-paste.ini"
    cat >"$ETC/nova/nova.conf" <<EOF
[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:$P_AMQP/
compute_driver = fake.FakeDriver
state_path = $DATA/nova-state
instances_path = $DATA/nova-state/instances
my_ip = 127.0.0.1
host = $COMPUTE_HOST
log_dir = $LOGS
use_rootwrap_daemon = false
[api]
auth_strategy = keystone
[api_database]
connection = $db/nova_api?charset=utf8
[database]
connection = $db/nova?charset=utf8
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = 10
[quota]
instances = 10
cores = 20
ram = 51200
[keystone_authtoken]
www_authenticate_uri = $ks
$auth
[placement]
$auth
[glance]
endpoint_override = http://127.0.0.1:$P_GLANCE
[neutron]
endpoint_override = http://127.0.0.1:$P_NEUTRON
$auth
[cinder]
catalog_info = volumev3:cinderv3:publicURL
os_region_name = $REGION
$auth
# Cinder lets only Nova detach a volume Nova attached: Nova proves it with a
# service token (admin's here, see Cinder's service_token_roles).
[service_user]
send_service_user_token = true
$auth
[oslo_concurrency]
lock_path = $DATA/lock
[wsgi]
api_paste_config = $ETC/nova/api-paste.ini
[vnc]
enabled = false
[oslo_messaging_notifications]
driver = noop
[oslo_policy]
enforce_new_defaults = false
enforce_scope = false
EOF

    # nova-compute reaches the databases only through the conductor; with
    # database options it logs "No DB access allowed in nova-compute".
    awk '/^\[/ { skip = ($0 == "[database]" || $0 == "[api_database]") } !skip' \
        "$ETC/nova/nova.conf" >"$ETC/nova/nova-compute.conf"

    : >"$ETC/rabbitmq/rabbitmq-env.conf"
    echo '[].' >"$ETC/rabbitmq/enabled_plugins"
    cat >"$ETC/rabbitmq/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$P_AMQP
loopback_users.guest = true
log.console = true
log.console.level = warning
log.file = false
EOF

    cat >"$S/clouds.yaml" <<EOF
# Written by tools/openstack-env.sh: the local OpenStack on 127.0.0.1.
clouds:
  devstack:
    auth:
      auth_url: $ks
      username: admin
      password: $ADMIN_PASSWORD
      project_name: $PROJECT
      user_domain_name: Default
      project_domain_name: Default
    region_name: $REGION
    identity_api_version: 3
    interface: public
    # Servers have only private (127.10.0.0/24) addresses here: reach them
    # there (openstacksdk's setting, which both Nodepools follow).
    private: true
EOF
    cat >"$S/env.sh" <<EOF
# Written by tools/openstack-env.sh; source it.
export NP_OS_CLOUDS='$S/clouds.yaml'
export NP_OS_CLOUD=devstack
export NP_OPENSTACK_ENV_DIR='$S'
EOF
    write_helpers
}

# ----------------------------------------------------------------- helpers

write_helpers() {
    # Named nova-compute: oslo.log names the log file after the script.
    cat >"$BIN/nova-compute" <<'EOF'
# nova-compute from python3-nova (the nova-compute package would pull in
# libvirt); the driver is nova.virt.fake.FakeDriver (nova-compute.conf).
import sys
from nova.cmd.compute import main
sys.argv = ["nova-compute", "--config-file", sys.argv[1]]
main()
EOF

    cat >"$BIN/neutron_stub.py" <<'EOF'
"""A small, stateful stand-in for Neutron's v2.0 API: enough for Nova to boot
servers on the network "private" (subnet 127.10.0.0/24, loopback addresses on
purpose) or with networks "none", and for a Nodepool driver's network, port
and floating IP calls. No network is router:external, so there are no
floating IPs unless a client creates one. State persists in a JSON file."""
import json, os, re, sys, threading, uuid, random
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlsplit, parse_qs

PORT = int(sys.argv[1]); STATE = sys.argv[2]
NET_ID = "4a8e4c4e-0000-4000-8000-00000000b001"
SUBNET_ID = "4a8e4c4e-0000-4000-8000-00000000b002"
COLLECTIONS = {"networks": "network", "subnets": "subnet", "ports": "port",
               "floatingips": "floatingip", "security-groups": "security_group",
               "security-group-rules": "security_group_rule", "routers": "router",
               "subnetpools": "subnetpool", "trunks": "trunk", "qos": "policy",
               "network-ip-availabilities": "network_ip_availability",
               "availability_zones": "availability_zone", "agents": "agent"}
lock = threading.Lock()

def initial():
    return {"networks": {NET_ID: {
                "id": NET_ID, "name": "private", "status": "ACTIVE", "admin_state_up": True,
                "subnets": [SUBNET_ID], "shared": True, "router:external": False,
                "tenant_id": "", "project_id": "", "mtu": 1450, "port_security_enabled": True,
                "availability_zones": ["nova"], "tags": [], "description": "",
                "provider:network_type": "local", "provider:physical_network": None,
                "provider:segmentation_id": None, "ipv4_address_scope": None,
                "ipv6_address_scope": None, "is_default": False}},
            "subnets": {SUBNET_ID: {
                "id": SUBNET_ID, "name": "private-subnet", "network_id": NET_ID,
                "cidr": "127.10.0.0/24", "ip_version": 4, "gateway_ip": "127.10.0.1",
                "enable_dhcp": False, "dns_nameservers": [], "host_routes": [],
                "allocation_pools": [{"start": "127.10.0.10", "end": "127.10.0.250"}],
                "tenant_id": "", "project_id": "", "ipv6_address_mode": None,
                "ipv6_ra_mode": None, "subnetpool_id": None, "tags": [], "description": ""}},
            "ports": {}, "floatingips": {}, "security-groups": {}, "routers": {}}

state = initial()
if os.path.exists(STATE):
    try:
        with open(STATE) as f:
            state.update(json.load(f))
    except Exception:
        pass

def save():
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, STATE)

def next_ip():
    used = {ip["ip_address"] for p in state["ports"].values() for ip in p.get("fixed_ips", [])}
    for n in range(10, 251):
        a = "127.10.0.%d" % n
        if a not in used:
            return a
    return None

def matches(obj, query):
    for k, vals in query.items():
        if k in ("fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"):
            continue
        if k == "fixed_ips":
            want = [dict(x.split("=", 1) for x in v.split("&") if "=" in x) for v in vals]
            if not any(all(ip.get(a) == b for a, b in w.items()) for w in want for ip in obj.get("fixed_ips", [])):
                return False
            continue
        if k not in obj:
            return False
        v = obj[k]
        if isinstance(v, list):
            if not any(str(x).lower() in [s.lower() for s in vals] for x in v):
                return False
        elif str(v).lower() not in [s.lower() for s in vals] and not (v is None and "" in vals):
            return False
    return True

def new_port(body, project):
    pid = str(uuid.uuid4())
    net = body.get("network_id")
    fixed = body.get("fixed_ips") or [{}]
    ips = []
    for f in fixed:
        ip = f.get("ip_address") or next_ip()
        ips.append({"subnet_id": f.get("subnet_id", SUBNET_ID), "ip_address": ip})
    p = {"id": pid, "name": "", "network_id": net, "admin_state_up": True, "status": "ACTIVE",
         "mac_address": "fa:16:3e:%02x:%02x:%02x" % tuple(random.randint(0, 255) for _ in range(3)),
         "fixed_ips": ips, "device_id": "", "device_owner": "", "security_groups": [],
         "tenant_id": project, "project_id": project, "binding:host_id": "",
         "binding:vif_type": "ovs", "binding:vnic_type": "normal", "binding:vif_details": {},
         "binding:profile": {}, "allowed_address_pairs": [], "extra_dhcp_opts": [],
         "port_security_enabled": True, "dns_name": "", "dns_assignment": [], "tags": [],
         "description": "", "qos_policy_id": None}
    for k, v in body.items():
        if k != "fixed_ips":
            p[k] = v
    p["project_id"] = p["tenant_id"] = body.get("tenant_id") or body.get("project_id") or project
    return p

class H(BaseHTTPRequestHandler):
    def _send(self, code, body=None):
        b = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}") if n else {}

    def _route(self):
        u = urlsplit(self.path)
        path = re.sub(r"\.json$", "", u.path.rstrip("/"))
        return path, parse_qs(u.query, keep_blank_values=True)

    def _project(self):
        return self.headers.get("X-Project-Id", "")

    def _notfound(self, what):
        self._send(404, {"NeutronError": {"type": "NotFound", "message": "%s could not be found." % what, "detail": ""}})

    def do_GET(self):
        path, q = self._route()
        # Block storage (Cinder v3), just enough for quota: Python Nodepool
        # reads volume limits and fails without a block-storage service.
        if path == "/volume" or re.match(r"^/volume/v3(/[^/]+)?$", path):
            return self._send(200, {"versions": [{"id": "v3.0", "status": "CURRENT", "version": "3.70",
                "min_version": "3.0", "updated": "2023-08-31T00:00:00Z",
                "links": [{"rel": "self", "href": "http://127.0.0.1:%d/volume/v3/" % PORT}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.volume+json;version=3"}]}]})
        if re.match(r"^/volume/v3/[^/]+/limits$", path):
            return self._send(200, {"limits": {"rate": [], "absolute": {
                "maxTotalVolumes": 10, "maxTotalVolumeGigabytes": 1000, "maxTotalSnapshots": 10,
                "maxTotalBackups": 10, "maxTotalBackupGigabytes": 1000,
                "totalVolumesUsed": 0, "totalGigabytesUsed": 0, "totalSnapshotsUsed": 0,
                "totalBackupsUsed": 0, "totalBackupGigabytesUsed": 0}}})
        if re.match(r"^/volume/v3/[^/]+/volumes(/detail)?$", path):
            return self._send(200, {"volumes": []})
        if path in ("", "/"):
            return self._send(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
                {"rel": "self", "href": "http://127.0.0.1:%d/v2.0/" % PORT}]}]})
        if path == "/v2.0":
            return self._send(200, {"resources": [{"name": v, "collection": k, "links": []} for k, v in COLLECTIONS.items()]})
        if path == "/v2.0/extensions":
            return self._send(200, {"extensions": []})
        m = re.match(r"^/v2\.0/quotas/([^/]+)(/details)?$", path)
        if m:
            return self._send(200, {"quota": {"network": -1, "subnet": -1, "port": -1, "router": -1,
                                              "floatingip": -1, "security_group": -1, "security_group_rule": -1}})
        m = re.match(r"^/v2\.0/([a-z_-]+)(?:/([^/]+))?$", path)
        if not m or m.group(1) not in COLLECTIONS:
            return self._notfound(path)
        coll, oid = m.group(1), m.group(2)
        key = coll.replace("-", "_")
        with lock:
            items = state.get(coll, {})
            if oid:
                if oid not in items:
                    return self._notfound("%s %s" % (COLLECTIONS[coll], oid))
                return self._send(200, {COLLECTIONS[coll]: items[oid]})
            return self._send(200, {key: [o for o in items.values() if matches(o, q)]})

    def do_POST(self):
        path, q = self._route()
        m = re.match(r"^/v2\.0/([a-z_-]+)$", path)
        if not m or m.group(1) not in COLLECTIONS:
            return self._notfound(path)
        coll = m.group(1)
        body = self._body().get(COLLECTIONS[coll], {})
        with lock:
            if coll == "ports":
                if body.get("network_id") not in state["networks"]:
                    return self._notfound("Network %s" % body.get("network_id"))
                obj = new_port(body, self._project())
            elif coll == "floatingips":
                obj = {"id": str(uuid.uuid4()), "status": "DOWN", "router_id": None, "port_id": None,
                       "fixed_ip_address": None, "floating_ip_address": next_ip(), "tenant_id": self._project(),
                       "project_id": self._project(), "description": "", "tags": []}
                obj.update(body)
            else:
                obj = {"id": str(uuid.uuid4()), "tenant_id": self._project(), "project_id": self._project()}
                obj.update(body)
            state.setdefault(coll, {})[obj["id"]] = obj
            save()
        self._send(201, {COLLECTIONS[coll]: obj})

    def do_PUT(self):
        path, q = self._route()
        m = re.match(r"^/v2\.0/([a-z_-]+)/([^/]+)$", path)
        if not m or m.group(1) not in COLLECTIONS:
            return self._notfound(path)
        coll, oid = m.groups()
        body = self._body().get(COLLECTIONS[coll], {})
        with lock:
            items = state.get(coll, {})
            if oid not in items:
                return self._notfound("%s %s" % (COLLECTIONS[coll], oid))
            items[oid].update(body)
            save()
            self._send(200, {COLLECTIONS[coll]: items[oid]})

    def do_DELETE(self):
        path, q = self._route()
        m = re.match(r"^/v2\.0/([a-z_-]+)/([^/]+)$", path)
        if not m or m.group(1) not in COLLECTIONS:
            return self._notfound(path)
        coll, oid = m.groups()
        with lock:
            items = state.get(coll, {})
            if oid not in items:
                return self._notfound("%s %s" % (COLLECTIONS[coll], oid))
            del items[oid]
            save()
        self._send(204)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
EOF

    cat >"$BIN/osctl.py" <<'EOF'
"""Helpers for tools/openstack-env.sh: readiness checks, catalog, seeding,
and the REST probe that writes observed.md. Standard library only."""
import json, os, socket, sys, time, urllib.request, urllib.error

KS = os.environ.get("OS_ENV_KS", "http://127.0.0.1:15000/v3")
PASSWORD = os.environ.get("OS_ENV_PASSWORD", "secret")
PROJECT = os.environ.get("OS_ENV_PROJECT", "admin")
REGION = os.environ.get("OS_ENV_REGION", "RegionOne")
MV = "compute 2.47"

def req(method, url, body=None, headers=None, raw=None, timeout=60):
    h = dict(headers or {})
    data = None
    if raw is not None:
        data = raw
    elif body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    r = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            txt = resp.read()
            return resp.status, dict(resp.headers), (json.loads(txt) if txt.strip()[:1] in (b"{", b"[") else txt.decode(errors="replace"))
    except urllib.error.HTTPError as e:
        txt = e.read()
        try:
            j = json.loads(txt)
        except Exception:
            j = txt.decode(errors="replace")
        return e.code, dict(e.headers), j

def http_ok(url):
    try:
        code, _, _ = req("GET", url, timeout=3)
    except Exception:
        return False
    return code < 500

def tcp_ok(port):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", int(port)))
        return True
    except OSError:
        return False
    finally:
        s.close()

def auth():
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": PASSWORD}}},
        "scope": {"project": {"name": PROJECT, "domain": {"name": "Default"}}}}}
    code, hdr, tok = req("POST", KS + "/auth/tokens", body)
    if code != 201:
        raise SystemExit("keystone: POST /v3/auth/tokens -> %s %s" % (code, tok))
    token = hdr.get("X-Subject-Token") or hdr.get("x-subject-token")
    cat = {}
    for s in tok["token"]["catalog"]:
        for e in s["endpoints"]:
            if e["interface"] == "public" and e.get("region_id", REGION) == REGION:
                cat[s["type"]] = e["url"].rstrip("/")
    return token, tok, cat

class Cloud:
    def __init__(self):
        self.token, self.tokbody, self.cat = auth()
        self.project = self.tokbody["token"]["project"]["id"]
        self.h = {"X-Auth-Token": self.token, "OpenStack-API-Version": MV, "X-OpenStack-Nova-API-Version": "2.47"}
    def call(self, service, method, path, body=None, headers=None, **kw):
        return req(method, self.cat[service] + path, body, dict(self.h, **(headers or {})), **kw)
    def nova(self, *a, **kw):
        return self.call("compute", *a, **kw)
    def glance(self, *a, **kw):
        return self.call("image", *a, **kw)
    def neutron(self, *a, **kw):
        return self.call("network", *a, **kw)

def catalog(urls):
    """Register services and endpoints (idempotent). urls: type=name=url ..."""
    token, _, _ = auth()
    h = {"X-Auth-Token": token}
    _, _, svcs = req("GET", KS + "/services", headers=h)
    _, _, eps = req("GET", KS + "/endpoints", headers=h)
    by_type = {s["type"]: s for s in svcs["services"]}
    for spec in urls:
        typ, name, url = spec.split("=", 2)
        svc = by_type.get(typ)
        if not svc:
            code, _, b = req("POST", KS + "/services", {"service": {"type": typ, "name": name, "enabled": True}}, h)
            if code != 201:
                raise SystemExit("keystone: create service %s -> %s %s" % (typ, code, b))
            svc = b["service"]
        have = {(e["interface"], e.get("region_id")): e for e in eps["endpoints"] if e["service_id"] == svc["id"]}
        for iface in ("public", "internal", "admin"):
            e = have.get((iface, REGION))
            if e and e["url"] == url:
                continue
            if e:
                req("DELETE", KS + "/endpoints/" + e["id"], headers=h)
            code, _, b = req("POST", KS + "/endpoints", {"endpoint": {"service_id": svc["id"], "interface": iface, "url": url, "region_id": REGION}}, h)
            if code != 201:
                raise SystemExit("keystone: create endpoint %s %s -> %s %s" % (typ, iface, code, b))
    print("catalog:", ", ".join(u.split("=", 2)[0] for u in urls))

def check_alive(watch):
    """watch: NAME=PID ...; exit naming the first that is gone."""
    for w in watch:
        name, pid = w.split("=", 1)
        try:
            with open("/proc/%s/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    continue
        except (OSError, IndexError):
            pass
        raise SystemExit("%s (pid %s) exited" % (name, pid))

def wait_services(host, timeout, watch=()):
    """Wait until conductor, scheduler and compute report up in os-services."""
    c = Cloud()
    t0 = time.time()
    last = None
    while time.time() - t0 < timeout:
        check_alive(watch)
        code, _, b = c.nova("GET", "/os-services")
        if code == 200:
            st = {(s["binary"], s["host"]): (s["state"], s["status"]) for s in b["services"]}
            last = st
            ok = all(v == ("up", "enabled") for k, v in st.items() if k[0] in ("nova-conductor", "nova-scheduler", "nova-compute"))
            names = {k[0] for k in st}
            if ok and {"nova-conductor", "nova-scheduler", "nova-compute"} <= names and ("nova-compute", host) in st:
                print("os-services up: %s (%.1fs)" % (sorted(names), time.time() - t0))
                return
        time.sleep(1)
    raise SystemExit("nova services not all up after %ss: %s" % (timeout, last))

def wait_hypervisor(host, timeout, watch=()):
    c = Cloud()
    t0 = time.time()
    while time.time() - t0 < timeout:
        check_alive(watch)
        code, _, b = c.nova("GET", "/os-hypervisors/detail")
        if code == 200 and any(x["hypervisor_hostname"] == host and x["state"] == "up" for x in b["hypervisors"]):
            print("hypervisor %s up (%.1fs)" % (host, time.time() - t0))
            return
        time.sleep(1)
    raise SystemExit("hypervisor %s not up after %ss" % (host, timeout))

def seed(keep_servers):
    c = Cloud()
    # Leftover servers from before a restart: the fake driver forgot them.
    if not keep_servers:
        _, _, b = c.nova("GET", "/servers")
        gone = []
        for s in b.get("servers", []):
            c.nova("DELETE", "/servers/" + s["id"])
            gone.append(s["id"])
        t0 = time.time()
        while gone and time.time() - t0 < 60:
            gone = [i for i in gone if c.nova("GET", "/servers/" + i)[0] != 404]
            time.sleep(0.5)
        if gone:
            print("warning: servers not deleted:", gone)
    # Default quotas again (a test may have lowered them).
    c.nova("DELETE", "/os-quota-sets/" + c.project)
    _, _, fl = c.nova("GET", "/flavors/detail?is_public=None")
    have = {f["name"] for f in fl["flavors"]}
    for name, vcpus, ram, disk in (("np-small", 1, 512, 1), ("np-medium", 2, 2048, 10)):
        if name not in have:
            code, _, b = c.nova("POST", "/flavors", {"flavor": {"name": name, "vcpus": vcpus, "ram": ram, "disk": disk, "os-flavor-access:is_public": True}})
            if code != 200:
                raise SystemExit("nova: create flavor %s -> %s %s" % (name, code, b))
    _, _, imgs = c.glance("GET", "/v2/images?name=cirros")
    ok = [i for i in imgs["images"] if i["status"] == "active"]
    for i in imgs["images"]:
        if i["status"] != "active":
            c.glance("DELETE", "/v2/images/" + i["id"])
    if not ok:
        code, _, img = c.glance("POST", "/v2/images", {"name": "cirros", "disk_format": "raw", "container_format": "bare", "visibility": "public"})
        if code != 201:
            raise SystemExit("glance: create image -> %s %s" % (code, img))
        code, _, b = c.glance("PUT", "/v2/images/%s/file" % img["id"], raw=b"\0" * 4096, headers={"Content-Type": "application/octet-stream"})
        if code != 204:
            raise SystemExit("glance: upload image -> %s %s" % (code, b))
        t0 = time.time()
        while c.glance("GET", "/v2/images/" + img["id"])[2]["status"] != "active":
            if time.time() - t0 > 60:
                raise SystemExit("glance: image cirros not active after 60s")
            time.sleep(0.3)
    print("seeded: flavors np-small np-medium, image cirros, default quotas")

def rss(pgids):
    pg = set(pgids)
    total, n = 0, 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = open("/proc/%s/stat" % p).read()
            fields = stat.rsplit(")", 1)[1].split()
            if fields[2] not in pg:
                continue
            for line in open("/proc/%s/status" % p):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]); n += 1
        except (OSError, IndexError):
            pass
    print("%d %d" % (total, n))

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "http-ok":
        sys.exit(0 if http_ok(args[0]) else 1)
    if cmd == "tcp-ok":
        sys.exit(0 if tcp_ok(args[0]) else 1)
    if cmd == "ports-busy":
        busy = [p for p in args if tcp_ok(p)]
        print(" ".join(busy))
        sys.exit(0)
    if cmd == "catalog":
        catalog(args)
    elif cmd == "wait-services":
        wait_services(args[0], float(args[1]), args[2:])
    elif cmd == "wait-hypervisor":
        wait_hypervisor(args[0], float(args[1]), args[2:])
    elif cmd == "seed":
        seed(os.environ.get("NP_OS_KEEP_SERVERS") == "1")
    elif cmd == "rss":
        rss(args)
    else:
        raise SystemExit("unknown command " + cmd)
EOF
    cat >"$BIN/probe.py" <<'PROBE_EOF'
"""REST probe of the local OpenStack, the way a reqwest-based driver calls
it (no SDK). Writes what it saw (status codes, trimmed JSON) to observed.md.
Leaves the cloud as it found it (servers, images, flavors, quotas)."""
import json, sys, time
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from osctl import Cloud, req, KS

OUT = sys.argv[1]
lines = []
facts = []
def fact(s):
    facts.append("* " + s)
def md(s=""):
    lines.append(s)
    print(s)

def trim(o, depth=0, keep=2):
    if isinstance(o, dict):
        return {k: trim(v, depth + 1, keep) for k, v in o.items()}
    if isinstance(o, list):
        t = [trim(v, depth + 1, keep) for v in o[:keep]]
        if len(o) > keep:
            t.append("... %d more" % (len(o) - keep))
        return t
    if isinstance(o, str) and len(o) > 160:
        return o[:160] + "..."
    return o

def show(title, method, path, code, body, headers=None, keep=2, hdrs=()):
    md("### %s" % title)
    md()
    md("`%s %s` -> **%s**" % (method, path, code))
    if headers:
        for h in hdrs:
            for k, v in headers.items():
                if k.lower() == h.lower():
                    md("  header `%s: %s`" % (k, v if len(v) < 60 else v[:20] + "..."))
    md()
    if body not in (None, "", b""):
        md("```json")
        md(json.dumps(trim(body, keep=keep), indent=1, sort_keys=True) if not isinstance(body, str) else body[:400])
        md("```")
    md()

def wait(pred, timeout=60, step=0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v, time.time() - t0
        time.sleep(step)
    return None, time.time() - t0

c = Cloud()
md("# Observed: the real OpenStack of tools/openstack-env.sh")
md()
md("Debian 12 packages: Keystone 22 (Zed), Nova 26, Placement 8, Glance 25, Neutron = the script's stub.")
md("Nova calls carry `OpenStack-API-Version: compute 2.47` (and `X-OpenStack-Nova-API-Version: 2.47`).")
md("Recorded by `tools/openstack-env.sh probe` at %s. Long lists are cut to 2 items (`... N more`)." % time.strftime("%Y-%m-%d %H:%M:%S"))
md()

md("## Keystone")
md()
code, h, b = req("GET", KS)
show("version document", "GET", "/v3", code, b)
body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"}, "password": "secret"}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
code, h, b = req("POST", KS + "/auth/tokens", body)
for s in b["token"]["catalog"]:
    s["endpoints"] = [e for e in s["endpoints"] if e["interface"] == "public"]
show("token (password, project scope); catalog cut to public endpoints", "POST", "/v3/auth/tokens", code, b, h, keep=5, hdrs=("X-Subject-Token",))
bad = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"}, "password": "wrong"}}}}}
code, h, b = req("POST", KS + "/auth/tokens", bad)
show("wrong password", "POST", "/v3/auth/tokens", code, b)
code, h, b = req("GET", c.cat["compute"] + "/flavors", headers={"X-Auth-Token": "gAAAAAbogus"})
show("Nova with an invalid token", "GET", "/v2.1/flavors", code, b)

md("## Nova")
md()
code, h, b = req("GET", c.cat["compute"].rsplit("/v2.1", 1)[0] + "/")
show("versions (unauthenticated root)", "GET", "/", code, b)
code, h, b = c.nova("GET", "")
show("version document", "GET", "/v2.1", code, b)
fact("Nova microversions %s to %s; a request with `OpenStack-API-Version: compute 2.47` is answered with that header echoed." % (b["version"]["min_version"], b["version"]["version"]))
code, h, b = c.nova("GET", "/flavors/detail")
show("flavors", "GET", "/v2.1/flavors/detail", code, b, h, keep=5, hdrs=("OpenStack-API-Version",))
flavors = {f["name"]: f for f in b["flavors"]}
code, h, b = c.nova("GET", "/limits")
show("limits", "GET", "/v2.1/limits", code, b)
code, h, b = c.nova("GET", "/os-availability-zone")
show("availability zones (non-admin view)", "GET", "/v2.1/os-availability-zone", code, b)
fact("Availability zones: %s (the compute host's zone is Nova's default `nova`)." % [z["zoneName"] for z in b["availabilityZoneInfo"]])
code, h, b = c.nova("GET", "/os-availability-zone/detail")
show("availability zones (admin detail)", "GET", "/v2.1/os-availability-zone/detail", code, b)
code, h, b = c.nova("GET", "/os-hypervisors/detail")
show("hypervisors", "GET", "/v2.1/os-hypervisors/detail", code, b)

md("## Glance: lookup")
md()
code, h, b = c.glance("GET", "/v2/images?name=cirros&status=active")
show("image by name, active", "GET", "/v2/images?name=cirros&status=active", code, b)
image = b["images"][0]
code, h, b = c.glance("GET", "/v2/images?name=no-such-image&status=active")
show("no such image", "GET", "/v2/images?name=no-such-image&status=active", code, b)

md("## Neutron (the stub)")
md()
for p in ("/v2.0/networks?name=private", "/v2.0/networks?router:external=true", "/v2.0/ports?status=DOWN", "/v2.0/floatingips"):
    code, h, b = c.neutron("GET", p)
    show(p, "GET", p, code, b)
net = c.neutron("GET", "/v2.0/networks?name=private")[2]["networks"][0]

md("## Nova servers")
md()
meta = {"nodepool_node_id": "0000000001", "nodepool_pool_name": "main", "nodepool_provider_name": "devstack",
        "groups": "devstack,cirros,np-small"}
def boot(name, networks="none", flavor=None, image_id=None, extra=None, omit_networks=False):
    s = {"name": name, "imageRef": image_id or image["id"], "flavorRef": flavor or flavors["np-small"]["id"], "metadata": meta}
    if not omit_networks:
        s["networks"] = networks
    s.update(extra or {})
    return c.nova("POST", "/servers", {"server": s})
def status(sid):
    code, _, b = c.nova("GET", "/servers/" + sid)
    return b["server"]["status"] if code == 200 else code

created = []
code, h, b = boot("np0000000001", [{"uuid": net["id"]}], extra={"config_drive": True, "user_data": "IyEvYmluL3NoCg=="})
show('create on network "private" (networks: [{"uuid": <id>}], config_drive, user_data)', "POST", "/v2.1/servers", code, b, h, hdrs=("Location", "OpenStack-API-Version"))
sid = b["server"]["id"]; created.append(sid)
t0 = time.time()
seen = []
def st():
    s = status(sid)
    if not seen or seen[-1] != s:
        seen.append(s)
    return s in ("ACTIVE", "ERROR") and s
final, took = wait(st)
md("Status sequence seen by polling GET /servers/{id} every 0.2 s: %s; %s after %.1f s." % (" -> ".join(map(str, seen)), final, took))
fact("POST /servers -> 202 with only id, links, OS-DCF:diskConfig, security_groups, adminPass; status %s (%.1f s)." % (" -> ".join(map(str, seen)), took))
md()
code, h, b = c.nova("GET", "/servers/" + sid)
show("server (ACTIVE)", "GET", "/v2.1/servers/{id}", code, b, keep=5)
sv = b["server"]
fact("ACTIVE server: hostId %s, OS-EXT-AZ:availability_zone %r, addresses %s, flavor embedded at 2.47: %s, metadata kept: %s." % (
    "set (%d hex chars)" % len(sv["hostId"]) if sv["hostId"] else "empty", sv.get("OS-EXT-AZ:availability_zone"),
    json.dumps(sv["addresses"]), "original_name" in sv.get("flavor", {}), sv["metadata"] == meta))
for nw in ("auto", "none"):
    code, h, b = boot("np-net-" + nw, nw)
    md("`POST /servers` with `networks: \"%s\"` -> **%s**" % (nw, code))
    fact("`networks: \"%s\"` -> %s" % (nw, code))
    if code == 202:
        i = b["server"]["id"]; created.append(i)
        final, took = wait(lambda: status(i) in ("ACTIVE", "ERROR") and status(i))
        md("  -> %s after %.1f s, addresses `%s`" % (final, took, json.dumps(c.nova("GET", "/servers/" + i)[2]["server"]["addresses"])))
    md()
code, h, b = boot("np-no-networks", omit_networks=True)
show("create without a networks key (at 2.47)", "POST", "/v2.1/servers", code, b)
fact("POST /servers without `networks` at 2.47 -> %s (networks is required from 2.37)." % code)

code, h, b = c.nova("GET", "/servers/detail?limit=1")
show("detail list, one per page", "GET", "/v2.1/servers/detail?limit=1", code, b, keep=1)
pages, n, url = 0, 0, c.cat["compute"] + "/servers/detail?limit=1"
while url:
    code, h, d = req("GET", url, headers=c.h)
    pages += 1; n += len(d["servers"])
    nxt = [l["href"] for l in d.get("servers_links", []) if l["rel"] == "next"]
    url = nxt[0] if nxt else None
md("Following `servers_links` rel=next from `?limit=1`: %d servers over %d pages (the last page has no servers_links? %s)." % (n, pages, "servers_links" not in d))
md()
code, h, b = c.nova("GET", "/servers/detail?name=np0000000001")
md("`GET /servers/detail?name=np0000000001` -> %s, %d server(s)" % (code, len(b["servers"])))
md()
code, h, b = c.nova("POST", "/servers/%s/action" % sid, {"os-getConsoleOutput": {"length": 5}})
show("console log", "POST", "/v2.1/servers/{id}/action os-getConsoleOutput", code, b)
code, h, b = c.neutron("GET", "/v2.0/ports?device_id=" + sid)
show("the server's port (stub)", "GET", "/v2.0/ports?device_id={server id}", code, b)

md("## Errors")
md()
code, h, b = c.nova("GET", "/servers/00000000-0000-0000-0000-000000000000")
show("missing server", "GET", "/v2.1/servers/{missing id}", code, b)
code, h, b = c.nova("DELETE", "/servers/00000000-0000-0000-0000-000000000000")
show("delete a missing server", "DELETE", "/v2.1/servers/{missing id}", code, b)
code, h, b = boot("np-bad-flavor", "none", flavor="no-such-flavor")
show("bad flavor", "POST", "/v2.1/servers", code, b)
code, h, b = boot("np-bad-image", "none", image_id="00000000-0000-0000-0000-000000000000")
show("bad image", "POST", "/v2.1/servers", code, b)
code, h, b = boot("np-bad-az", "none", extra={"availability_zone": "nope"})
show("bad availability zone", "POST", "/v2.1/servers", code, b)
code, h, b = boot("np-bad-net", [{"uuid": "00000000-0000-0000-0000-000000000000"}])
show("unknown network", "POST", "/v2.1/servers", code, b)
code, h, b = boot("np-bad-key", "none", extra={"key_name": "no-such-key"})
show("unknown key_name", "POST", "/v2.1/servers", code, b)
code, h, b = c.nova("GET", "/flavors/no-such-flavor")
show("missing flavor", "GET", "/v2.1/flavors/{missing}", code, b)

in_use = len(c.nova("GET", "/servers")[2]["servers"])
code, h, b = c.nova("PUT", "/os-quota-sets/" + c.project, {"quota_set": {"instances": in_use}})
md("`PUT /os-quota-sets/{project}` instances=%d (in use) -> %s" % (in_use, code))
md()
code, h, b = c.nova("GET", "/limits")
md("limits now: `%s`" % json.dumps({k: v for k, v in b["limits"]["absolute"].items() if "Instances" in k}))
md()
code, h, b = boot("np-over-quota", "none")
show("over the instance quota", "POST", "/v2.1/servers", code, b)
code, h, b = c.nova("PUT", "/os-quota-sets/" + c.project, {"quota_set": {"instances": 10, "cores": 1}})
show("lowering a quota below what is in use, without force", "PUT", "/v2.1/os-quota-sets/{project} cores=1", code, b)
code, h, b = c.nova("PUT", "/os-quota-sets/" + c.project, {"quota_set": {"instances": 10, "cores": 1, "force": True}})
md("`PUT /os-quota-sets/{project}` instances=10 cores=1 force=true -> %s" % code)
md()
code, h, b = boot("np-over-cores", "none")
show("over the cores quota (cores=1, %d in use)" % in_use, "POST", "/v2.1/servers", code, b)
c.nova("PUT", "/os-quota-sets/" + c.project, {"quota_set": {"instances": 10, "cores": 1, "ram": 600, "force": True}})
code, h, b = boot("np-over-all", "none")
show("over instances? no; over cores and ram (cores=1, ram=600 MB)", "POST", "/v2.1/servers", code, b)
c.nova("DELETE", "/os-quota-sets/" + c.project)

# ERROR with a fault: a flavor bigger than the fake hypervisor (800000 MB).
c.nova("PUT", "/os-quota-sets/" + c.project, {"quota_set": {"ram": -1}})
code, h, f = c.nova("POST", "/flavors", {"flavor": {"name": "np-huge", "vcpus": 1, "ram": 4000000, "disk": 1}})
huge = f["flavor"]["id"]
code, h, b = boot("np-error", "none", flavor=huge)
md("`POST /servers` with flavor np-huge (RAM beyond the hypervisor) -> %s" % code)
md()
if code == 202:
    eid = b["server"]["id"]; created.append(eid)
    final, took = wait(lambda: status(eid) in ("ACTIVE", "ERROR") and status(eid))
    md("-> %s after %.1f s" % (final, took))
    md()
    code, h, b = c.nova("GET", "/servers/" + eid)
    show("server in ERROR (scheduler: no valid host)", "GET", "/v2.1/servers/{id}", code, b, keep=5)
    sv = b["server"]
    fact("ERROR server: fault %s, hostId %r, OS-EXT-AZ:availability_zone %r." % (
        json.dumps({k: sv["fault"][k] for k in ("code", "message")}) if "fault" in sv else "absent", sv["hostId"], sv.get("OS-EXT-AZ:availability_zone")))
    code, h, b = c.nova("DELETE", "/servers/" + eid)
    md("`DELETE` of the ERROR server -> %s" % code)
    md()
    wait(lambda: status(eid) == 404)
c.nova("DELETE", "/flavors/" + huge)
c.nova("DELETE", "/os-quota-sets/" + c.project)

md("## Delete")
md()
code, h, b = c.nova("DELETE", "/servers/" + sid)
show("delete", "DELETE", "/v2.1/servers/{id}", code, b)
seen = []
def gone():
    s = status(sid)
    if not seen or seen[-1] != s:
        seen.append(s)
    return s == 404
_, took = wait(gone)
md("After DELETE, GET /servers/{id} showed: %s; 404 after %.1f s." % (" -> ".join(map(str, seen)), took))
fact("DELETE /servers/{id} -> 204; then GET showed %s (404 after %.1f s)." % (" -> ".join(map(str, seen)), took))
md()
code, h, b = c.nova("GET", "/servers/" + sid)
show("deleted server", "GET", "/v2.1/servers/{id}", code, b)
for i in created:
    c.nova("DELETE", "/servers/" + i)
for i in created:
    wait(lambda: status(i) == 404)

code, h, b = c.neutron("GET", "/v2.0/ports")
md("Ports left in the stub after every server is gone: %d (Nova deletes the ports it created)." % len(b["ports"]))
md()

md("## Timing: create -> ACTIVE -> delete -> 404 (network private), 5 cycles")
md()
times = []
for k in range(5):
    t0 = time.time()
    code, h, b = boot("np-cycle-%d" % k, [{"uuid": net["id"]}])
    i = b["server"]["id"]
    wait(lambda: status(i) in ("ACTIVE", "ERROR"), step=0.1)
    t1 = time.time()
    c.nova("DELETE", "/servers/" + i)
    wait(lambda: status(i) == 404, step=0.1)
    times.append((t1 - t0, time.time() - t0))
md("create->ACTIVE: %s s; create->gone: %s s" % (", ".join("%.1f" % a for a, _ in times), ", ".join("%.1f" % b for _, b in times)))
fact("create -> ACTIVE -> delete -> 404 cycle: %.1f s on average over %d cycles." % (sum(b for _, b in times) / len(times), len(times)))
md()

md("## Glance: upload (the builder's flow)")
md()
props = {"name": "np-probe-image", "disk_format": "qcow2", "container_format": "bare", "visibility": "private",
         "nodepool_build_id": "0000000001", "nodepool_upload_id": "0000000001", "nodepool_provider_name": "devstack"}
code, h, b = c.glance("POST", "/v2/images", props)
show("create", "POST", "/v2/images", code, b, h, hdrs=("Location",))
iid = b["id"]
code, h, b = c.glance("PUT", "/v2/images/%s/file" % iid, raw=b"QFI\xfb" + b"\0" * 8188, headers={"Content-Type": "application/octet-stream"})
show("upload data", "PUT", "/v2/images/{id}/file", code, b)
v, took = wait(lambda: c.glance("GET", "/v2/images/" + iid)[2]["status"] == "active")
md("status active %.1f s after the PUT returned" % took)
md()
code, h, b = c.glance("GET", "/v2/images/" + iid)
show("image (active)", "GET", "/v2/images/{id}", code, b)
code, h, b = c.glance("GET", "/v2/images?name=np-probe-image&status=active")
md("`GET /v2/images?name=np-probe-image&status=active` -> %s, %d image(s)" % (code, len(b["images"])))
md()
code, h, b = c.glance("PUT", "/v2/images/%s/file" % iid, raw=b"x", headers={"Content-Type": "application/octet-stream"})
show("upload again to an active image", "PUT", "/v2/images/{id}/file", code, b, h, hdrs=("Content-Type",))
code, h, b = c.glance("DELETE", "/v2/images/" + iid)
show("delete", "DELETE", "/v2/images/{id}", code, b)
code, h, b = c.glance("GET", "/v2/images/" + iid)
show("deleted image", "GET", "/v2/images/{id}", code, b, h, hdrs=("Content-Type",))
code, h, b = c.glance("POST", "/v2/images", {"name": "x", "disk_format": "nope", "container_format": "bare"})
show("bad disk_format", "POST", "/v2/images", code, b, h, hdrs=("Content-Type",))

md("## Glance: listing pages")
md()
code, h, b = c.glance("GET", "/v2/images?limit=1")
show("one image per page", "GET", "/v2/images?limit=1", code, b)
fact("Glance's `next` is a path from the service root: %r." % b.get("next"))

md("## Nova: zones and console")
md()
code, h, b = c.nova("GET", "/os-availability-zone")
show("zones", "GET", "/os-availability-zone", code, b)
code, h, b = boot("np-probe-console", [{"uuid": net["id"]}])
sid = b["server"]["id"]
wait(lambda: status(sid) in ("ACTIVE", "ERROR"), step=0.1)
code, h, b = c.nova("POST", "/servers/%s/action" % sid, {"os-getConsoleOutput": {}})
show("console output (fake hypervisor)", "POST", "/servers/{id}/action {\"os-getConsoleOutput\": {}}", code, b)

md("## Cinder (fake backend): limits, volumes, an attached volume")
md()
# Cinder reads `OpenStack-API-Version` too: "compute 2.47" would be a 400.
def cinder(method, path, body=None):
    return c.call("volumev3", method, path, body, headers={"OpenStack-API-Version": "volume 3.0"})
code, h, b = cinder("GET", "/limits")
show("limits", "GET", "/v3/{project}/limits", code, b)
code, h, b = cinder("POST", "/volumes", {"volume": {"size": 1, "name": "np-probe-volume"}})
show("create a blank volume", "POST", "/v3/{project}/volumes", code, b)
vid = b["volume"]["id"]
wait(lambda: cinder("GET", "/volumes/" + vid)[2]["volume"]["status"] == "available")
code, h, b = c.nova("POST", "/servers/%s/os-volume_attachments" % sid, {"volumeAttachment": {"volumeId": vid}})
show("attach through Nova", "POST", "/servers/{id}/os-volume_attachments", code, b)
wait(lambda: cinder("GET", "/volumes/" + vid)[2]["volume"]["status"] == "in-use")
code, h, b = cinder("GET", "/volumes/detail")
show("volumes (detail)", "GET", "/v3/{project}/volumes/detail", code, b)
code, h, b = c.nova("GET", "/servers/" + sid)
md("server's `os-extended-volumes:volumes_attached`: `%s`" % json.dumps(b["server"].get("os-extended-volumes:volumes_attached")))
md()
c.nova("DELETE", "/servers/" + sid)
wait(lambda: status(sid) == 404, step=0.1)
wait(lambda: cinder("GET", "/volumes/" + vid)[2]["volume"]["status"] == "available")
code, h, b = cinder("DELETE", "/volumes/" + vid)
show("delete the volume (detached with its server)", "DELETE", "/v3/{project}/volumes/{id}", code, b)

lines[6:6] = ["## Summary", ""] + facts + [""]
with open(OUT, "w") as f:
    f.write("\n".join(lines) + "\n")
print("wrote", OUT)
PROBE_EOF
}

# ------------------------------------------------------------------- start

# start_mariadb: initialise the data directory on the first start.
start_mariadb() {
    local dir="$DATA/mysql"
    if [ ! -d "$dir/mysql" ]; then
        rm -rf "$dir"
        run_step mariadb-init mariadb-install-db --no-defaults --datadir="$dir" --user=root \
            --auth-root-authentication-method=normal --skip-test-db
    fi
    launch mariadb /usr/sbin/mariadbd --no-defaults --datadir="$dir" --user=root \
        --bind-address=127.0.0.1 --port="$P_MYSQL" --socket="$SOCK" \
        --pid-file="$RUN/mariadbd.pid-internal" --skip-name-resolve --skip-log-bin \
        --innodb-buffer-pool-size=128M --innodb-flush-log-at-trx-commit=0 \
        --innodb-doublewrite=0 --max-connections=1000 \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci
    local t0
    t0="$(now)"
    until mariadb-admin --no-defaults --socket="$SOCK" -uroot ping >/dev/null 2>&1; do
        alive_or_fail mariadb
        if awk -v a="$t0" -v b="$(now)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a > t) }'; then
            fail mariadb "no answer on $SOCK after ${TIMEOUT}s"
        fi
        sleep 0.3
    done
    say "mariadb up on 127.0.0.1:$P_MYSQL after $(since "$t0")s"
}

create_databases() {
    local sql="" db
    for db in keystone glance placement nova_api nova nova_cell0 cinder; do
        sql="$sql CREATE DATABASE IF NOT EXISTS $db CHARACTER SET utf8;"
    done
    sql="$sql CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASS';
        GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'%'; FLUSH PRIVILEGES;"
    run_step mariadb-setup mariadb --no-defaults --socket="$SOCK" -uroot -e "$sql"
}

start_rabbitmq() {
    launch epmd /usr/bin/epmd -address 127.0.0.1 -port "$P_EPMD"
    wait_tcp epmd "$P_EPMD"
    mkdir -p "$DATA/rabbit/home"
    launch rabbitmq env \
        HOME="$DATA/rabbit/home" \
        RABBITMQ_NODENAME=nprabbit@localhost \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$P_AMQP" \
        RABBITMQ_DIST_PORT="$P_RABBIT_DIST" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        ERL_EPMD_PORT="$P_EPMD" \
        RABBITMQ_CONF_ENV_FILE="$ETC/rabbitmq/rabbitmq-env.conf" \
        RABBITMQ_CONFIG_FILE="$ETC/rabbitmq/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$ETC/rabbitmq/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$ETC/rabbitmq/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$DATA/rabbit/mnesia" \
        RABBITMQ_LOG_BASE="$LOGS/rabbitmq" \
        RABBITMQ_PLUGINS_EXPAND_DIR="$DATA/rabbit/plugins-expand" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false" \
        /usr/lib/rabbitmq/bin/rabbitmq-server
}

# uwsgi PORT WSGI-FILE PROCESSES: sets UWSGI to the command line.
uwsgi() {
    UWSGI=(/usr/bin/uwsgi-core --plugin-dir /usr/lib/uwsgi/plugins --plugins python3
        --http-socket "127.0.0.1:$1" --wsgi-file "$2" --master --processes "$3" --threads 1
        --die-on-term --need-app --buffer-size 65535 --add-header Connection:close
        --lazy-apps --disable-logging)
}

# First start only: schemas, keys, bootstrap, cells. Runs the schema syncs of
# the different services at the same time.
initialize() {
    local t0 pids=() names=() i
    t0="$(now)"
    say "first start: creating databases and schemas (about a minute)"
    create_databases
    mkdir -p "$DATA/fernet-keys" "$DATA/credential-keys"
    chmod 700 "$DATA/fernet-keys" "$DATA/credential-keys"
    local KC=(keystone-manage --config-file "$ETC/keystone/keystone.conf")
    local NC=(nova-manage --config-file "$ETC/nova/nova.conf")
    sync_keystone() {
        "${KC[@]}" db_sync &&
            "${KC[@]}" fernet_setup --keystone-user root --keystone-group root &&
            "${KC[@]}" credential_setup --keystone-user root --keystone-group root &&
            "${KC[@]}" bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
                --bootstrap-username admin --bootstrap-project-name "$PROJECT" \
                --bootstrap-role-name admin --bootstrap-service-name keystone \
                --bootstrap-region-id "$REGION" \
                --bootstrap-admin-url "http://127.0.0.1:$P_KEYSTONE/v3/" \
                --bootstrap-internal-url "http://127.0.0.1:$P_KEYSTONE/v3/" \
                --bootstrap-public-url "http://127.0.0.1:$P_KEYSTONE/v3/"
    }
    sync_nova() {
        "${NC[@]}" api_db sync &&
            "${NC[@]}" cell_v2 map_cell0 \
                --database_connection "mysql+pymysql://$DB_USER:$DB_PASS@127.0.0.1:$P_MYSQL/nova_cell0?charset=utf8" &&
            { "${NC[@]}" cell_v2 create_cell --name cell1 --verbose || [ $? = 2 ]; } &&
            "${NC[@]}" db sync
    }
    for i in keystone placement glance nova; do
        printf '\n==== %s-sync %s\n' "$i" "$(date -Is)" >>"$(logfile "$i-sync")"
    done
    sync_keystone </dev/null >>"$(logfile keystone-sync)" 2>&1 &
    pids+=($!) names+=(keystone-sync)
    placement-manage --config-file "$ETC/placement/placement.conf" db sync \
        </dev/null >>"$(logfile placement-sync)" 2>&1 &
    pids+=($!) names+=(placement-sync)
    glance-manage --config-file "$ETC/glance/glance-api.conf" db_sync \
        </dev/null >>"$(logfile glance-sync)" 2>&1 &
    pids+=($!) names+=(glance-sync)
    sync_nova </dev/null >>"$(logfile nova-sync)" 2>&1 &
    pids+=($!) names+=(nova-sync)
    local failed=""
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || failed="$failed ${names[$i]}"
    done
    if [ -n "$failed" ]; then
        for i in $failed; do
            printf 'openstack-env: ERROR: %s failed (log: %s)\n' "$i" "$(logfile "$i")" >&2
            tail -n 15 "$(logfile "$i")" >&2
        done
        exit 1
    fi
    say "schemas ready in $(since "$t0")s"
}

osctl() { "$PY" "$BIN/osctl.py" "$@"; }

# Cinder's database and schema, once (also on a stack first started before
# Cinder was part of it).
initialize_cinder() {
    [ -f "$DATA/cinder-initialized" ] && return 0
    create_databases
    run_step cinder-sync cinder-manage --config-file "$ETC/cinder/cinder.conf" db sync
    touch "$DATA/cinder-initialized"
}

launch_cinder() {
    local c
    for c in cinder-api cinder-scheduler cinder-volume; do
        launch "$c" "/usr/bin/$c" --config-file "$ETC/cinder/cinder.conf"
    done
}

launch_nova() {
    uwsgi "$P_NOVA" /usr/bin/nova-api-wsgi 2
    OS_NOVA_CONFIG_DIR="$ETC/nova" launch nova-api "${UWSGI[@]}"
    launch nova-conductor /usr/bin/nova-conductor --config-file "$ETC/nova/nova.conf"
    launch nova-scheduler /usr/bin/nova-scheduler --config-file "$ETC/nova/nova.conf"
}

# nova_pids: NAME=PID of the Nova processes, for osctl to watch.
nova_pids() {
    local c pid out=()
    for c in nova-api nova-conductor nova-scheduler nova-compute; do
        pid="$(cat "$(pidfile "$c")" 2>/dev/null || echo 0)"
        out+=("$c=$pid")
    done
    echo "${out[@]}"
}

all_running() {
    local c
    for c in "${COMPONENTS[@]}"; do running_pid "$c" >/dev/null || return 1; done
}
any_running() {
    local c
    for c in "${COMPONENTS[@]}"; do running_pid "$c" >/dev/null && return 0; done
    return 1
}

on_start_error() {
    local rc=$?
    trap - EXIT
    if [ "$rc" != 0 ]; then
        if [ "${NP_OS_KEEP_ON_FAILURE:-}" = 1 ]; then
            say "start failed; leaving what runs (NP_OS_KEEP_ON_FAILURE=1); logs in $LOGS"
        else
            say "start failed; stopping what was started (logs stay in $LOGS)"
            stop_all >&2 || true
        fi
    fi
    exit "$rc"
}

do_start() {
    local t_start
    t_start="$(now)"
    mkdir -p "$S"
    if all_running; then
        say "already running (status: tools/openstack-env.sh status); env: $S/env.sh"
        return 0
    fi
    if any_running; then
        say "partly running; stopping the rest first"
        stop_all
    fi
    do_install
    [ -x "$PY" ] || die "$PY not found"
    trap on_start_error EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
    write_configs

    local busy
    busy="$(osctl ports-busy $P_MYSQL $P_EPMD $P_AMQP $P_RABBIT_DIST $P_KEYSTONE $P_NEUTRON \
        $P_PLACEMENT $P_GLANCE $P_NOVA $P_CINDER)"
    [ -z "$busy" ] || die "ports already in use on 127.0.0.1: $busy (another stack? see: ss -ltnp)"

    local first=""
    if [ ! -f "$DATA/initialized" ]; then
        first=1
        # A first start that failed half-way: begin again from nothing.
        rm -rf "$DATA/mysql" "$DATA/rabbit" "$DATA/fernet-keys" "$DATA/credential-keys" \
            "$DATA/images" "$DATA/neutron.json" "$DATA/nova-state"
        mkdir -p "$DATA/images" "$DATA/rabbit" "$DATA/nova-state"
    fi

    start_mariadb
    start_rabbitmq
    [ -n "$first" ] && initialize
    initialize_cinder

    # Launch every service now; they wait for each other. Only nova-compute
    # waits for Keystone and Placement: it reports its resources to
    # Placement at start and would otherwise retry only a minute later.
    uwsgi "$P_KEYSTONE" /usr/bin/keystone-wsgi-public 2
    OS_KEYSTONE_CONFIG_DIR="$ETC/keystone" launch keystone "${UWSGI[@]}"
    launch neutron "$PY" "$BIN/neutron_stub.py" "$P_NEUTRON" "$DATA/neutron.json"
    uwsgi "$P_PLACEMENT" /usr/bin/placement-api 1
    OS_PLACEMENT_CONFIG_DIR="$ETC/placement" launch placement "${UWSGI[@]}"
    launch glance /usr/bin/glance-api --config-file "$ETC/glance/glance-api.conf"
    launch_cinder
    # The Nova services need the catalog (the scheduler exits without a
    # placement endpoint), which the first start has yet to register.
    [ -n "$first" ] || launch_nova
    wait_http keystone "http://127.0.0.1:$P_KEYSTONE/v3"
    if [ -n "$first" ]; then
        run_step keystone-catalog osctl catalog \
            "compute=nova=http://127.0.0.1:$P_NOVA/v2.1" \
            "placement=placement=http://127.0.0.1:$P_PLACEMENT" \
            "image=glance=http://127.0.0.1:$P_GLANCE" \
            "network=neutron=http://127.0.0.1:$P_NEUTRON"
        launch_nova
    fi
    # Cinder's endpoint, on every start (idempotent): stacks from before it
    # had volumev3 on the Neutron stub.
    run_step cinder-catalog osctl catalog "volumev3=cinderv3=http://127.0.0.1:$P_CINDER/v3/%(project_id)s"
    wait_http cinder-api "http://127.0.0.1:$P_CINDER/"
    wait_http placement "http://127.0.0.1:$P_PLACEMENT/"
    launch nova-compute "$PY" "$BIN/nova-compute" "$ETC/nova/nova-compute.conf"
    wait_tcp rabbitmq "$P_AMQP"
    wait_http neutron "http://127.0.0.1:$P_NEUTRON/"
    wait_http glance "http://127.0.0.1:$P_GLANCE/"
    wait_http nova-api "http://127.0.0.1:$P_NOVA/"

    local t0
    t0="$(now)"
    # shellcheck disable=SC2046
    if ! osctl wait-services "$COMPUTE_HOST" "$TIMEOUT" $(nova_pids) >>"$(logfile nova-wait)" 2>&1; then
        for c in nova-api nova-conductor nova-scheduler nova-compute; do alive_or_fail "$c"; done
        fail nova-wait "nova services did not come up: $(tail -n 1 "$(logfile nova-wait)"); see $LOGS/nova-{conductor,scheduler,compute}.log"
    fi
    say "nova conductor, scheduler, compute up after $(since "$t0")s"
    run_step nova-discover nova-manage --config-file "$ETC/nova/nova.conf" cell_v2 discover_hosts --verbose
    # shellcheck disable=SC2046
    if ! osctl wait-hypervisor "$COMPUTE_HOST" "$TIMEOUT" $(nova_pids) >>"$(logfile nova-wait)" 2>&1; then
        for c in nova-api nova-conductor nova-scheduler nova-compute; do alive_or_fail "$c"; done
        fail nova-wait "hypervisor $COMPUTE_HOST did not come up: $(tail -n 1 "$(logfile nova-wait)"); see $LOGS/nova-compute.log"
    fi
    run_step seed osctl seed
    touch "$DATA/initialized"
    trap - EXIT TERM INT
    local took
    took="$(since "$t_start")"
    read -r kb n < <(stack_rss)
    say "started in ${took}s ($n processes, RSS $((kb / 1024)) MiB); clouds.yaml: $S/clouds.yaml"
    say "use: . $S/env.sh   (NP_OS_CLOUDS, NP_OS_CLOUD=devstack)"
}

stack_rss() {
    local pg=() c pid
    for c in "${COMPONENTS[@]}"; do
        pid="$(running_pid "$c")" && pg+=("$pid")
    done
    [ ${#pg[@]} -gt 0 ] || { echo "0 0"; return; }
    "$PY" "$BIN/osctl.py" rss "${pg[@]}"
}

do_status() {
    local c pid up=0 down=0
    for c in "${COMPONENTS[@]}"; do
        if pid="$(running_pid "$c")"; then
            printf '  %-15s running (pid %s)\n' "$c" "$pid"
            up=$((up + 1))
        else
            printf '  %-15s stopped\n' "$c"
            down=$((down + 1))
        fi
    done
    if [ "$down" = 0 ]; then
        read -r kb n < <(stack_rss)
        say "running ($n processes, RSS $((kb / 1024)) MiB); env: $S/env.sh"
        return 0
    elif [ "$up" = 0 ]; then
        say "stopped"
        return 3
    fi
    say "partly running ($up of $((up + down)))"
    return 1
}

do_probe() {
    all_running || die "not running; start it first"
    write_helpers
    "$PY" "$BIN/probe.py" "$S/observed.md"
}

case "${1:-}" in
    start) do_start ;;
    stop) stop_all; say "stopped" ;;
    status) do_status ;;
    reset)
        stop_all
        rm -rf "$DATA" "$RUN" "$ETC" "$BIN"
        say "data removed"
        ;;
    install) mkdir -p "$S"; do_install ;;
    probe) do_probe ;;
    rss)
        read -r kb n < <(stack_rss)
        say "$n processes, RSS $((kb / 1024)) MiB"
        ;;
    *)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
