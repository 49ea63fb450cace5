//! Every map the datapath uses, pinned by name under netd's bpffs folder so
//! they outlive a daemon restart.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use netd_common::{Counter, MAX_NETWORKS, NetConfig, NetStats, reason};

#[map(name = "NETD_NETWORKS")]
pub static NETWORKS: HashMap<u32, NetConfig> = HashMap::pinned(MAX_NETWORKS, 0);

#[map(name = "NETD_STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(reason::COUNT, 0);

#[map(name = "NETD_NET_STATS")]
pub static NET_STATS: PerCpuHashMap<u32, NetStats> = PerCpuHashMap::pinned(MAX_NETWORKS, 0);

#[inline(always)]
pub fn network(bridge_ifindex: u32) -> Option<&'static NetConfig> {
    unsafe { NETWORKS.get(&bridge_ifindex) }
}

#[map(name = "NETD_SETTINGS")]
pub static SETTINGS: aya_ebpf::maps::Array<netd_common::Settings> =
    aya_ebpf::maps::Array::pinned(1, 0);
