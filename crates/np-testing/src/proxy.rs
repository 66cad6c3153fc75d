//! A TCP proxy on 127.0.0.1 whose connections a test can cut: the client
//! then reconnects (and a ZooKeeper client resumes its session on a new
//! connection, which is how the tests reproduce what a server restart or a
//! leader change does to a session without disturbing the shared server).
//! It can also swallow the server's replies before a cut, which is how a
//! request that the server carried out but whose reply never arrived (a
//! leader killed mid-request) is reproduced.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; dropping it stops it and cuts every connection.
pub struct CutProxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    swallow: Arc<AtomicBool>,
}

/// Copies `from` to `to`; while `swallow` is set, what arrives is dropped.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    swallow: Option<Arc<AtomicBool>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if swallow.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl CutProxy {
    /// Forwards connections on a new loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let swallow = Arc::new(AtomicBool::new(false));
        let (target, all, quiet) = (target.to_owned(), links.clone(), swallow.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                let quiet = quiet.clone();
                let link = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        let up = pipe(in_read, out_write, None);
                        let down = pipe(out_read, in_write, Some(quiet));
                        tokio::join!(up, down);
                    }
                });
                all.lock().unwrap_or_else(|p| p.into_inner()).push(link);
            }
        });
        CutProxy { addr, accept, links, swallow }
    }

    /// `127.0.0.1:<port>` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection made so far (new ones are accepted), and
    /// stops swallowing replies.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            link.abort();
        }
        self.swallow.store(false, Ordering::SeqCst);
    }

    /// From now until the next [`CutProxy::cut`], what the server sends is
    /// dropped: requests still reach it and are carried out, their replies
    /// never arrive.
    pub fn swallow_replies(&self) {
        self.swallow.store(true, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
