#!/usr/bin/env bash
# A private, real ZooKeeper 3.8 for the tests, from Debian's `zookeeper`
# package (tools/setup.sh installs it).
#
#   tools/test-env.sh start    start it (stopping an old one first)
#   tools/test-env.sh stop     stop it and remove its data
#   tools/test-env.sh status   say whether it runs (exit 0 if it does)
#
# Everything lives in <repo>/.test-env/ (git ignores it):
#   zoo.cfg, zk-data/, zk.log, zk.pid   the server
#   tls/                                a test CA, a server and a client
#                                       certificate (PEM, keys in PKCS#8)
#   env.sh                              exports for the tests (below)
#
# The server listens on 127.0.0.1 only: on a free plain port and on a free
# TLS port (client certificates required, as Nodepool and Zuul use it).
# env.sh exports
#   NP_ZK_HOSTS        127.0.0.1:<plain port>
#   NP_ZK_TLS_HOSTS    127.0.0.1:<tls port>
#   NP_ZK_TLS_CA       CA certificate (PEM)
#   NP_ZK_TLS_CERT     client certificate (PEM)
#   NP_ZK_TLS_KEY      client key (PEM, PKCS#8)
#   NP_PYTHON          the venv's python (with kazoo and nodepool 11)
#   NP_TEST_ENV_DIR    <repo>/.test-env
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$REPO/.test-env"
VENV="${NP_VENV:-$REPO/.venv}"
DATA="$DIR/zk-data"
TLS="$DIR/tls"
CFG="$DIR/zoo.cfg"
LOG="$DIR/zk.log"
PIDFILE="$DIR/zk.pid"
ENVFILE="$DIR/env.sh"
START_TIMEOUT="${NP_ZK_START_TIMEOUT:-60}"
MAIN_CLASS=org.apache.zookeeper.server.quorum.QuorumPeerMain

say() { printf 'test-env: %s\n' "$*"; }
die() {
    printf 'test-env: ERROR: %s\n' "$*" >&2
    exit 1
}

# The pid of our ZooKeeper if it runs, else nothing (and status 1). The pid is
# checked against its command line, so a recycled pid is never taken for it.
running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case "$cmd" in
        *"$MAIN_CLASS $CFG"*) printf '%s\n' "$pid" ;;
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

# Two distinct free TCP ports on 127.0.0.1.
free_ports() {
    python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
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

do_stop() {
    local pid
    if pid="$(running_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 100); do
            [ -d "/proc/$pid" ] || break
            # A zombie (our own child in `start`) counts as gone.
            if [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)" = Z ]; then break; fi
            sleep 0.1
            if [ "$i" = 50 ]; then kill -KILL "$pid" 2>/dev/null || true; fi
        done
        say "stopped ZooKeeper (pid $pid)"
    fi
    rm -rf "$DATA"
    rm -f "$PIDFILE" "$ENVFILE" "$CFG"
}

# Prints the ZooKeeper log and fails.
fail_with_log() {
    printf 'test-env: ERROR: %s\n--- %s ---\n' "$1" "$LOG" >&2
    tail -n 80 "$LOG" >&2 || true
    do_stop >&2 || true
    exit 1
}

# Writes zoo.cfg for two new free ports, starts the JVM and waits until it
# answers `ruok`. Sets plain, tls and pid. Returns 1 when the JVM died because
# a port was taken (worth another try); fails outright otherwise.
launch() {
    local cp="$1" deadline="$2" ports
    ports="$(free_ports)"
    plain="${ports% *}"
    tls="${ports#* }"

    cat >"$CFG" <<EOF
# Written by tools/test-env.sh; removed by 'tools/test-env.sh stop'.
tickTime=500
minSessionTimeout=1000
maxSessionTimeout=60000
initLimit=10
syncLimit=5
dataDir=$DATA
clientPortAddress=127.0.0.1
clientPort=$plain
secureClientPortAddress=127.0.0.1
secureClientPort=$tls
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

    : >"$LOG"
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
        -cp "$cp" "$MAIN_CLASS" "$CFG" </dev/null >>"$LOG" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$PIDFILE"

    local answer=""
    while :; do
        if ! running_pid >/dev/null; then
            if grep -q 'Address already in use' "$LOG"; then
                return 1
            fi
            fail_with_log "ZooKeeper exited during start"
        fi
        answer="$(echo ruok | nc -w 2 127.0.0.1 "$plain" 2>/dev/null || true)"
        [ "$answer" = imok ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail_with_log "ZooKeeper did not answer ruok on 127.0.0.1:$plain within ${START_TIMEOUT}s"
        fi
        sleep 0.2
    done
}

do_start() {
    command -v java >/dev/null 2>&1 || die "java not found (run tools/setup.sh)"
    command -v nc >/dev/null 2>&1 || die "nc not found (run tools/setup.sh)"
    command -v openssl >/dev/null 2>&1 || die "openssl not found (run tools/setup.sh)"
    mkdir -p "$DIR"
    do_stop >/dev/null
    make_tls
    mkdir -p "$DATA"

    local cp
    cp="$(zk_classpath)"
    local deadline=$((SECONDS + START_TIMEOUT)) attempt plain="" tls="" pid=""
    for attempt in 1 2 3; do
        # Another process may take a port between free_ports and the JVM's
        # bind: then try again with new ones.
        if launch "$cp" "$deadline"; then
            break
        fi
        [ "$attempt" = 3 ] && fail_with_log "ZooKeeper could not bind its ports (3 tries)"
        do_stop >/dev/null
        mkdir -p "$DATA"
    done

    # The TLS port must complete a handshake with our client certificate.
    local tls_ok=0 out=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        if out="$(openssl s_client -connect "127.0.0.1:$tls" -servername localhost \
            -CAfile "$TLS/ca.pem" -cert "$TLS/client.pem" -key "$TLS/client.key" \
            -verify_return_error -verify_ip 127.0.0.1 </dev/null 2>&1)" &&
            grep -q 'Verify return code: 0 (ok)' <<<"$out"; then
            tls_ok=1
            break
        fi
        sleep 0.2
    done
    if [ "$tls_ok" != 1 ]; then
        printf '%s\n' "$out" >&2
        fail_with_log "no TLS handshake on 127.0.0.1:$tls"
    fi

    cat >"$ENVFILE" <<EOF
# Written by tools/test-env.sh start; source it.
export NP_ZK_HOSTS='127.0.0.1:$plain'
export NP_ZK_TLS_HOSTS='127.0.0.1:$tls'
export NP_ZK_TLS_CA='$TLS/ca.pem'
export NP_ZK_TLS_CERT='$TLS/client.pem'
export NP_ZK_TLS_KEY='$TLS/client.key'
export NP_PYTHON='$VENV/bin/python'
export NP_TEST_ENV_DIR='$DIR'
EOF
    say "ZooKeeper (pid $pid) on 127.0.0.1:$plain, TLS on 127.0.0.1:$tls; source $ENVFILE"
}

do_status() {
    local pid
    if pid="$(running_pid)"; then
        local hosts=""
        [ -f "$ENVFILE" ] && hosts="$(sed -n "s/^export NP_ZK_HOSTS='\(.*\)'$/\1/p" "$ENVFILE")"
        say "running (pid $pid${hosts:+, $hosts})"
        return 0
    fi
    say "not running"
    return 1
}

case "${1:-}" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
