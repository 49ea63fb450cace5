//! Idempotent machine set-up. Every step checks first and does nothing when
//! already done, so a second run takes a second or two.

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

pub fn run() -> Result<()> {
    packages()?;
    nightly()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
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
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly() -> Result<()> {
    if output("rustc", &["+nightly", "-vV"]).is_none() {
        eprintln!("setup: installing the nightly toolchain");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to nightly");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker links against the nightly's own libLLVM, so it must be rebuilt
/// whenever that library changes. A stamp records which one it was built for.
fn bpf_linker() -> Result<()> {
    let vv = output("rustc", &["+nightly", "-vV"]).context("rustc +nightly -vV")?;
    let llvm_major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in rustc +nightly -vV")?
        .to_string();
    let sysroot = PathBuf::from(
        output("rustc", &["+nightly", "--print", "sysroot"])
            .context("nightly sysroot")?
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
    if linked && std::fs::read_to_string(&stamp).is_ok_and(|s| s == soname) {
        return Ok(());
    }
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&soname), &link)?;
    }
    eprintln!("setup: building bpf-linker against {soname} (about a minute)");
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
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
    )?;
    std::fs::write(&stamp, &soname)?;
    Ok(())
}

fn bpffs() -> Result<()> {
    let dir = Path::new("/sys/fs/bpf");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    if !dir.exists() {
        return Ok(());
    }
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
