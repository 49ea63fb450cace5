//! The tuple a packet belongs to: from its L4 header, or for a later
//! fragment from the ports its first fragment left behind.

use aya_ebpf::programs::TcContext;
use netd_common::CtKey;

use crate::frag;
use crate::parse::{self, Ipv4, L4};

pub enum FlowError {
    Malformed,
    /// A later fragment whose first fragment was never seen.
    UnknownFragment,
}

#[inline(always)]
pub fn of(ctx: &TcContext, ip: &Ipv4) -> Result<(L4, CtKey), FlowError> {
    if ip.is_later_fragment() {
        let key = frag::tuple(ip).ok_or(FlowError::UnknownFragment)?;
        return Ok((L4::default(), key));
    }
    let l4 = parse::l4(ctx, ip).map_err(|_| FlowError::Malformed)?;
    let key = key(ip, &l4);
    if ip.is_first_fragment() {
        frag::remember(ip, l4.sport, l4.dport);
    }
    Ok((l4, key))
}

/// The tuple of a packet whose L4 header is at hand.
#[inline(always)]
pub fn key(ip: &Ipv4, l4: &L4) -> CtKey {
    CtKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: l4.sport,
        dport: l4.dport,
        proto: ip.proto,
        _pad: [0; 3],
    }
}
