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
    let (ok, passed, failed) = cargo_counting(&args)?;
    // One line for people and CI alike: the sum over every test binary.
    println!("\nnetd: {passed} passed, {failed} failed");
    if !ok {
        bail!("some tests failed");
    }
    Ok(())
}

/// Runs cargo, echoing its output, and adds up the "test result:" lines.
fn cargo_counting(args: &[&str]) -> Result<(bool, u64, u64)> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
        .env("NETD_BIN", netd_bin())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word).map(|n| {
                            n.trim()
                                .trim_start_matches("ok.")
                                .trim_start_matches("FAILED.")
                                .trim()
                                .parse::<u64>()
                                .unwrap_or(0)
                        })
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    Ok((child.wait()?.success(), passed, failed))
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
