//! Typed access to the pinned maps. Everything here opens maps by pin path,
//! so the daemon and the `netd bpf` commands (which run without a daemon)
//! share one implementation.

use anyhow::{Context, Result};
use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
    lpm_trie::Key as LpmKey,
};
use netd_common::{
    Counter, CtEntry, CtKey, ForwardKey, ForwardTarget, FragKey, FragPorts, NetConfig, NetStats,
    Settings, Uplink, maps as names, reason,
};
use std::net::Ipv4Addr;
use std::path::Path;

pub fn open(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is a network running?)",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

fn networks(dir: &Path) -> Result<HashMap<MapData, u32, NetConfig>> {
    Ok(HashMap::try_from(open(dir, names::NETWORKS)?)?)
}

fn net_stats(dir: &Path) -> Result<PerCpuHashMap<MapData, u32, NetStats>> {
    Ok(PerCpuHashMap::try_from(open(dir, names::NET_STATS)?)?)
}

fn subnets(dir: &Path) -> Result<LpmTrie<MapData, u32, u32>> {
    Ok(LpmTrie::try_from(open(dir, names::SUBNETS)?)?)
}

fn subnet_key(subnet: (Ipv4Addr, u8)) -> LpmKey<u32> {
    let masked = u32::from(subnet.0) & crate::config::mask4(subnet.1);
    LpmKey::new(u32::from(subnet.1), masked.to_be())
}

/// Publishes a network to the datapath, with zeroed counters. The subnet
/// entry lets other networks' programs and the uplink find it.
pub fn add_network(
    dir: &Path,
    bridge_ifindex: u32,
    cfg: &NetConfig,
    subnet: Option<(Ipv4Addr, u8)>,
) -> Result<()> {
    let zeros = PerCpuValues::try_from(vec![NetStats::default(); nr_cpus()?])?;
    net_stats(dir)?.insert(bridge_ifindex, zeros, 0)?;
    networks(dir)?.insert(bridge_ifindex, cfg, 0)?;
    if let Some(sn) = subnet {
        subnets(dir)?.insert(&subnet_key(sn), bridge_ifindex, 0)?;
    }
    Ok(())
}

/// Withdraws a network, and its connections. Missing entries are not an
/// error: removal must keep going on teardown.
pub fn remove_network(
    dir: &Path,
    bridge_ifindex: u32,
    subnet: Option<(Ipv4Addr, u8)>,
) -> Result<()> {
    if let Some(sn) = subnet {
        let _ = subnets(dir)?.remove(&subnet_key(sn));
    }
    let _ = networks(dir)?.remove(&bridge_ifindex);
    let _ = net_stats(dir)?.remove(&bridge_ifindex);
    ct_remove_where(dir, |_, e| e.bridge_ifindex == bridge_ifindex)?;
    Ok(())
}

/// An IPv6 address as the datapath holds it: four words in wire order.
pub fn words6(a: std::net::Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

fn subnets6(dir: &Path) -> Result<LpmTrie<MapData, [u8; 16], u32>> {
    Ok(LpmTrie::try_from(open(dir, names::SUBNETS6)?)?)
}

fn subnet6_key(prefix: (std::net::Ipv6Addr, u8)) -> LpmKey<[u8; 16]> {
    let bits = u128::from(prefix.0)
        & (u128::MAX
            .checked_shl(128 - u32::from(prefix.1))
            .unwrap_or(0));
    LpmKey::new(u32::from(prefix.1), bits.to_be_bytes())
}

/// Publishes which bridge owns an IPv6 prefix.
pub fn add_subnet6(
    dir: &Path,
    bridge_ifindex: u32,
    prefix: (std::net::Ipv6Addr, u8),
) -> Result<()> {
    subnets6(dir)?.insert(&subnet6_key(prefix), bridge_ifindex, 0)?;
    Ok(())
}

pub fn remove_subnet6(dir: &Path, prefix: (std::net::Ipv6Addr, u8)) -> Result<()> {
    let _ = subnets6(dir)?.remove(&subnet6_key(prefix));
    Ok(())
}

fn uplinks(dir: &Path) -> Result<HashMap<MapData, u32, Uplink>> {
    Ok(HashMap::try_from(open(dir, names::UPLINKS)?)?)
}

/// Records an uplink's masquerade addresses (None: it has none right now).
pub fn set_uplink(
    dir: &Path,
    ifindex: u32,
    addr: Option<Ipv4Addr>,
    addr6: Option<std::net::Ipv6Addr>,
) -> Result<()> {
    let v = Uplink {
        addr: addr.map(|a| u32::from(a).to_be()).unwrap_or(0),
        _pad: 0,
        addr6: addr6.map(words6).unwrap_or([0; 4]),
    };
    uplinks(dir)?.insert(ifindex, v, 0)?;
    Ok(())
}

pub fn uplink_addr(dir: &Path, ifindex: u32) -> Result<Option<Ipv4Addr>> {
    Ok(uplinks(dir)?
        .get(&ifindex, 0)
        .ok()
        .filter(|u| u.addr != 0)
        .map(|u| Ipv4Addr::from(u32::from_be(u.addr))))
}

pub fn remove_uplink(dir: &Path, ifindex: u32) -> Result<()> {
    let _ = uplinks(dir)?.remove(&ifindex);
    Ok(())
}

fn conntrack(dir: &Path) -> Result<HashMap<MapData, CtKey, CtEntry>> {
    Ok(HashMap::try_from(open(dir, names::CONNTRACK)?)?)
}

/// Every conntrack entry, both directions.
pub fn ct_entries(dir: &Path) -> Result<Vec<(CtKey, CtEntry)>> {
    Ok(conntrack(dir)?.iter().filter_map(Result::ok).collect())
}

/// Deletes the entries `pred` picks together with their other direction,
/// so no half connection is left. Returns how many entries went.
pub fn ct_remove_where(dir: &Path, pred: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<usize> {
    let mut ct = conntrack(dir)?;
    let doomed: Vec<(CtKey, CtEntry)> = ct
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, e)| pred(k, e))
        .collect();
    let mut n = 0;
    for (k, e) in doomed {
        if ct.remove(&k).is_ok() {
            n += 1;
        }
        if ct.remove(&e.xlate.reversed()).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// CLOCK_MONOTONIC now, the clock bpf_ktime_get_ns reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One garbage-collection pass: expired connections, entries whose other
/// direction is gone (the LRU may evict one half), and stale fragment
/// records. Returns (conntrack entries removed, fragment records removed).
pub fn gc(dir: &Path) -> Result<(usize, usize)> {
    let now = monotonic_ns();
    let mut ct = conntrack(dir)?;
    let all: Vec<(CtKey, CtEntry)> = ct.iter().filter_map(Result::ok).collect();
    let keys: std::collections::HashSet<CtKey> = all.iter().map(|(k, _)| *k).collect();
    let mut removed = 0;
    // A connection's two entries are written one after the other; give a
    // fresh one a moment before calling it an orphan.
    let settle = now.saturating_sub(1_000_000_000);
    for (k, e) in &all {
        let orphan = !keys.contains(&e.xlate.reversed()) && e.created_ns < settle;
        if (e.expires_ns < now || orphan) && ct.remove(k).is_ok() {
            removed += 1;
        }
    }
    let mut frags: HashMap<MapData, FragKey, FragPorts> =
        HashMap::try_from(open(dir, names::FRAGS)?)?;
    let stale: Vec<FragKey> = frags
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.expires_ns < now)
        .map(|(k, _)| k)
        .collect();
    let mut frag_removed = 0;
    for k in stale {
        if frags.remove(&k).is_ok() {
            frag_removed += 1;
        }
    }
    Ok((removed, frag_removed))
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
    Counter {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}

fn sum(it: impl Iterator<Item = Counter>) -> Counter {
    it.fold(Counter::default(), add)
}

fn nr_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| e.into())
}

/// What `netd bpf maps` shows of one map.
#[derive(serde::Serialize)]
pub struct MapDescription {
    pub name: String,
    /// The kernel's map id: the same across daemon restarts, as the map is.
    pub id: u32,
    pub kind: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub entries: u64,
    pub pin: String,
}

pub fn describe(dir: &Path) -> Result<Vec<MapDescription>> {
    let mut out = Vec::new();
    for name in names::ALL {
        let path = dir.join(name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let info = data.info()?;
        let kind = info.map_type()?;
        let entries = match kind {
            aya::maps::MapType::Array | aya::maps::MapType::PerCpuArray => {
                u64::from(info.max_entries())
            }
            _ => count_keys(&data, info.key_size())?,
        };
        out.push(MapDescription {
            name: name.to_string(),
            id: info.id(),
            kind: format!("{kind:?}"),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            entries,
            pin: path.display().to_string(),
        });
    }
    Ok(out)
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

fn forwards(dir: &Path) -> Result<HashMap<MapData, ForwardKey, ForwardTarget>> {
    Ok(HashMap::try_from(open(dir, names::FORWARDS)?)?)
}

fn forwards_rev(dir: &Path) -> Result<HashMap<MapData, ForwardKey, ForwardKey>> {
    Ok(HashMap::try_from(open(dir, names::FORWARDS_REV)?)?)
}

/// One installed (proto, host addr, host port) -> (guest addr, port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForwardEntry {
    pub proto: u8,
    pub host: (Ipv4Addr, u16),
    pub guest: (Ipv4Addr, u16),
    pub bridge_ifindex: u32,
}

impl ForwardEntry {
    fn key(&self) -> ForwardKey {
        ForwardKey {
            addr: u32::from(self.host.0).to_be(),
            port: self.host.1.to_be(),
            proto: self.proto,
            _pad: 0,
        }
    }
    fn guest_key(&self) -> ForwardKey {
        ForwardKey {
            addr: u32::from(self.guest.0).to_be(),
            port: self.guest.1.to_be(),
            proto: self.proto,
            _pad: 0,
        }
    }
}

/// Installs forwards. The map update is per key, so the datapath sees each
/// forward appear whole.
pub fn add_forwards(dir: &Path, entries: &[ForwardEntry]) -> Result<()> {
    let mut m = forwards(dir)?;
    let mut rev = forwards_rev(dir)?;
    for e in entries {
        let t = ForwardTarget {
            addr: u32::from(e.guest.0).to_be(),
            port: e.guest.1.to_be(),
            _pad: 0,
            bridge_ifindex: e.bridge_ifindex,
            _pad2: 0,
            hits: 0,
        };
        m.insert(e.key(), t, 0)?;
        rev.insert(e.guest_key(), e.key(), 0)?;
    }
    Ok(())
}

/// Removes forwards; connections they opened live on in conntrack until
/// they close.
pub fn remove_forwards(dir: &Path, entries: &[ForwardEntry]) -> Result<()> {
    let mut m = forwards(dir)?;
    let mut rev = forwards_rev(dir)?;
    for e in entries {
        let _ = m.remove(&e.key());
        let _ = rev.remove(&e.guest_key());
    }
    Ok(())
}

/// Every installed forward with its hit count.
pub fn list_forwards(dir: &Path) -> Result<Vec<(ForwardEntry, u64)>> {
    let mut out: Vec<(ForwardEntry, u64)> = forwards(dir)?
        .iter()
        .filter_map(Result::ok)
        .map(|(k, t)| {
            let e = ForwardEntry {
                proto: k.proto,
                host: (Ipv4Addr::from(u32::from_be(k.addr)), u16::from_be(k.port)),
                guest: (Ipv4Addr::from(u32::from_be(t.addr)), u16::from_be(t.port)),
                bridge_ifindex: t.bridge_ifindex,
            };
            (e, t.hits)
        })
        .collect();
    out.sort();
    Ok(out)
}
