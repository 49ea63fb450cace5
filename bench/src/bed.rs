//! One test bed per dataplane: the harness's standard topology (fresh
//! namespaces), a NAT network on bridge virbr0 192.168.122.1/24 in the host
//! namespace, and one guest 192.168.122.10 (static address, the same for all
//! three) on it.
//!
//! ```text
//!  guest 192.168.122.10 ── virbr0 [host: dataplane] uplink0 198.51.100.2 ── router ── upstream 203.0.113.10
//! ```
//!
//! iptables and nft only ever run inside the bed's host namespace.

use super::rules::{self, Fwd, Proto};
use anyhow::{Context, Result, bail};
use netd_tests::{Guest, HOST_IP, Ns, Output, Topology};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Libvirt,
    Nftables,
    Netd,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Libvirt, Kind::Nftables, Kind::Netd];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Libvirt => "libvirt",
            Kind::Nftables => "nftables",
            Kind::Netd => "netd",
        }
    }
}

/// The TCP forward iperf3 uses (upstream -> host:5201 -> guest:5201).
pub const IPERF_FWD: u16 = 5201;
/// The TCP forward of the connection-rate test.
pub const CONN_FWD: u16 = 6000;
/// Scaling forwards are UDP, host port = guest port = SCALE_BASE + i.
pub const SCALE_BASE: u16 = 10000;
/// Ports of the netd control-plane runs (a second network).
pub const CP_BASE: u16 = 30000;

pub fn base_forwards() -> Vec<Fwd> {
    vec![
        Fwd::new(Proto::Tcp, IPERF_FWD, IPERF_FWD),
        Fwd::new(Proto::Tcp, CONN_FWD, CONN_FWD),
    ]
}

/// The base forwards, `n` UDP forwards from SCALE_BASE, and a TCP forward
/// on the last UDP port (none when `n` is 0).
pub fn scale_set(n: usize) -> Vec<Fwd> {
    let mut all = base_forwards();
    all.extend(scale_forwards(n, SCALE_BASE));
    if n > 0 {
        let last = SCALE_BASE + n as u16 - 1;
        all.push(Fwd::new(Proto::Tcp, last, last));
    }
    all
}

pub fn scale_forwards(n: usize, base: u16) -> Vec<Fwd> {
    (0..n)
        .map(|i| Fwd::new(Proto::Udp, base + i as u16, base + i as u16))
        .collect()
}

pub struct Bed {
    pub kind: Kind,
    pub t: Topology,
    pub guest: Guest,
    /// Scaling forwards installed right now.
    pub scale: usize,
    helper: PathBuf,
}

impl Bed {
    pub fn new(kind: Kind, netd_bin: &Path, helper: &Path) -> Result<Bed> {
        let mut t = Topology::new(&format!("bench-{}", kind.name()))?;
        t.set_netd_bin(netd_bin);
        let h = t.host.clone();
        match kind {
            Kind::Netd => {
                t.start_daemon()?;
                let def = rules::netd_definition(
                    "bench",
                    rules::BRIDGE,
                    rules::GATEWAY_CIDR,
                    &base_forwards(),
                    rules::GUEST,
                );
                let p = t.write_file("bench.toml", &def);
                netd_ok(&t, &["net", "define", &p.to_string_lossy()])?;
                netd_ok(&t, &["net", "start", "bench"])?;
            }
            Kind::Libvirt | Kind::Nftables => {
                // What libvirt does for a NAT network, minus dnsmasq: a bridge
                // with the gateway address, and kernel forwarding.
                h.ip_ok(&[
                    "link",
                    "add",
                    rules::BRIDGE,
                    "type",
                    "bridge",
                    "stp_state",
                    "0",
                ])?;
                h.ip_ok(&["addr", "add", rules::GATEWAY_CIDR, "dev", rules::BRIDGE])?;
                h.ip_ok(&["link", "set", rules::BRIDGE, "up"])?;
                h.sysctl("net.ipv4.ip_forward", "1")?;
            }
        }
        let guest = t.add_guest(rules::BRIDGE, None)?;
        guest.set_static(
            &format!("{}/24", rules::GUEST),
            Some(&rules::GATEWAY.to_string()),
        )?;
        for ns in [&guest.ns, &t.upstream] {
            // Room for the connection-rate clients' ports.
            ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        }
        let mut bed = Bed {
            kind,
            t,
            guest,
            scale: 0,
            helper: helper.to_path_buf(),
        };
        bed.set_scale(0)?;
        if !bed.guest.ns.ping(netd_tests::UPSTREAM_IP, 5) {
            bail!("{}: the guest cannot reach upstream", kind.name());
        }
        Ok(bed)
    }

    pub fn host(&self) -> &Ns {
        &self.t.host
    }

    /// The ruleset files go to the bed's temp dir.
    fn file(&self, name: &str, text: &str) -> String {
        self.t.write_file(name, text).to_string_lossy().into_owned()
    }

    /// Installs exactly `n` scaling forwards (and the base ones), the
    /// fastest way each dataplane offers: `n` UDP forwards on ports
    /// SCALE_BASE.., and one TCP forward on the last of those ports (for the
    /// connection rate through the last forward). The datapath state is what
    /// that many separate forwards give: a DNAT and a FORWARD rule each,
    /// a map element each, a map entry each (netd: one port-range forward
    /// expands to one entry per port, exactly as single-port forwards do).
    pub fn set_scale(&mut self, n: usize) -> Result<()> {
        let all = scale_set(n);
        match self.kind {
            Kind::Libvirt => {
                let f = self.file("iptables.rules", &rules::iptables(HOST_IP, &all));
                self.timed(&["iptables-restore", &f])?;
            }
            Kind::Nftables => {
                let f = self.file("nft.rules", &rules::nft(HOST_IP, &all));
                self.timed(&["nft", "-f", &f])?;
            }
            Kind::Netd => {
                if self.scale > 0 {
                    let last = format!("{}", SCALE_BASE + self.scale as u16 - 1);
                    self.api_delete("bench", "udp", &SCALE_BASE.to_string())?;
                    self.api_delete("bench", "tcp", &last)?;
                }
                if n > 0 {
                    let last = SCALE_BASE + n as u16 - 1;
                    let port = format!("{SCALE_BASE}-{last}");
                    let to = format!("{}:{SCALE_BASE}-{last}", rules::GUEST);
                    self.api_add("bench", "udp", &port, &to)?;
                    self.api_add(
                        "bench",
                        "tcp",
                        &last.to_string(),
                        &format!("{}:{last}", rules::GUEST),
                    )?;
                }
            }
        }
        self.scale = n;
        Ok(())
    }

    /// Runs a command in the host namespace through the helper's `time`,
    /// returning its wall time in seconds (measured inside the namespace).
    pub fn timed(&self, argv: &[&str]) -> Result<f64> {
        let mut a = vec!["time", "--"];
        a.extend_from_slice(argv);
        let v = self.helper(self.host(), &a, Duration::from_secs(300))?;
        if v["status"].as_i64() != Some(0) {
            bail!(
                "{}: `{}` failed: {}",
                self.kind.name(),
                argv.join(" "),
                v["stderr"].as_str().unwrap_or("")
            );
        }
        v["secs"].as_f64().context("time: no secs")
    }

    /// netd's packet counters by reason (None for the baselines).
    pub fn netd_reasons(&self) -> Option<std::collections::BTreeMap<&'static str, u64>> {
        if self.kind != Kind::Netd {
            return None;
        }
        let dir = self.t.bpffs().join("maps");
        let v = netd::dataplane::maps::reason_stats(&dir).ok()?;
        Some(v.into_iter().map(|(k, c)| (k, c.packets)).collect())
    }

    pub fn client(&self) -> netd::api::client::Client {
        netd::api::client::Client::new(&self.t.socket())
    }

    pub fn api_add(&self, net: &str, proto: &str, port: &str, to: &str) -> Result<()> {
        let body = json!({ "proto": proto, "port": port, "to": to, "address": null });
        self.client()
            .post::<_, Value>(&format!("/v1/networks/{net}/forwards"), &body)
            .with_context(|| format!("netd API: add forward {proto} {port} -> {to}"))?;
        Ok(())
    }

    pub fn api_delete(&self, net: &str, proto: &str, port: &str) -> Result<()> {
        let body = json!({ "proto": proto, "port": port, "to": null, "address": null });
        self.client()
            .delete_with::<_, Value>(&format!("/v1/networks/{net}/forwards"), &body)
            .with_context(|| format!("netd API: remove forward {proto} {port}"))?;
        Ok(())
    }

    /// `netd-bench helper ARGS` in `ns`, to completion; its JSON line.
    pub fn helper(&self, ns: &Ns, args: &[&str], timeout: Duration) -> Result<Value> {
        let exe = self.helper.to_string_lossy();
        let mut argv = vec![exe.as_ref(), "helper"];
        argv.extend_from_slice(args);
        let o = ns.exec_timeout(&argv, timeout);
        parse_helper(&o, args)
    }

    /// Starts `netd-bench helper ARGS` in `ns` and waits for its `ready`.
    pub fn spawn_helper(&self, ns: &Ns, args: &[&str]) -> Result<Proc> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .arg(&self.helper)
            .arg("helper")
            .args(args);
        Proc::start(c, &args.join(" "))
    }
}

fn netd_ok(t: &Topology, args: &[&str]) -> Result<String> {
    let o = t.netd(args);
    if !o.success() {
        bail!("netd {} failed: {}", args.join(" "), o.stderr.trim());
    }
    Ok(o.stdout)
}

fn parse_helper(o: &Output, args: &[&str]) -> Result<Value> {
    let line = o.stdout.lines().rev().find(|l| l.starts_with('{'));
    match line {
        Some(l) if o.success() => {
            serde_json::from_str(l).with_context(|| format!("bench-helper printed {l:?}"))
        }
        _ => bail!("bench-helper {} failed: {o}", args.join(" ")),
    }
}

/// A helper running in the background. Killed on drop.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Proc {
    fn start(mut c: Command, what: &str) -> Result<Proc> {
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c
            .spawn()
            .with_context(|| format!("starting bench-helper {what}"))?;
        let out = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let p = Proc {
            child,
            lines: rx,
            what: what.to_string(),
        };
        match p.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l == "ready" => Ok(p),
            Ok(l) => bail!("bench-helper {what}: expected ready, got {l:?}"),
            Err(_) => bail!("bench-helper {what} did not get ready in 10s"),
        }
    }

    /// Waits ≤timeout for the JSON result line.
    pub fn result(mut self, timeout: Duration) -> Result<Value> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with('{') => {
                    let _ = self.child.wait();
                    return serde_json::from_str(&l)
                        .with_context(|| format!("bench-helper printed {l:?}"));
                }
                Ok(_) => continue,
                Err(_) => bail!("bench-helper {}: no result within {timeout:?}", self.what),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
