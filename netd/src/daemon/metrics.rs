//! Prometheus metrics: a snapshot taken from the pinned maps and the
//! daemon's state, rendered in the text exposition format (0.0.4).

use crate::dataplane::maps;
use netd_common::reason;
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything one scrape shows.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: String,
    pub uptime_secs: u64,
    pub networks: Vec<NetworkMetrics>,
    /// (reason name, packets, bytes), every reason of the STATS map.
    pub reasons: Vec<(String, u64, u64)>,
    /// (network, protocol) -> conntrack map entries.
    pub conntrack: BTreeMap<(String, String), u64>,
    pub forwards: Vec<ForwardMetrics>,
    /// (map, entries, max entries).
    pub maps: Vec<(String, u64, u32)>,
    /// (network, what, count): repairs of tampering (see repair.rs).
    pub repairs: Vec<(String, String, u64)>,
}

#[derive(Debug, Default)]
pub struct NetworkMetrics {
    pub name: String,
    pub from_guests: (u64, u64),
    pub to_guests: (u64, u64),
    /// None when the network has no DHCP server.
    pub leases: Option<u64>,
    pub dnsmasq: Option<DnsmasqMetrics>,
    /// A step failed and is being retried.
    pub degraded: bool,
    /// Hostdev networks: (VFs in the pool, VFs free).
    pub vf_pool: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
pub struct DnsmasqMetrics {
    pub up: bool,
    pub restarts: u64,
}

#[derive(Debug)]
pub struct ForwardMetrics {
    pub network: String,
    pub proto: String,
    pub address: String,
    pub port: u16,
    pub hits: u64,
}

/// One metric family: HELP and TYPE, then its samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(
            out,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let o = &mut out;

    Family::new(
        o,
        "netd_build_info",
        "gauge",
        "Always 1; the version label says which netd runs.",
    )
    .sample(&[("version", &s.version)], 1);
    Family::new(
        o,
        "netd_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    )
    .sample(&[], s.uptime_secs);

    let mut f = Family::new(
        o,
        "netd_network_packets_total",
        "counter",
        "Packets of a network by direction, counted by the datapath (from_guests at bridge ingress, to_guests translated back to guests).",
    );
    for n in &s.networks {
        f.sample(
            &[("network", &n.name), ("direction", "from_guests")],
            n.from_guests.0,
        );
        f.sample(
            &[("network", &n.name), ("direction", "to_guests")],
            n.to_guests.0,
        );
    }
    let mut f = Family::new(
        o,
        "netd_network_bytes_total",
        "counter",
        "Bytes of a network by direction, counted by the datapath.",
    );
    for n in &s.networks {
        f.sample(
            &[("network", &n.name), ("direction", "from_guests")],
            n.from_guests.1,
        );
        f.sample(
            &[("network", &n.name), ("direction", "to_guests")],
            n.to_guests.1,
        );
    }

    let ct_new = s
        .reasons
        .iter()
        .find(|r| r.0 == reason::NAMES[reason::CT_NEW as usize])
        .map(|r| r.1)
        .unwrap_or(0);
    Family::new(
        o,
        "netd_nat_translations_total",
        "counter",
        "NAT translations created (new masqueraded or port-forwarded connections).",
    )
    .sample(&[], ct_new);

    let is_drop = |name: &str| {
        reason::NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| reason::is_drop(i as u32))
    };
    let mut f = Family::new(
        o,
        "netd_drops_total",
        "counter",
        "Packets the datapath dropped, by reason.",
    );
    for (name, packets, _) in s.reasons.iter().filter(|r| is_drop(&r.0)) {
        f.sample(
            &[("reason", name.strip_prefix("drop_").unwrap_or(name))],
            *packets,
        );
    }
    let mut f = Family::new(
        o,
        "netd_dropped_bytes_total",
        "counter",
        "Bytes the datapath dropped, by reason.",
    );
    for (name, _, bytes) in s.reasons.iter().filter(|r| is_drop(&r.0)) {
        f.sample(
            &[("reason", name.strip_prefix("drop_").unwrap_or(name))],
            *bytes,
        );
    }
    let mut f = Family::new(
        o,
        "netd_datapath_packets_total",
        "counter",
        "Packets the datapath handled without dropping, by what it did (a packet can count under several).",
    );
    for (name, packets, _) in s.reasons.iter().filter(|r| !is_drop(&r.0)) {
        f.sample(&[("reason", name)], *packets);
    }

    let mut f = Family::new(
        o,
        "netd_conntrack_entries",
        "gauge",
        "Conntrack map entries by network and protocol (two per connection, one per direction).",
    );
    for ((net, proto), n) in &s.conntrack {
        f.sample(&[("network", net), ("proto", proto)], *n);
    }

    let mut f = Family::new(
        o,
        "netd_dhcp_leases",
        "gauge",
        "DHCP leases in use (unexpired) per network.",
    );
    for n in &s.networks {
        if let Some(l) = n.leases {
            f.sample(&[("network", &n.name)], l);
        }
    }

    let mut per_net: BTreeMap<&str, u64> =
        s.networks.iter().map(|n| (n.name.as_str(), 0)).collect();
    for fw in &s.forwards {
        *per_net.entry(&fw.network).or_default() += 1;
    }
    let mut f = Family::new(
        o,
        "netd_forwards",
        "gauge",
        "Port forwards installed in the datapath (one per protocol, host address and port).",
    );
    for (net, n) in &per_net {
        f.sample(&[("network", net)], *n);
    }
    let mut f = Family::new(
        o,
        "netd_forward_hits_total",
        "counter",
        "Connections a port forward opened.",
    );
    for fw in &s.forwards {
        let port = fw.port.to_string();
        f.sample(
            &[
                ("network", &fw.network),
                ("proto", &fw.proto),
                ("address", &fw.address),
                ("port", &port),
            ],
            fw.hits,
        );
    }

    let mut f = Family::new(
        o,
        "netd_dnsmasq_restarts_total",
        "counter",
        "Times a network's dnsmasq was restarted after exiting on its own.",
    );
    for n in &s.networks {
        if let Some(d) = &n.dnsmasq {
            f.sample(&[("network", &n.name)], d.restarts);
        }
    }
    let mut f = Family::new(
        o,
        "netd_dnsmasq_up",
        "gauge",
        "1 while a network's dnsmasq is running.",
    );
    for n in &s.networks {
        if let Some(d) = &n.dnsmasq {
            f.sample(&[("network", &n.name)], u64::from(d.up));
        }
    }
    let mut f = Family::new(
        o,
        "netd_network_degraded",
        "gauge",
        "1 while a step of a running network failed; it keeps running with what works and is retried.",
    );
    for n in &s.networks {
        f.sample(&[("network", &n.name)], u64::from(n.degraded));
    }

    let mut f = Family::new(
        o,
        "netd_vf_pool_size",
        "gauge",
        "VFs in a hostdev network's pool (held, free and missing).",
    );
    for n in &s.networks {
        if let Some((size, _)) = n.vf_pool {
            f.sample(&[("network", &n.name)], size);
        }
    }
    let mut f = Family::new(
        o,
        "netd_vf_pool_free",
        "gauge",
        "VFs of a hostdev network's pool that can be handed out now.",
    );
    for n in &s.networks {
        if let Some((_, free)) = n.vf_pool {
            f.sample(&[("network", &n.name)], free);
        }
    }
    let mut f = Family::new(
        o,
        "netd_repairs_total",
        "counter",
        "Repairs of a network's kernel state someone else undid, by kind (bridge, bridge_down, address, programs, uplink).",
    );
    for (net, what, n) in &s.repairs {
        f.sample(&[("network", net), ("what", what)], *n);
    }

    let mut f = Family::new(
        o,
        "netd_map_entries",
        "gauge",
        "Entries in each pinned BPF map (arrays count as full).",
    );
    for (name, entries, _) in &s.maps {
        f.sample(&[("map", name)], *entries);
    }
    let mut f = Family::new(
        o,
        "netd_map_max_entries",
        "gauge",
        "Capacity of each pinned BPF map.",
    );
    for (name, _, max) in &s.maps {
        f.sample(&[("map", name)], u64::from(*max));
    }
    out
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

impl super::State {
    /// Reads the maps and the daemon's view of its networks.
    pub fn metrics_snapshot(&self, uptime_secs: u64) -> Snapshot {
        let dir = self.dp.maps_dir();
        // Bridge ifindex -> network name; a bridge no running network claims
        // keeps its ifindex as the name.
        let names: BTreeMap<u32, String> = self
            .running
            .iter()
            // Hostdev networks have no bridge (ifindex 0).
            .filter(|(_, r)| r.record.bridge_ifindex != 0)
            .map(|(n, r)| (r.record.bridge_ifindex, n.clone()))
            .collect();
        let name_of = |idx: u32| {
            names
                .get(&idx)
                .cloned()
                .unwrap_or_else(|| format!("ifindex{idx}"))
        };

        let stats: BTreeMap<u32, netd_common::NetStats> = maps::network_stats(&dir)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut networks = Vec::new();
        for (name, run) in &self.running {
            let s = stats
                .get(&run.record.bridge_ifindex)
                .copied()
                .unwrap_or_default();
            let has_dhcp = run
                .record
                .definition
                .ipv4
                .as_ref()
                .is_some_and(|v| v.dhcp.is_some());
            networks.push(NetworkMetrics {
                name: name.clone(),
                from_guests: (s.from_guests.packets, s.from_guests.bytes),
                to_guests: (s.to_guests.packets, s.to_guests.bytes),
                leases: has_dhcp.then(|| self.leases(name).map(|l| l.len() as u64).unwrap_or(0)),
                dnsmasq: run.dnsmasq.as_ref().map(|d| DnsmasqMetrics {
                    up: d.healthy(),
                    restarts: d.restarts(),
                }),
                degraded: run.degraded.is_some() || self.repairs.degraded(name).is_some(),
                vf_pool: (run.record.definition.mode == crate::config::Mode::Hostdev).then(|| {
                    let p = self.vf_pool_summary(&run.record.definition);
                    (u64::from(p.total), u64::from(p.free))
                }),
            });
        }

        let reasons = maps::reason_stats(&dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(n, c)| (n.to_string(), c.packets, c.bytes))
            .collect();
        let mut conntrack = BTreeMap::new();
        for (k, e) in maps::ct_entries(&dir).unwrap_or_default() {
            *conntrack
                .entry((name_of(e.bridge_ifindex), proto_name(k.proto)))
                .or_default() += 1;
        }
        let forwards = maps::list_forwards(&dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(e, hits)| ForwardMetrics {
                network: name_of(e.bridge_ifindex),
                proto: proto_name(e.proto),
                address: e.host.0.to_string(),
                port: e.host.1,
                hits,
            })
            .collect();
        Snapshot {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs,
            networks,
            reasons,
            conntrack,
            forwards,
            maps: maps::fill_levels(&dir).unwrap_or_default(),
            repairs: self.repairs.counts(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            version: "0.1.0".into(),
            uptime_secs: 42,
            networks: vec![
                NetworkMetrics {
                    name: "default".into(),
                    from_guests: (10, 1000),
                    to_guests: (8, 800),
                    leases: Some(2),
                    dnsmasq: Some(DnsmasqMetrics {
                        up: true,
                        restarts: 1,
                    }),
                    vf_pool: None,
                    degraded: true,
                },
                NetworkMetrics {
                    name: "passthrough".into(),
                    vf_pool: Some((8, 5)),
                    ..Default::default()
                },
            ],
            reasons: reason::NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i as u64, 100 * i as u64))
                .collect(),
            conntrack: [(("default".to_string(), "tcp".to_string()), 4)]
                .into_iter()
                .collect(),
            forwards: vec![ForwardMetrics {
                network: "default".into(),
                proto: "tcp".into(),
                address: "198.51.100.2".into(),
                port: 8080,
                hits: 3,
            }],
            maps: vec![("NETD_CT".into(), 4, 262144)],
            repairs: vec![("default".into(), "bridge".into(), 2)],
        }
    }

    #[test]
    fn renders_the_text_format() {
        let text = render(&sample());
        for line in [
            "# TYPE netd_network_packets_total counter",
            "netd_network_packets_total{network=\"default\",direction=\"from_guests\"} 10",
            "netd_network_bytes_total{network=\"default\",direction=\"to_guests\"} 800",
            "netd_nat_translations_total 3",
            "netd_drops_total{reason=\"spoofed\"} 7",
            "netd_datapath_packets_total{reason=\"snat\"} 1",
            "netd_conntrack_entries{network=\"default\",proto=\"tcp\"} 4",
            "netd_dhcp_leases{network=\"default\"} 2",
            "netd_forwards{network=\"default\"} 1",
            "netd_forward_hits_total{network=\"default\",proto=\"tcp\",address=\"198.51.100.2\",port=\"8080\"} 3",
            "netd_dnsmasq_restarts_total{network=\"default\"} 1",
            "netd_network_degraded{network=\"default\"} 1",
            "netd_map_max_entries{map=\"NETD_CT\"} 262144",
            "netd_vf_pool_size{network=\"passthrough\"} 8",
            "netd_vf_pool_free{network=\"passthrough\"} 5",
            "netd_repairs_total{network=\"default\",what=\"bridge\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // No drop reason among the non-drops, and the other way round.
        assert!(!text.contains("netd_datapath_packets_total{reason=\"drop_"));
        assert!(!text.contains("netd_drops_total{reason=\"snat\"}"));
    }

    #[test]
    fn every_sample_has_help_and_type() {
        let text = render(&sample());
        let mut helped = std::collections::HashSet::new();
        let mut typed = std::collections::HashMap::new();
        for l in text.lines() {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            match (f[0], f.get(1)) {
                ("#", Some(&"HELP")) => {
                    helped.insert(f[2].to_string());
                }
                ("#", Some(&"TYPE")) => {
                    typed.insert(f[2].to_string(), f[3].to_string());
                }
                _ => {
                    let name = l.split(['{', ' ']).next().unwrap();
                    assert!(
                        helped.contains(name) && typed.contains_key(name),
                        "{name} lacks HELP or TYPE"
                    );
                    let is_counter = typed[name] == "counter";
                    assert_eq!(
                        is_counter,
                        name.ends_with("_total"),
                        "{name}: counters, and only they, end in _total"
                    );
                }
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
