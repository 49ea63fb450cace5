//! Doctor checks for `netd status`: each one a line with OK, WARN or FAIL
//! and one sentence on what to do. The host firewall is only read
//! (`iptables-save`, `nft -j list ruleset`), never written.

use crate::api::wire::Check;
use crate::dataplane;
use netd_common::{dir as ctdir, nat_kind};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

pub const OK: &str = "OK";
pub const WARN: &str = "WARN";
pub const FAIL: &str = "FAIL";

pub(super) fn check(level: &str, name: &str, message: String) -> Check {
    Check {
        level: level.into(),
        name: name.into(),
        message,
    }
}

// ---- the checks -------------------------------------------------------------

impl super::State {
    pub(super) async fn doctor(&self) -> Vec<Check> {
        let mut out = Vec::new();
        let bpffs_ok = dataplane::is_bpffs(&self.paths.bpffs);
        out.push(if bpffs_ok {
            check(
                OK,
                "bpffs",
                format!(
                    "{} is on a bpf filesystem, so maps and links outlive the daemon.",
                    self.paths.bpffs.display()
                ),
            )
        } else {
            check(
                FAIL,
                "bpffs",
                format!(
                    "{} is not on bpffs: mount it with `mount -t bpf bpf /sys/fs/bpf`.",
                    self.paths.bpffs.display()
                ),
            )
        });
        out.push(tcx_check(
            self.dp.attached().iter().any(|l| l.tcx_position.is_some()),
        ));

        let fw = Firewall::read().await;
        for run in self.running.values() {
            let net = &run.record.definition;
            if !net.wants_dnsmasq() {
                continue;
            }
            let mut services = Vec::new();
            if net.ipv4.as_ref().is_some_and(|v| v.dhcp.is_some()) {
                services.push(("DHCP", 67));
            }
            if net.dns.as_ref().is_none_or(|d| d.enable) {
                services.push(("DNS", 53));
            }
            out.push(fw.input_check(&run.record.bridge, &services));
        }
        out.push(br_netfilter_check(Path::new("/proc/sys/net/bridge")));
        out.push(fw.forward_check());

        for (name, run) in &self.running {
            if let Some(d) = &run.degraded {
                out.push(check(
                    FAIL,
                    "network",
                    format!(
                        "{name} is degraded ({}); it keeps running with what works and is retried (next in {}s).",
                        d.summary(),
                        d.next_try
                            .saturating_duration_since(std::time::Instant::now())
                            .as_secs()
                    ),
                ));
            } else if let Some(why) = self.repairs.degraded(name) {
                out.push(check(
                    FAIL,
                    "network",
                    format!(
                        "{name} is degraded ({why}); it recovers by itself when that is mended."
                    ),
                ));
            }
            if let Some(d) = &run.dnsmasq {
                out.push(if d.healthy() {
                    check(
                        OK,
                        "dnsmasq",
                        format!("{name}: dnsmasq is running (pid {}).", d.pid().unwrap_or(0)),
                    )
                } else {
                    check(
                        FAIL,
                        "dnsmasq",
                        format!(
                            "{name}: dnsmasq is down ({}), {} restarts so far; next try in {}s.",
                            d.last_error().unwrap_or_else(|| "starting".into()),
                            d.restarts(),
                            d.next_try_in().unwrap_or_default().as_secs()
                        ),
                    )
                });
            }
        }
        if self.running.values().any(|r| r.dnsmasq.is_some()) {
            let ours: Vec<u32> = self
                .running
                .values()
                .filter_map(|r| r.dnsmasq.as_ref()?.pid())
                .collect();
            let bridges: Vec<(String, Option<std::net::Ipv4Addr>)> = self
                .running
                .values()
                .filter(|r| r.dnsmasq.is_some())
                .map(|r| {
                    let gw = r
                        .record
                        .definition
                        .ipv4
                        .as_ref()
                        .and_then(|v| v.parsed().ok())
                        .map(|(a, _)| a);
                    (r.record.bridge.clone(), gw)
                })
                .collect();
            out.push(dhcp_server_check(&ours, &bridges));
        }
        out.extend(self.port_checks());
        out.extend(self.vf_pool_checks());
        out
    }

    /// Masquerade port use per NAT network: distinct outside ports per
    /// protocol and masquerade address, against the ports of the range
    /// forwards leave to the masquerade.
    fn port_checks(&self) -> Vec<Check> {
        let nat: Vec<_> = self
            .running
            .values()
            .filter(|r| {
                r.record.definition.mode == crate::config::Mode::Nat && r.record.bridge_ifindex != 0
            })
            .collect();
        if nat.is_empty() {
            return Vec::new();
        }
        let dir = self.dp.maps_dir();
        let entries = dataplane::maps::ct_entries(&dir).unwrap_or_default();
        let forwards: Vec<_> = dataplane::maps::list_forwards(&dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        let mut out = Vec::new();
        for run in nat {
            let (lo, hi) = run.record.definition.nat_ports();
            let usage = port_usage(&entries, &forwards, run.record.bridge_ifindex, lo, hi);
            out.push(port_check(&run.record.definition.name, &usage, lo, hi));
        }
        out
    }
}

/// Outside ports of one (protocol, masquerade address) of a network.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortUse {
    proto: u8,
    addr: std::net::Ipv4Addr,
    /// Distinct ports of the range in use, by any network's connections
    /// (networks masquerading to the same address share its ports).
    used: u64,
    /// Ports of the range the masquerade may use: forwards own the rest.
    size: u64,
}

/// The port use of the network on `bridge`, per protocol and masquerade
/// address it has connections on; counting ports, not entries (a port
/// serves one flow per destination).
fn port_usage(
    entries: &[(netd_common::CtKey, netd_common::CtEntry)],
    forwards: &[dataplane::maps::ForwardEntry],
    bridge: u32,
    lo: u16,
    hi: u16,
) -> Vec<PortUse> {
    let masq = |e: &netd_common::CtEntry| {
        e.dir == ctdir::ORIGINAL
            && e.nat == nat_kind::SNAT
            && (lo..=hi).contains(&u16::from_be(e.xlate.sport))
    };
    let mut ports: BTreeMap<(u8, u32), HashSet<u16>> = BTreeMap::new();
    for (_, e) in entries.iter().filter(|(_, e)| masq(e)) {
        if e.bridge_ifindex == bridge {
            ports.entry((e.xlate.proto, e.xlate.saddr)).or_default();
        }
    }
    for (_, e) in entries.iter().filter(|(_, e)| masq(e)) {
        if let Some(set) = ports.get_mut(&(e.xlate.proto, e.xlate.saddr)) {
            set.insert(u16::from_be(e.xlate.sport));
        }
    }
    let range = u64::from(hi.saturating_sub(lo)) + 1;
    ports
        .into_iter()
        .map(|((proto, addr), set)| {
            let addr = std::net::Ipv4Addr::from(u32::from_be(addr));
            let forwarded = forwards
                .iter()
                .filter(|f| f.proto == proto && f.host.0 == addr && (lo..=hi).contains(&f.host.1))
                .count() as u64;
            PortUse {
                proto,
                addr,
                used: set.len() as u64,
                size: range.saturating_sub(forwarded),
            }
        })
        .collect()
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        _ => "another protocol",
    }
}

/// One line for a network: the fullest (protocol, address), a warning
/// from 80% on.
fn port_check(net: &str, usage: &[PortUse], lo: u16, hi: u16) -> Check {
    let fullest = usage
        .iter()
        .max_by(|a, b| (a.used * b.size.max(1)).cmp(&(b.used * a.size.max(1))));
    let Some(u) = fullest else {
        return check(
            OK,
            "nat-ports",
            format!("{net}: no masquerade ports ({lo}-{hi}) in use."),
        );
    };
    let (used, size, proto, addr) = (u.used, u.size, proto_name(u.proto), u.addr);
    if used * 5 >= size * 4 {
        check(
            WARN,
            "nat-ports",
            format!(
                "{net}: {used} of {size} masquerade ports ({lo}-{hi}, less forwarded ones) on {addr} are in use for {proto}; widen [nat] ports or add a masquerade address before new connections are refused."
            ),
        )
    } else {
        check(
            OK,
            "nat-ports",
            format!(
                "{net}: {used} of {size} masquerade ports ({lo}-{hi}) on {addr} in use for {proto}, the most of any protocol and address."
            ),
        )
    }
}

// ---- tcx ----------------------------------------------------------------------

/// tcx arrived in Linux 6.6.
fn tcx_check(attached_with_tcx: bool) -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    match kernel_version(release) {
        _ if attached_with_tcx => check(
            OK,
            "tcx",
            format!("kernel {release} has tcx, and netd's programs are attached with it."),
        ),
        Some(v) if v >= (6, 6) => check(
            OK,
            "tcx",
            format!("kernel {release} supports tcx (6.6 or later)."),
        ),
        Some(_) => check(
            FAIL,
            "tcx",
            format!("kernel {release} predates tcx (6.6): run netd on Linux 6.6 or later."),
        ),
        None => check(
            WARN,
            "tcx",
            format!(
                "cannot tell whether kernel {release:?} has tcx; netd needs Linux 6.6 or later."
            ),
        ),
    }
}

pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

// ---- br_netfilter -------------------------------------------------------------

fn br_netfilter_check(dir: &Path) -> Check {
    if !dir.join("bridge-nf-call-iptables").exists() {
        return check(
            OK,
            "br-netfilter",
            "br_netfilter is not loaded, so iptables never sees bridged traffic.".into(),
        );
    }
    let on: Vec<&str> = [
        "bridge-nf-call-iptables",
        "bridge-nf-call-ip6tables",
        "bridge-nf-call-arptables",
    ]
    .into_iter()
    .filter(|k| std::fs::read_to_string(dir.join(k)).is_ok_and(|v| v.trim() == "1"))
    .collect();
    if on.is_empty() {
        return check(OK, "br-netfilter", "br_netfilter is loaded but bridge-nf-call-* are 0, so bridged traffic skips netfilter.".into());
    }
    let keys: Vec<String> = on.iter().map(|k| format!("net.bridge.{k}")).collect();
    let (verb, them) = if keys.len() == 1 {
        ("is", "it")
    } else {
        ("are", "them")
    };
    check(
        WARN,
        "br-netfilter",
        format!(
            "{} {verb} 1, which overrides netd's per-bridge nf_call_*=0 (the kernel ORs the two), so traffic between guests of one network goes through the host's netfilter FORWARD rules; set {them} to 0 unless something on this host needs {them}.",
            keys.join(", ")
        ),
    )
}

// ---- another DHCP server -----------------------------------------------------

/// A socket on local UDP port 67 from /proc/net/udp.
#[derive(Debug, PartialEq)]
pub struct UdpSocket {
    pub addr: std::net::Ipv4Addr,
    pub port: u16,
    pub inode: u64,
}

/// Parses /proc/net/udp (addresses are hex in host byte order, as the
/// kernel prints the raw __be32).
pub fn parse_proc_udp(text: &str) -> Vec<UdpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, port) = f.get(1)?.split_once(':')?;
            let addr = u32::from_str_radix(addr, 16).ok()?;
            Some(UdpSocket {
                // The kernel prints the raw __be32 as a native u32.
                addr: std::net::Ipv4Addr::from(addr.to_ne_bytes()),
                port: u16::from_str_radix(port, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The processes holding these socket inodes (a walk over /proc/*/fd).
fn owners(inodes: &HashSet<u64>) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        for i in socket_inodes(pid) {
            if inodes.contains(&i) {
                out.insert(i, pid);
            }
        }
        if out.len() == inodes.len() {
            break;
        }
    }
    out
}

fn dhcp_server_check(ours: &[u32], bridges: &[(String, Option<std::net::Ipv4Addr>)]) -> Check {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let mine: HashSet<u64> = ours.iter().flat_map(|p| socket_inodes(*p)).collect();
    let foreign: Vec<UdpSocket> = parse_proc_udp(&text)
        .into_iter()
        .filter(|s| s.port == 67 && !mine.contains(&s.inode))
        .filter(|s| s.addr.is_unspecified() || bridges.iter().any(|(_, gw)| *gw == Some(s.addr)))
        .collect();
    let names: Vec<&str> = bridges.iter().map(|(b, _)| b.as_str()).collect();
    if foreign.is_empty() {
        return check(
            OK,
            "dhcp-server",
            format!(
                "only netd's dnsmasq listens on UDP 67 for {}.",
                names.join(", ")
            ),
        );
    }
    let who = owners(&foreign.iter().map(|s| s.inode).collect());
    let mut level = WARN;
    let mut parts = Vec::new();
    for s in &foreign {
        let proc = match who.get(&s.inode) {
            Some(pid) => {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                format!("{} (pid {pid})", comm.trim())
            }
            None => "an unknown process".into(),
        };
        if let Some((b, _)) = bridges.iter().find(|(_, gw)| *gw == Some(s.addr)) {
            level = FAIL;
            parts.push(format!("{proc} on {}:67 ({b})", s.addr));
        } else {
            parts.push(format!("{proc} on 0.0.0.0:67"));
        }
    }
    check(
        level,
        "dhcp-server",
        format!(
            "another DHCP server listens: {}; stop it or bind it away from {}, or guests may take leases from it.",
            parts.join(", "),
            names.join(", ")
        ),
    )
}

// ---- the host firewall -------------------------------------------------------

/// A packet a guest sends to the host's dnsmasq.
#[derive(Clone, Copy, Debug)]
pub struct Probe<'a> {
    pub bridge: &'a str,
    pub proto: &'a str,
    pub port: u16,
}

/// What the INPUT path does to a probe, as far as simple parsing can tell.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Accept,
    /// A rule drops or rejects it. `sure` is false when a rule we could not
    /// evaluate (addresses, sets, marks…) might have accepted it first.
    DropRule {
        rule: String,
        sure: bool,
    },
    /// Nothing accepts it and the chain's policy is DROP.
    DropPolicy {
        chain: String,
    },
}

/// What `iptables-save` and `nft -j list ruleset` said, read once per status.
#[derive(Default)]
pub struct Firewall {
    iptables: Option<Iptables>,
    nft: Option<Value>,
}

impl Firewall {
    async fn read() -> Firewall {
        let ipt = run_quiet(&["iptables-save", "-t", "filter"]).await;
        let nft = run_quiet(&["nft", "-j", "list", "ruleset"]).await;
        Firewall {
            iptables: ipt.map(|t| Iptables::parse(&t)),
            nft: nft.and_then(|t| serde_json::from_str(&t).ok()),
        }
    }

    /// Worst verdict over both views (with iptables-nft one rule shows in both).
    fn input(&self, p: &Probe) -> Verdict {
        let mut verdicts = Vec::new();
        if let Some(i) = &self.iptables {
            verdicts.push(i.input(p));
        }
        if let Some(n) = &self.nft {
            verdicts.push(nft_input(n, p));
        }
        let rank = |v: &Verdict| match v {
            Verdict::DropRule { sure: true, .. } => 3,
            Verdict::DropRule { .. } => 2,
            Verdict::DropPolicy { .. } => 1,
            Verdict::Accept => 0,
        };
        verdicts
            .into_iter()
            .max_by_key(rank)
            .unwrap_or(Verdict::Accept)
    }

    fn input_check(&self, bridge: &str, services: &[(&str, u16)]) -> Check {
        if self.iptables.is_none() && self.nft.is_none() {
            return check(
                OK,
                "host-input",
                format!(
                    "{bridge}: neither iptables-save nor nft is available, so no host rule was checked."
                ),
            );
        }
        let mut worst: Option<(u8, Check)> = None;
        for (what, port) in services {
            let p = Probe {
                bridge,
                proto: "udp",
                port: *port,
            };
            let (rank, c) = match self.input(&p) {
                Verdict::Accept => continue,
                Verdict::DropRule { rule, sure: true } => (
                    3,
                    check(
                        FAIL,
                        "host-input",
                        format!(
                            "{bridge}: host rule `{rule}` drops {what} (udp {port}) from guests; add an ACCEPT for udp dport {port} on {bridge} before it (netd never edits the firewall)."
                        ),
                    ),
                ),
                Verdict::DropRule { rule, sure: false } => (
                    2,
                    check(
                        WARN,
                        "host-input",
                        format!(
                            "{bridge}: host rule `{rule}` may drop {what} (udp {port}) from guests; make sure udp dport {port} on {bridge} is accepted before it."
                        ),
                    ),
                ),
                Verdict::DropPolicy { chain } => (
                    1,
                    check(
                        WARN,
                        "host-input",
                        format!(
                            "{bridge}: {chain} drops by policy and no rule accepts {what} (udp {port}); add an ACCEPT for udp dport {port} on {bridge}."
                        ),
                    ),
                ),
            };
            if worst.as_ref().is_none_or(|(r, _)| rank > *r) {
                worst = Some((rank, c));
            }
        }
        let names: Vec<&str> = services.iter().map(|(w, _)| *w).collect();
        worst.map(|(_, c)| c).unwrap_or_else(|| {
            check(
                OK,
                "host-input",
                format!(
                    "{bridge}: host INPUT rules let {} from guests through.",
                    names.join(" and ")
                ),
            )
        })
    }

    fn forward_check(&self) -> Check {
        let mut chains = Vec::new();
        if self
            .iptables
            .as_ref()
            .is_some_and(|i| i.policy("FORWARD") == Some("DROP"))
        {
            chains.push("iptables FORWARD".to_string());
        }
        if let Some(n) = &self.nft {
            // iptables-nft's own chain shows in both views.
            let dup = !chains.is_empty();
            chains.extend(
                nft_drop_chains(n, "forward")
                    .into_iter()
                    .filter(|c| !(dup && c == "nft ip filter FORWARD")),
            );
        }
        if chains.is_empty() {
            return check(
                OK,
                "forward-policy",
                "no FORWARD drop policy on the host.".into(),
            );
        }
        check(
            WARN,
            "forward-policy",
            format!(
                "policy DROP on {}: the eBPF fast path never meets it, but guest packets that take the slow path (fragments the kernel must split, route misses) are dropped there, so accept the netd subnets in it if that matters.",
                chains.join(" and ")
            ),
        )
    }
}

/// Runs a read-only tool; None when it is missing, fails or hangs.
async fn run_quiet(argv: &[&str]) -> Option<String> {
    let fut = tokio::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()?
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An interface pattern: iptables ends wildcards with '+', nft with '*'.
fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern
        .strip_suffix('+')
        .or_else(|| pattern.strip_suffix('*'))
    {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn proto_matches(value: &str, proto: &str) -> bool {
    let number = match proto {
        "udp" => "17",
        "tcp" => "6",
        _ => "",
    };
    value.eq_ignore_ascii_case(proto) || value == number || value == "all" || value == "0"
}

/// "67", "60:70" (iptables) or "60-70".
fn port_in(spec: &str, port: u16) -> bool {
    spec.split(',').any(|one| match one.split_once([':', '-']) {
        Some((a, b)) => {
            let a = if a.is_empty() {
                0
            } else {
                a.parse().unwrap_or(u16::MAX)
            };
            let b = if b.is_empty() {
                u16::MAX
            } else {
                b.parse().unwrap_or(0)
            };
            (a..=b).contains(&port)
        }
        None => one.parse() == Ok(port),
    })
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Match {
    Yes,
    No,
    Maybe,
}

impl Match {
    fn and(self, other: Match) -> Match {
        match (self, other) {
            (Match::No, _) | (_, Match::No) => Match::No,
            (Match::Maybe, _) | (_, Match::Maybe) => Match::Maybe,
            _ => Match::Yes,
        }
    }
    fn from_bool(b: bool) -> Match {
        if b { Match::Yes } else { Match::No }
    }
}

/// Where a rule sends a packet.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    /// LOG, counters and the like: evaluation goes on.
    Continue,
}

fn target_of(name: &str) -> Target {
    match name.to_ascii_uppercase().as_str() {
        "ACCEPT" => Target::Accept,
        "DROP" | "REJECT" => Target::Drop,
        "RETURN" => Target::Return,
        // Built-in non-terminal targets.
        "LOG" | "NFLOG" | "ULOG" | "MARK" | "CONNMARK" | "CT" | "TRACE" | "AUDIT" | "CLASSIFY"
        | "TCPMSS" | "NOTRACK" => Target::Continue,
        _ => Target::Jump(name.to_string()),
    }
}

/// Walks rules in order the way the kernel would for one probe. `rules`
/// yields (text, match, target) per rule; `sub` evaluates a called chain.
fn walk(
    rules: impl Iterator<Item = (String, Match, Target)>,
    sure: &mut bool,
    depth: u32,
    sub: &dyn Fn(&str, &mut bool, u32) -> Option<Verdict>,
) -> Option<Verdict> {
    for (text, m, target) in rules {
        if m == Match::No {
            continue;
        }
        match (m, target) {
            (Match::Yes, Target::Accept) => return Some(Verdict::Accept),
            (Match::Yes, Target::Drop) => {
                return Some(Verdict::DropRule {
                    rule: text,
                    sure: *sure,
                });
            }
            (Match::Yes, Target::Return) => return None,
            (Match::Yes, Target::Goto(c)) => return sub(&c, sure, depth + 1),
            (Match::Yes, Target::Jump(c)) => {
                if let Some(v) = sub(&c, sure, depth + 1) {
                    return Some(v);
                }
            }
            // A rule we cannot evaluate might accept (or divert) the probe:
            // from here on a drop is only a "may".
            (Match::Maybe, Target::Accept | Target::Return | Target::Jump(_) | Target::Goto(_)) => {
                *sure = false
            }
            _ => {}
        }
    }
    None
}

/// The filter table of `iptables-save` output.
#[derive(Debug, Default)]
pub struct Iptables {
    policies: HashMap<String, String>,
    rules: HashMap<String, Vec<Vec<String>>>,
}

impl Iptables {
    pub fn parse(text: &str) -> Iptables {
        let mut t = Iptables::default();
        let mut in_filter = false;
        for line in text.lines() {
            let line = line.trim();
            if let Some(table) = line.strip_prefix('*') {
                in_filter = table == "filter";
            } else if !in_filter || line.starts_with('#') {
                continue;
            } else if let Some(rest) = line.strip_prefix(':') {
                let mut f = rest.split_whitespace();
                if let (Some(chain), Some(policy)) = (f.next(), f.next()) {
                    t.policies.insert(chain.into(), policy.into());
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let words = shell_words(rest);
                if let Some((chain, args)) = words.split_first() {
                    t.rules
                        .entry(chain.clone())
                        .or_default()
                        .push(args.to_vec());
                }
            }
        }
        t
    }

    fn policy(&self, chain: &str) -> Option<&str> {
        self.policies
            .get(chain)
            .map(String::as_str)
            .filter(|p| *p != "-")
    }

    pub fn input(&self, p: &Probe) -> Verdict {
        let mut sure = true;
        match self.chain("INPUT", p, &mut sure, 0) {
            Some(v) => v,
            None if self.policy("INPUT") == Some("DROP") => Verdict::DropPolicy {
                chain: "iptables INPUT".into(),
            },
            None => Verdict::Accept,
        }
    }

    fn chain(&self, name: &str, p: &Probe, sure: &mut bool, depth: u32) -> Option<Verdict> {
        if depth > 16 {
            return None;
        }
        let rules = self.rules.get(name)?;
        let it = rules.iter().map(|r| {
            let (m, t) = ipt_rule(r, p);
            (format!("-A {name} {}", r.join(" ")), m, t)
        });
        walk(it, sure, depth, &|c, s, d| self.chain(c, p, s, d))
    }
}

/// Splits on whitespace, keeping "double quoted" words whole.
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut has = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                has = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// Does one iptables rule match the probe, and where does it send it.
fn ipt_rule(args: &[String], p: &Probe) -> (Match, Target) {
    let mut m = Match::Yes;
    let mut target = Target::Continue;
    let mut neg = false;
    let mut i = 0;
    let val = |i: usize| args.get(i + 1).map(String::as_str).unwrap_or("");
    while i < args.len() {
        let a = args[i].as_str();
        let flip = |b: bool| Match::from_bool(b != neg);
        match a {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-i" | "--in-interface" => m = m.and(flip(iface_matches(val(i), p.bridge))),
            "-p" | "--protocol" => m = m.and(flip(proto_matches(val(i), p.proto))),
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                m = m.and(flip(port_in(val(i), p.port)))
            }
            "--ctstate" | "--state" => m = m.and(flip(val(i).split(',').any(|s| s == "NEW"))),
            "-m" | "--match" | "--comment" => {}
            "-j" | "--jump" => {
                target = target_of(val(i));
                // What follows are the target's own options.
                break;
            }
            "-g" | "--goto" => {
                target = Target::Goto(val(i).to_string());
                break;
            }
            _ if a.starts_with('-') => {
                // Addresses, sets, marks, limits…: cannot tell from here.
                m = m.and(Match::Maybe);
                // Skip its values.
                while args
                    .get(i + 1)
                    .is_some_and(|n| !n.starts_with('-') && n != "!")
                {
                    i += 1;
                }
                i += 1;
                neg = false;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        neg = false;
        i += 2;
    }
    (m, target)
}

// ---- nftables (JSON) ------------------------------------------------------------

struct NftChain<'a> {
    family: &'a str,
    table: &'a str,
    name: &'a str,
    hook: Option<&'a str>,
    prio: i64,
    policy: &'a str,
}

fn nft_items(v: &Value) -> &[Value] {
    v["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn nft_chains(v: &Value) -> Vec<NftChain<'_>> {
    nft_items(v)
        .iter()
        .filter_map(|o| {
            let c = o.get("chain")?;
            Some(NftChain {
                family: c["family"].as_str()?,
                table: c["table"].as_str()?,
                name: c["name"].as_str()?,
                hook: c["hook"].as_str(),
                prio: c["prio"].as_i64().unwrap_or(0),
                policy: c["policy"].as_str().unwrap_or("accept"),
            })
        })
        .collect()
}

fn nft_rules<'a>(v: &'a Value, family: &str, table: &str, chain: &str) -> Vec<&'a Value> {
    nft_items(v)
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["family"] == family && r["table"] == table && r["chain"] == chain)
        .collect()
}

/// IPv4 reaches base chains of the ip and inet families.
fn v4_family(f: &str) -> bool {
    f == "ip" || f == "inet"
}

/// Base chains of `hook` whose policy is drop, as "nft FAMILY TABLE CHAIN".
fn nft_drop_chains(v: &Value, hook: &str) -> Vec<String> {
    nft_chains(v)
        .into_iter()
        .filter(|c| c.hook == Some(hook) && v4_family(c.family) && c.policy == "drop")
        .map(|c| format!("nft {} {} {}", c.family, c.table, c.name))
        .collect()
}

/// A packet must pass every input base chain: an accept ends one chain,
/// a drop ends them all.
pub fn nft_input(v: &Value, p: &Probe) -> Verdict {
    let mut bases: Vec<NftChain> = nft_chains(v)
        .into_iter()
        .filter(|c| c.hook == Some("input") && v4_family(c.family))
        .collect();
    bases.sort_by_key(|c| c.prio);
    let mut sure = true;
    for c in bases {
        match nft_chain(v, c.family, c.table, c.name, p, &mut sure, 0) {
            Some(Verdict::Accept) => continue,
            Some(d) => return d,
            None if c.policy == "drop" => {
                return Verdict::DropPolicy {
                    chain: format!("nft {} {} {}", c.family, c.table, c.name),
                };
            }
            None => {}
        }
    }
    Verdict::Accept
}

fn nft_chain(
    v: &Value,
    family: &str,
    table: &str,
    name: &str,
    p: &Probe,
    sure: &mut bool,
    depth: u32,
) -> Option<Verdict> {
    if depth > 16 {
        return None;
    }
    let rules = nft_rules(v, family, table, name);
    let it = rules.into_iter().map(|r| {
        let (m, t) = nft_rule(r, p);
        (
            format!("nft {family} {table} {name} handle {}", r["handle"]),
            m,
            t,
        )
    });
    walk(it, sure, depth, &|c, s, d| {
        nft_chain(v, family, table, c, p, s, d)
    })
}

fn nft_rule(r: &Value, p: &Probe) -> (Match, Target) {
    let mut m = Match::Yes;
    for e in r["expr"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(obj) = e.as_object() else { continue };
        let Some((k, body)) = obj.iter().next() else {
            continue;
        };
        match k.as_str() {
            "match" => m = m.and(nft_match(body, p)),
            "accept" => return (m, Target::Accept),
            "drop" | "reject" => return (m, Target::Drop),
            "return" => return (m, Target::Return),
            "jump" => {
                return (
                    m,
                    Target::Jump(body["target"].as_str().unwrap_or_default().into()),
                );
            }
            "goto" => {
                return (
                    m,
                    Target::Goto(body["target"].as_str().unwrap_or_default().into()),
                );
            }
            // iptables-nft's compat matches: opaque here.
            "xt" => m = m.and(Match::Maybe),
            // counter, log, limit, mangle, …: statements that let it go on.
            _ => {}
        }
    }
    (m, Target::Continue)
}

/// The values on a match's right-hand side.
fn nft_values(right: &Value) -> Option<Vec<&Value>> {
    match right {
        Value::Object(o) if o.contains_key("set") => Some(o["set"].as_array()?.iter().collect()),
        Value::Array(a) => Some(a.iter().collect()),
        Value::String(s) if s.starts_with('@') => None,
        other => Some(vec![other]),
    }
}

fn nft_match(body: &Value, p: &Probe) -> Match {
    let op = body["op"].as_str().unwrap_or("==");
    let left = &body["left"];
    let Some(values) = nft_values(&body["right"]) else {
        return Match::Maybe;
    };
    let neg = op == "!=";
    if !matches!(op, "==" | "!=" | "in") {
        return Match::Maybe;
    }
    let any = |f: &dyn Fn(&Value) -> bool| Match::from_bool(values.iter().any(|v| f(v)) != neg);
    let as_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Some(key) = left["meta"]["key"].as_str() {
        return match key {
            "iifname" | "iif" => any(&|v| iface_matches(&as_text(v), p.bridge)),
            "l4proto" => any(&|v| proto_matches(&as_text(v), p.proto)),
            _ => Match::Maybe,
        };
    }
    if let Some(pl) = left.get("payload") {
        let (proto, field) = (
            pl["protocol"].as_str().unwrap_or(""),
            pl["field"].as_str().unwrap_or(""),
        );
        return match (proto, field) {
            ("ip", "protocol") => any(&|v| proto_matches(&as_text(v), p.proto)),
            ("udp" | "tcp" | "th", "dport") => {
                if proto != "th" && proto != p.proto {
                    // A udp dport match never matches a tcp packet, negated or not.
                    return Match::No;
                }
                any(&|v| match v {
                    Value::Number(n) => n.as_u64() == Some(u64::from(p.port)),
                    Value::Object(o) if o.contains_key("range") => {
                        let r = &o["range"];
                        let (a, b) = (
                            r[0].as_u64().unwrap_or(u64::MAX),
                            r[1].as_u64().unwrap_or(0),
                        );
                        (a..=b).contains(&u64::from(p.port))
                    }
                    Value::String(s) => port_in(s, p.port),
                    _ => false,
                })
            }
            _ => Match::Maybe,
        };
    }
    if left["ct"]["key"].as_str() == Some("state") {
        return any(&|v| as_text(v) == "new");
    }
    Match::Maybe
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_common::{CtEntry, CtKey};

    const DHCP: Probe = Probe {
        bridge: "virbr0",
        proto: "udp",
        port: 67,
    };
    const DNS: Probe = Probe {
        bridge: "virbr0",
        proto: "udp",
        port: 53,
    };

    fn save(rules: &str, input_policy: &str) -> Iptables {
        Iptables::parse(&format!(
            "# Generated by iptables-save\n*filter\n:INPUT {input_policy} [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}\nCOMMIT\n"
        ))
    }

    #[test]
    fn iptables_drop_on_the_bridge_is_found() {
        let t = save(
            "-A INPUT -i virbr0 -p udp -m udp --dport 67 -j DROP",
            "ACCEPT",
        );
        assert_eq!(
            t.input(&DHCP),
            Verdict::DropRule {
                rule: "-A INPUT -i virbr0 -p udp -m udp --dport 67 -j DROP".into(),
                sure: true
            }
        );
        assert_eq!(t.input(&DNS), Verdict::Accept);
        // Another interface, a negated one, or another port: no harm.
        for r in [
            "-A INPUT -i eth0 -p udp --dport 67 -j DROP",
            "-A INPUT ! -i virbr0 -p udp --dport 67 -j DROP",
            "-A INPUT -p tcp --dport 67 -j REJECT --reject-with tcp-reset",
            "-A INPUT -p udp --dport 68 -j DROP",
        ] {
            assert_eq!(save(r, "ACCEPT").input(&DHCP), Verdict::Accept, "{r}");
        }
        // Wildcards, ranges, multiport, no interface at all.
        for r in [
            "-A INPUT -i virbr+ -p udp --dport 67 -j DROP",
            "-A INPUT -p udp -m udp --dport 60:70 -j REJECT --reject-with icmp-port-unreachable",
            "-A INPUT -p udp -m multiport --dports 53,67 -j DROP",
            "-A INPUT -j DROP",
        ] {
            assert!(
                matches!(
                    save(r, "ACCEPT").input(&DHCP),
                    Verdict::DropRule { sure: true, .. }
                ),
                "{r}"
            );
        }
    }

    #[test]
    fn iptables_order_chains_and_policy() {
        // Accepted before the drop.
        let t = save(
            "-A INPUT -i virbr0 -p udp --dport 67 -j ACCEPT\n-A INPUT -j DROP",
            "ACCEPT",
        );
        assert_eq!(t.input(&DHCP), Verdict::Accept);
        assert!(matches!(
            t.input(&DNS),
            Verdict::DropRule { sure: true, .. }
        ));
        // Established-only accepts do not help a new DHCP request.
        let t = save(
            "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "DROP",
        );
        assert_eq!(
            t.input(&DHCP),
            Verdict::DropPolicy {
                chain: "iptables INPUT".into()
            }
        );
        // A user chain, and a rule we cannot judge before a drop.
        let t = save("-A INPUT -j fw\n-A fw -p udp --dport 67 -j DROP", "ACCEPT");
        assert!(matches!(
            t.input(&DHCP),
            Verdict::DropRule { sure: true, .. }
        ));
        let t = save(
            "-A INPUT -s 10.0.0.0/8 -j ACCEPT\n-A INPUT -j DROP",
            "ACCEPT",
        );
        assert!(matches!(
            t.input(&DHCP),
            Verdict::DropRule { sure: false, .. }
        ));
        let t = save(
            "-A INPUT -m comment --comment \"allow dhcp\" -i virbr0 -p udp --dport 67 -j ACCEPT",
            "DROP",
        );
        assert_eq!(t.input(&DHCP), Verdict::Accept);
        assert_eq!(t.policy("FORWARD"), Some("DROP"));
    }

    fn nft(items: Value) -> Value {
        serde_json::json!({ "nftables": items })
    }

    #[test]
    fn nft_input_chains() {
        let rule = |expr: Value| serde_json::json!({"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 4, "expr": expr}});
        let chain = |policy: &str| serde_json::json!({"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": policy}});
        let drop67 = rule(serde_json::json!([
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "virbr0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": {"set": [53, 67]}}},
            {"counter": {"packets": 0, "bytes": 0}},
            {"drop": null}
        ]));
        let v = nft(serde_json::json!([chain("accept"), drop67]));
        assert_eq!(
            nft_input(&v, &DHCP),
            Verdict::DropRule {
                rule: "nft inet fw input handle 4".into(),
                sure: true
            }
        );
        assert!(matches!(nft_input(&v, &DNS), Verdict::DropRule { .. }));
        assert_eq!(
            nft_input(
                &v,
                &Probe {
                    bridge: "eth0",
                    ..DHCP
                }
            ),
            Verdict::Accept
        );

        let est = rule(serde_json::json!([
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"accept": null}
        ]));
        let v = nft(serde_json::json!([chain("drop"), est]));
        assert!(matches!(nft_input(&v, &DHCP), Verdict::DropPolicy { .. }));
        let ok = rule(serde_json::json!([
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "virbr*"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": {"range": [50, 70]}}},
            {"accept": null}
        ]));
        let v = nft(serde_json::json!([chain("drop"), ok]));
        assert_eq!(nft_input(&v, &DHCP), Verdict::Accept);
        let fwd = serde_json::json!({"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "prio": 0, "policy": "drop"}});
        assert_eq!(
            nft_drop_chains(&nft(serde_json::json!([fwd])), "forward"),
            vec!["nft ip filter FORWARD".to_string()]
        );
    }

    #[test]
    fn proc_net_udp() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          1: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12345 2 0000000000000000 0\n\
          2: 017AA8C0:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0\n";
        let s = parse_proc_udp(text);
        assert_eq!(
            s[0],
            UdpSocket {
                addr: std::net::Ipv4Addr::UNSPECIFIED,
                port: 67,
                inode: 12345
            }
        );
        assert_eq!(
            s[1],
            UdpSocket {
                addr: std::net::Ipv4Addr::new(192, 168, 122, 1),
                port: 53,
                inode: 777
            }
        );
    }

    #[test]
    fn kernel_versions_and_ports() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert!(
            port_in("60:70", 67)
                && port_in("67", 67)
                && !port_in("1:66", 67)
                && port_in("53,67", 67)
        );
    }

    fn snat(bridge: u32, addr: [u8; 4], port: u16, peer: u32, proto: u8) -> (CtKey, CtEntry) {
        let xlate = CtKey {
            saddr: u32::from_ne_bytes(addr),
            daddr: peer,
            sport: port.to_be(),
            dport: 80u16.to_be(),
            proto,
            _pad: [0; 3],
        };
        let e = CtEntry {
            xlate,
            bridge_ifindex: bridge,
            dir: ctdir::ORIGINAL,
            nat: nat_kind::SNAT,
            ..Default::default()
        };
        (xlate.reversed(), e)
    }

    #[test]
    fn nat_ports_counts_distinct_ports_per_protocol_and_address() {
        let a = [198, 51, 100, 2];
        let b = [198, 51, 100, 3];
        let mut entries = Vec::new();
        // 500 UDP ports on a, each used towards 3 peers: 500 ports, not
        // 1500 entries.
        for port in 1000..1500u16 {
            for peer in 1..=3 {
                entries.push(snat(7, a, port, peer, 17));
            }
        }
        // Another network on a, its ports shared with ours.
        for port in 1500..1600u16 {
            entries.push(snat(8, a, port, 1, 17));
        }
        // TCP on b; and a port outside the range; and replies (ignored).
        for port in 1000..1100u16 {
            entries.push(snat(7, b, port, 1, 6));
        }
        entries.push(snat(7, a, 3000, 1, 17));
        let (k, mut reply) = snat(7, a, 1001, 9, 17);
        reply.dir = ctdir::REPLY;
        entries.push((k, reply));
        let fwd = |port| dataplane::maps::ForwardEntry {
            proto: 17,
            host: (std::net::Ipv4Addr::from(a), port),
            guest: (std::net::Ipv4Addr::new(10, 0, 0, 2), port),
            bridge_ifindex: 7,
        };
        let forwards = [fwd(1999), fwd(2500)];
        let u = port_usage(&entries, &forwards, 7, 1000, 1999);
        assert_eq!(u.len(), 2, "{u:?}");
        let udp = u.iter().find(|x| x.proto == 17).unwrap();
        assert_eq!((udp.used, udp.size), (600, 999));
        let tcp = u.iter().find(|x| x.proto == 6).unwrap();
        assert_eq!((tcp.used, tcp.size, tcp.addr), (100, 1000, b.into()));
        let c = port_check("n", &u, 1000, 1999);
        assert_eq!(c.level, OK, "{}", c.message);
        assert!(c.message.contains("600 of 999"), "{}", c.message);
        assert!(c.message.contains("198.51.100.2"), "{}", c.message);
        assert!(c.message.contains("udp"), "{}", c.message);
        // 80%: 799 of 999 is not, 800 is.
        let at = |used| PortUse {
            proto: 17,
            addr: a.into(),
            used,
            size: 999,
        };
        assert_eq!(port_check("n", &[at(799)], 1000, 1999).level, OK);
        let w = port_check("n", &[at(800)], 1000, 1999);
        assert_eq!(w.level, WARN);
        assert!(w.message.contains("800 of 999"), "{}", w.message);
        assert_eq!(port_check("n", &[], 1000, 1999).level, OK);
    }
}
