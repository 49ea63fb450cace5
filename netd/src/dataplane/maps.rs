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

/// (name, entries, max entries) for every pinned map. Hash maps are
/// counted by walking their keys, which is all the kernel offers; arrays are
/// always full.
pub fn fill_levels(dir: &Path) -> Result<Vec<(String, u64, u32)>> {
    let mut out = Vec::new();
    for name in names::ALL {
        let Ok(data) = MapData::from_pin(dir.join(name)) else {
            continue;
        };
        let info = data.info()?;
        let max = info.max_entries();
        let entries = match info.map_type()? {
            aya::maps::MapType::Array | aya::maps::MapType::PerCpuArray => u64::from(max),
            _ => count_keys(&data, info.key_size())?,
        };
        out.push((name.to_string(), entries, max));
    }
    Ok(out)
}

/// Walks a map's keys with BPF_MAP_GET_NEXT_KEY, whatever their type.
pub fn count_keys(map: &MapData, key_size: u32) -> Result<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    #[repr(C)]
    struct NextKeyAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let mut cur = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let attr = NextKeyAttr {
            map_fd: fd as u32,
            _pad: 0,
            key: if first { 0 } else { cur.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                4, /* BPF_MAP_GET_NEXT_KEY */
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(n);
            }
            return Err(e.into());
        }
        n += 1;
        first = false;
        std::mem::swap(&mut cur, &mut next);
    }
}
