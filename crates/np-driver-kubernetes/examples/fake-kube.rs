//! The test suite's fake Kubernetes API server as a process, for benchmarks
//! and for trying a launcher by hand: serves on 127.0.0.1 (a free port),
//! writes a kubeconfig with context `CONTEXT` into `DIR`, prints the URL,
//! and runs until interrupted.
//!
//!   cargo run -p np-driver-kubernetes --example fake-kube -- DIR [CONTEXT]
#![allow(clippy::print_stdout)]

#[path = "../tests/support/fake_kube.rs"]
mod fake_kube;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: fake-kube DIR [CONTEXT]");
        std::process::exit(64);
    };
    let context = args.next().unwrap_or_else(|| "fake".to_owned());
    let kube = fake_kube::FakeKube::start().await;
    let path = kube.kubeconfig(std::path::Path::new(&dir), &context);
    println!("{} {}", kube.url(), path.display());
    let _ = tokio::signal::ctrl_c().await;
}
