//! Fragments: a first fragment's ports are remembered by IP id, so the
//! later fragments of the same datagram, which carry no ports, follow it.

use netd_common::{CtKey, FragKey, FragPorts};

use crate::ct::now;
use crate::maps::FRAGS;
use crate::parse::Ipv4;

/// Reassembly gives up after 30 s (ipfrag_time); so do we.
const FRAG_TTL_NS: u64 = 30_000_000_000;

#[inline(always)]
fn key(ip: &Ipv4) -> FragKey {
    FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    }
}

#[inline(always)]
pub fn remember(ip: &Ipv4, sport: u16, dport: u16) {
    let v = FragPorts {
        sport,
        dport,
        _pad: 0,
        expires_ns: now() + FRAG_TTL_NS,
    };
    let _ = FRAGS.insert(&key(ip), &v, 0);
}

/// The tuple of a later fragment, if its first fragment was seen.
#[inline(always)]
pub fn tuple(ip: &Ipv4) -> Option<CtKey> {
    let p = unsafe { FRAGS.get(&key(ip)) }?;
    if p.expires_ns < now() {
        return None;
    }
    Some(CtKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: ip.proto,
        _pad: [0; 3],
    })
}
