#!/usr/bin/env bash
# A private, real ZooKeeper 3.8 for the tests, from Debian's `zookeeper`
# package (tools/setup.sh installs it): one server, or a quorum ensemble of
# NP_ZK_SERVERS servers (3 or more) on loopback ports.
#
#   tools/test-env.sh start       start it (stopping an old one first; fresh data)
#   tools/test-env.sh stop        stop it and remove its data
#   tools/test-env.sh status      say whether it runs (exit 0 if every server does)
#   tools/test-env.sh kill [N]    SIGKILL server N (default: every server); its
#                                 data, ports and sessions stay for `resume`
#   tools/test-env.sh resume [N]  start server N (default: every stopped one)
#                                 again on its ports with its data, and wait
#                                 until it serves
#   tools/test-env.sh leader      print the number of the ensemble's leader (1
#                                 for a single server)
#
# Environment:
#   NP_ZK_ENV_DIR   where everything lives (default <repo>/.test-env)
#   NP_ZK_SERVERS   servers for `start` (default 1; an ensemble needs 3 or more)
#
# Everything lives in that directory (git ignores <repo>/.test-env):
#   zoo.cfg, zk-data/, zk.log, zk.pid   server 1 (server N > 1: zoo-N.cfg,
#                                       zk-data-N/, zk-N.log, zk-N.pid)
#   ports                               one line per server: its client, TLS,
#                                       quorum and election ports
#   tls/                                a test CA, a server and a client
#                                       certificate (PEM, keys in PKCS#8)
#   env.sh                              exports for the tests (below)
#
# Every server listens on 127.0.0.1 only: on a free plain port and on a free
# TLS port (client certificates required, as Nodepool and Zuul use it).
# env.sh exports
#   NP_ZK_HOSTS        127.0.0.1:<plain port>[,127.0.0.1:<plain port>...]
#   NP_ZK_TLS_HOSTS    127.0.0.1:<tls port>[,...]
#   NP_ZK_TLS_CA       CA certificate (PEM)
#   NP_ZK_TLS_CERT     client certificate (PEM)
#   NP_ZK_TLS_KEY      client key (PEM, PKCS#8)
#   NP_PYTHON          the venv's python (with kazoo and nodepool 11)
#   NP_TEST_ENV_DIR    the directory above
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${NP_ZK_ENV_DIR:-$REPO/.test-env}"
VENV="${NP_VENV:-$REPO/.venv}"
TLS="$DIR/tls"
ENVFILE="$DIR/env.sh"
PORTS="$DIR/ports"
START_TIMEOUT="${NP_ZK_START_TIMEOUT:-60}"
MAIN_CLASS=org.apache.zookeeper.server.quorum.QuorumPeerMain

say() { printf 'test-env: %s\n' "$*"; }
die() {
    printf 'test-env: ERROR: %s\n' "$*" >&2
    exit 1
}

# Per-server file names: server 1 keeps the single-server names.
sfx() { if [ "$1" = 1 ]; then echo ""; else echo "-$1"; fi; }
cfg_of() { echo "$DIR/zoo$(sfx "$1").cfg"; }
data_of() { echo "$DIR/zk-data$(sfx "$1")"; }
log_of() { echo "$DIR/zk$(sfx "$1").log"; }
pid_of() { echo "$DIR/zk$(sfx "$1").pid"; }

# The number of servers of the environment (from its ports file), or
# NP_ZK_SERVERS for a new one.
server_count() {
    if [ -s "$PORTS" ]; then
        wc -l <"$PORTS" | tr -d ' '
    else
        echo "${NP_ZK_SERVERS:-1}"
    fi
}

# port N FIELD: FIELD 1 client, 2 TLS, 3 quorum, 4 election port of server N.
port() { sed -n "${1}p" "$PORTS" | awk -v f="$2" '{ print $f }'; }

# The pid of server N if it runs, else nothing (and status 1). The pid is
# checked against its command line, so a recycled pid is never taken for it;
# a zombie (our own exited child) counts as gone.
running_pid() {
    local n="${1:-1}" pidfile cfg pid cmd
    pidfile="$(pid_of "$n")"
    cfg="$(cfg_of "$n")"
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)" != Z ] || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case "$cmd" in
        *"$MAIN_CLASS $cfg"*) printf '%s\n' "$pid" ;;
        *) return 1 ;;
    esac
}

# The class path of Debian's ZooKeeper (or of an upstream tarball layout).
zk_classpath() {
    local cp="" j
    if compgen -G "/usr/share/zookeeper/lib/*.jar" >/dev/null; then
        # Upstream layout: everything ZooKeeper needs is in lib/.
        for j in /usr/share/zookeeper/*.jar /usr/share/zookeeper/lib/*.jar; do
            [ -f "$j" ] && cp="$cp:$j"
        done
        printf '%s\n' "${cp#:}"
        return
    fi
    local java=/usr/share/java
    [ -f "$java/zookeeper.jar" ] || die "no ZooKeeper jar in /usr/share/java or /usr/share/zookeeper/lib (run tools/setup.sh)"
    # zookeeper.jar's manifest names most of its dependencies, but not the
    # parts of Netty that netty-handler (TLS) needs, nor an SLF4J binding.
    local jars=(zookeeper zookeeper-jute
        netty-buffer netty-codec netty-common netty-handler netty-resolver
        netty-transport netty-transport-native-unix-common netty-transport-native-epoll
        slf4j-api slf4j-simple
        metrics-core commons-cli commons-io snappy-java
        jackson-annotations jackson-core jackson-databind)
    for j in "${jars[@]}"; do
        [ -f "$java/$j.jar" ] && cp="$cp:$java/$j.jar"
    done
    printf '%s\n' "${cp#:}"
}

# A CA, a server certificate (127.0.0.1, localhost) and a client certificate,
# made once and kept across restarts. ZooKeeper's PEM key store wants the key
# in PKCS#8 ("BEGIN PRIVATE KEY"), which is what OpenSSL 3 writes.
make_tls() {
    if [ -f "$TLS/ca.pem" ] && [ -f "$TLS/server.pem" ] && [ -f "$TLS/client.pem" ] &&
        [ -f "$TLS/client.key" ] &&
        openssl x509 -checkend 86400 -noout -in "$TLS/client.pem" >/dev/null 2>&1 &&
        openssl x509 -checkend 86400 -noout -in "$TLS/server.crt" >/dev/null 2>&1; then
        return
    fi
    rm -rf "$TLS"
    mkdir -p "$TLS"
    chmod 700 "$TLS"
    cat >"$TLS/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth, serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    (
        cd "$TLS"
        local keyopts=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
        openssl req -config openssl.cnf -x509 "${keyopts[@]}" -keyout ca.key -out ca.pem \
            -days 3650 -subj "/CN=nodepool-rs test CA" -extensions ca_ext
        local who
        for who in server client; do
            openssl req -config openssl.cnf -new "${keyopts[@]}" -keyout "$who.key" -out "$who.csr" \
                -subj "/CN=nodepool-rs test $who"
            openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
                -days 3650 -extfile openssl.cnf -extensions "${who}_ext" -out "$who.crt"
        done
        # ZooKeeper's PEM key store: key and certificate chain in one file.
        cat server.key server.crt >server.pem
        # The client's: certificate alone (client.pem) and key (client.key).
        cp client.crt client.pem
        chmod 600 ./*.key server.pem
        rm -f ./*.csr ca.srl
    ) >"$DIR/tls.log" 2>&1 || {
        cat "$DIR/tls.log" >&2
        die "could not make the TLS files"
    }
}

# N distinct free TCP ports on 127.0.0.1, on one line.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Stops server N: TERM, then KILL after 5 s; with "now", KILL at once.
# Keeps its data.
halt() {
    local n="$1" how="${2:-}" pid i
    pid="$(running_pid "$n")" || return 0
    if [ "$how" = now ]; then
        kill -KILL "$pid" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
    for i in $(seq 1 100); do
        running_pid "$n" >/dev/null || break
        sleep 0.1
        if [ "$i" = 50 ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    say "stopped ZooKeeper server $n (pid $pid)"
}

do_stop() {
    local n
    for n in $(seq 1 "$(server_count)"); do
        halt "$n"
        rm -rf "$(data_of "$n")"
        rm -f "$(pid_of "$n")" "$(cfg_of "$n")"
    done
    rm -f "$ENVFILE" "$PORTS"
}

# Prints server N's log and fails.
fail_with_log() {
    printf 'test-env: ERROR: %s\n--- %s ---\n' "$2" "$(log_of "$1")" >&2
    tail -n 80 "$(log_of "$1")" >&2 || true
    do_stop >&2 || true
    exit 1
}

# Writes server N's zoo.cfg (and, in an ensemble, its myid) from the ports file.
write_config() {
    local n="$1" count="$2" data i
    data="$(data_of "$n")"
    mkdir -p "$data"
    cat >"$(cfg_of "$n")" <<EOF
# Written by tools/test-env.sh; removed by 'tools/test-env.sh stop'.
tickTime=500
minSessionTimeout=1000
maxSessionTimeout=60000
initLimit=10
syncLimit=5
dataDir=$data
clientPortAddress=127.0.0.1
clientPort=$(port "$n" 1)
secureClientPortAddress=127.0.0.1
secureClientPort=$(port "$n" 2)
serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory
ssl.keyStore.location=$TLS/server.pem
ssl.keyStore.type=PEM
ssl.trustStore.location=$TLS/ca.pem
ssl.trustStore.type=PEM
ssl.clientAuth=need
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,mntr,srvr
maxClientCnxns=0
# Test data is thrown away: don't wait for fsync.
forceSync=no
autopurge.purgeInterval=0
EOF
    if [ "$count" -gt 1 ]; then
        for i in $(seq 1 "$count"); do
            echo "server.$i=127.0.0.1:$(port "$i" 3):$(port "$i" 4)" >>"$(cfg_of "$n")"
        done
        echo "$n" >"$data/myid"
    fi
}

# Starts server N's JVM in the background, appending to its log.
spawn() {
    local n="$1" cp="$2"
    # setsid + nohup: ZooKeeper outlives the shell that started it. With job
    # control off, the background job is no process group leader, so setsid
    # execs in place and $! is the JVM's pid.
    nohup setsid java \
        -Xms32m -Xmx512m -XX:+UseSerialGC -Xss512k \
        -Djava.net.preferIPv4Stack=true \
        -Djava.awt.headless=true \
        -Dzookeeper.admin.enableServer=false \
        -Dzookeeper.jmx.log4j.disable=true \
        -Dorg.slf4j.simpleLogger.defaultLogLevel=info \
        -Dorg.slf4j.simpleLogger.showDateTime=true \
        -Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS \
        -cp "$cp" "$MAIN_CLASS" "$(cfg_of "$n")" </dev/null >>"$(log_of "$n")" 2>&1 &
    printf '%s\n' "$!" >"$(pid_of "$n")"
}

# The mode server N reports (standalone, leader, follower), or nothing.
mode_of() {
    echo srvr | nc -w 2 127.0.0.1 "$(port "$1" 1)" 2>/dev/null | sed -n 's/^Mode: //p' || true
}

# Waits until server N serves clients (standalone, or a member of a quorum).
# Returns 1 when its JVM died because a port was taken (worth another try
# with new ports); fails outright on any other death or at the deadline.
await_server() {
    local n="$1" deadline="$2"
    while :; do
        if ! running_pid "$n" >/dev/null; then
            if grep -q 'Address already in use' "$(log_of "$n")"; then
                return 1
            fi
            fail_with_log "$n" "ZooKeeper server $n exited during start"
        fi
        case "$(mode_of "$n")" in standalone | leader | follower) return 0 ;; esac
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail_with_log "$n" "ZooKeeper server $n did not serve on 127.0.0.1:$(port "$n" 1) within ${START_TIMEOUT}s"
        fi
        sleep 0.2
    done
}

# Server N's TLS port must complete a handshake with our client certificate.
await_tls() {
    local n="$1" deadline="$2" out="" tls
    tls="$(port "$n" 2)"
    while [ "$SECONDS" -lt "$deadline" ]; do
        if out="$(openssl s_client -connect "127.0.0.1:$tls" -servername localhost \
            -CAfile "$TLS/ca.pem" -cert "$TLS/client.pem" -key "$TLS/client.key" \
            -verify_return_error -verify_ip 127.0.0.1 </dev/null 2>&1)" &&
            grep -q 'Verify return code: 0 (ok)' <<<"$out"; then
            return 0
        fi
        sleep 0.2
    done
    printf '%s\n' "$out" >&2
    fail_with_log "$n" "no TLS handshake on 127.0.0.1:$tls"
}

# The client addresses of every server (FIELD 1 plain, 2 TLS), comma-separated.
host_list() {
    local n out=""
    for n in $(seq 1 "$(server_count)"); do
        out="$out,127.0.0.1:$(port "$n" "$1")"
    done
    echo "${out#,}"
}

do_start() {
    command -v java >/dev/null 2>&1 || die "java not found (run tools/setup.sh)"
    command -v nc >/dev/null 2>&1 || die "nc not found (run tools/setup.sh)"
    command -v openssl >/dev/null 2>&1 || die "openssl not found (run tools/setup.sh)"
    mkdir -p "$DIR"
    do_stop >/dev/null
    local count="${NP_ZK_SERVERS:-1}"
    if ! [[ "$count" =~ ^[0-9]+$ ]] || [ "$count" -lt 1 ]; then
        die "NP_ZK_SERVERS must be a positive number"
    fi
    [ "$count" = 1 ] || [ "$count" -ge 3 ] || die "an ensemble needs at least 3 servers (NP_ZK_SERVERS=$count)"
    make_tls

    local cp deadline=$((SECONDS + START_TIMEOUT)) attempt n ok
    cp="$(zk_classpath)"
    for attempt in 1 2 3; do
        # Another process may take a port between free_ports and the JVM's
        # bind: then try again with new ones.
        : >"$PORTS"
        for n in $(seq 1 "$count"); do
            free_ports 4 >>"$PORTS"
        done
        for n in $(seq 1 "$count"); do
            write_config "$n" "$count"
            : >"$(log_of "$n")"
            spawn "$n" "$cp"
        done
        ok=1
        for n in $(seq 1 "$count"); do
            await_server "$n" "$deadline" || {
                ok=0
                break
            }
        done
        [ "$ok" = 1 ] && break
        [ "$attempt" = 3 ] && fail_with_log "$n" "ZooKeeper could not bind its ports (3 tries)"
        do_stop >/dev/null
    done
    for n in $(seq 1 "$count"); do
        await_tls "$n" "$deadline"
    done

    cat >"$ENVFILE" <<EOF
# Written by tools/test-env.sh start; source it.
export NP_ZK_HOSTS='$(host_list 1)'
export NP_ZK_TLS_HOSTS='$(host_list 2)'
export NP_ZK_TLS_CA='$TLS/ca.pem'
export NP_ZK_TLS_CERT='$TLS/client.pem'
export NP_ZK_TLS_KEY='$TLS/client.key'
export NP_PYTHON='$VENV/bin/python'
export NP_TEST_ENV_DIR='$DIR'
EOF
    if [ "$count" = 1 ]; then
        say "ZooKeeper (pid $(cat "$(pid_of 1)")) on 127.0.0.1:$(port 1 1), TLS on 127.0.0.1:$(port 1 2); source $ENVFILE"
    else
        say "ZooKeeper ensemble of $count servers on $(host_list 1) (TLS $(host_list 2)), leader: server $(do_leader); source $ENVFILE"
    fi
}

# The servers a command names: N, or every server.
servers_named() {
    local count
    count="$(server_count)"
    if [ -n "${1:-}" ]; then
        if ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ] || [ "$1" -gt "$count" ]; then
            die "no server $1 (there are $count)"
        fi
        echo "$1"
    else
        seq 1 "$count"
    fi
}

do_kill() {
    [ -s "$PORTS" ] || die "not started"
    local n
    for n in $(servers_named "${1:-}"); do
        halt "$n" now
    done
}

do_resume() {
    [ -s "$PORTS" ] || die "not started"
    local cp n deadline=$((SECONDS + START_TIMEOUT)) started=()
    cp="$(zk_classpath)"
    for n in $(servers_named "${1:-}"); do
        running_pid "$n" >/dev/null && continue
        spawn "$n" "$cp"
        started+=("$n")
    done
    for n in "${started[@]}"; do
        await_server "$n" "$deadline" || fail_with_log "$n" "server $n could not bind its ports again"
        say "resumed ZooKeeper server $n (pid $(cat "$(pid_of "$n")"), $(mode_of "$n"))"
    done
}

do_leader() {
    [ -s "$PORTS" ] || die "not started"
    local n
    for n in $(seq 1 "$(server_count)"); do
        case "$(mode_of "$n")" in leader | standalone)
            echo "$n"
            return 0
            ;;
        esac
    done
    return 1
}

do_status() {
    local n count up=0 hosts=""
    count="$(server_count)"
    [ -f "$ENVFILE" ] && hosts="$(sed -n "s/^export NP_ZK_HOSTS='\(.*\)'$/\1/p" "$ENVFILE")"
    for n in $(seq 1 "$count"); do
        if running_pid "$n" >/dev/null; then up=$((up + 1)); fi
    done
    if [ "$up" = "$count" ] && [ -s "$PORTS" ]; then
        if [ "$count" = 1 ]; then
            say "running (pid $(running_pid 1)${hosts:+, $hosts})"
        else
            say "running: $count servers${hosts:+, $hosts}"
        fi
        return 0
    fi
    if [ "$up" -gt 0 ]; then
        say "$up of $count servers running"
    else
        say "not running"
    fi
    return 1
}

case "${1:-}" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    kill) do_kill "${2:-}" ;;
    resume) do_resume "${2:-}" ;;
    leader) do_leader ;;
    *)
        echo "usage: $0 start|stop|status|kill [N]|resume [N]|leader" >&2
        exit 2
        ;;
esac
