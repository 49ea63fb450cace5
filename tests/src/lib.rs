//! Integration-test harness for netd: network-namespace topologies, a netd daemon
//! running inside them, DHCP clients, and small TCP/UDP echo tools.
//!
//! Hard rules this file keeps:
//! - The machine's own network namespace is never changed. Every interface,
//!   address, route and sysctl is made with `ip -n NS ...` or `ip netns exec NS ...`
//!   (links are created inside a namespace, their peers moved straight into another).
//!   This process itself never `setns`es and never writes `/proc/sys` directly.
//! - Everything a [`Topology`] creates (namespaces, processes in them, the bpffs
//!   mount, the temp dir) is removed in `Drop`, also when the test panics.
//! - Tests that need root call [`require_root!`] first and skip when not root.
//!
//! ```text
//!  guest ns -gN  eth0 ──veth── vgN ┐
//!                                  ├─ bridge made by netd (or by hand) in "host"
//!  host ns   uplink0 198.51.100.2/24 (2001:db8:100::2/64), default via .1
//!      │ veth
//!  router ns to-host 198.51.100.1/24 (2001:db8:100::1/64)
//!            to-up   203.0.113.1/24  (2001:db8:113::1/64), forwarding on
//!      │ veth
//!  upstream  eth0    203.0.113.10/24 (2001:db8:113::10/64), default via .1
//!            (no route to any guest subnet)
//! ```

pub mod bpf_fixture;
pub mod packet;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

// ---------------------------------------------------------------------------
// Addresses of the standard topology.

/// Name of the uplink interface in the host namespace.
pub const UPLINK: &str = "uplink0";
/// Host address on the uplink.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Router address on the host side (the host's default gateway).
pub const ROUTER_HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Router address on the upstream side (upstream's default gateway).
pub const ROUTER_UP_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The "internet" host.
pub const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// IPv6 equivalents (no NAT for v6; upstream has no route to guest v6 subnets either).
pub const HOST_IP6: &str = "2001:db8:100::2";
pub const ROUTER_HOST_IP6: &str = "2001:db8:100::1";
pub const ROUTER_UP_IP6: &str = "2001:db8:113::1";
pub const UPSTREAM_IP6: &str = "2001:db8:113::10";
/// Interface names inside the router and upstream namespaces.
pub const ROUTER_HOST_IF: &str = "to-host";
pub const ROUTER_UP_IF: &str = "to-up";
pub const UPSTREAM_IF: &str = "eth0";
/// Interface name inside every guest namespace.
pub const GUEST_IF: &str = "eth0";

/// Default timeout for commands run through [`Ns::exec`] and friends.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Small global helpers.

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips the current test (returns from it) with "skipped: needs root" when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// Skips the current test when not root or when the netd binary is not built.
#[macro_export]
macro_rules! require_netd {
    () => {
        $crate::require_root!();
        if !$crate::netd_available() {
            eprintln!(
                "skipped: netd binary not found at {} (build it first: cargo build -p netd)",
                $crate::netd_bin_path().display()
            );
            return;
        }
    };
}

/// Where the netd binary is expected: `$NETD_BIN`, else `$CARGO_TARGET_DIR/debug/netd`
/// when that variable is set, else `<workspace>/target/debug/netd`.
pub fn netd_bin_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NETD_BIN") {
        return PathBuf::from(p);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_relative() {
            workspace_dir().join(t)
        } else {
            t
        };
        return t.join("debug").join("netd");
    }
    workspace_dir().join("target").join("debug").join("netd")
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent dir")
        .to_path_buf()
}

/// True when [`netd_bin_path`] exists.
pub fn netd_available() -> bool {
    netd_bin_path().is_file()
}

/// Path of the netd binary; panics with "build it first: cargo build -p netd" if missing.
pub fn netd_bin() -> PathBuf {
    let p = netd_bin_path();
    if !p.is_file() {
        panic!(
            "{} not found; build it first: cargo build -p netd",
            p.display()
        );
    }
    p
}

/// Polls `f` every 50ms until it returns true or `timeout` passes. Returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn python() -> &'static str {
    // The system python avoids pyenv shims (slow, depend on $HOME).
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A process-wide scratch directory for things not tied to a [`Topology`] (server logs).
fn scratch_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("netd-tests-{}", std::process::id()));
    let _ = fs::create_dir_all(&d);
    d
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Ok(mut f) = File::open("/dev/urandom")
        && f.read_exact(&mut b).is_ok()
    {
        return b;
    }
    // Fallback: time + counter.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ ((next_id() as u128) << 64)
        ^ (std::process::id() as u128);
    for (i, x) in b.iter_mut().enumerate() {
        *x = (t >> ((i % 16) * 8)) as u8;
    }
    b
}

/// A random MAC 52:54:00:xx:xx:xx.
pub fn random_mac() -> String {
    let b: [u8; 3] = random_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    let start = v.len().saturating_sub(lines);
    v[start..].join("\n")
}

// ---------------------------------------------------------------------------
// Running commands.

/// Result of a finished command. `status` is the exit code, 128+N when killed by
/// signal N, and -1 when the harness killed it on timeout or could not start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn describe(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with a timeout, capturing stdout and stderr. The command runs
/// in its own process group; on timeout the whole group is killed. Output of background
/// processes left behind by the command (which keep the pipes open) is not waited for
/// longer than 2s after the command itself exits.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Output {
                status: -1,
                stdout: String::new(),
                stderr: format!("harness: cannot run {cmd:?}: {e}"),
            };
        }
    };
    let (tx, rx) = mpsc::channel::<(u8, Vec<u8>)>();
    for (tag, mut pipe) in [
        (
            0u8,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        (
            1u8,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((tag, buf));
        });
    }
    drop(tx);
    let pid = child.id() as i32;
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(_) => break None,
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // SAFETY: plain syscall; pid is our child's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            break child.wait().ok();
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let grace = Instant::now() + Duration::from_secs(2);
    for _ in 0..2 {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((0, b)) => out = b,
            Ok((_, b)) => err = b,
            Err(_) => break,
        }
    }
    let mut stderr = String::from_utf8_lossy(&err).into_owned();
    let code = if timed_out {
        stderr.push_str(&format!("\nharness: killed after timeout of {timeout:?}"));
        -1
    } else {
        match status {
            Some(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
            None => -1,
        }
    };
    Output {
        status: code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr,
    }
}

/// Runs a command in the current (root) namespace. Only for read-only or namespace
/// management commands (`ip netns ...`, `ip -n NS ...`).
fn host_cmd(argv: &[&str]) -> Output {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    run_command(c, EXEC_TIMEOUT)
}

fn host_cmd_ok(argv: &[&str]) -> Result<String> {
    let o = host_cmd(argv);
    if o.status != 0 {
        bail!(
            "`{}` failed ({}): {}",
            describe(argv),
            o.status,
            o.stderr.trim()
        );
    }
    Ok(o.stdout)
}

// ---------------------------------------------------------------------------
// Namespaces.

/// A named network namespace (`/run/netns/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    fn command(&self, argv: &[&str]) -> Command {
        assert!(!argv.is_empty(), "empty argv");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// `ip netns exec NAME argv...`, with [`EXEC_TIMEOUT`].
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.exec_timeout(argv, EXEC_TIMEOUT)
    }

    /// Like [`Ns::exec`] with an explicit timeout.
    pub fn exec_timeout(&self, argv: &[&str], timeout: Duration) -> Output {
        run_command(self.command(argv), timeout)
    }

    /// Like [`Ns::exec`] with extra environment variables.
    pub fn exec_env(&self, argv: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.command(argv);
        for (k, v) in env {
            c.env(k, v);
        }
        run_command(c, EXEC_TIMEOUT)
    }

    /// Runs argv in the namespace; panics with argv and stderr on a non-zero exit.
    #[track_caller]
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let o = self.exec(argv);
        if o.status != 0 {
            panic!("in netns {}: `{}` failed: {}", self.name, describe(argv), o);
        }
        o.stdout
    }

    /// `ip netns exec NAME sh -c script`.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// Like [`Ns::sh`]; panics on a non-zero exit.
    #[track_caller]
    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        if o.status != 0 {
            panic!("in netns {}: sh -c {:?} failed: {}", self.name, script, o);
        }
        o.stdout
    }

    /// Starts argv in the background inside the namespace, stdout/stderr to /dev/null.
    /// `ip netns exec` execs in place, so the child's pid is the program's pid.
    pub fn spawn(&self, argv: &[&str]) -> Child {
        let mut c = self.command(argv);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.spawn().unwrap_or_else(|e| {
            panic!(
                "in netns {}: cannot spawn `{}`: {e}",
                self.name,
                describe(argv)
            )
        })
    }

    /// Like [`Ns::spawn`] with stdout and stderr appended to `log`.
    pub fn spawn_logged(&self, argv: &[&str], log: &Path) -> Child {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let f2 = f.try_clone().expect("dup log fd");
        let mut c = self.command(argv);
        c.stdin(Stdio::null()).stdout(f).stderr(f2);
        c.spawn().unwrap_or_else(|e| {
            panic!(
                "in netns {}: cannot spawn `{}`: {e}",
                self.name,
                describe(argv)
            )
        })
    }

    /// `ip -n NAME args...` (iproute2 commands without entering the namespace).
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut argv = vec!["ip", "-n", self.name.as_str()];
        argv.extend_from_slice(args);
        host_cmd(&argv)
    }

    /// Like [`Ns::ip`]; error on non-zero exit.
    pub fn ip_ok(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["ip", "-n", self.name.as_str()];
        argv.extend_from_slice(args);
        host_cmd_ok(&argv)
    }

    /// Writes a sysctl inside the namespace (`sysctl -w` run via `ip netns exec`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let o = self.exec(&["sh", "-c", "echo \"$1\" > \"$2\"", "sh", value, &path]);
        if o.status != 0 {
            bail!(
                "in netns {}: sysctl {key}={value} failed: {}",
                self.name,
                o.stderr.trim()
            );
        }
        Ok(())
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let o = self.exec(&["cat", &path]);
        if o.status != 0 {
            bail!(
                "in netns {}: reading {key} failed: {}",
                self.name,
                o.stderr.trim()
            );
        }
        Ok(o.stdout.trim().to_string())
    }

    /// One ping, up to `tries` attempts (1s wait each). Works for v4 and v6 addresses.
    pub fn ping(&self, addr: impl std::fmt::Display, tries: u32) -> bool {
        let addr = addr.to_string();
        let addr = addr.as_str();
        (0..tries.max(1)).any(|_| {
            self.exec(&["ping", "-c", "1", "-W", "1", "-n", "-q", addr])
                .status
                == 0
        })
    }

    /// Panics unless `addr` answers a ping within 5 attempts.
    #[track_caller]
    pub fn ping_ok(&self, addr: impl std::fmt::Display) {
        if !self.ping(&addr, 5) {
            let diag = self.sh("ip addr; ip route; ip -6 route; ip neigh");
            panic!(
                "in netns {}: ping {addr} failed\n{}",
                self.name, diag.stdout
            );
        }
    }

    /// Pids of the processes living in this namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        host_cmd(&["ip", "netns", "pids", &self.name])
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The IPv4 addresses (without prefix) of `dev` in this namespace.
    pub fn ipv4_addrs(&self, dev: &str) -> Vec<Ipv4Addr> {
        let o = self.ip(&["-4", "-o", "addr", "show", "dev", dev]);
        o.stdout
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                it.find(|w| *w == "inet")?;
                it.next()?.split('/').next()?.parse().ok()
            })
            .collect()
    }

    /// True when `/run/netns/NAME` exists.
    pub fn exists(&self) -> bool {
        netns_list().contains(&self.name)
    }
}

/// Names in `ip netns list`.
pub fn netns_list() -> Vec<String> {
    host_cmd(&["ip", "netns", "list"])
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// True when `path` is a mount point in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let want = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(_) => path.to_path_buf(),
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        l.split_whitespace()
            .nth(4)
            .map(|m| unescape_mount(m) == want.to_string_lossy())
            .unwrap_or(false)
    })
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn kill_ns_processes(ns: &str) {
    let me = std::process::id() as i32;
    for round in 0..3 {
        let pids: Vec<i32> = host_cmd(&["ip", "netns", "pids", ns])
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != me && *p > 1)
            .collect();
        if pids.is_empty() {
            return;
        }
        for p in &pids {
            // SAFETY: plain syscall.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        if round < 2 {
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The pid encoded in a harness name "nd<pid>x<n>..." (namespace or temp-dir suffix).
fn harness_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("nd")?;
    let (pid, tail) = rest.split_once('x')?;
    if !tail.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// True while `pid` runs: it exists and is not a zombie. A process that
/// daemonized (dnsmasq) has init as its parent, which may never reap it.
pub fn process_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

/// Removes what test processes that died without running Drop (SIGKILL, abort) left
/// behind: namespaces "nd<pid>x<n>-*" and temp dirs "netd-*-nd<pid>x<n>" (after
/// unmounting their bpffs) whose <pid> no longer exists. Run once per process by
/// [`Topology::new`]; safe to call any time.
pub fn reap_stale() {
    for ns in netns_list() {
        if let Some(pid) = harness_pid(&ns)
            && !pid_alive(pid)
        {
            kill_ns_processes(&ns);
            let o = host_cmd(&["ip", "netns", "del", &ns]);
            eprintln!("harness: removed stale netns {ns} (exit {})", o.status);
        }
    }
    let Ok(rd) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("netd-") else {
            continue;
        };
        // "netd-<test>-nd<pid>x<n>" (a topology) or "netd-tests-<pid>" (server logs).
        let pid = match rest
            .strip_prefix("tests-")
            .and_then(|p| p.parse::<u32>().ok())
        {
            Some(pid) => Some(pid),
            None => rest.rsplit('-').next().and_then(harness_pid),
        };
        let stale = pid.is_some_and(|pid| !pid_alive(pid));
        if !stale {
            continue;
        }
        let path = e.path();
        let bpffs = path.join("bpffs");
        if is_mounted(&bpffs)
            && let Ok(c) = CString::new(bpffs.as_os_str().as_bytes())
        {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if !is_mounted(&bpffs) && fs::remove_dir_all(&path).is_ok() {
            eprintln!("harness: removed stale {}", path.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Topology.

/// The standard topology (see the crate docs), with an optional netd daemon in "host".
pub struct Topology {
    pub host: Ns,
    pub router: Ns,
    pub upstream: Ns,
    /// Temp dir: config/, state/, run/, bpffs/, defs/, guests/, daemon.log.
    pub dir: PathBuf,
    /// "nd<pid>x<counter>": prefix of every namespace name of this topology.
    pub prefix: String,
    pub test_name: String,
    /// Every namespace created, in creation order (deleted in reverse order).
    namespaces: Vec<String>,
    guests: usize,
    daemon: Option<Child>,
    daemon_args: Vec<String>,
    /// Extra environment of the daemon (kept across [`Topology::restart_daemon`]).
    daemon_env: Vec<(String, String)>,
    bpffs_mounted: bool,
    netd_bin: Option<PathBuf>,
}

impl Topology {
    /// Builds the host/router/upstream namespaces and their links. Needs root.
    pub fn new(test_name: &str) -> Result<Topology> {
        if !is_root() {
            bail!("Topology::new needs root");
        }
        static REAP: std::sync::Once = std::sync::Once::new();
        REAP.call_once(reap_stale);
        let prefix = format!("nd{}x{}", std::process::id(), next_id());
        let safe: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let dir = std::env::temp_dir().join(format!("netd-{safe}-{prefix}"));
        let mut t = Topology {
            host: Ns {
                name: format!("{prefix}-host"),
            },
            router: Ns {
                name: format!("{prefix}-router"),
            },
            upstream: Ns {
                name: format!("{prefix}-upstream"),
            },
            dir,
            prefix,
            test_name: test_name.to_string(),
            namespaces: Vec::new(),
            guests: 0,
            daemon: None,
            daemon_args: Vec::new(),
            daemon_env: Vec::new(),
            bpffs_mounted: false,
            netd_bin: None,
        };
        // From here on, Drop cleans up whatever got created if a step fails.
        t.build()
            .with_context(|| format!("building topology for {test_name}"))?;
        Ok(t)
    }

    fn build(&mut self) -> Result<()> {
        for sub in [
            "config",
            "config/networks",
            "state",
            "run",
            "bpffs",
            "defs",
            "guests",
        ] {
            fs::create_dir_all(self.dir.join(sub))
                .with_context(|| format!("creating {}", self.dir.display()))?;
        }
        fs::write(self.dir.join("TEST"), format!("{}\n", self.test_name))?;

        let (h, r, u) = (
            self.host.clone(),
            self.router.clone(),
            self.upstream.clone(),
        );
        for ns in [&h, &r, &u] {
            self.create_ns(&ns.name)?;
        }

        // host <-> router
        h.ip_ok(&[
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            ROUTER_HOST_IF,
            "netns",
            &r.name,
        ])?;
        // router <-> upstream
        r.ip_ok(&[
            "link",
            "add",
            ROUTER_UP_IF,
            "type",
            "veth",
            "peer",
            "name",
            UPSTREAM_IF,
            "netns",
            &u.name,
        ])?;

        h.ip_ok(&["addr", "add", &format!("{HOST_IP}/24"), "dev", UPLINK])?;
        h.ip_ok(&[
            "addr",
            "add",
            &format!("{HOST_IP6}/64"),
            "dev",
            UPLINK,
            "nodad",
        ])?;
        h.ip_ok(&["link", "set", UPLINK, "up"])?;
        h.ip_ok(&[
            "route",
            "add",
            "default",
            "via",
            &ROUTER_HOST_IP.to_string(),
        ])?;
        h.ip_ok(&["-6", "route", "add", "default", "via", ROUTER_HOST_IP6])?;

        r.ip_ok(&[
            "addr",
            "add",
            &format!("{ROUTER_HOST_IP}/24"),
            "dev",
            ROUTER_HOST_IF,
        ])?;
        r.ip_ok(&[
            "addr",
            "add",
            &format!("{ROUTER_HOST_IP6}/64"),
            "dev",
            ROUTER_HOST_IF,
            "nodad",
        ])?;
        r.ip_ok(&[
            "addr",
            "add",
            &format!("{ROUTER_UP_IP}/24"),
            "dev",
            ROUTER_UP_IF,
        ])?;
        r.ip_ok(&[
            "addr",
            "add",
            &format!("{ROUTER_UP_IP6}/64"),
            "dev",
            ROUTER_UP_IF,
            "nodad",
        ])?;
        r.ip_ok(&["link", "set", ROUTER_HOST_IF, "up"])?;
        r.ip_ok(&["link", "set", ROUTER_UP_IF, "up"])?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;

        u.ip_ok(&[
            "addr",
            "add",
            &format!("{UPSTREAM_IP}/24"),
            "dev",
            UPSTREAM_IF,
        ])?;
        u.ip_ok(&[
            "addr",
            "add",
            &format!("{UPSTREAM_IP6}/64"),
            "dev",
            UPSTREAM_IF,
            "nodad",
        ])?;
        u.ip_ok(&["link", "set", UPSTREAM_IF, "up"])?;
        u.ip_ok(&["route", "add", "default", "via", &ROUTER_UP_IP.to_string()])?;
        u.ip_ok(&["-6", "route", "add", "default", "via", ROUTER_UP_IP6])?;
        Ok(())
    }

    /// `ip netns add NAME`, registered for cleanup first; lo up; IPv6 DAD off (speed).
    fn create_ns(&mut self, name: &str) -> Result<Ns> {
        self.namespaces.push(name.to_string());
        host_cmd_ok(&["ip", "netns", "add", name])?;
        let ns = Ns {
            name: name.to_string(),
        };
        ns.ip_ok(&["link", "set", "lo", "up"])?;
        // Best effort: a kernel without IPv6 still gives a usable v4 topology.
        let _ = ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        let _ = ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        Ok(ns)
    }

    /// Uses `bin` instead of [`netd_bin`] for this topology's daemon and CLI calls
    /// (e.g. a fake netd in harness self-tests, or a release build).
    pub fn set_netd_bin(&mut self, bin: impl Into<PathBuf>) {
        self.netd_bin = Some(bin.into());
    }

    /// The netd binary this topology runs.
    pub fn bin(&self) -> PathBuf {
        self.netd_bin.clone().unwrap_or_else(netd_bin)
    }

    /// Every namespace of this topology (host, router, upstream, guests, extra ones).
    pub fn namespaces(&self) -> Vec<Ns> {
        self.namespaces
            .iter()
            .map(|n| Ns { name: n.clone() })
            .collect()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("run").join("netd.sock")
    }

    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn daemon_log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// Mounts a private bpffs at `<dir>/bpffs` (idempotent; stays mounted across daemon
    /// restarts so pinned maps survive them; unmounted in Drop).
    pub fn mount_bpffs(&mut self) -> Result<()> {
        if self.bpffs_mounted {
            return Ok(());
        }
        let target = self.bpffs();
        fs::create_dir_all(&target)?;
        let src = CString::new("bpf").unwrap();
        let tgt = CString::new(target.as_os_str().as_bytes())?;
        // SAFETY: valid NUL-terminated strings, null data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mount -t bpf bpf {}: {}",
                target.display(),
                std::io::Error::last_os_error()
            );
        }
        self.bpffs_mounted = true;
        Ok(())
    }

    /// Mounts the bpffs and starts `netd daemon` in the host namespace; waits ≤10s for
    /// `<run>/netd.sock` and a `netd status` that answers (exit 0, or 3 when a check FAILs).
    pub fn start_daemon(&mut self) -> Result<()> {
        self.start_daemon_with(&[])
    }

    /// Like [`Topology::start_daemon`] with extra environment variables for the daemon
    /// (e.g. `NETD_DNSMASQ`), and extra arguments appended to `netd daemon ...`. The
    /// environment is kept for later [`Topology::start_daemon_with`] and
    /// [`Topology::restart_daemon`] calls until the next `start_daemon_env`.
    pub fn start_daemon_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> Result<()> {
        self.daemon_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.start_daemon_with(extra)
    }

    /// `daemon` and this topology's folders: the start of every `netd
    /// daemon` command line a test runs.
    pub fn daemon_args(&self) -> Vec<String> {
        let dir = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        vec![
            "daemon".into(),
            "--config-dir".into(),
            dir("config"),
            "--state-dir".into(),
            dir("state"),
            "--run-dir".into(),
            dir("run"),
            "--bpffs".into(),
            dir("bpffs"),
        ]
    }

    /// Runs `netd daemon` on this topology's folders in the foreground
    /// (no cgroup hooks) with `extra`, for a daemon expected to exit.
    pub fn run_daemon_to_exit(&self, extra: &[&str], timeout: Duration) -> Output {
        let bin = self.bin();
        let args = self.daemon_args();
        let mut argv: Vec<&str> = vec![bin.to_str().expect("utf-8 netd path")];
        argv.extend(args.iter().map(String::as_str));
        argv.extend(["--cgroup", "none"]);
        argv.extend_from_slice(extra);
        self.host.exec_timeout(&argv, timeout)
    }

    /// Like [`Topology::start_daemon`] with extra arguments appended to `netd daemon ...`.
    pub fn start_daemon_with(&mut self, extra: &[&str]) -> Result<()> {
        if self.daemon_running() {
            bail!("daemon already running");
        }
        self.daemon = None;
        self.mount_bpffs()?;
        let bin = self.bin();
        let mut args = self.daemon_args();
        // The host-local forward programs go on a cgroup of this test's own,
        // never on the machine's root cgroup.
        if !extra.contains(&"--cgroup") {
            match self.ensure_cgroup()? {
                Some(cg) => args.extend(["--cgroup".into(), cg.to_string_lossy().into_owned()]),
                None => args.extend(["--cgroup".into(), "none".into()]),
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let logp = self.daemon_log_path();
        let mut log = OpenOptions::new().create(true).append(true).open(&logp)?;
        writeln!(
            log,
            "=== harness: starting {} {} ===",
            bin.display(),
            args.join(" ")
        )?;
        let log2 = log.try_clone()?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host.name])
            .arg(&bin)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("NETD_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("NETD_SOCKET")
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = c
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        self.daemon = Some(child);
        self.daemon_args = args;

        let sock = self.socket();
        let end = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        loop {
            if let Some(ch) = self.daemon.as_mut()
                && let Ok(Some(st)) = ch.try_wait()
            {
                self.daemon = None;
                bail!(
                    "netd daemon exited during startup ({st}); log:\n{}",
                    tail(&self.daemon_log(), 60)
                );
            }
            if sock.exists() {
                let o = self.netd(&["status"]);
                // 3: the daemon answers, and a check FAILs (a degraded
                // network, say): it is up all the same.
                if o.status == 0 || o.status == 3 {
                    return Ok(());
                }
                last = Some(o);
            }
            if Instant::now() >= end {
                let why = match last {
                    Some(o) => format!("`netd status` failed: {o}"),
                    None => format!("{} never appeared", sock.display()),
                };
                self.stop_daemon();
                bail!(
                    "netd daemon not ready after 10s: {why}\nlog:\n{}",
                    tail(&self.daemon_log(), 60)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the daemon process started by this topology is alive.
    pub fn daemon_running(&mut self) -> bool {
        match self.daemon.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Pid of the running daemon, if any.
    pub fn daemon_pid(&mut self) -> Option<u32> {
        if self.daemon_running() {
            self.daemon.as_ref().map(|c| c.id())
        } else {
            None
        }
    }

    /// SIGTERM, wait ≤5s, then SIGKILL. Returns the exit status if one was seen.
    pub fn stop_daemon(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.daemon.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(st)) = child.try_wait() {
                self.log_marker(&format!("daemon exited: {st}"));
                return Some(st);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("harness: netd daemon did not stop within 5s of SIGTERM; sending SIGKILL");
        let _ = child.kill();
        let st = child.wait().ok();
        self.log_marker("daemon SIGKILLed after 5s");
        st
    }

    /// Stops the daemon (keeping bpffs, state and run dirs) and starts it again with the
    /// same arguments.
    pub fn restart_daemon(&mut self) -> Result<()> {
        let extra: Vec<String> = self.daemon_args.iter().skip(9).cloned().collect();
        self.stop_daemon();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.start_daemon_with(&extra)
    }

    fn log_marker(&self, msg: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log_path())
        {
            let _ = writeln!(f, "=== harness: {msg} ===");
        }
    }

    /// Everything the daemon wrote so far (all runs, separated by harness markers).
    pub fn daemon_log(&self) -> String {
        fs::read(self.daemon_log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `netd --socket <sock> args...` inside the host namespace.
    pub fn netd(&self, args: &[&str]) -> Output {
        let bin = self.bin();
        let sock = self.socket();
        let mut argv: Vec<&str> = vec![
            bin.to_str().expect("utf-8 netd path"),
            "--socket",
            sock.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        self.host
            .exec_env(&argv, &[("NETD_SOCKET", sock.to_str().unwrap())])
    }

    /// Like [`Topology::netd`]; panics with stderr and the daemon log tail on failure.
    #[track_caller]
    pub fn netd_ok(&self, args: &[&str]) -> String {
        let o = self.netd(args);
        if o.status != 0 {
            panic!(
                "`netd {}` failed: {}\n--- daemon log (tail) ---\n{}",
                describe(args),
                o,
                tail(&self.daemon_log(), 40)
            );
        }
        o.stdout
    }

    /// Runs `netd args... -o json` and parses stdout; panics on failure or bad JSON.
    #[track_caller]
    pub fn netd_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        let out = self.netd_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("`netd {}` printed invalid JSON ({e}):\n{out}", describe(&a))
        })
    }

    /// `netd bpf args... --bpffs <dir>/bpffs` in the host namespace (no daemon needed).
    pub fn netd_bpf(&self, args: &[&str]) -> Output {
        let bpffs = self.bpffs();
        let mut a = vec!["bpf"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--bpffs", bpffs.to_str().unwrap()]);
        self.netd(&a)
    }

    /// Writes `text` to `<dir>/defs/NAME` (NAME includes the extension, e.g. "nat.toml")
    /// and returns the path.
    #[track_caller]
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join("defs").join(name);
        if let Some(parent) = p.parent() {
            let _ = fs::create_dir_all(parent);
        }
        fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        p
    }

    /// New guest namespace "<prefix>-gN" with "eth0" (MAC given or random
    /// 52:54:00:xx:xx:xx) whose veth peer "vgN" sits in the host ns, enslaved to `bridge`
    /// and up. The bridge must exist already.
    pub fn add_guest(&mut self, bridge: &str, mac: Option<&str>) -> Result<Guest> {
        self.guests += 1;
        let n = self.guests;
        let g = self.make_port_ns(&format!("g{n}"), &format!("vg{n}"), mac)?;
        self.host
            .ip_ok(&["link", "set", &g.host_port, "master", bridge, "up"])
            .with_context(|| format!("enslaving {} to {bridge}", g.host_port))?;
        Ok(g)
    }

    /// Like [`Topology::add_guest`], but returns the whole [`Guest`] and leaves the
    /// host-side veth ("v<SUFFIX>", cut to 15 chars) up but not attached to anything.
    pub fn add_port_ns(&mut self, suffix: &str, mac: Option<&str>) -> Result<Guest> {
        let port: String = format!("v{suffix}").chars().take(15).collect();
        let g = self.make_port_ns(suffix, &port, mac)?;
        self.host.ip_ok(&["link", "set", &port, "up"])?;
        Ok(g)
    }

    /// Namespace "<prefix>-SUFFIX" with "eth0" inside, whose host-side peer
    /// "v<SUFFIX>" (cut to 15 chars) is up but unattached (e.g. a "LAN" port for
    /// bridge-mode tests). Use [`Topology::add_port_ns`] to also get the MAC.
    pub fn add_ns(&mut self, suffix: &str) -> Result<Ns> {
        Ok(self.add_port_ns(suffix, None)?.ns)
    }

    /// A bare extra namespace "<prefix>-SUFFIX" (lo up), cleaned up with the topology.
    pub fn add_empty_ns(&mut self, suffix: &str) -> Result<Ns> {
        self.create_ns(&format!("{}-{suffix}", self.prefix))
    }

    fn make_port_ns(&mut self, suffix: &str, host_port: &str, mac: Option<&str>) -> Result<Guest> {
        if host_port.len() > 15 {
            bail!("interface name {host_port:?} is longer than 15 bytes");
        }
        let name = format!("{}-{suffix}", self.prefix);
        let ns = self.create_ns(&name)?;
        let mac = mac.map(str::to_string).unwrap_or_else(random_mac);
        ns.ip_ok(&[
            "link",
            "add",
            GUEST_IF,
            "address",
            &mac,
            "type",
            "veth",
            "peer",
            "name",
            host_port,
            "netns",
            &self.host.name,
        ])?;
        ns.ip_ok(&["link", "set", GUEST_IF, "up"])?;
        Ok(Guest {
            ns,
            mac,
            host_port: host_port.to_string(),
            dir: self.dir.join("guests"),
        })
    }

    /// `iptables-save`, `ip6tables-save` and `nft list ruleset` in the host ns,
    /// concatenated, normalized for comparison: comment lines (timestamps) dropped and
    /// packet/byte counters zeroed. See [`Topology::firewall_snapshot_raw`].
    pub fn firewall_snapshot(&self) -> String {
        normalize_firewall(&self.firewall_snapshot_raw())
    }

    /// The same as [`Topology::firewall_snapshot`] without normalization.
    pub fn firewall_snapshot_raw(&self) -> String {
        let mut s = String::new();
        for argv in [
            &["iptables-save"][..],
            &["ip6tables-save"][..],
            &["nft", "list", "ruleset"][..],
        ] {
            let o = self.host.exec(argv);
            s.push_str(&format!("### {} (exit {})\n", argv.join(" "), o.status));
            s.push_str(&o.stdout);
            if o.status != 0 {
                s.push_str(&o.stderr);
            }
        }
        s
    }

    /// Prints diagnostics of every namespace (links, addresses, routes) to stderr.
    pub fn dump(&self) {
        for ns in self.namespaces() {
            let o = ns.sh("ip -br link; ip -br addr; ip route; ip -6 route");
            eprintln!("=== netns {} ===\n{}{}", ns.name, o.stdout, o.stderr);
        }
    }
}

/// Drops `#` comment lines and zeroes `[p:b]` chain counters and nft `packets N bytes M`.
pub fn normalize_firewall(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with('#') && !line.starts_with("###") {
            continue;
        }
        let mut l = line.to_string();
        // iptables-save chain lines: ":INPUT ACCEPT [12:3456]"
        if l.starts_with(':')
            && let (Some(a), Some(b)) = (l.rfind('['), l.rfind(']'))
            && a < b
            && l[a + 1..b]
                .split(':')
                .all(|x| x.chars().all(|c| c.is_ascii_digit()))
        {
            l.replace_range(a..=b, "[0:0]");
        }
        // rule counters from `iptables-save -c` style "[12:3456] -A ..."
        if l.starts_with('[')
            && let Some(b) = l.find(']')
        {
            l.replace_range(0..=b, "[0:0]");
        }
        // nft: "counter packets 12 bytes 3456"
        let words: Vec<&str> = l.split(' ').collect();
        let mut w2: Vec<String> = Vec::with_capacity(words.len());
        let mut i = 0;
        while i < words.len() {
            w2.push(words[i].to_string());
            if (words[i] == "packets" || words[i] == "bytes")
                && i + 1 < words.len()
                && words[i + 1].chars().all(|c| c.is_ascii_digit())
                && !words[i + 1].is_empty()
            {
                w2.push("0".into());
                i += 2;
                continue;
            }
            i += 1;
        }
        out.push_str(&w2.join(" "));
        out.push('\n');
    }
    out
}

impl Topology {
    /// This topology's own cgroup v2 folder, for the host-local forward
    /// programs and the processes that should use them. The v2 hierarchy is
    /// mounted again under the temp dir, because `ip netns exec` remounts
    /// /sys and hides /sys/fs/cgroup from the daemon. None without cgroup v2.
    pub fn cgroup(&self) -> Option<PathBuf> {
        cgroup2_root()?;
        Some(
            self.dir
                .join("cgroup2")
                .join(format!("netd-test-{}", self.prefix)),
        )
    }

    /// Mounts the cgroup v2 hierarchy under the temp dir and creates this
    /// topology's cgroup in it.
    fn ensure_cgroup(&self) -> Result<Option<PathBuf>> {
        let Some(cg) = self.cgroup() else {
            return Ok(None);
        };
        let mnt = self.dir.join("cgroup2");
        if !is_mounted(&mnt) {
            fs::create_dir_all(&mnt)?;
            let o = host_cmd(&["mount", "-t", "cgroup2", "none", &mnt.to_string_lossy()]);
            if o.status != 0 {
                bail!("mounting cgroup2 on {}: {}", mnt.display(), o.stderr.trim());
            }
        }
        fs::create_dir_all(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
        Ok(Some(cg))
    }

    /// Runs `argv` in the host namespace inside this topology's cgroup.
    pub fn host_exec_in_cgroup(&self, argv: &[&str]) -> Output {
        let cg = self
            .ensure_cgroup()
            .expect("test cgroup")
            .expect("cgroup v2");
        let script = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", cg.display());
        let mut full = vec!["sh", "-c", script.as_str(), "sh"];
        full.extend_from_slice(argv);
        self.host.exec(&full)
    }
}

/// The cgroup v2 mount point (pure v2 at /sys/fs/cgroup, or hybrid's unified).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .min_by_key(|p| p.as_os_str().len())
}

impl Drop for Topology {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.daemon_log();
            if !log.is_empty() {
                eprintln!(
                    "=== netd daemon log for {} ({}) ===\n{}\n=== end of daemon log ===",
                    self.test_name,
                    self.prefix,
                    tail(&log, 80)
                );
            }
        }
        if self.daemon.is_some() {
            self.stop_daemon();
        }
        for name in self.namespaces.iter().rev() {
            kill_ns_processes(name);
        }
        for name in self.namespaces.iter().rev() {
            let o = host_cmd(&["ip", "netns", "del", name]);
            if o.status != 0 && netns_list().iter().any(|n| n == name) {
                eprintln!("harness: ip netns del {name} failed: {}", o.stderr.trim());
            }
        }
        if let Some(cg) = self.cgroup()
            && cg.exists()
        {
            // Empty by now: its processes lived in the namespaces just removed.
            if let Err(e) = fs::remove_dir(&cg) {
                eprintln!("harness: removing cgroup {}: {e}", cg.display());
            }
        }
        let cg_mnt = self.dir.join("cgroup2");
        if is_mounted(&cg_mnt) {
            let o = host_cmd(&["umount", "-l", &cg_mnt.to_string_lossy()]);
            if o.status != 0 {
                eprintln!("harness: umount {}: {}", cg_mnt.display(), o.stderr.trim());
                return;
            }
        }
        if self.bpffs_mounted {
            let tgt = CString::new(self.bpffs().as_os_str().as_bytes()).unwrap();
            // SAFETY: valid NUL-terminated path.
            let rc = unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                eprintln!(
                    "harness: umount -l {}: {}",
                    self.bpffs().display(),
                    std::io::Error::last_os_error()
                );
            } else {
                self.bpffs_mounted = false;
            }
        }
        if self.bpffs_mounted || is_mounted(&self.bpffs()) {
            // Never recurse into a still-mounted bpffs.
            eprintln!(
                "harness: {} still mounted; leaving {}",
                self.bpffs().display(),
                self.dir.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && self.dir.exists()
        {
            eprintln!("harness: removing {}: {e}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Guests.

/// A guest namespace with "eth0"; `host_port` is the veth peer in the host ns.
#[derive(Debug, Clone)]
pub struct Guest {
    pub ns: Ns,
    pub mac: String,
    pub host_port: String,
    dir: PathBuf,
}

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# netd test harness udhcpc script: configures only the namespace's own eth0.
# Never touches /etc/resolv.conf.
OUT="$(dirname "$0")/$(basename "$0" .script)"
{
  echo "event=$1"
  for v in interface ip subnet mask broadcast router dns domain hostname mtu lease serverid siaddr boot_file opt53 message; do
    eval "val=\$$v"
    [ -n "$val" ] && echo "$v=$val"
  done
} >> "$OUT.events"
case "$1" in
  deconfig)
    ip link set "$interface" up
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    prefix="$mask"
    [ -n "$prefix" ] || prefix="$subnet"
    [ -n "$prefix" ] || prefix=32
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$prefix" ${broadcast:+broadcast "$broadcast"} dev "$interface" || exit 1
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    if [ -n "$router" ]; then
      gw="${router%% *}"
      ip route replace default via "$gw" dev "$interface" || exit 1
    fi
    {
      echo "ip=$ip"; echo "prefix=$prefix"; echo "router=$router"; echo "dns=$dns"
      echo "domain=$domain"; echo "hostname=$hostname"; echo "mtu=$mtu"; echo "lease=$lease"
      echo "serverid=$serverid"
    } > "$OUT.env.tmp" && mv "$OUT.env.tmp" "$OUT.env"
    echo "$ip" > "$OUT.ip.tmp" && mv "$OUT.ip.tmp" "$OUT.ip"
    ;;
esac
exit 0
"#;

impl Guest {
    fn file(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.ns.name))
    }

    /// Runs udhcpc on eth0 with the harness's own script and returns the leased address.
    pub fn dhcp(&self) -> Result<Ipv4Addr> {
        self.dhcp_args(&[])
    }

    /// Like [`Guest::dhcp`], sending option 12 (`-x hostname:NAME`).
    pub fn dhcp_with_hostname(&self, name: &str) -> Result<Ipv4Addr> {
        let opt = format!("hostname:{name}");
        self.dhcp_args(&["-x", &opt])
    }

    /// Like [`Guest::dhcp`] with extra udhcpc arguments (e.g. `["-r", "10.0.0.7"]`).
    pub fn dhcp_args(&self, extra: &[&str]) -> Result<Ipv4Addr> {
        fs::create_dir_all(&self.dir)?;
        let script = self.file("script");
        fs::write(&script, UDHCPC_SCRIPT)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        let ipf = self.file("ip");
        let _ = fs::remove_file(&ipf);
        let script_s = script.to_string_lossy().into_owned();
        let mut argv = vec![
            "udhcpc", "-i", GUEST_IF, "-n", "-q", "-f", "-t", "10", "-T", "1", "-s", &script_s,
        ];
        argv.extend_from_slice(extra);
        let o = self.ns.exec_timeout(&argv, Duration::from_secs(40));
        if o.status != 0 {
            bail!("udhcpc in {} failed: {o}", self.ns.name);
        }
        let ip = fs::read_to_string(&ipf)
            .with_context(|| format!("udhcpc exited 0 but the script wrote no address: {o}"))?;
        ip.trim()
            .parse()
            .with_context(|| format!("bad address {ip:?} from udhcpc"))
    }

    /// Variables of the last bound/renew event (ip, prefix, router, dns, domain,
    /// hostname, mtu, lease, serverid).
    pub fn dhcp_env(&self) -> HashMap<String, String> {
        fs::read_to_string(self.file("env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// Every udhcpc event seen so far, raw ("event=..." lines followed by variables).
    pub fn dhcp_events(&self) -> String {
        fs::read_to_string(self.file("events")).unwrap_or_default()
    }

    /// IPv4 addresses currently on eth0.
    pub fn ipv4_addrs(&self) -> Vec<Ipv4Addr> {
        self.ns.ipv4_addrs(GUEST_IF)
    }

    /// The default IPv4 gateway in the guest, if any.
    pub fn default_gateway(&self) -> Option<Ipv4Addr> {
        let o = self.ns.ip(&["-4", "route", "show", "default"]);
        let mut it = o.stdout.split_whitespace();
        it.find(|w| *w == "via")?;
        it.next()?.parse().ok()
    }

    /// Static address by hand: `ip addr add CIDR dev eth0` (+ default via `gw` if given).
    pub fn set_static(&self, cidr: &str, gw: Option<&str>) -> Result<()> {
        self.ns.ip_ok(&["addr", "add", cidr, "dev", GUEST_IF])?;
        if let Some(gw) = gw {
            self.ns.ip_ok(&["route", "replace", "default", "via", gw])?;
        }
        Ok(())
    }

    pub fn exec(&self, argv: &[&str]) -> Output {
        self.ns.exec(argv)
    }

    #[track_caller]
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        self.ns.exec_ok(argv)
    }

    pub fn sh(&self, script: &str) -> Output {
        self.ns.sh(script)
    }

    pub fn spawn(&self, argv: &[&str]) -> Child {
        self.ns.spawn(argv)
    }
}

// ---------------------------------------------------------------------------
// TCP / UDP tools (python3 from the machine; no extra packages).

const TCP_SERVER: &str = r#"
import socket, sys, threading, os
bind, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ':' in bind else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if fam == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind((bind, port))
s.listen(128)
lock = threading.Lock()
lf = open(log, 'a', buffering=1)
lf.write('ready\n')
def fmt(a):
    return ('[%s]:%d' % (a[0], a[1])) if ':' in a[0] else ('%s:%d' % (a[0], a[1]))
def handle(c, a):
    try:
        c.settimeout(30)
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except Exception:
        pass
    finally:
        c.close()
while True:
    c, a = s.accept()
    with lock:
        lf.write('peer ' + fmt(a) + '\n')
    threading.Thread(target=handle, args=(c, a), daemon=True).start()
"#;

const UDP_SERVER: &str = r#"
import socket, sys
bind, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ':' in bind else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if fam == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind((bind, port))
lf = open(log, 'a', buffering=1)
lf.write('ready\n')
def fmt(a):
    return ('[%s]:%d' % (a[0], a[1])) if ':' in a[0] else ('%s:%d' % (a[0], a[1]))
while True:
    d, a = s.recvfrom(65536)
    lf.write('peer ' + fmt(a) + '\n')
    s.sendto(d, a)
"#;

const CLIENT: &str = r#"
import socket, sys
proto, addr, port, payload, sport, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode(), int(sys.argv[5]), float(sys.argv[6])
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
any_ = '::' if fam == socket.AF_INET6 else '0.0.0.0'
s = socket.socket(fam, socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(timeout)
if sport:
    s.bind((any_, sport))
if proto == 'tcp':
    s.connect((addr, port))
    sys.stderr.write('local %s\n' % (s.getsockname(),))
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    buf = b''
    while True:
        d = s.recv(65536)
        if not d:
            break
        buf += d
else:
    s.sendto(payload, (addr, port))
    sys.stderr.write('local %s\n' % (s.getsockname(),))
    buf, a = s.recvfrom(65536)
sys.stdout.write(buf.decode('utf-8', 'replace'))
sys.stdout.flush()
"#;

/// An echo server running in a namespace. Each accepted TCP connection / each received
/// UDP datagram logs its source "ip:port" ("[ip]:port" for v6) to `log`.
/// Killed (and its log removed) on Drop.
pub struct Server {
    pub child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Server {
    /// Source addresses seen so far, in order ("198.51.100.2:40000").
    pub fn peers(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("peer ").map(str::to_string))
            .collect()
    }

    /// Source IP addresses seen so far (ports dropped).
    pub fn peer_ips(&self) -> Vec<IpAddr> {
        self.peers()
            .iter()
            .filter_map(|p| p.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
            .collect()
    }

    /// Waits ≤`timeout` until at least `n` peers were logged; returns the peers.
    pub fn wait_peers(&self, n: usize, timeout: Duration) -> Vec<String> {
        wait_until(timeout, || self.peers().len() >= n);
        self.peers()
    }

    /// True while the server process is alive.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
        if let Some(parent) = self.log.parent() {
            let _ = fs::remove_dir(parent); // only succeeds once empty
        }
    }
}

fn start_server(ns: &Ns, code: &str, bind: &str, port: u16) -> Server {
    let log = scratch_dir().join(format!("srv-{}-{}-{port}.log", ns.name, next_id()));
    let _ = fs::remove_file(&log);
    let errlog = log.with_extension("err");
    let port_s = port.to_string();
    let log_s = log.to_string_lossy().into_owned();
    let child = ns.spawn_logged(&[python(), "-c", code, bind, &port_s, &log_s], &errlog);
    let mut srv = Server { child, log, port };
    let ready = wait_until(Duration::from_secs(5), || {
        fs::read_to_string(&srv.log)
            .map(|s| s.starts_with("ready"))
            .unwrap_or(false)
    });
    if !ready {
        let alive = srv.running();
        let err = fs::read_to_string(&errlog).unwrap_or_default();
        let _ = fs::remove_file(&errlog);
        panic!(
            "echo server on {bind}:{port} in {} not ready (alive: {alive}): {err}",
            ns.name
        );
    }
    let _ = fs::remove_file(&errlog);
    srv
}

/// TCP echo server on 0.0.0.0:port in `ns` (returns once it listens).
pub fn tcp_echo_server(ns: &Ns, port: u16) -> Server {
    start_server(ns, TCP_SERVER, "0.0.0.0", port)
}

/// TCP echo server on a given local address ("::" for IPv6-only).
pub fn tcp_echo_server_on(ns: &Ns, bind: &str, port: u16) -> Server {
    start_server(ns, TCP_SERVER, bind, port)
}

/// UDP echo server on 0.0.0.0:port in `ns` (returns once it is bound).
pub fn udp_echo_server(ns: &Ns, port: u16) -> Server {
    start_server(ns, UDP_SERVER, "0.0.0.0", port)
}

/// UDP echo server on a given local address ("::" for IPv6-only).
pub fn udp_echo_server_on(ns: &Ns, bind: &str, port: u16) -> Server {
    start_server(ns, UDP_SERVER, bind, port)
}

fn client(
    ns: &Ns,
    proto: &str,
    addr: &dyn std::fmt::Display,
    port: u16,
    payload: &str,
    sport: Option<u16>,
    timeout: Duration,
) -> Result<String> {
    let addr = addr.to_string();
    let addr = addr.as_str();
    let port_s = port.to_string();
    let sport_s = sport.unwrap_or(0).to_string();
    let to_s = format!("{}", timeout.as_secs_f64());
    let o = ns.exec_timeout(
        &[
            python(),
            "-c",
            CLIENT,
            proto,
            addr,
            &port_s,
            payload,
            &sport_s,
            &to_s,
        ],
        timeout + Duration::from_secs(10),
    );
    if o.status != 0 {
        let last = o.stderr.trim().lines().last().unwrap_or("").to_string();
        bail!(
            "{proto} request {addr}:{port} from {} failed: {last}\n{}",
            ns.name,
            o.stderr.trim()
        );
    }
    Ok(o.stdout)
}

/// Connects from `ns` to addr:port, sends `payload`, half-closes, returns the reply
/// (everything until the server closes). Timeout 5s.
pub fn tcp_request(
    ns: &Ns,
    addr: impl std::fmt::Display,
    port: u16,
    payload: &str,
) -> Result<String> {
    client(
        ns,
        "tcp",
        &addr,
        port,
        payload,
        None,
        Duration::from_secs(5),
    )
}

/// Like [`tcp_request`] from a fixed local source port.
pub fn tcp_request_from(
    ns: &Ns,
    addr: impl std::fmt::Display,
    port: u16,
    payload: &str,
    src_port: Option<u16>,
) -> Result<String> {
    client(
        ns,
        "tcp",
        &addr,
        port,
        payload,
        src_port,
        Duration::from_secs(5),
    )
}

/// Sends one datagram from `ns` to addr:port and returns the first reply. Timeout 5s.
pub fn udp_request(
    ns: &Ns,
    addr: impl std::fmt::Display,
    port: u16,
    payload: &str,
) -> Result<String> {
    client(
        ns,
        "udp",
        &addr,
        port,
        payload,
        None,
        Duration::from_secs(5),
    )
}

/// Like [`udp_request`] from a fixed local source port (None: any).
pub fn udp_request_from(
    ns: &Ns,
    addr: impl std::fmt::Display,
    port: u16,
    payload: &str,
    src_port: Option<u16>,
) -> Result<String> {
    client(
        ns,
        "udp",
        &addr,
        port,
        payload,
        src_port,
        Duration::from_secs(5),
    )
}

/// Like the request functions with an explicit timeout ("tcp" or "udp").
pub fn request_timeout(
    ns: &Ns,
    proto: &str,
    addr: impl std::fmt::Display,
    port: u16,
    payload: &str,
    src_port: Option<u16>,
    timeout: Duration,
) -> Result<String> {
    client(ns, proto, &addr, port, payload, src_port, timeout)
}
