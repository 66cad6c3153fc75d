//! A statsd server for tests: a UDP socket on 127.0.0.1 that records every
//! line it is sent (`<key>:<value>|<type>`, several per datagram allowed).

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received statsd line.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// The key.
    pub key: String,
    /// The value as sent (`1`, `1500`, `inf`, ...).
    pub value: String,
    /// The type: `c`, `ms`, `g`, ...
    pub kind: String,
}

/// The recording server; stops when dropped.
pub struct StatsdRecorder {
    port: u16,
    lines: Arc<Mutex<Vec<Metric>>>,
    datagrams: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl StatsdRecorder {
    /// Binds a free port on 127.0.0.1 and records in a thread of its own.
    pub fn start() -> StatsdRecorder {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let datagrams = Arc::new(AtomicUsize::new(0));
        let (l, s, d) = (lines.clone(), stop.clone(), datagrams.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else { continue };
                d.fetch_add(1, Ordering::Relaxed);
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let mut got = l.lock().unwrap();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    let (key, rest) = line.rsplit_once(':').unwrap_or((line, ""));
                    let (value, kind) = rest.split_once('|').unwrap_or((rest, ""));
                    let kind = kind.split('|').next().unwrap_or("");
                    got.push(Metric { key: key.to_owned(), value: value.to_owned(), kind: kind.to_owned() });
                }
            }
        });
        StatsdRecorder { port, lines, datagrams, stop }
    }

    /// The port to put in `STATSD_PORT`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every line received so far, in order.
    pub fn metrics(&self) -> Vec<Metric> {
        self.lines.lock().unwrap().clone()
    }

    /// The distinct `(key, type)` pairs received so far.
    pub fn keys(&self) -> BTreeSet<(String, String)> {
        self.metrics().into_iter().map(|m| (m.key, m.kind)).collect()
    }

    /// The last value received for `key` with type `kind`.
    pub fn last(&self, key: &str, kind: &str) -> Option<String> {
        self.metrics().into_iter().rev().find(|m| m.key == key && m.kind == kind).map(|m| m.value)
    }

    /// How many datagrams arrived so far.
    pub fn datagrams(&self) -> usize {
        self.datagrams.load(Ordering::Relaxed)
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.lines.lock().unwrap().clear();
    }
}

impl Drop for StatsdRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
