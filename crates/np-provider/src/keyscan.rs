//! SSH host-key scanning and port checks, Python Nodepool's `nodeutils.nodescan`
//! (spec launcher §3.8, drivers §4.2).
//!
//! Keys are returned as `"<type> <base64>"` strings (`ssh-ed25519 AAAA…`,
//! `ecdsa-sha2-nistp256 AAAA…`, `ssh-rsa AAAA…`), the format Zuul writes into
//! `known_hosts`. The order is upstream's (paramiko's preferred host-key
//! order: ed25519, ecdsa, rsa) and every key appears once.
//!
//! The handshakes are done by OpenSSH's `ssh-keyscan` (Debian
//! `openssh-client`), run as a child process that is killed when the scan
//! times out or is cancelled. Before it runs, a plain TCP connect tells a
//! refused or unreachable port apart from a slow one, so errors say what
//! happened ([`KeyscanError`]).
//!
//! * [`scan_host_keys`]: one attempt;
//! * [`wait_for_ssh`]: retries the scan until it returns keys or the timeout
//!   passes (upstream waits for the port, then gathers keys);
//! * [`wait_for_port`]: retries a TCP connect until the timeout (non-SSH
//!   connection types, liveness checks).
//!
//! Nothing here knows about nodes or ZooKeeper: cloud drivers use it for their
//! host-key checks too.

use std::io;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::Instant;
use tracing::debug;

/// The program that performs the SSH handshakes.
pub const SSH_KEYSCAN: &str = "ssh-keyscan";

/// How long to wait between attempts of [`wait_for_ssh`] and [`wait_for_port`].
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bound of one TCP connect attempt, as upstream's socket timeout.
pub const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A host-key algorithm family to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyType {
    /// `ssh-ed25519`.
    Ed25519,
    /// `ecdsa-sha2-nistp256/384/521`.
    Ecdsa,
    /// `ssh-rsa` (negotiated as `rsa-sha2-512`/`rsa-sha2-256`).
    Rsa,
}

impl KeyType {
    /// Every supported type, in upstream's (paramiko's) preference order.
    pub const ALL: [KeyType; 3] = [KeyType::Ed25519, KeyType::Ecdsa, KeyType::Rsa];

    /// The name `ssh-keyscan -t` takes.
    pub fn keyscan_name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Ecdsa => "ecdsa",
            KeyType::Rsa => "rsa",
        }
    }

    /// The type of a key string's algorithm name (`ssh-rsa`, `ecdsa-sha2-nistp384`, …).
    pub fn of_algorithm(name: &str) -> Option<KeyType> {
        match name {
            "ssh-ed25519" => Some(KeyType::Ed25519),
            "ssh-rsa" => Some(KeyType::Rsa),
            n if n.starts_with("ecdsa-sha2-") => Some(KeyType::Ecdsa),
            _ => None,
        }
    }
}

/// Why a scan or port check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyscanError {
    /// The host name does not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    /// Nothing listens on the port.
    #[error("connection to {addr} refused")]
    ConnectionRefused { addr: SocketAddr },
    /// Another connect error (unreachable network, reset, …).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The deadline passed; `last_error` is the last attempt's failure.
    #[error("timed out after {timeout:?} waiting for {what} on {host} port {port}{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout { what: &'static str, host: String, port: u16, timeout: Duration, last_error: Option<String> },
    /// The port accepted a connection but no host key could be read.
    #[error("{addr} offered no SSH host keys{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    NoKeys { addr: SocketAddr, detail: String },
    /// `ssh-keyscan` could not be started.
    #[error("cannot run {program}: {source} (install openssh-client, e.g. with tools/setup.sh)")]
    Tool {
        program: &'static str,
        #[source]
        source: io::Error,
    },
}

impl KeyscanError {
    /// Errors that retrying cannot fix (bad name, missing tool).
    pub fn is_permanent(&self) -> bool {
        matches!(self, KeyscanError::Resolve { .. } | KeyscanError::Tool { .. })
    }
}

/// Resolves `host:port` to its first address, like upstream's `getaddrinfo(...)[0]`.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, KeyscanError> {
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| KeyscanError::Resolve { host: host.to_owned(), source })?;
    addrs.next().ok_or_else(|| KeyscanError::Resolve {
        host: host.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
    })
}

/// One TCP connect to `addr`, bounded by `timeout`.
async fn connect_once(addr: SocketAddr, host: &str, timeout: Duration) -> Result<(), KeyscanError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(KeyscanError::ConnectionRefused { addr })
        }
        Ok(Err(source)) => Err(KeyscanError::Connect { addr, source }),
        Err(_) => Err(KeyscanError::Timeout {
            what: "a TCP connection",
            host: host.to_owned(),
            port: addr.port(),
            timeout,
            last_error: None,
        }),
    }
}

/// Parses `ssh-keyscan` output (`<host> <type> <base64>` lines; `#` comments)
/// into `"<type> <base64>"` strings of the wanted types, in `wanted` order,
/// without duplicates.
pub fn parse_keyscan_output(stdout: &str, wanted: &[KeyType]) -> Vec<String> {
    let mut found: Vec<(KeyType, String)> = Vec::new();
    for line in stdout.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(_host), Some(algorithm), Some(blob)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Some(kind) = KeyType::of_algorithm(algorithm) else { continue };
        if !wanted.contains(&kind) {
            continue;
        }
        let key = format!("{algorithm} {blob}");
        if !found.iter().any(|(_, k)| *k == key) {
            found.push((kind, key));
        }
    }
    // Stable: keeps ssh-keyscan's order within one family.
    found.sort_by_key(|(kind, _)| wanted.iter().position(|w| w == kind).unwrap_or(usize::MAX));
    found.into_iter().map(|(_, k)| k).collect()
}

/// `"<type> <base64>"` of a key line (drops `known_hosts` markers, host
/// fields and comments are not expected; extra trailing fields are dropped).
pub fn normalize_key(key: &str) -> String {
    let mut fields = key.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(a), Some(b)) => format!("{a} {b}"),
        (Some(a), None) => a.to_owned(),
        _ => String::new(),
    }
}

/// One scan: resolves `host`, checks that the port accepts a TCP connection,
/// then collects the host keys of `key_types` (default: all of
/// [`KeyType::ALL`]). The whole attempt is bounded by `timeout`.
pub async fn scan_host_keys(
    host: &str,
    port: u16,
    timeout: Duration,
    key_types: Option<&[KeyType]>,
) -> Result<Vec<String>, KeyscanError> {
    let deadline = Instant::now() + timeout;
    let wanted = key_types.unwrap_or(&KeyType::ALL);
    let addr = resolve(host, port).await?;
    connect_once(addr, host, timeout.min(CONNECT_ATTEMPT_TIMEOUT)).await?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    let types: Vec<&str> = wanted.iter().map(|t| t.keyscan_name()).collect();
    let mut cmd = Command::new(SSH_KEYSCAN);
    cmd.arg("-T")
        .arg(left.as_secs().max(1).to_string())
        .arg("-p")
        .arg(port.to_string())
        .arg("-t")
        .arg(types.join(","))
        .arg(addr.ip().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| KeyscanError::Tool { program: SSH_KEYSCAN, source })?;
    let output = match tokio::time::timeout(left, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => return Err(KeyscanError::Tool { program: SSH_KEYSCAN, source }),
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => {
            return Err(KeyscanError::Timeout {
                what: "SSH host keys",
                host: host.to_owned(),
                port,
                timeout,
                last_error: None,
            })
        }
    };
    let keys = parse_keyscan_output(&String::from_utf8_lossy(&output.stdout), wanted);
    debug!(host, port, keys = keys.len(), "ssh-keyscan finished");
    if keys.is_empty() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or_default()
            .to_owned();
        return Err(KeyscanError::NoKeys { addr, detail });
    }
    Ok(keys)
}

/// Retries [`scan_host_keys`] until it returns keys or `timeout` passes
/// (upstream `nodescan(..., gather_hostkeys=True)`). A name that does not
/// resolve or a missing `ssh-keyscan` fails at once.
pub async fn wait_for_ssh(
    host: &str,
    port: u16,
    timeout: Duration,
    key_types: Option<&[KeyType]>,
) -> Result<Vec<String>, KeyscanError> {
    let deadline = Instant::now() + timeout;
    let mut last_error: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(KeyscanError::Timeout {
                what: "SSH",
                host: host.to_owned(),
                port,
                timeout,
                last_error,
            });
        }
        match scan_host_keys(host, port, left, key_types).await {
            Ok(keys) => return Ok(keys),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                debug!(host, port, error = %e, "SSH not ready yet");
                last_error = Some(e.to_string());
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(RETRY_INTERVAL.min(left)).await;
    }
}

/// Retries a TCP connect until it succeeds or `timeout` passes (upstream
/// `nodescan(..., gather_hostkeys=False)`).
pub async fn wait_for_port(host: &str, port: u16, timeout: Duration) -> Result<(), KeyscanError> {
    let deadline = Instant::now() + timeout;
    let addr = resolve(host, port).await?;
    let mut last_error: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(KeyscanError::Timeout {
                what: "a TCP connection",
                host: host.to_owned(),
                port,
                timeout,
                last_error,
            });
        }
        match connect_once(addr, host, left.min(CONNECT_ATTEMPT_TIMEOUT)).await {
            Ok(()) => return Ok(()),
            Err(e) => last_error = Some(e.to_string()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(RETRY_INTERVAL.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyscan_lines_in_upstream_order() {
        let out = "# 127.0.0.1:22 SSH-2.0-OpenSSH_9.2p1\n\
                   [127.0.0.1]:2222 ssh-rsa AAAArsa\n\
                   [127.0.0.1]:2222 ecdsa-sha2-nistp256 AAAAecdsa\n\
                   [127.0.0.1]:2222 ssh-ed25519 AAAAed\n\
                   [127.0.0.1]:2222 ssh-ed25519 AAAAed\n\
                   garbage\n\
                   [127.0.0.1]:2222 ssh-dss AAAAdss\n";
        assert_eq!(
            parse_keyscan_output(out, &KeyType::ALL),
            vec!["ssh-ed25519 AAAAed", "ecdsa-sha2-nistp256 AAAAecdsa", "ssh-rsa AAAArsa"]
        );
        assert_eq!(parse_keyscan_output(out, &[KeyType::Rsa]), vec!["ssh-rsa AAAArsa"]);
        assert!(parse_keyscan_output("", &KeyType::ALL).is_empty());
    }

    #[test]
    fn normalizes_keys() {
        assert_eq!(normalize_key("  ssh-rsa AAAA  root@host "), "ssh-rsa AAAA");
        assert_eq!(normalize_key("ssh-rsa"), "ssh-rsa");
        assert_eq!(normalize_key(""), "");
    }

    #[tokio::test]
    async fn refused_port_is_reported_and_times_out() {
        // Bind then drop: the port is (very likely) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let one = scan_host_keys("127.0.0.1", port, Duration::from_secs(2), None).await;
        assert!(matches!(one, Err(KeyscanError::ConnectionRefused { .. })), "{one:?}");
        let started = Instant::now();
        let waited = wait_for_port("127.0.0.1", port, Duration::from_millis(1500)).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        let msg = waited.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("timed out") && msg.contains("refused"), "{msg}");
    }
}
