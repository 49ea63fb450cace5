//! Project tasks. The only code that installs anything.
//!
//!   cargo xtask setup   Debian packages, nightly rust-src, bpf-linker, bpffs
//!   cargo xtask test    setup, then every test
//!   cargo xtask demo    setup, then the sandbox demo
//!   cargo xtask bench   setup, then netd against libvirt's iptables rules and
//!                       nftables (`--quick`: a one-minute smoke run)

mod bench;
mod demo;
mod setup;

use anyhow::{Result, bail};
use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("test") => setup::run().and_then(|()| test(&args[1..])),
        Some("demo") => setup::run().and_then(|()| demo::run()),
        Some("bench") => setup::run().and_then(|()| bench::run(&args[1..])),
        // Internal: the traffic tools the benchmark runs inside its namespaces.
        Some("bench-helper") => bench::helper(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask setup|test|demo|bench [--quick]");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// Builds the binary the end-to-end tests drive, then runs every test.
fn test(extra: &[String]) -> Result<()> {
    cargo(&["build", "-p", "netd"])?;
    let mut args = vec!["test", "--workspace", "--exclude", "netd-ebpf"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .env("NETD_BIN", netd_bin())
        .status()?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn netd_bin() -> std::path::PathBuf {
    workspace_root().join("target/debug/netd")
}
