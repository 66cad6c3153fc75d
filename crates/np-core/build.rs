//! Empty build script: it exists so that the `syn` feature pin in
//! Cargo.toml's `[build-dependencies]` is resolved with the proc-macros'
//! `syn` (see the comment there).

fn main() {}
