//! `netd bpf ...`: reads the pinned maps directly, so it works while the
//! daemon is down.

use super::output::{Format, OutputArgs, Table, print_json};
use crate::dataplane::maps;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct MapArgs {
    /// The daemon's bpffs folder.
    #[arg(long, default_value = crate::paths::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// The daemon's state folder (only read, to name networks).
    #[arg(long, default_value = crate::paths::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
}

impl MapArgs {
    fn dir(&self) -> PathBuf {
        self.bpffs.join("maps")
    }

    /// Bridge ifindex -> network name, from the daemon's record of running
    /// networks (empty when there is none).
    fn network_names(&self) -> std::collections::HashMap<u32, String> {
        let text = std::fs::read_to_string(self.state_dir.join("running.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["networks"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(name, r)| {
                        Some((r["bridge_ifindex"].as_u64()? as u32, name.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Packet counters by reason and by network.
    Stats(MapArgs),
    /// Conntrack entries.
    #[command(subcommand)]
    Ct(CtCommand),
    /// Address translations (the NAT side of conntrack).
    #[command(subcommand)]
    Nat(NatCommand),
    /// Every netd map: type, sizes, fill, pin path.
    Maps(MapArgs),
    /// The forwards map, with hit counts.
    #[command(subcommand)]
    Forwards(ForwardsCommand),
}

#[derive(clap::Subcommand)]
pub enum ForwardsCommand {
    List(ForwardsListArgs),
}

#[derive(clap::Args)]
pub struct ForwardsListArgs {
    #[command(flatten)]
    map: MapArgs,
    /// Network (bridge name or network name).
    #[arg(long)]
    network: Option<String>,
    /// Forwards are tcp or udp; anything else is a usage error (exit 2),
    /// not an empty table.
    #[arg(long, value_parser = ["tcp", "udp"], ignore_case = true)]
    proto: Option<String>,
    /// Host address the forward listens on.
    #[arg(long)]
    dst: Option<std::net::Ipv4Addr>,
    /// Host or guest port.
    #[arg(long)]
    port: Option<u16>,
}

#[derive(clap::Subcommand)]
pub enum CtCommand {
    List(ListArgs),
    /// Delete conntrack entries (all, or one network's).
    Flush {
        #[command(flatten)]
        map: MapArgs,
        /// Network (bridge name or network name).
        #[arg(long)]
        network: Option<String>,
    },
}

#[derive(clap::Subcommand)]
pub enum NatCommand {
    List(ListArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    map: MapArgs,
    #[command(flatten)]
    filter: Filter,
}

/// Narrows a listing; every given field must match.
#[derive(clap::Args, Default)]
pub struct Filter {
    /// Network (bridge name, or network name as the daemon's state records it).
    #[arg(long)]
    network: Option<String>,
    /// The protocols conntrack follows; anything else is a usage error.
    #[arg(long, value_parser = ["tcp", "udp", "icmp"], ignore_case = true)]
    proto: Option<String>,
    /// Source address of the original direction.
    #[arg(long)]
    src: Option<std::net::Ipv4Addr>,
    /// Destination address of the original direction.
    #[arg(long)]
    dst: Option<std::net::Ipv4Addr>,
    /// Any port of either tuple.
    #[arg(long)]
    port: Option<u16>,
}

#[derive(Serialize)]
struct Stats {
    reasons: Vec<ReasonRow>,
    networks: Vec<NetRow>,
}

#[derive(Serialize)]
struct ReasonRow {
    reason: String,
    drop: bool,
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct NetRow {
    network: Option<String>,
    bridge_ifindex: u32,
    bridge: Option<String>,
    from_guests_packets: u64,
    from_guests_bytes: u64,
    to_guests_packets: u64,
    to_guests_bytes: u64,
}

pub fn exec(c: &Command) -> Result<()> {
    match c {
        Command::Stats(a) => stats(a),
        Command::Ct(CtCommand::List(a)) => ct_list(a),
        Command::Ct(CtCommand::Flush { map, network }) => ct_flush(map, network.as_deref()),
        Command::Nat(NatCommand::List(a)) => nat_list(a),
        Command::Maps(a) => maps_list(a),
        Command::Forwards(ForwardsCommand::List(a)) => forwards_list(a),
    }
}

#[derive(Serialize)]
struct ForwardRow {
    proto: String,
    host: String,
    guest: String,
    network: Option<String>,
    bridge: Option<String>,
    hits: u64,
}

fn forwards_list(a: &ForwardsListArgs) -> Result<()> {
    let names = a.map.network_names();
    let network = a
        .network
        .as_deref()
        .map(|n| network_ifindex(n, &a.map.state_dir))
        .transpose()?;
    let rows: Vec<ForwardRow> = maps::list_forwards(&a.map.dir())?
        .into_iter()
        .filter(|(e, _)| {
            network.is_none_or(|n| e.bridge_ifindex == n)
                && a.proto
                    .as_ref()
                    .is_none_or(|p| p.eq_ignore_ascii_case(&proto_name(e.proto)))
                && a.dst.is_none_or(|d| e.host.0 == d)
                && a.port.is_none_or(|p| e.host.1 == p || e.guest.1 == p)
        })
        .map(|(e, hits)| ForwardRow {
            proto: proto_name(e.proto),
            host: format!("{}:{}", e.host.0, e.host.1),
            guest: format!("{}:{}", e.guest.0, e.guest.1),
            network: names.get(&e.bridge_ifindex).cloned(),
            bridge: crate::link::ifname_of(e.bridge_ifindex),
            hits,
        })
        .collect();
    if a.map.out.format == Format::Json {
        return print_json(&rows);
    }
    let mut t = Table::new(&["PROTO", "HOST", "GUEST", "NETWORK", "BRIDGE", "HITS"]);
    for r in rows {
        t.row(vec![
            r.proto,
            r.host,
            r.guest,
            dash(r.network),
            dash(r.bridge),
            r.hits.to_string(),
        ]);
    }
    t.print();
    Ok(())
}

fn dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// One connection, as both listings show it.
#[derive(Serialize)]
struct Conn {
    proto: String,
    /// Original direction as the initiator sent it.
    src: String,
    dst: String,
    /// Original direction as it left after translation.
    xlate_src: String,
    xlate_dst: String,
    nat: String,
    state: String,
    network: Option<String>,
    bridge: Option<String>,
    age_secs: u64,
    /// Since the last packet either way.
    idle_secs: u64,
    expires_in_secs: u64,
    packets: u64,
    bytes: u64,
    reply_packets: u64,
    reply_bytes: u64,
    #[serde(skip)]
    bridge_ifindex: u32,
    #[serde(skip)]
    ports: [u16; 4],
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

fn endpoint(addr: u32, port: u16) -> String {
    format!(
        "{}:{}",
        std::net::Ipv4Addr::from(u32::from_be(addr)),
        u16::from_be(port)
    )
}

fn connections(a: &MapArgs) -> Result<Vec<Conn>> {
    use netd_common::{ct_state, dir as ctdir, nat_kind};
    let entries = maps::ct_entries(&a.dir())?;
    let names = a.network_names();
    let by_key: std::collections::HashMap<_, _> = entries.iter().cloned().collect();
    let now = maps::monotonic_ns();
    let mut out = Vec::new();
    for (k, e) in &entries {
        if e.dir != ctdir::ORIGINAL {
            continue;
        }
        let reply = by_key.get(&e.xlate.reversed());
        out.push(Conn {
            proto: proto_name(k.proto),
            src: endpoint(k.saddr, k.sport),
            dst: endpoint(k.daddr, k.dport),
            xlate_src: endpoint(e.xlate.saddr, e.xlate.sport),
            xlate_dst: endpoint(e.xlate.daddr, e.xlate.dport),
            nat: match e.nat {
                nat_kind::SNAT => "snat",
                nat_kind::DNAT => "dnat",
                _ => "none",
            }
            .into(),
            state: match e.state {
                ct_state::ESTABLISHED => "established",
                ct_state::CLOSING => "closing",
                _ => "new",
            }
            .into(),
            network: names.get(&e.bridge_ifindex).cloned(),
            bridge: crate::link::ifname_of(e.bridge_ifindex),
            age_secs: now.saturating_sub(e.created_ns) / 1_000_000_000,
            idle_secs: now.saturating_sub(
                e.last_seen_ns
                    .max(reply.map(|r| r.last_seen_ns).unwrap_or(0)),
            ) / 1_000_000_000,
            expires_in_secs: e.expires_ns.saturating_sub(now) / 1_000_000_000,
            packets: e.packets,
            bytes: e.bytes,
            reply_packets: reply.map(|r| r.packets).unwrap_or(0),
            reply_bytes: reply.map(|r| r.bytes).unwrap_or(0),
            bridge_ifindex: e.bridge_ifindex,
            ports: [k.sport, k.dport, e.xlate.sport, e.xlate.dport].map(u16::from_be),
        });
    }
    out.sort_by(|a, b| (&a.proto, &a.src, &a.dst).cmp(&(&b.proto, &b.src, &b.dst)));
    Ok(out)
}

/// The bridge ifindex a --network value names: a bridge, or a network the
/// daemon's state file records.
fn network_ifindex(name: &str, state_dir: &std::path::Path) -> Result<u32> {
    if let Some(i) = crate::link::ifindex_of(name) {
        return Ok(i);
    }
    let text = std::fs::read_to_string(state_dir.join("running.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["networks"][name]["bridge_ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .ok_or_else(|| anyhow::anyhow!("no bridge or running network named {name:?}"))
}

impl Filter {
    fn keep(&self, c: &Conn, network: Option<u32>) -> bool {
        let host = |s: &str| s.split(':').next().unwrap_or("").to_string();
        network.is_none_or(|n| c.bridge_ifindex == n)
            && self
                .proto
                .as_ref()
                .is_none_or(|p| p.eq_ignore_ascii_case(&c.proto))
            && self.src.is_none_or(|a| host(&c.src) == a.to_string())
            && self.dst.is_none_or(|a| host(&c.dst) == a.to_string())
            && self.port.is_none_or(|p| c.ports.contains(&p))
    }

    fn apply(&self, conns: Vec<Conn>, state_dir: &std::path::Path) -> Result<Vec<Conn>> {
        let network = self
            .network
            .as_deref()
            .map(|n| network_ifindex(n, state_dir))
            .transpose()?;
        Ok(conns
            .into_iter()
            .filter(|c| self.keep(c, network))
            .collect())
    }
}

fn ct_list(a: &ListArgs) -> Result<()> {
    let conns = a.filter.apply(connections(&a.map)?, &a.map.state_dir)?;
    if a.map.out.format == Format::Json {
        return print_json(&conns);
    }
    let mut t = Table::new(&[
        "PROTO",
        "SRC",
        "DST",
        "XLATE SRC",
        "XLATE DST",
        "NAT",
        "STATE",
        "AGE",
        "EXPIRES",
        "PKTS",
        "BYTES",
        "RPKTS",
        "RBYTES",
    ]);
    for c in conns {
        t.row(vec![
            c.proto,
            c.src,
            c.dst,
            c.xlate_src,
            c.xlate_dst,
            c.nat,
            c.state,
            format!("{}s", c.age_secs),
            format!("{}s", c.expires_in_secs),
            c.packets.to_string(),
            c.bytes.to_string(),
            c.reply_packets.to_string(),
            c.reply_bytes.to_string(),
        ]);
    }
    t.print();
    Ok(())
}

#[derive(Serialize)]
struct Translation {
    kind: String,
    proto: String,
    /// The guest's side.
    inside: String,
    /// What the world sees.
    outside: String,
    peer: String,
    network: Option<String>,
    bridge: Option<String>,
    age_secs: u64,
    expires_in_secs: u64,
}

fn nat_list(a: &ListArgs) -> Result<()> {
    let conns = a.filter.apply(connections(&a.map)?, &a.map.state_dir)?;
    let rows: Vec<Translation> = conns
        .into_iter()
        .filter(|c| c.nat != "none")
        .map(|c| {
            let (inside, outside, peer) = if c.nat == "snat" {
                (c.src, c.xlate_src, c.dst)
            } else {
                (c.xlate_dst, c.dst, c.src)
            };
            Translation {
                kind: c.nat,
                proto: c.proto,
                inside,
                outside,
                peer,
                network: c.network,
                bridge: c.bridge,
                age_secs: c.age_secs,
                expires_in_secs: c.expires_in_secs,
            }
        })
        .collect();
    let mut rows = rows;
    rows.extend(mapping_rows(a)?);
    if a.map.out.format == Format::Json {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "KIND", "PROTO", "INSIDE", "OUTSIDE", "PEER", "NETWORK", "AGE", "EXPIRES",
    ]);
    for r in rows {
        t.row(vec![
            r.kind,
            r.proto,
            r.inside,
            r.outside,
            r.peer,
            dash(r.network),
            format!("{}s", r.age_secs),
            format!("{}s", r.expires_in_secs),
        ]);
    }
    t.print();
    Ok(())
}

/// Endpoint-independent mappings as rows of `bpf nat list`: kind
/// "mapping", and for peer who may send in, by the network's filtering.
fn mapping_rows(a: &ListArgs) -> Result<Vec<Translation>> {
    use netd_common::net_flags;
    let dir = a.map.dir();
    let names = a.map.network_names();
    let flags: std::collections::HashMap<u32, u8> = maps::list_networks(&dir)
        .unwrap_or_default()
        .into_iter()
        .map(|(b, c)| (b, c.flags))
        .collect();
    let network = a
        .filter
        .network
        .as_deref()
        .map(|n| network_ifindex(n, &a.map.state_dir))
        .transpose()?;
    let now = maps::monotonic_ns();
    let host = |s: &str| s.split(':').next().unwrap_or("").to_string();
    let mut out: Vec<Translation> = maps::nat_mappings(&dir)?
        .into_iter()
        .map(|(k, m)| {
            let f = flags.get(&m.bridge_ifindex).copied().unwrap_or(0);
            let peer = if f & net_flags::EIF != 0 {
                "any (endpoint-independent filtering)"
            } else if f & net_flags::ADF != 0 {
                "hosts sent to (address-dependent filtering)"
            } else {
                "address:port sent to (address-port-dependent filtering)"
            };
            (
                m.bridge_ifindex,
                [u16::from_be(k.port), u16::from_be(m.port)],
                Translation {
                    kind: "mapping".into(),
                    proto: proto_name(k.proto),
                    inside: endpoint(m.addr, m.port),
                    outside: endpoint(k.addr, k.port),
                    peer: peer.into(),
                    network: names.get(&m.bridge_ifindex).cloned(),
                    bridge: crate::link::ifname_of(m.bridge_ifindex),
                    age_secs: now.saturating_sub(m.created_ns) / 1_000_000_000,
                    expires_in_secs: m.expires_ns.saturating_sub(now) / 1_000_000_000,
                },
            )
        })
        .filter(|(bridge, ports, t)| {
            let fl = &a.filter;
            network.is_none_or(|n| *bridge == n)
                && fl
                    .proto
                    .as_ref()
                    .is_none_or(|p| p.eq_ignore_ascii_case(&t.proto))
                && fl.src.is_none_or(|s| host(&t.inside) == s.to_string())
                && fl.dst.is_none()
                && fl.port.is_none_or(|p| ports.contains(&p))
        })
        .map(|(_, _, t)| t)
        .collect();
    out.sort_by(|x, y| (&x.proto, &x.inside).cmp(&(&y.proto, &y.inside)));
    Ok(out)
}

fn ct_flush(a: &MapArgs, network: Option<&str>) -> Result<()> {
    let dir = a.dir();
    let idx = network
        .map(|name| network_ifindex(name, &a.state_dir))
        .transpose()?;
    let n = maps::ct_remove_where(&dir, |_, e| idx.is_none_or(|i| e.bridge_ifindex == i))?;
    // The endpoint-independent mappings go with the connections that made
    // them (a datapath from before mappings has none to flush).
    let m = maps::nat_mappings_remove_where(&dir, |_, v| idx.is_none_or(|i| v.bridge_ifindex == i))
        .unwrap_or(0);
    if m == 0 {
        println!("flushed {n} conntrack entries");
    } else {
        println!("flushed {n} conntrack entries and {m} NAT mapping entries");
    }
    Ok(())
}

fn maps_list(a: &MapArgs) -> Result<()> {
    let rows = maps::describe(&a.dir())?;
    if a.out.format == Format::Json {
        return print_json(&rows);
    }
    let mut t = Table::new(&["NAME", "TYPE", "KEY", "VALUE", "MAX", "ENTRIES", "PIN"]);
    for m in rows {
        t.row(vec![
            m.name,
            m.kind,
            m.key_size.to_string(),
            m.value_size.to_string(),
            m.max_entries.to_string(),
            m.entries.to_string(),
            m.pin,
        ]);
    }
    t.print();
    Ok(())
}

fn stats(a: &MapArgs) -> Result<()> {
    let dir = a.dir();
    let names = a.network_names();
    let s = Stats {
        reasons: maps::reason_stats(&dir)?
            .into_iter()
            .enumerate()
            .map(|(i, (name, c))| ReasonRow {
                reason: name.into(),
                drop: netd_common::reason::is_drop(i as u32),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect(),
        networks: maps::network_stats(&dir)?
            .into_iter()
            .map(|(idx, s)| NetRow {
                network: names.get(&idx).cloned(),
                bridge_ifindex: idx,
                bridge: crate::link::ifname_of(idx),
                from_guests_packets: s.from_guests.packets,
                from_guests_bytes: s.from_guests.bytes,
                to_guests_packets: s.to_guests.packets,
                to_guests_bytes: s.to_guests.bytes,
            })
            .collect(),
    };
    if a.out.format == Format::Json {
        return print_json(&s);
    }
    let mut t = Table::new(&[
        "NETWORK",
        "BRIDGE",
        "IFINDEX",
        "FROM GUESTS PKTS",
        "FROM GUESTS BYTES",
        "TO GUESTS PKTS",
        "TO GUESTS BYTES",
    ]);
    for n in &s.networks {
        t.row(vec![
            dash(n.network.clone()),
            n.bridge.clone().unwrap_or_else(|| "?".into()),
            n.bridge_ifindex.to_string(),
            n.from_guests_packets.to_string(),
            n.from_guests_bytes.to_string(),
            n.to_guests_packets.to_string(),
            n.to_guests_bytes.to_string(),
        ]);
    }
    t.print();
    println!();
    let mut t = Table::new(&["REASON", "KIND", "PACKETS", "BYTES"]);
    for r in &s.reasons {
        t.row(vec![
            r.reason.clone(),
            if r.drop { "drop" } else { "count" }.into(),
            r.packets.to_string(),
            r.bytes.to_string(),
        ]);
    }
    t.print();
    Ok(())
}
