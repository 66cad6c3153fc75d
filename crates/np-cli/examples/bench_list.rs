//! Benchmark: `nodepool list` over a big pool.
//!
//! Creates N nodes (default 10,000), each with a lock directory, in a fresh chroot of the test ZooKeeper
//! (`tools/test-env.sh start; source .test-env/env.sh`), then runs the given
//! `nodepool` binary's `list` several times and prints the wall times. With
//! `--python`, the Python Nodepool 11 CLI is timed on the same state too.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/np-cli cargo build --release -p np-cli --examples
//! target/np-cli/release/examples/bench_list --bin target/np-cli/release/nodepool [--nodes N] [--python]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use np_core::{Node, NodeState};
use np_testing::{env, TestZk};
use zookeeper_client::{Acls, CreateMode};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut bin = PathBuf::from("target/np-cli/release/nodepool");
    let mut nodes = 10_000usize;
    let mut runs = 5usize;
    let mut python = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin" => bin = args.next().expect("--bin PATH").into(),
            "--nodes" => nodes = args.next().expect("--nodes N").parse().expect("a number"),
            "--runs" => runs = args.next().expect("--runs N").parse().expect("a number"),
            "--python" => python = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let tz = TestZk::new_tls().await;
    let client = tz.zk.client();
    tz.zk.ensure_path("/nodepool/nodes").await.unwrap();
    let start = Instant::now();
    let options = CreateMode::PersistentSequential.with_acls(Acls::anyone_all());
    let plain = CreateMode::Persistent.with_acls(Acls::anyone_all());
    for chunk in 0..nodes.div_ceil(1000) {
        let mut pending = Vec::new();
        for i in chunk * 1000..((chunk + 1) * 1000).min(nodes) {
            let mut n = Node::new(NodeState::Ready);
            n.provider = Some(format!("provider-{}", i % 7));
            n.pool = Some("main".into());
            n.node_type = vec!["ubuntu-jammy".into()];
            n.external_id = Some(serde_json::json!(format!("{:08x}-0000-4000-8000-{i:012}", i)));
            n.public_ipv4 = Some(format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256));
            n.hostname = Some(format!("np{i:010}"));
            n.launcher = Some("launcher-1".into());
            n.created_time = Some(n.state_time);
            pending.push(client.create("/nodepool/nodes/", &n.to_json(), &options));
        }
        // Every real node has a lock directory (its launcher locked it once).
        let lock_paths: Vec<String> = futures::future::join_all(pending)
            .await
            .into_iter()
            .map(|r| format!("/nodepool/nodes/{}/lock", r.unwrap().1))
            .collect();
        let locks: Vec<_> = lock_paths.iter().map(|p| client.create(p, &[], &plain)).collect();
        for r in futures::future::join_all(locks).await {
            r.unwrap();
        }
    }
    println!("created {nodes} nodes in {:.2} s (chroot {})", start.elapsed().as_secs_f64(), tz.chroot);

    let dir = std::env::temp_dir().join(format!("np-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = env("NP_ZK_TLS_HOSTS");
    let (host, port) = hosts.rsplit_once(':').unwrap();
    let config = dir.join("nodepool.yaml");
    std::fs::write(
        &config,
        format!(
            "zookeeper-servers:\n  - host: {host}\n    port: {port}\n    chroot: {}\n\
             zookeeper-tls:\n  ca: {}\n  cert: {}\n  key: {}\nlabels:\n  - name: ubuntu-jammy\n",
            tz.chroot,
            env("NP_ZK_TLS_CA"),
            env("NP_ZK_TLS_CERT"),
            env("NP_ZK_TLS_KEY")
        ),
    )
    .unwrap();

    let mut programs = vec![("rust", bin)];
    if python {
        programs.push(("python", PathBuf::from(env("NP_PYTHON")).parent().unwrap().join("nodepool")));
    }
    for (name, program) in programs {
        let mut times = Vec::new();
        let runs = if name == "python" { runs.min(2) } else { runs };
        for _ in 0..runs {
            let t = Instant::now();
            let out = Command::new(&program).arg("-c").arg(&config).arg("list").output().unwrap();
            let took = t.elapsed().as_secs_f64();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let rows = out.stdout.split(|b| *b == b'\n').filter(|l| l.starts_with(b"| 0")).count();
            assert_eq!(rows, nodes, "{name}: every node listed");
            times.push(took);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name}: `nodepool list` over {nodes} nodes: min {:.3} s, median {:.3} s, max {:.3} s ({} runs)",
            times[0],
            times[times.len() / 2],
            times[times.len() - 1],
            times.len()
        );
    }
    if std::env::var_os("NP_BENCH_KEEP").is_some() {
        println!("kept: {}", config.display());
        return;
    }
    tz.zk.delete_recursive("/nodepool").await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
