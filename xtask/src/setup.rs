//! Idempotent machine set-up, one announced step at a time. Every step
//! checks first and does nothing when already done, so a second run takes a
//! second or two; on a fresh machine the first run takes a few minutes, so
//! each step says what it is doing before it starts.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PACKAGES: &[&str] = &[
    "dnsmasq-base",
    "iproute2",
    "udhcpc",
    "iputils-ping",
    "iperf3",
    "iptables",
    "nftables",
    "tcpdump",
    // DHCPv6 client for the IPv6 tests (udhcpc speaks only DHCPv4).
    "isc-dhcp-client",
];

/// The step being run: its number, for the lines it prints.
struct Step {
    n: usize,
}

const STEPS: usize = 4;

pub fn run() -> Result<()> {
    step(
        1,
        "Debian packages",
        "apt-get install dnsmasq-base udhcpc iperf3 …",
        packages,
    )?;
    step(
        2,
        "nightly toolchain with rust-src",
        "rustup component add rust-src --toolchain nightly",
        nightly,
    )?;
    step(
        3,
        "bpf-linker",
        "cargo install bpf-linker (see DESIGN.md)",
        bpf_linker,
    )?;
    step(4, "bpffs", "mount -t bpf bpf /sys/fs/bpf", bpffs)?;
    Ok(())
}

/// Runs one step and prints what it did. A failure becomes one line that
/// names the step and the command to run by hand: the one the step attached
/// to its error ([`ByHand`]), else `fallback`.
fn step(n: usize, what: &str, fallback: &str, f: fn(&Step) -> Result<String>) -> Result<()> {
    match f(&Step { n }) {
        Ok(done) => {
            eprintln!("setup [{n}/{STEPS}] {what}: {done}");
            Ok(())
        }
        Err(e) => {
            let by_hand = e
                .downcast_ref::<ByHand>()
                .map(|b| b.0.clone())
                .unwrap_or_default();
            let msg = e
                .chain()
                .skip(usize::from(!by_hand.is_empty()))
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            let hint = if by_hand.is_empty() {
                fallback
            } else {
                &by_hand
            };
            bail!("setup step {n}/{STEPS} ({what}) failed: {msg}; to do it by hand: {hint}")
        }
    }
}

/// The command a person would type to do a step by hand; carried as the
/// outermost context of a step's error.
#[derive(Debug)]
struct ByHand(String);

impl std::fmt::Display for ByHand {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn by_hand<T>(r: Result<T>, cmd: impl Into<String>) -> Result<T> {
    r.context(ByHand(cmd.into()))
}

/// Announces a slow action on its own line before it runs.
fn doing(n: usize, what: &str) {
    eprintln!("setup [{n}/{STEPS}] {what} …");
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} exited with {status}", cmd.get_program());
    }
    Ok(())
}

fn packages(s: &Step) -> Result<String> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|st| !st.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(format!("all {} present", PACKAGES.len()));
    }
    let hand = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    doing(
        s.n,
        &format!("installing {} with apt-get", missing.join(" ")),
    );
    by_hand(
        run_cmd(Command::new("apt-get").args(["update", "-qq"])),
        &hand,
    )?;
    by_hand(
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        ),
        &hand,
    )?;
    Ok(format!("installed {}", missing.join(" ")))
}

fn nightly(s: &Step) -> Result<String> {
    let mut did = Vec::new();
    if output("rustc", &["+nightly", "-vV"]).is_none() {
        let hand = "rustup toolchain install nightly --profile minimal --component rust-src";
        doing(s.n, "installing the nightly toolchain with rustup");
        by_hand(
            run_cmd(Command::new("rustup").args(hand.split(' ').skip(1))),
            hand,
        )?;
        did.push("installed nightly");
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        let hand = "rustup component add rust-src --toolchain nightly";
        doing(s.n, "adding rust-src to nightly");
        by_hand(
            run_cmd(Command::new("rustup").args(hand.split(' ').skip(1))),
            hand,
        )?;
        did.push("added rust-src");
    }
    Ok(if did.is_empty() {
        "present".into()
    } else {
        did.join(", ")
    })
}

/// bpf-linker links against the nightly's own libLLVM, so it must be rebuilt
/// whenever that library changes. A stamp records which one it was built for.
fn bpf_linker(s: &Step) -> Result<String> {
    let vv = output("rustc", &["+nightly", "-vV"]).context("rustc +nightly -vV failed")?;
    let llvm_major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in rustc +nightly -vV")?
        .to_string();
    let sysroot = PathBuf::from(
        output("rustc", &["+nightly", "--print", "sysroot"])
            .context("rustc +nightly --print sysroot failed")?
            .trim(),
    );
    let soname = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("the nightly toolchain ships no libLLVM.so.*")?;
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let prefix = home.join(".local/share/netd/llvm").join(&soname);
    let stamp = prefix.join("bpf-linker.stamp");
    let linked = output("bpf-linker", &["--version"]).is_some();
    if linked && std::fs::read_to_string(&stamp).is_ok_and(|st| st == soname) {
        return Ok(format!("present, built for {soname}"));
    }
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&soname), &link)?;
    }
    let hand = format!(
        "LLVM_PREFIX={} RUSTFLAGS='-C link-arg=-Wl,-rpath,{}' cargo install bpf-linker --force --no-default-features --features llvm-{llvm_major}",
        prefix.display(),
        lib.display()
    );
    doing(
        s.n,
        &format!("building bpf-linker against {soname} with cargo install (about a minute)"),
    );
    by_hand(
        run_cmd(
            Command::new("cargo")
                .args([
                    "install",
                    "--quiet",
                    "bpf-linker",
                    "--force",
                    "--no-default-features",
                    "--features",
                ])
                .arg(format!("llvm-{llvm_major}"))
                .env("LLVM_PREFIX", &prefix)
                .env(
                    "RUSTFLAGS",
                    format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
                ),
        ),
        &hand,
    )?;
    std::fs::write(&stamp, &soname)?;
    Ok(format!("built for {soname}"))
}

fn bpffs(s: &Step) -> Result<String> {
    let dir = Path::new("/sys/fs/bpf");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok("mounted at /sys/fs/bpf".into());
    }
    if !dir.exists() {
        // The tests mount private bpffs instances of their own; only the
        // conventional mount point is missing.
        return Ok("no /sys/fs/bpf; the tests mount their own".into());
    }
    let hand = "mount -t bpf bpf /sys/fs/bpf";
    doing(s.n, "mounting bpffs at /sys/fs/bpf");
    by_hand(
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"])),
        hand,
    )?;
    Ok("mounted at /sys/fs/bpf".into())
}
