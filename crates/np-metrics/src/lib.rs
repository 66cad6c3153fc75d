//! The daemons' measurement layer: every event is recorded once, and each
//! recording feeds both exports.
//!
//! * [`Statsd`]: upstream's statsd output (`STATSD_HOST`, `STATSD_PORT`
//!   default 8125, as Python Nodepool's `nodepool/stats.py`), through the
//!   `cadence` client over UDP. Keys and types are the caller's (the
//!   launcher's and builder's `metrics` modules build upstream's keys);
//!   [`normalize`] is upstream's treatment of user-provided key parts.
//!
//! The daemons' metric structs own a Prometheus registry and an optional
//! [`Statsd`]; a method such as `record_launch` updates the Prometheus
//! series and sends the statsd keys of the same measurement, so the two
//! exports cannot disagree. `doc/metrics.md` lists both.

use std::net::{ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use cadence::{BufferedUdpMetricSink, Counted, Gauged, StatsdClient, Timed};
use tracing::debug;

/// The statsd port when `STATSD_PORT` is not set.
pub const DEFAULT_STATSD_PORT: u16 = 8125;

/// Largest datagram a batch fills before it is sent (Python's statsd
/// pipeline splits at 512 bytes too: it fits any path's MTU).
pub const DATAGRAM_SIZE: usize = 512;

/// A statsd client cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatsdError {
    /// `STATSD_PORT` is not a port number.
    #[error("STATSD_PORT {0:?} is not a port number")]
    BadPort(String),
    /// `STATSD_HOST` does not resolve to an address.
    #[error("cannot resolve the statsd host {host}: {error}")]
    Resolve {
        /// `host:port`.
        host: String,
        /// Why.
        error: std::io::Error,
    },
    /// The UDP socket could not be made.
    #[error("cannot open a UDP socket for statsd: {0}")]
    Socket(std::io::Error),
}

/// A statsd sender; cloning shares it. Sending never blocks and never
/// fails the caller: a datagram that cannot be sent is dropped (logged at
/// debug), as statsd over UDP is fire-and-forget.
///
/// Each single call ([`Statsd::incr`], ...) goes out at once; a [`Batch`]
/// ([`Statsd::batch`]) packs its lines into datagrams of up to
/// [`DATAGRAM_SIZE`] bytes and sends the rest when it is dropped, as Python's
/// `pipeline()`.
#[derive(Clone)]
pub struct Statsd {
    client: Arc<StatsdClient>,
    target: String,
}

impl std::fmt::Debug for Statsd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statsd").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Statsd {
    /// Upstream's switch: a client when `STATSD_HOST` is set (and not
    /// empty), sending to `STATSD_PORT` (default 8125); `None` otherwise.
    pub fn from_env() -> Result<Option<Statsd>, StatsdError> {
        let host = match std::env::var("STATSD_HOST") {
            Ok(h) if !h.is_empty() => h,
            _ => return Ok(None),
        };
        let port = match std::env::var("STATSD_PORT") {
            Ok(p) if !p.is_empty() => p.trim().parse().map_err(|_| StatsdError::BadPort(p.clone()))?,
            _ => DEFAULT_STATSD_PORT,
        };
        Statsd::to(&host, port).map(Some)
    }

    /// A client sending to `host:port` (resolved once, now).
    pub fn to(host: &str, port: u16) -> Result<Statsd, StatsdError> {
        let target = format!("{host}:{port}");
        let resolve = |error| StatsdError::Resolve { host: target.clone(), error };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(resolve)?
            .next()
            .ok_or_else(|| resolve(std::io::Error::other("no address")))?;
        let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = UdpSocket::bind(bind).map_err(StatsdError::Socket)?;
        socket.set_nonblocking(true).map_err(StatsdError::Socket)?;
        let sink = BufferedUdpMetricSink::with_capacity(addr, socket, DATAGRAM_SIZE)
            .map_err(|e| StatsdError::Socket(std::io::Error::other(e)))?;
        let client = StatsdClient::builder("", sink)
            .with_error_handler(|e| debug!(error = %e, "statsd datagram dropped"))
            .build();
        Ok(Statsd { client: Arc::new(client), target })
    }

    /// Where the datagrams go (`host:port`).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A batch of lines sent together (when full, and when dropped).
    pub fn batch(&self) -> Batch<'_> {
        Batch { statsd: self }
    }

    /// Counter `key` += `n` (`<key>:<n>|c`).
    pub fn count(&self, key: &str, n: u64) {
        self.batch().count(key, n);
    }

    /// Counter `key` += 1.
    pub fn incr(&self, key: &str) {
        self.batch().incr(key);
    }

    /// Timer `key` (`<key>:<ms>|ms`, whole milliseconds as upstream).
    pub fn timing(&self, key: &str, took: Duration) {
        self.batch().timing(key, took);
    }

    /// Gauge `key` set to `value` (see [`Batch::gauge`]).
    pub fn gauge(&self, key: &str, value: f64) {
        self.batch().gauge(key, value);
    }
}

/// Lines that go out together: packed into datagrams of up to
/// [`DATAGRAM_SIZE`] bytes, the last one sent when the batch is dropped.
pub struct Batch<'a> {
    statsd: &'a Statsd,
}

impl Batch<'_> {
    /// Counter `key` += `n` (`<key>:<n>|c`).
    pub fn count(&self, key: &str, n: u64) {
        let _ = self.statsd.client.count(key, n);
    }

    /// Counter `key` += 1.
    pub fn incr(&self, key: &str) {
        self.count(key, 1);
    }

    /// Timer `key` (`<key>:<ms>|ms`, whole milliseconds as upstream).
    pub fn timing(&self, key: &str, took: Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let _ = self.statsd.client.time(key, ms);
    }

    /// Gauge `key` set to `value` (`<key>:<value>|g`; `inf` for ∞ as
    /// Python's client writes it). Negative values are sent as 0: a leading
    /// `-` would make statsd subtract.
    pub fn gauge(&self, key: &str, value: f64) {
        let _ = self.statsd.client.gauge(key, value.max(0.0));
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.statsd.client.flush() {
            debug!(error = %e, "statsd datagram dropped");
        }
    }
}

/// Upstream's `normalize_statsd_name`: `.` (graphite's hierarchy) and `:`
/// (statsd's separator) become `_`. Upstream applies it to requestors,
/// tenant names and tenant limit keys only; provider, pool, label and image
/// names are sent as they are.
pub fn normalize(name: &str) -> String {
    name.replace(['.', ':'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_replaces_dots_and_colons_only() {
        assert_eq!(normalize("NodePool:min-ready"), "NodePool_min-ready");
        assert_eq!(normalize("zuul.example.org"), "zuul_example_org");
        assert_eq!(normalize("a-b_c"), "a-b_c");
    }

    #[test]
    fn sends_upstream_wire_format() {
        let listener = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
        let s = Statsd::to("127.0.0.1", port).unwrap_or_else(|e| panic!("{e}"));
        s.incr("nodepool.launch.ready");
        s.timing("nodepool.launch.ready", Duration::from_millis(1500));
        s.gauge("nodepool.provider.p.max_servers", f64::INFINITY);
        s.gauge("nodepool.nodes.ready", 3.0);
        s.count("nodepool.provider.p.leaked.ports", 2);
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        while got.len() < 5 {
            let n = listener.recv(&mut buf).unwrap_or_else(|e| panic!("recv: {e}"));
            got.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned));
        }
        assert_eq!(
            got,
            [
                "nodepool.launch.ready:1|c",
                "nodepool.launch.ready:1500|ms",
                "nodepool.provider.p.max_servers:inf|g",
                "nodepool.nodes.ready:3|g",
                "nodepool.provider.p.leaked.ports:2|c",
            ]
        );
    }

    #[test]
    fn a_batch_packs_lines_into_few_datagrams() {
        let listener = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
        let s = Statsd::to("127.0.0.1", port).unwrap_or_else(|e| panic!("{e}"));
        {
            let b = s.batch();
            for i in 0..40 {
                b.gauge(&format!("nodepool.label.label-{i}.nodes.ready"), f64::from(i));
            }
        }
        let (mut lines, mut datagrams) = (Vec::new(), 0);
        let mut buf = [0u8; 1500];
        while lines.len() < 40 {
            let n = listener.recv(&mut buf).unwrap_or_else(|e| panic!("recv: {e}"));
            assert!(n <= DATAGRAM_SIZE, "{n} bytes");
            datagrams += 1;
            lines.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned));
        }
        assert_eq!(lines[39], "nodepool.label.label-39.nodes.ready:39|g");
        // 40 lines of about 40 bytes: a few datagrams of up to 512 bytes, not 40.
        assert!(datagrams <= 5, "{datagrams} datagrams");
    }

    #[test]
    fn unresolvable_host_is_refused() {
        assert!(matches!(Statsd::to("no-such-host.invalid", 8125), Err(StatsdError::Resolve { .. })));
    }
}
