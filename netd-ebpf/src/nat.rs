//! Address and port translation: choosing a masquerade port, and rewriting
//! a packet from the tuple it carries to the tuple it should carry.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use netd_common::{CtKey, CtKey6, ForwardKey, NetConfig, nat_kind, reason};

use crate::csum::{self, CsumError, L4Csum};
use crate::ct::{self, CreateError, Tuple};
use crate::maps::FORWARDS;
use crate::parse::{
    ICMP_ECHO, ICMP_ECHOREPLY, ICMPV6_ECHO_REQUEST, IP_DADDR_OFF, IP_SADDR_OFF, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ipv4, L4,
};

/// A tuple the masquerade can rewrite: its source address and port.
pub trait Masquerade: Tuple {
    type Addr: Copy;
    fn set_source(&mut self, addr: Self::Addr);
    /// `set_source` through a volatile store, for state the port search
    /// reads from its slot behind the compiler's back.
    ///
    /// # Safety
    /// `this` must be valid for writes.
    unsafe fn store_source(this: *mut Self, addr: Self::Addr);
    fn sport(&self) -> u16;
    fn set_sport(&mut self, port: u16);
    /// Whether a port forward owns this source port on `addr`.
    fn port_forwarded(addr: Self::Addr, port: u16, proto: u8) -> bool;
    /// Echo requests carry an id the NAT can choose, like a port.
    fn is_echo_request(icmp_type: u8, proto: u8) -> bool;
    /// The per-CPU slot the port search works in.
    fn request() -> Option<*mut SnatRequest<Self>>;
}

impl Masquerade for CtKey {
    type Addr = u32;
    #[inline(always)]
    fn set_source(&mut self, addr: u32) {
        self.saddr = addr;
    }
    #[inline(always)]
    unsafe fn store_source(this: *mut Self, addr: u32) {
        unsafe { core::ptr::write_volatile(&raw mut (*this).saddr, addr) }
    }
    #[inline(always)]
    fn sport(&self) -> u16 {
        self.sport
    }
    #[inline(always)]
    fn set_sport(&mut self, port: u16) {
        self.sport = port;
    }
    #[inline(always)]
    fn port_forwarded(addr: u32, port: u16, proto: u8) -> bool {
        forward_owns(addr, port, proto)
    }
    #[inline(always)]
    fn is_echo_request(icmp_type: u8, proto: u8) -> bool {
        proto == IPPROTO_ICMP && icmp_type == ICMP_ECHO
    }
    #[inline(always)]
    fn request() -> Option<*mut SnatRequest<Self>> {
        REQUEST.get_ptr_mut(0)
    }
}

impl Masquerade for CtKey6 {
    type Addr = [u32; 4];
    #[inline(always)]
    fn set_source(&mut self, addr: [u32; 4]) {
        self.saddr = addr;
    }
    #[inline(always)]
    unsafe fn store_source(this: *mut Self, addr: [u32; 4]) {
        unsafe { core::ptr::write_volatile(&raw mut (*this).saddr, addr) }
    }
    #[inline(always)]
    fn sport(&self) -> u16 {
        self.sport
    }
    #[inline(always)]
    fn set_sport(&mut self, port: u16) {
        self.sport = port;
    }
    /// Port forwards are IPv4 only.
    #[inline(always)]
    fn port_forwarded(_: [u32; 4], _: u16, _: u8) -> bool {
        false
    }
    #[inline(always)]
    fn is_echo_request(icmp_type: u8, proto: u8) -> bool {
        proto == IPPROTO_ICMPV6 && icmp_type == ICMPV6_ECHO_REQUEST
    }
    #[inline(always)]
    fn request() -> Option<*mut SnatRequest<Self>> {
        REQUEST6.get_ptr_mut(0)
    }
}

/// The port search works in per-CPU slots rather than on the stack: BPF
/// gives the whole call chain 512 bytes, and an IPv6 request is 130.
#[map(name = "NETD_SNAT_REQ")]
static REQUEST: PerCpuArray<SnatRequest<CtKey>> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "NETD_SNAT_REQ6")]
static REQUEST6: PerCpuArray<SnatRequest<CtKey6>> = PerCpuArray::with_max_entries(1, 0);

/// Ports tried after the preferred one before a flow is refused.
const PORT_TRIES: u32 = 32;

/// A masquerade request: everything the port search needs, passed by
/// pointer because BPF functions take at most five arguments.
#[derive(Clone, Copy)]
pub struct SnatRequest<K: Masquerade = CtKey> {
    pub orig: K,
    /// Filled in on success: the tuple the flow leaves with.
    pub xlate: K,
    pub nat_addr: K::Addr,
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

impl<K: Masquerade> SnatRequest<K> {
    /// A request in this CPU's slot, ready for `snat_new`.
    #[inline(always)]
    pub fn new(
        orig: &K,
        l4: &L4,
        nat_addr: K::Addr,
        net: &NetConfig,
        bridge: u32,
        uplink: u32,
        bytes: u32,
    ) -> Option<&'static mut Self> {
        let slot = unsafe { &mut *K::request()? };
        *slot = SnatRequest {
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
        };
        Some(slot)
    }

    /// Whether the tuple has a port (or echo id) the NAT can choose.
    #[inline(always)]
    fn has_port(&self) -> bool {
        let proto = self.orig.proto();
        proto == IPPROTO_TCP || proto == IPPROTO_UDP || K::is_echo_request(self.icmp_type, proto)
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
    let k = ForwardKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    unsafe { FORWARDS.get(&k) }.is_some()
}

/// The forward for (proto, host addr, host port), counting the hit.
#[inline(always)]
pub fn forward_target(addr: u32, port: u16, proto: u8) -> Option<netd_common::ForwardTarget> {
    let k = ForwardKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
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
pub fn snat_new<K: Masquerade>(req: &mut SnatRequest<K>) -> u32 {
    let nat_addr = req.nat_addr;
    req.xlate.set_source(nat_addr);
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
    let wanted = u32::from(u16::from_be(req.orig.sport()));
    let port = if wanted >= lo && wanted <= hi {
        wanted
    } else {
        lo + unsafe { bpf_get_prandom_u32() }
            .checked_rem(span)
            .unwrap_or(0)
    };
    // The attempts run in `try_port`, which reaches the request through
    // its per-CPU slot, not through `req`: the compiler cannot see that
    // bpf_loop changes it, so the state goes through volatile accesses.
    let slot: *mut SnatRequest<K> = req;
    unsafe {
        K::store_source(&raw mut (*slot).xlate, nat_addr);
        core::ptr::write_volatile(&mut (*slot).port, port);
        core::ptr::write_volatile(&mut (*slot).result, reason::DROP_PORTS_EXHAUSTED);
    }
    let tries = if span < PORT_TRIES { span } else { PORT_TRIES };
    unsafe {
        bpf_loop(
            tries,
            try_port::<K> as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        core::ptr::read_volatile(&(*slot).result)
    }
}

/// One attempt of the port search: claim `port` or move to the next one.
/// Returns 1 to stop the loop.
extern "C" fn try_port<K: Masquerade>(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = K::request() else {
        return 1;
    };
    let s = unsafe { &mut *s };
    let p = (s.port as u16).to_be();
    if !K::port_forwarded(s.nat_addr, p, s.orig.proto()) {
        s.xlate.set_sport(p);
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
    s.port = if s.port >= u32::from(s.port_max) {
        u32::from(s.port_min)
    } else {
        s.port + 1
    };
    0
}

/// Rewrites the packet from tuple `cur` to tuple `new`, fixing the IP and
/// L4 checksums. Later fragments carry no L4 header: only addresses change.
#[inline(always)]
pub fn rewrite(
    ctx: &mut TcContext,
    ip: &Ipv4,
    l4: &L4,
    cur: &CtKey,
    new: &CtKey,
) -> Result<(), CsumError> {
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
        IPPROTO_ICMP if l4.icmp_type == ICMP_ECHO => {
            csum::set_port(ctx, off + 4, cur.sport, new.sport, lc)?
        }
        IPPROTO_ICMP if l4.icmp_type == ICMP_ECHOREPLY => {
            csum::set_port(ctx, off + 4, cur.dport, new.dport, lc)?
        }
        _ => {}
    }
    Ok(())
}
