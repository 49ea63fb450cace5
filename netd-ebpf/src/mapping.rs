//! Endpoint-independent mapping and filtering (RFC 4787 REQ-1, REQ-8),
//! per network (`net_flags::EIM`, `EIF`, `ADF`).
//!
//! A mapping ties a guest's (address, port, protocol) to one outside port
//! for every destination. It lives in `NETD_NAT_MAP` under two keys, the
//! guest's end (INSIDE) and the outside end (OUTSIDE), plus one PEER key
//! per host the guest sent to when the network filters by address. The
//! port search skips ports another endpoint's live mapping holds, whatever
//! the network's mode, so a mapped port stays the guest's alone. A mapping
//! is refreshed by each new outbound flow through it (not by every packet:
//! that would cost the fast path a map write); once lapsed, its port is
//! still the guest's first choice.
//!
//! Inbound, a packet no connection knows that reaches a mapped port is let
//! in when the network's filtering allows it, and opens a connection the
//! way a port forward does.

use aya_ebpf::{macros::map, maps::LruHashMap};
use netd_common::{
    CtKey, ForwardTarget, NAT_MAP_MAX_ENTRIES, NatMapKey, NatMapping, map_kind, net_flags,
};

use crate::ct;
use crate::maps::{network, settings};
use crate::nat::SnatRequest;
use crate::parse::{IPPROTO_TCP, IPPROTO_UDP};

#[map(name = "NETD_NAT_MAP")]
pub static NAT_MAP: LruHashMap<NatMapKey, NatMapping> = LruHashMap::pinned(NAT_MAP_MAX_ENTRIES, 0);

/// RFC 4787 REQ-5: a UDP mapping lasts at least 2 minutes; 5 is the
/// recommended value.
const UDP_MAPPING_SECS: u64 = 300;
/// A TCP mapping is held for RFC 5382's transitory 4 minutes after the
/// last connection it opened: the connections themselves live on in
/// conntrack, but holding the port for the established timeout (hours)
/// after each one would let a client that connects from fresh ports use
/// up the range.
const TCP_MAPPING_SECS: u64 = 240;

#[inline(always)]
fn key(addr: u32, port: u16, proto: u8, kind: u8) -> NatMapKey {
    NatMapKey {
        addr,
        port,
        proto,
        kind,
    }
}

/// A live entry.
#[inline(always)]
fn live(k: &NatMapKey) -> Option<*mut NatMapping> {
    let m = NAT_MAP.get_ptr_mut(k)?;
    if unsafe { (*m).expires_ns } < ct::now() {
        return None;
    }
    Some(m)
}

/// The outside port (host order) of the guest end's mapping on `nat_addr`,
/// live or lapsed; 0 when it has none.
#[inline(never)]
pub fn own_port(guest: u32, gport: u16, proto: u8, nat_addr: u32) -> u32 {
    let k = key(guest, gport, proto, map_kind::INSIDE);
    match unsafe { NAT_MAP.get(&k) } {
        Some(m) if m.addr == nat_addr => u32::from(u16::from_be(m.port)),
        _ => 0,
    }
}

/// Whether the guest end has a live mapping.
#[inline(never)]
pub fn has_live(guest: u32, gport: u16, proto: u8) -> bool {
    live(&key(guest, gport, proto, map_kind::INSIDE)).is_some()
}

/// Whether a live mapping of another guest end holds outside `port` (wire
/// order) on `nat_addr`.
#[inline(never)]
pub fn held_by_other(nat_addr: u32, port: u16, proto: u8, guest: u32, gport: u16) -> bool {
    let k = key(nat_addr, port, proto, map_kind::OUTSIDE);
    match live(&k) {
        Some(m) => unsafe { (*m).addr != guest || (*m).port != gport },
        None => false,
    }
}

/// Creates or refreshes the mapping of a new masqueraded flow.
#[inline(never)]
pub fn record(req: &SnatRequest<CtKey>) {
    let t = ct::now();
    let s = settings();
    let proto = req.orig.proto;
    let secs = match proto {
        IPPROTO_UDP => UDP_MAPPING_SECS,
        IPPROTO_TCP => TCP_MAPPING_SECS,
        _ => u64::from(s.icmp_timeout),
    };
    let mut m = NatMapping {
        addr: req.nat_addr,
        port: req.xlate.sport,
        _pad: 0,
        bridge_ifindex: req.bridge,
        _pad2: 0,
        created_ns: t,
        expires_ns: t + secs * 1_000_000_000,
    };
    let inside = key(req.orig.saddr, req.orig.sport, proto, map_kind::INSIDE);
    match NAT_MAP.get_ptr(&inside) {
        Some(old)
            if unsafe {
                (*old).addr == m.addr && (*old).port == m.port && (*old).expires_ns >= t
            } =>
        {
            // The same live mapping: keep when it began.
            m.created_ns = unsafe { (*old).created_ns };
        }
        _ => crate::nat::count_mapping(req.bridge, req.orig.saddr),
    }
    let _ = NAT_MAP.insert(&inside, &m, 0);
    let outside = key(req.nat_addr, req.xlate.sport, proto, map_kind::OUTSIDE);
    m.addr = req.orig.saddr;
    m.port = req.orig.sport;
    let _ = NAT_MAP.insert(&outside, &m, 0);
    if req.flags & net_flags::ADF != 0 {
        let peer = key(req.orig.daddr, req.xlate.sport, proto, map_kind::PEER);
        let _ = NAT_MAP.insert(&peer, &m, 0);
    }
}

/// Where an unsolicited packet from `peer` to `nat_addr`:`port` (wire
/// order) goes: the guest end of a live mapping whose network's filtering
/// lets `peer` in. Address-port-dependent filtering lets nothing in here
/// (what it allows, conntrack already knows).
#[inline(never)]
pub fn inbound(nat_addr: u32, port: u16, proto: u8, peer: u32) -> Option<ForwardTarget> {
    let m = live(&key(nat_addr, port, proto, map_kind::OUTSIDE))?;
    let m = unsafe { *m };
    let flags = network(m.bridge_ifindex)?.flags;
    if flags & net_flags::EIM == 0 {
        return None;
    }
    let allowed = if flags & net_flags::EIF != 0 {
        true
    } else if flags & net_flags::ADF != 0 {
        live(&key(peer, port, proto, map_kind::PEER)).is_some()
    } else {
        false
    };
    if !allowed {
        return None;
    }
    Some(ForwardTarget {
        addr: m.addr,
        port: m.port,
        _pad: 0,
        bridge_ifindex: m.bridge_ifindex,
        _pad2: 0,
        hits: 0,
    })
}
