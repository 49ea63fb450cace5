//! Project tasks. The only code that installs anything, and the only crate
//! that builds before the BPF toolchain exists: it depends on no workspace
//! crate and drives everything else through cargo.
//!
//!   cargo xtask setup          Debian packages, nightly rust-src, bpf-linker, bpffs
//!   cargo xtask test [ARGS]    setup, then every test (ARGS go to cargo test)
//!   cargo xtask demo           setup, then the sandbox demo (tests/src/bin/netd-demo.rs)
//!   cargo xtask bench [...]    setup, then the benchmark (bench/); `--quick`: a smoke run
//!   cargo xtask fuzz [--secs N] [--seed S]
//!                              a longer run of the parsers' fuzzer (tests/tests/fuzz.rs)
//!   cargo xtask check-layout   xtask's own dependencies hold no workspace or BPF crate

mod layout;
mod setup;

use anyhow::{Result, bail};
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let r = match args.first().map(String::as_str) {
        Some("setup") => need_root("setup installs packages").and_then(|()| setup::run()),
        Some("test") => needs_netns()
            .and_then(|()| setup::run())
            .and_then(|()| test(rest)),
        Some("demo") => needs_netns()
            .and_then(|()| setup::run())
            .and_then(|()| demo()),
        Some("bench") if rest.iter().any(|a| a == "--from") => bench(rest),
        Some("bench") => needs_netns()
            .and_then(|()| setup::run())
            .and_then(|()| bench(rest)),
        Some("fuzz") => setup::run().and_then(|()| fuzz(rest)),
        Some("check-layout") => layout::run(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask setup | test [CARGO TEST ARGS] | demo | bench [--quick] | fuzz [--secs N] [--seed S] | check-layout [--manifest-path M]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn needs_netns() -> Result<()> {
    need_root("it creates network namespaces, bridges and a bpffs mount")
}

/// Checked before anything is built or installed, so a user without root
/// learns it in one line instead of after minutes of compiling.
fn need_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root: {why}; run it again as root (for example with sudo -E)");
    }
    Ok(())
}

/// Builds the binary the end-to-end tests drive, then runs every test.
fn test(extra: &[String]) -> Result<()> {
    let netd = build_netd(false)?;
    // --no-fail-fast: one failing test binary must not hide the others.
    let mut args = vec![
        "test",
        "--workspace",
        "--exclude",
        "netd-ebpf",
        "--no-fail-fast",
    ];
    args.extend(extra.iter().map(String::as_str));
    let (ok, passed, failed) = cargo_counting(&args, &netd)?;
    // One line for people and CI alike: the sum over every test binary.
    println!("\nnetd: {passed} passed, {failed} failed");
    if !ok {
        bail!("some tests failed");
    }
    Ok(())
}

fn demo() -> Result<()> {
    let netd = build_netd(false)?;
    cargo(
        &["run", "--quiet", "-p", "netd-tests", "--bin", "netd-demo"],
        &netd,
    )
}

/// The suite runs the fuzzer for a bounded minute; this runs it as long as
/// asked (default 10 minutes), with a seed to replay a run.
fn fuzz(args: &[String]) -> Result<()> {
    let mut secs = "600".to_string();
    let mut seed = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--secs", Some(v)) if v.parse::<u64>().is_ok() => secs = v.clone(),
            ("--seed", Some(v)) if v.parse::<u64>().is_ok() => seed = Some(v.clone()),
            _ => bail!("usage: cargo xtask fuzz [--secs N] [--seed S]"),
        }
    }
    let netd = netd_bin(false);
    let mut c = cargo_cmd(
        &[
            "test",
            "-p",
            "netd-tests",
            "--test",
            "fuzz",
            "--",
            "--nocapture",
        ],
        &netd,
    );
    c.env("NETD_FUZZ_SECS", &secs);
    if let Some(s) = &seed {
        c.env("NETD_FUZZ_SEED", s);
    }
    if !c.status()?.success() {
        bail!("the fuzzer found a failure (inputs are saved under $TMPDIR/netd-fuzz-failures/)");
    }
    Ok(())
}

/// `--quick` is a smoke run on the tests' debug build; a real run measures
/// release builds of netd and of the traffic tools.
fn bench(args: &[String]) -> Result<()> {
    let release = !args.iter().any(|a| a == "--quick" || a == "--from");
    let netd = build_netd(release)?;
    let mut cmd = vec!["run", "--quiet", "-p", "netd-bench"];
    if release {
        cmd.push("--release");
    }
    cmd.extend(["--", "run"]);
    cmd.extend(args.iter().map(String::as_str));
    cargo(&cmd, &netd)
}

fn build_netd(release: bool) -> Result<PathBuf> {
    if release {
        cargo(&["build", "--release", "-p", "netd"], &netd_bin(true))?;
    } else {
        cargo(&["build", "-p", "netd"], &netd_bin(false))?;
    }
    Ok(netd_bin(release))
}

fn cargo_cmd(args: &[&str], netd: &PathBuf) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(args).env("NETD_BIN", netd);
    c
}

fn cargo(args: &[&str], netd: &PathBuf) -> Result<()> {
    let status = cargo_cmd(args, netd).status()?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Runs cargo, echoing its output, and adds up the "test result:" lines.
fn cargo_counting(args: &[&str], netd: &PathBuf) -> Result<(bool, u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut child = cargo_cmd(args, netd)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, "passed");
            failed += count(rest, "failed");
        }
    }
    Ok((child.wait()?.success(), passed, failed))
}

/// The number before `word` in "ok. 3 passed; 0 failed; …".
fn count(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            let part = part.trim().strip_suffix(word)?.trim();
            let n = part.rsplit(' ').next()?;
            n.parse().ok()
        })
        .unwrap_or(0)
}

fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => workspace_root().join(t),
        None => workspace_root().join("target"),
    }
}

fn netd_bin(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("netd")
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_cargo_test_summaries() {
        let ok =
            "ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!((count(ok, "passed"), count(ok, "failed")), (12, 0));
        let bad = "FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!((count(bad, "passed"), count(bad, "failed")), (3, 2));
    }
}
