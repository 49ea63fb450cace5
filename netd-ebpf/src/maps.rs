//! Every map the datapath uses, pinned by name under netd's bpffs folder so
//! they, and every live connection, outlive a daemon restart.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray},
};
use netd_common::{
    BINDING_MAX_ENTRIES, Binding, BindingKey, CT_MAX_ENTRIES, Counter, CtEntry, CtEntry6, CtKey,
    CtKey6, FORWARD_MAX_ENTRIES, FRAG_MAX_ENTRIES, ForwardKey, ForwardTarget, FragKey, FragPorts,
    MAX_NETWORKS, MAX_UPLINKS, NetConfig, NetStats, Settings, Uplink, reason,
};

/// Networks by bridge ifindex.
#[map(name = "NETD_NETWORKS")]
pub static NETWORKS: HashMap<u32, NetConfig> = HashMap::pinned(MAX_NETWORKS, 0);

/// Which network owns an address (value: bridge ifindex).
#[map(name = "NETD_SUBNETS")]
pub static SUBNETS: LpmTrie<u32, u32> = LpmTrie::pinned(MAX_NETWORKS, 0);

/// Which network owns an IPv6 address (value: bridge ifindex).
#[map(name = "NETD_SUBNETS6")]
pub static SUBNETS6: LpmTrie<[u32; 4], u32> = LpmTrie::pinned(MAX_NETWORKS, 0);

/// Uplinks by ifindex, with their current masquerade address.
#[map(name = "NETD_UPLINKS")]
pub static UPLINKS: HashMap<u32, Uplink> = HashMap::pinned(MAX_UPLINKS, 0);

/// Conntrack: each connection is keyed once per direction.
#[map(name = "NETD_CT")]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_MAX_ENTRIES, 0);

/// Conntrack for masqueraded IPv6 (NAT66).
#[map(name = "NETD_CT6")]
pub static CT6: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(CT_MAX_ENTRIES / 4, 0);

/// Per-CPU slots where new conntrack entries are built (not pinned: they
/// hold nothing between packets).
#[map(name = "NETD_CT_SCRATCH")]
pub static SCRATCH: PerCpuArray<CtEntry> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "NETD_CT6_SCRATCH")]
pub static SCRATCH6: PerCpuArray<CtEntry6> = PerCpuArray::with_max_entries(1, 0);

/// Ports of fragmented datagrams, learnt from first fragments.
#[map(name = "NETD_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(FRAG_MAX_ENTRIES, 0);

/// Port forwards by (proto, host address, host port).
#[map(name = "NETD_FORWARDS")]
pub static FORWARDS: HashMap<ForwardKey, ForwardTarget> = HashMap::pinned(FORWARD_MAX_ENTRIES, 0);

/// Guest end of a forward -> the host end, for host-local UDP clients.
#[map(name = "NETD_FWD_REV")]
pub static FORWARDS_REV: HashMap<ForwardKey, ForwardKey> = HashMap::pinned(FORWARD_MAX_ENTRIES, 0);

/// Second-stage programs for the first packet of a flow.
#[map(name = "NETD_TAILS")]
pub static TAILS: ProgramArray = ProgramArray::pinned(netd_common::tail::COUNT, 0);

/// Per-CPU budget of ICMP answers to refused packets.
#[map(name = "NETD_REJECT_BUDGET")]
pub static REJECT_BUDGET: PerCpuArray<RejectBudget> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct RejectBudget {
    pub window_start_ns: u64,
    pub count: u64,
}

/// Strict networks: the IPv4 address each guest MAC may send from.
#[map(name = "NETD_BINDINGS")]
pub static BINDINGS: HashMap<BindingKey, Binding> = HashMap::pinned(BINDING_MAX_ENTRIES, 0);

/// IPv6 router address by bridge ifindex (wire-order words).
#[map(name = "NETD_GATEWAYS6")]
pub static GATEWAYS6: HashMap<u32, [u32; 4]> = HashMap::pinned(MAX_NETWORKS, 0);

#[map(name = "NETD_STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(reason::COUNT, 0);

#[map(name = "NETD_NET_STATS")]
pub static NET_STATS: PerCpuHashMap<u32, NetStats> = PerCpuHashMap::pinned(MAX_NETWORKS, 0);

#[map(name = "NETD_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[inline(always)]
pub fn network(bridge_ifindex: u32) -> Option<&'static NetConfig> {
    unsafe { NETWORKS.get(&bridge_ifindex) }
}

/// The netd network whose subnet holds `addr` (wire order), by bridge ifindex.
#[inline(always)]
pub fn subnet_owner(addr: u32) -> Option<u32> {
    SUBNETS
        .get(aya_ebpf::maps::lpm_trie::Key::new(32, addr))
        .copied()
}

#[inline(always)]
pub fn uplink_addr(ifindex: u32) -> Option<u32> {
    unsafe { UPLINKS.get(&ifindex) }
        .map(|u| u.addr)
        .filter(|a| *a != 0)
}

#[inline(always)]
pub fn settings() -> Settings {
    SETTINGS.get(0).copied().unwrap_or(Settings::DEFAULT)
}
