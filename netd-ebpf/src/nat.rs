//! Address and port translation: choosing a masquerade port, and rewriting
//! a packet from the tuple it carries to the tuple it should carry.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
    programs::TcContext,
};
use netd_common::{CtKey, ForwardKey, NetConfig, nat_kind, reason};

use crate::csum::{self, CsumError, L4Csum};
use crate::ct::{self, CreateError};
use crate::maps::FORWARDS;
use crate::parse::{ICMP_ECHO, ICMP_ECHOREPLY, IP_DADDR_OFF, IP_SADDR_OFF, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4, L4};

/// Ports tried after the preferred one before a flow is refused.
const PORT_TRIES: u32 = 32;

/// A masquerade request: everything the port search needs, passed by
/// pointer because BPF functions take at most five arguments.
#[derive(Clone, Copy)]
pub struct SnatRequest {
    pub orig: CtKey,
    /// Filled in on success: the tuple the flow leaves with.
    pub xlate: CtKey,
    pub nat_addr: u32,
    pub port_min: u16,
    pub port_max: u16,
    pub bridge: u32,
    pub uplink: u32,
    pub bytes: u32,
    pub icmp_type: u8,
    pub tcp_flags: u8,
    /// SNAT for masquerade; DNAT for a hairpin, whose destination is also
    /// rewritten (set `xlate.daddr`/`dport` before the search).
    pub kind: u8,
    /// Search state: the port being tried, and 0 once one is claimed or
    /// the drop reason so far.
    port: u32,
    result: u32,
}

impl SnatRequest {
    #[inline(always)]
    pub fn new(orig: &CtKey, l4: &L4, nat_addr: u32, net: &NetConfig, bridge: u32, uplink: u32, bytes: u32) -> Self {
        SnatRequest {
            orig: *orig,
            xlate: *orig,
            nat_addr,
            port_min: net.port_min,
            port_max: net.port_max,
            bridge,
            uplink,
            bytes,
            icmp_type: l4.icmp_type,
            tcp_flags: l4.tcp_flags,
            kind: nat_kind::SNAT,
            port: 0,
            result: 0,
        }
    }

    /// Whether the tuple has a port (or echo id) the NAT can choose.
    #[inline(always)]
    fn has_port(&self) -> bool {
        match self.orig.proto {
            IPPROTO_TCP | IPPROTO_UDP => true,
            IPPROTO_ICMP => self.icmp_type == ICMP_ECHO,
            _ => false,
        }
    }

    #[inline(always)]
    fn create(&self) -> Result<(), CreateError> {
        let o = ct::Origin {
            nat: self.kind,
            tcp_flags: self.tcp_flags,
            bridge: self.bridge,
            uplink: self.uplink,
            bytes: self.bytes,
        };
        ct::create(&self.orig, &self.xlate, &o)
    }
}

/// Masquerade must never take a port a forward owns on that address.
#[inline(always)]
fn forward_owns(addr: u32, port: u16, proto: u8) -> bool {
    let k = ForwardKey { addr, port, proto, _pad: 0 };
    unsafe { FORWARDS.get(&k) }.is_some()
}

/// The forward for (proto, host addr, host port), counting the hit.
#[inline(always)]
pub fn forward_target(addr: u32, port: u16, proto: u8) -> Option<netd_common::ForwardTarget> {
    let k = ForwardKey { addr, port, proto, _pad: 0 };
    let t = FORWARDS.get_ptr_mut(&k)?;
    unsafe {
        (*t).hits += 1;
        Some(*t)
    }
}

/// Creates the conntrack entries of a new masqueraded flow; on success
/// `req.xlate` is the tuple it leaves with, otherwise the drop reason is
/// returned. The guest's own source port is kept when free; otherwise the
/// next ports of the range are tried.
///
/// The search runs under `bpf_loop`, so the verifier checks one attempt
/// once instead of every iteration on every path.
#[inline(never)]
pub fn snat_new(req: &mut SnatRequest) -> u32 {
    req.xlate.saddr = req.nat_addr;
    if !req.has_port() {
        return match req.create() {
            Ok(()) => 0,
            Err(CreateError::Taken) => reason::DROP_PORTS_EXHAUSTED,
            Err(CreateError::Full) => reason::DROP_CT_FULL,
        };
    }
    let lo = u32::from(req.port_min);
    let hi = u32::from(req.port_max);
    if lo == 0 || hi < lo {
        return reason::DROP_PORTS_EXHAUSTED;
    }
    let span = hi - lo + 1;
    let wanted = u32::from(u16::from_be(req.orig.sport));
    let port = if wanted >= lo && wanted <= hi {
        wanted
    } else {
        lo + unsafe { bpf_get_prandom_u32() }.checked_rem(span).unwrap_or(0)
    };
    // The search state lives in the caller's request: the stack is 512
    // bytes for the whole call chain, so no copies down here.
    req.port = port;
    req.result = reason::DROP_PORTS_EXHAUSTED;
    let tries = if span < PORT_TRIES { span } else { PORT_TRIES };
    unsafe {
        bpf_loop(tries, try_port as *mut c_void, req as *mut SnatRequest as *mut c_void, 0);
    }
    req.result
}

/// One attempt of the port search: claim `port` or move to the next one.
/// Returns 1 to stop the loop.
extern "C" fn try_port(_index: u64, ctx: *mut c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut SnatRequest) };
    let p = (s.port as u16).to_be();
    if !forward_owns(s.nat_addr, p, s.orig.proto) {
        s.xlate.sport = p;
        match s.create() {
            Ok(()) => {
                s.result = 0;
                return 1;
            }
            Err(CreateError::Full) => {
                s.result = reason::DROP_CT_FULL;
                return 1;
            }
            Err(CreateError::Taken) => {}
        }
    }
    s.port = if s.port >= u32::from(s.port_max) { u32::from(s.port_min) } else { s.port + 1 };
    0
}

/// Rewrites the packet from tuple `cur` to tuple `new`, fixing the IP and
/// L4 checksums. Later fragments carry no L4 header: only addresses change.
#[inline(always)]
pub fn rewrite(ctx: &mut TcContext, ip: &Ipv4, l4: &L4, cur: &CtKey, new: &CtKey) -> Result<(), CsumError> {
    let has_l4 = !ip.is_later_fragment();
    let lc = L4Csum {
        off: if has_l4 { l4.csum_off } else { 0 },
        proto: ip.proto,
        pseudo: ip.proto != IPPROTO_ICMP,
    };
    csum::set_addr(ctx, ip.off, ip.off + IP_SADDR_OFF, cur.saddr, new.saddr, lc)?;
    csum::set_addr(ctx, ip.off, ip.off + IP_DADDR_OFF, cur.daddr, new.daddr, lc)?;
    if !has_l4 {
        return Ok(());
    }
    let off = ip.l4_off();
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            csum::set_port(ctx, off, cur.sport, new.sport, lc)?;
            csum::set_port(ctx, off + 2, cur.dport, new.dport, lc)?;
        }
        IPPROTO_ICMP if l4.icmp_type == ICMP_ECHO => csum::set_port(ctx, off + 4, cur.sport, new.sport, lc)?,
        IPPROTO_ICMP if l4.icmp_type == ICMP_ECHOREPLY => csum::set_port(ctx, off + 4, cur.dport, new.dport, lc)?,
        _ => {}
    }
    Ok(())
}
