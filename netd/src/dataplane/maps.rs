//! Typed access to the pinned maps. Everything here opens maps by pin path,
//! so the daemon and the `netd bpf` commands (which run without a daemon)
//! share one implementation.

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use netd_common::{Counter, NetConfig, NetStats, Settings, maps as names, reason};
use std::path::Path;

pub fn open(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {} (is a network running?)", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

fn networks(dir: &Path) -> Result<HashMap<MapData, u32, NetConfig>> {
    Ok(HashMap::try_from(open(dir, names::NETWORKS)?)?)
}

fn net_stats(dir: &Path) -> Result<PerCpuHashMap<MapData, u32, NetStats>> {
    Ok(PerCpuHashMap::try_from(open(dir, names::NET_STATS)?)?)
}

/// Publishes a network to the datapath, with zeroed counters.
pub fn add_network(dir: &Path, bridge_ifindex: u32, cfg: &NetConfig) -> Result<()> {
    let zeros = PerCpuValues::try_from(vec![NetStats::default(); nr_cpus()?])?;
    net_stats(dir)?.insert(bridge_ifindex, zeros, 0)?;
    networks(dir)?.insert(bridge_ifindex, cfg, 0)?;
    Ok(())
}

/// Withdraws a network. Missing entries are not an error: removal must keep
/// going on teardown.
pub fn remove_network(dir: &Path, bridge_ifindex: u32) -> Result<()> {
    let _ = networks(dir)?.remove(&bridge_ifindex);
    let _ = net_stats(dir)?.remove(&bridge_ifindex);
    Ok(())
}

pub fn list_networks(dir: &Path) -> Result<Vec<(u32, NetConfig)>> {
    Ok(networks(dir)?.iter().filter_map(Result::ok).collect())
}

/// Writes default timeouts unless an earlier daemon set some.
pub fn init_settings(dir: &Path) -> Result<()> {
    let mut a: Array<MapData, Settings> = Array::try_from(open(dir, names::SETTINGS)?)?;
    if a.get(&0, 0)?.tcp_syn_timeout == 0 {
        a.set(0, Settings::DEFAULT, 0)?;
    }
    Ok(())
}

pub fn set_settings(dir: &Path, s: &Settings) -> Result<()> {
    let mut a: Array<MapData, Settings> = Array::try_from(open(dir, names::SETTINGS)?)?;
    a.set(0, s, 0)?;
    Ok(())
}

pub fn settings(dir: &Path) -> Result<Settings> {
    let a: Array<MapData, Settings> = Array::try_from(open(dir, names::SETTINGS)?)?;
    Ok(a.get(&0, 0)?)
}

/// Counters by reason, summed over CPUs.
pub fn reason_stats(dir: &Path) -> Result<Vec<(&'static str, Counter)>> {
    let a: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(open(dir, names::STATS)?)?;
    let mut out = Vec::new();
    for (i, name) in reason::NAMES.iter().enumerate() {
        let per_cpu = a.get(&(i as u32), 0)?;
        out.push((*name, sum(per_cpu.iter().copied())));
    }
    Ok(out)
}

/// Per-network counters, summed over CPUs, keyed by bridge ifindex.
pub fn network_stats(dir: &Path) -> Result<Vec<(u32, NetStats)>> {
    let m = net_stats(dir)?;
    let mut out = Vec::new();
    for item in m.iter() {
        let (k, per_cpu) = item?;
        let mut s = NetStats::default();
        for v in per_cpu.iter() {
            s.from_guests = add(s.from_guests, v.from_guests);
            s.to_guests = add(s.to_guests, v.to_guests);
        }
        out.push((k, s));
    }
    out.sort_by_key(|(k, _)| *k);
    Ok(out)
}

fn add(a: Counter, b: Counter) -> Counter {
    Counter { packets: a.packets + b.packets, bytes: a.bytes + b.bytes }
}

fn sum(it: impl Iterator<Item = Counter>) -> Counter {
    it.fold(Counter::default(), add)
}

fn nr_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| e.into())
}
