//! Typed access to the pinned maps. Everything here opens maps by pin path,
//! so the daemon and the `netd bpf` commands (which run without a daemon)
//! share one implementation.

use anyhow::{Context, Result};
use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
    lpm_trie::Key as LpmKey,
};
use netd_common::{
    Binding, BindingKey, Counter, CtEntry, CtKey, ForwardKey, ForwardTarget, FragKey, FragPorts,
    NetConfig, NetStats, Settings, Uplink, maps as names, reason,
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

/// Replaces a published network's settings, keeping its counters.
pub fn update_network(dir: &Path, bridge_ifindex: u32, cfg: &NetConfig) -> Result<()> {
    networks(dir)?.insert(bridge_ifindex, cfg, 0)?;
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
    let _ = set_nat_limits(dir, bridge_ifindex, 0, 0);
    let _ = set_nat_timeouts(dir, bridge_ifindex, None);
    let _ = nat_mappings_remove_where(dir, |_, m| m.bridge_ifindex == bridge_ifindex);
    Ok(())
}

fn nat_limits(dir: &Path) -> Result<HashMap<MapData, u32, netd_common::NatLimits>> {
    Ok(HashMap::try_from(open(dir, names::NAT_LIMITS)?)?)
}

fn guest_flows(dir: &Path) -> Result<HashMap<MapData, u32, netd_common::GuestFlows>> {
    Ok(HashMap::try_from(open(dir, names::GUEST_FLOWS)?)?)
}

/// Sets (or, with None, removes) a NAT network's own timeouts; they apply
/// to connections opened from then on.
pub fn set_nat_timeouts(
    dir: &Path,
    bridge_ifindex: u32,
    t: Option<netd_common::NatTimeouts>,
) -> Result<()> {
    let mut m: HashMap<MapData, u32, netd_common::NatTimeouts> =
        HashMap::try_from(open(dir, names::NAT_TIMEOUTS)?)?;
    match t {
        Some(t) if t != netd_common::NatTimeouts::default() => m.insert(bridge_ifindex, t, 0)?,
        _ => {
            let _ = m.remove(&bridge_ifindex);
        }
    }
    Ok(())
}

/// Sets a NAT network's `nat.max_flows_per_guest` and
/// `nat.max_ports_per_guest` (0: no limit).
pub fn set_nat_limits(
    dir: &Path,
    bridge_ifindex: u32,
    max_flows_per_guest: u32,
    max_ports_per_guest: u32,
) -> Result<()> {
    let mut m = nat_limits(dir)?;
    if max_flows_per_guest == 0 && max_ports_per_guest == 0 {
        let _ = m.remove(&bridge_ifindex);
        return Ok(());
    }
    let l = netd_common::NatLimits {
        max_flows_per_guest,
        max_ports_per_guest,
    };
    m.insert(bridge_ifindex, l, 0)?;
    Ok(())
}

/// Recounts the masqueraded flows (from conntrack) and the live mappings
/// of every guest of a network with a limit, the counts the datapath only
/// ever raises: what closed or expired comes off here. Returns the guests
/// counted.
pub fn recount_guest_flows(dir: &Path) -> Result<usize> {
    use netd_common::{GuestFlows, dir as ctdir, nat_kind};
    let limited: std::collections::HashSet<u32> = nat_limits(dir)?
        .iter()
        .filter_map(Result::ok)
        .map(|(b, _)| b)
        .collect();
    let mut gf = guest_flows(dir)?;
    let now = monotonic_ns();
    let mut counts: std::collections::HashMap<u32, GuestFlows> = std::collections::HashMap::new();
    if !limited.is_empty() {
        for (k, e) in ct_entries(dir)? {
            if e.dir == ctdir::ORIGINAL
                && e.nat == nat_kind::SNAT
                && e.expires_ns > now
                && limited.contains(&e.bridge_ifindex)
            {
                counts.entry(k.saddr).or_default().flows += 1;
            }
        }
        for (_, m) in nat_mappings(dir)? {
            if limited.contains(&m.bridge_ifindex) {
                counts.entry(m.addr).or_default().ports += 1;
            }
        }
    }
    let stale: Vec<u32> = gf
        .keys()
        .filter_map(Result::ok)
        .filter(|g| !counts.contains_key(g))
        .collect();
    for g in stale {
        let _ = gf.remove(&g);
    }
    for (g, n) in &counts {
        gf.insert(g, n, 0)?;
    }
    Ok(counts.len())
}

/// The datapath's count of a guest's masqueraded flows (networks with a
/// limit only).
pub fn guest_flows_of(dir: &Path, guest: Ipv4Addr) -> Result<u32> {
    Ok(guest_usage(dir, guest)?.flows)
}

/// The datapath's counts of a guest's flows and mappings (networks with a
/// limit only).
pub fn guest_usage(dir: &Path, guest: Ipv4Addr) -> Result<netd_common::GuestFlows> {
    Ok(guest_flows(dir)?
        .get(&u32::from(guest).to_be(), 0)
        .unwrap_or_default())
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

fn gateways6(dir: &Path) -> Result<HashMap<MapData, u32, [u32; 4]>> {
    Ok(HashMap::try_from(open(dir, names::GATEWAYS6)?)?)
}

/// Publishes a network's IPv6 router address: no guest may send from it.
pub fn set_gateway6(dir: &Path, bridge_ifindex: u32, gw: std::net::Ipv6Addr) -> Result<()> {
    gateways6(dir)?.insert(bridge_ifindex, words6(gw), 0)?;
    Ok(())
}

pub fn remove_gateway6(dir: &Path, bridge_ifindex: u32) -> Result<()> {
    let _ = gateways6(dir)?.remove(&bridge_ifindex);
    Ok(())
}

fn bindings(dir: &Path) -> Result<HashMap<MapData, BindingKey, Binding>> {
    Ok(HashMap::try_from(open(dir, names::BINDINGS)?)?)
}

/// The MAC/IPv4 bindings of a strict network's guests, by MAC.
pub fn list_bindings(
    dir: &Path,
    bridge_ifindex: u32,
) -> Result<std::collections::BTreeMap<[u8; 6], Ipv4Addr>> {
    Ok(bindings(dir)?
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.bridge_ifindex == bridge_ifindex)
        .map(|(k, v)| (k.mac, Ipv4Addr::from(u32::from_be(v.addr))))
        .collect())
}

fn binding_key(bridge_ifindex: u32, mac: [u8; 6]) -> BindingKey {
    BindingKey {
        bridge_ifindex,
        mac,
        _pad: [0; 2],
    }
}

/// Makes a bridge's bindings exactly `want`: new and changed pairs are
/// written before stale ones go, so a guest whose pair did not change never
/// sees a gap. Returns how many entries changed.
pub fn sync_bindings(
    dir: &Path,
    bridge_ifindex: u32,
    want: &std::collections::BTreeMap<[u8; 6], Ipv4Addr>,
) -> Result<usize> {
    let have = list_bindings(dir, bridge_ifindex)?;
    let mut m = bindings(dir)?;
    let mut changed = 0;
    for (mac, ip) in want {
        if have.get(mac) != Some(ip) {
            let v = Binding {
                addr: u32::from(*ip).to_be(),
                _pad: 0,
            };
            m.insert(binding_key(bridge_ifindex, *mac), v, 0)
                .context("writing a binding")?;
            changed += 1;
        }
    }
    for mac in have.keys().filter(|m| !want.contains_key(*m)) {
        m.remove(&binding_key(bridge_ifindex, *mac))?;
        changed += 1;
    }
    Ok(changed)
}

/// Forgets every binding of a bridge (teardown: keeps going past gaps).
pub fn remove_bindings(dir: &Path, bridge_ifindex: u32) -> Result<()> {
    let have = list_bindings(dir, bridge_ifindex)?;
    let mut m = bindings(dir)?;
    for mac in have.keys() {
        let _ = m.remove(&binding_key(bridge_ifindex, *mac));
    }
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

/// Moves the connections of a bridge to the ifindex of the bridge that
/// replaced it (same name, recreated): replies keep finding their guests.
/// Returns how many entries (both directions count) moved.
pub fn ct_move_bridge(dir: &Path, old: u32, new: u32) -> Result<usize> {
    let mut ct = conntrack(dir)?;
    let mine: Vec<(CtKey, CtEntry)> = ct
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, e)| e.bridge_ifindex == old)
        .collect();
    let mut n = 0;
    for (k, mut e) in mine {
        e.bridge_ifindex = new;
        // BPF_EXIST: an entry the datapath expired meanwhile stays gone.
        if ct.insert(k, e, 2).is_ok() {
            n += 1;
        }
    }
    Ok(n)
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

/// Live endpoint-independent mappings, by their outside end: (outside
/// address and port, the mapping). Empty when the map is absent (a
/// datapath from before mappings).
pub fn nat_mappings(dir: &Path) -> Result<Vec<(netd_common::NatMapKey, netd_common::NatMapping)>> {
    use netd_common::{NatMapKey, NatMapping, map_kind};
    let Ok(m) = open(dir, names::NAT_MAPPINGS) else {
        return Ok(Vec::new());
    };
    let m: HashMap<MapData, NatMapKey, NatMapping> = HashMap::try_from(m)?;
    let now = monotonic_ns();
    Ok(m.iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| k.kind == map_kind::OUTSIDE && v.expires_ns > now)
        .collect())
}

/// Deletes every mapping entry (all kinds) `pred` picks by its value;
/// returns how many went.
pub fn nat_mappings_remove_where(
    dir: &Path,
    pred: impl Fn(&netd_common::NatMapKey, &netd_common::NatMapping) -> bool,
) -> Result<usize> {
    use netd_common::{NatMapKey, NatMapping};
    let mut m: HashMap<MapData, NatMapKey, NatMapping> =
        HashMap::try_from(open(dir, names::NAT_MAPPINGS)?)?;
    let doomed: Vec<NatMapKey> = m
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| pred(k, v))
        .map(|(k, _)| k)
        .collect();
    Ok(doomed.iter().filter(|k| m.remove(k).is_ok()).count())
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
    let mut removed = 0;
    // A connection's two entries are written one after the other; give a
    // fresh one a moment before calling it an orphan.
    let settle = now.saturating_sub(1_000_000_000);
    let expiry: std::collections::HashMap<CtKey, u64> =
        all.iter().map(|(k, e)| (*k, e.expires_ns)).collect();
    for (k, e) in &all {
        let peer = expiry.get(&e.xlate.reversed());
        let orphan = peer.is_none() && e.created_ns < settle;
        // An expired half whose other half lives stays: a UDP flow
        // refreshed by the guest's packets only keeps its reply half
        // expired, and the datapath revives it from the original.
        let expired = e.expires_ns < now && peer.is_none_or(|p| *p < now);
        if (expired || orphan) && ct.remove(k).is_ok() {
            removed += 1;
        }
    }
    // Quotas count what is open: recount now that the expired are gone.
    let _ = recount_guest_flows(dir);
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
        // A map pinned by an older build may have fewer reasons: the
        // newer ones read as zero instead of failing the whole listing.
        if i as u32 >= a.len() {
            out.push((*name, Counter::default()));
            continue;
        }
        let per_cpu = a.get(&(i as u32), 0)?;
        out.push((*name, sum(per_cpu.iter().copied())));
    }
    Ok(out)
}

/// The per-reason counters, held open for callers that read them after
/// every packet (the packet fuzzer).
pub struct ReasonCounters(PerCpuArray<MapData, Counter>);

impl ReasonCounters {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self(PerCpuArray::try_from(open(dir, names::STATS)?)?))
    }

    /// Packets counted under `r`, all CPUs.
    pub fn packets(&self, r: u32) -> Result<u64> {
        Ok(self.0.get(&r, 0)?.iter().map(|c| c.packets).sum())
    }

    /// Packets counted under any drop reason, all CPUs.
    pub fn drops(&self) -> Result<u64> {
        let mut n = 0;
        for r in (0..reason::COUNT).filter(|r| reason::is_drop(*r)) {
            n += self.packets(r)?;
        }
        Ok(n)
    }
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

/// The forward map has no room for a change: what is used, what there is,
/// and how many more entries the change needs.
#[derive(Debug)]
pub struct ForwardMapFull {
    pub in_use: u64,
    pub max: u32,
    pub more: u64,
}

impl std::fmt::Display for ForwardMapFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "forward map full: {} of {} entries in use, {} more needed; nothing was added (raise netd daemon --forwards-max)",
            self.in_use, self.max, self.more
        )
    }
}

impl std::error::Error for ForwardMapFull {}

/// (entries in use, max entries) of the forward map.
pub fn forward_fill(dir: &Path) -> Result<(u64, u32)> {
    let data = MapData::from_pin(dir.join(names::FORWARDS))?;
    let info = data.info()?;
    Ok((count_keys(&data, info.key_size())?, info.max_entries()))
}

/// Installs forwards, all or none. The map update is per key, so the
/// datapath sees each forward appear whole. Free room is checked first (a
/// full hash map refuses an insert with E2BIG); should a write still fail,
/// every key written so far gets back what it held before, or goes.
pub fn add_forwards(dir: &Path, entries: &[ForwardEntry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut m = forwards(dir)?;
    let mut rev = forwards_rev(dir)?;
    let new_keys: std::collections::HashSet<ForwardKey> = entries
        .iter()
        .map(ForwardEntry::key)
        .filter(|k| m.get(k, 0).is_err())
        .collect();
    let new_rev: std::collections::HashSet<ForwardKey> = entries
        .iter()
        .map(ForwardEntry::guest_key)
        .filter(|k| rev.get(k, 0).is_err())
        .collect();
    for (name, more) in [
        (names::FORWARDS, new_keys.len()),
        (names::FORWARDS_REV, new_rev.len()),
    ] {
        let map = MapData::from_pin(dir.join(name))?;
        let info = map.info()?;
        let in_use = count_keys(&map, info.key_size())?;
        if in_use + more as u64 > u64::from(info.max_entries()) {
            return Err(ForwardMapFull {
                in_use,
                max: info.max_entries(),
                more: more as u64,
            }
            .into());
        }
    }
    if let Err(err) = insert_all(&mut m, &mut rev, entries) {
        if let aya::maps::MapError::SyscallError(ref s) = err
            && s.io_error.raw_os_error() == Some(libc::E2BIG)
        {
            let (in_use, max) = forward_fill(dir)?;
            return Err(ForwardMapFull {
                in_use,
                max,
                more: entries.len() as u64,
            }
            .into());
        }
        return Err(anyhow::Error::new(err).context("writing the forward map (nothing was added)"));
    }
    Ok(())
}

type ForwardMap = HashMap<MapData, ForwardKey, ForwardTarget>;
type ForwardRevMap = HashMap<MapData, ForwardKey, ForwardKey>;

/// Writes every entry, or none: on the first failure each key written so
/// far gets back what it held before (or goes), newest first.
fn insert_all(
    m: &mut ForwardMap,
    rev: &mut ForwardRevMap,
    entries: &[ForwardEntry],
) -> std::result::Result<(), aya::maps::MapError> {
    type Undo = (
        ForwardKey,
        Option<ForwardTarget>,
        ForwardKey,
        Option<ForwardKey>,
    );
    let mut undo: Vec<Undo> = Vec::new();
    let mut result = Ok(());
    for e in entries {
        let t = ForwardTarget {
            addr: u32::from(e.guest.0).to_be(),
            port: e.guest.1.to_be(),
            _pad: 0,
            bridge_ifindex: e.bridge_ifindex,
            _pad2: 0,
            hits: 0,
        };
        let (k, gk) = (e.key(), e.guest_key());
        undo.push((k, m.get(&k, 0).ok(), gk, rev.get(&gk, 0).ok()));
        if let Err(err) = m.insert(k, t, 0).and_then(|()| rev.insert(gk, k, 0)) {
            result = Err(err);
            break;
        }
    }
    if result.is_err() {
        for (k, old, gk, old_rev) in undo.into_iter().rev() {
            let _ = match old {
                Some(v) => m.insert(k, v, 0),
                None => m.remove(&k),
            };
            let _ = match old_rev {
                Some(v) => rev.insert(gk, v, 0),
                None => rev.remove(&gk),
            };
        }
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A BPF hash map made with BPF_MAP_CREATE, no pin, no BPF object.
    fn hash_map<K, V>(max_entries: u32) -> Option<MapData> {
        #[repr(C)]
        struct Attr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
            rest: [u8; 108],
        }
        let attr = Attr {
            map_type: 1, // BPF_MAP_TYPE_HASH
            key_size: std::mem::size_of::<K>() as u32,
            value_size: std::mem::size_of::<V>() as u32,
            max_entries,
            map_flags: 0,
            rest: [0; 108],
        };
        // SAFETY: BPF_MAP_CREATE with a zeroed tail; the fd is ours.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &attr, std::mem::size_of::<Attr>()) };
        if fd < 0 {
            return None;
        }
        MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }).ok()
    }

    fn entry(host_port: u16, guest: u8, guest_port: u16) -> ForwardEntry {
        ForwardEntry {
            proto: 6,
            host: (Ipv4Addr::new(198, 51, 100, 2), host_port),
            guest: (Ipv4Addr::new(10, 0, 0, guest), guest_port),
            bridge_ifindex: 7,
        }
    }

    fn dump<V: aya::Pod + std::fmt::Debug>(m: &HashMap<MapData, ForwardKey, V>) -> Vec<String> {
        let mut v: Vec<String> = m
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| format!("{k:?}={v:?}"))
            .collect();
        v.sort();
        v
    }

    /// A write that fails half way (the map is full at its third new key)
    /// leaves both maps exactly as they were, the overwritten key included.
    #[test]
    fn a_failed_batch_restores_every_key_it_touched() {
        let (Some(a), Some(b)) = (
            hash_map::<ForwardKey, ForwardTarget>(4),
            hash_map::<ForwardKey, ForwardKey>(16),
        ) else {
            eprintln!("skipped: BPF_MAP_CREATE needs root");
            return;
        };
        let mut m: ForwardMap = HashMap::try_from(Map::from_map_data(a).unwrap()).unwrap();
        let mut rev: ForwardRevMap = HashMap::try_from(Map::from_map_data(b).unwrap()).unwrap();
        insert_all(&mut m, &mut rev, &[entry(80, 5, 80), entry(443, 5, 443)]).unwrap();
        let before = (dump(&m), dump(&rev));
        // Port 80 is overwritten (new guest), then 3 new keys: 2 + 3 > 4.
        let batch = [
            entry(80, 6, 8080),
            entry(81, 6, 81),
            entry(82, 6, 82),
            entry(83, 6, 83),
        ];
        let err = insert_all(&mut m, &mut rev, &batch).unwrap_err();
        match err {
            aya::maps::MapError::SyscallError(ref s) => {
                assert_eq!(s.io_error.raw_os_error(), Some(libc::E2BIG), "{err}")
            }
            e => panic!("{e}"),
        }
        assert_eq!((dump(&m), dump(&rev)), before);
        // And a batch that fits goes in whole.
        insert_all(&mut m, &mut rev, &[entry(80, 6, 8080), entry(81, 6, 81)]).unwrap();
        assert_eq!(dump(&m).len(), 3);
    }
}
