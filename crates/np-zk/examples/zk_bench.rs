//! Measures the cost of the ZooKeeper operations on the launcher's request
//! path against a real server: a node write (update), a node create, a
//! non-blocking lock acquire + release, and the same through kazoo for
//! comparison is done by `tools/bench-zk.sh`.
//!
//! Last, the server's write throughput: 64 tasks writing in parallel for
//! five seconds (the ceiling a launcher's writes can reach).
//!
//! Usage: `cargo run --release -p np-zk --example zk_bench -- HOSTS [ITERATIONS]`
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use np_core::{Node, NodeState};
use np_zk::{LockOptions, Zk, ZkConfig};

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e6;
    println!(
        "{name:<28} n={:<6} mean={mean:>8.1}us p50={:>8.1}us p99={:>8.1}us",
        samples.len(),
        pct(0.5),
        pct(0.99)
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let hosts = args.next().unwrap_or_else(|| std::env::var("NP_ZK_HOSTS").expect("HOSTS or NP_ZK_HOSTS"));
    let n: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(2000);
    let chroot = format!("/np-bench-{}", uuid_like());
    let zk = Zk::connect(ZkConfig::new(format!("{hosts}{chroot}"))).await.unwrap();

    let mut node = Node::new(NodeState::Ready);
    node.provider = Some("bench".into());
    node.node_type = vec!["label".into()];
    zk.create_node(&mut node).await.unwrap();

    let mut create = Vec::with_capacity(n);
    for _ in 0..n {
        let mut fresh = node.clone();
        let t = Instant::now();
        zk.create_node(&mut fresh).await.unwrap();
        create.push(t.elapsed());
    }
    let mut write = Vec::with_capacity(n);
    for _ in 0..n {
        node.set_state(NodeState::Ready);
        let t = Instant::now();
        zk.update_node(&node).await.unwrap();
        write.push(t.elapsed());
    }
    let mut lock = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let guard = zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().unwrap();
        guard.release().await.unwrap();
        lock.push(t.elapsed());
    }
    report("node create", create);
    report("node write (set)", write);
    report("lock acquire+release", lock);

    // Throughput: writers in parallel, each on its own node.
    let writers = 64;
    let window = Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let zk = zk.clone();
        let mut mine = node.clone();
        zk.create_node(&mut mine).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < window {
                zk.update_node(&mine).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    println!("write throughput ({writers} in parallel) {:.0} writes/s", total as f64 / window.as_secs_f64());
    zk.delete_recursive("/nodepool").await.unwrap();
}

fn uuid_like() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}
