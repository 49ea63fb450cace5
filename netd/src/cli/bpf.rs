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
    #[command(flatten)]
    out: OutputArgs,
}

impl MapArgs {
    fn dir(&self) -> PathBuf {
        self.bpffs.join("maps")
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Packet counters by reason and by network.
    Stats(MapArgs),
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
    }
}

fn stats(a: &MapArgs) -> Result<()> {
    let dir = a.dir();
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
    let mut t = Table::new(&["BRIDGE", "IFINDEX", "FROM GUESTS PKTS", "BYTES", "TO GUESTS PKTS", "BYTES"]);
    for n in &s.networks {
        t.row(vec![
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
