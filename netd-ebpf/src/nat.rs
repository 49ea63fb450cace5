//! Address and port translation: choosing a masquerade port, and rewriting
//! a packet from the tuple it carries to the tuple it should carry.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
};
use netd_common::{
    CtKey, CtKey6, ForwardKey, GuestFlows, NatLimits, NetConfig, nat_kind, net_flags, reason,
};

use crate::csum::{self, CsumError, L4Csum};
use crate::ct::{self, CreateError, Tuple};
use crate::maps::FORWARDS;
use crate::parse::{
    ICMP_ECHO, ICMP_ECHOREPLY, ICMPV6_ECHO_REQUEST, IP_DADDR_OFF, IP_SADDR_OFF, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ipv4, L4,
};
use crate::{mapping, reject};

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
    /// `*out = t.reversed()`, field by field: no copy on the stack.
    fn reverse_into(t: &Self, out: &mut Self);
    /// Destinations recently found with no free port (see `FULL`).
    fn full() -> &'static LruHashMap<Self, Full>;
    /// Endpoint-independent mapping (see `mapping`), IPv4 only: the
    /// request's guest end's own outside port (0: none), whether another
    /// end's mapping holds `port` (wire order), and recording the mapping.
    fn own_port(s: &SnatRequest<Self>) -> u32;
    fn held_by_other(s: &SnatRequest<Self>, port: u16) -> bool;
    fn record_mapping(s: &SnatRequest<Self>);
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
    #[inline(always)]
    fn full() -> &'static LruHashMap<Self, Full> {
        &FULL
    }
    #[inline(always)]
    fn own_port(s: &SnatRequest<Self>) -> u32 {
        mapping::own_port(s.orig.saddr, s.orig.sport, s.orig.proto, s.nat_addr)
    }
    #[inline(always)]
    fn held_by_other(s: &SnatRequest<Self>, port: u16) -> bool {
        mapping::held_by_other(s.nat_addr, port, s.orig.proto, s.orig.saddr, s.orig.sport)
    }
    #[inline(always)]
    fn record_mapping(s: &SnatRequest<Self>) {
        mapping::record(s)
    }
    #[inline(always)]
    fn reverse_into(t: &Self, out: &mut Self) {
        out.saddr = t.daddr;
        out.daddr = t.saddr;
        out.sport = t.dport;
        out.dport = t.sport;
        out.proto = t.proto;
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
    #[inline(always)]
    fn full() -> &'static LruHashMap<Self, Full> {
        &FULL6
    }
    /// NAT66 maps per destination only.
    #[inline(always)]
    fn own_port(_: &SnatRequest<Self>) -> u32 {
        0
    }
    #[inline(always)]
    fn held_by_other(_: &SnatRequest<Self>, _: u16) -> bool {
        false
    }
    #[inline(always)]
    fn record_mapping(_: &SnatRequest<Self>) {}
    #[inline(always)]
    fn reverse_into(t: &Self, out: &mut Self) {
        out.saddr = t.daddr;
        out.daddr = t.saddr;
        out.sport = t.dport;
        out.dport = t.sport;
        out.proto = t.proto;
    }
}

/// The port search works in per-CPU slots rather than on the stack: BPF
/// gives the whole call chain 512 bytes, and an IPv6 request is 130.
#[map(name = "NETD_SNAT_REQ")]
static REQUEST: PerCpuArray<SnatRequest<CtKey>> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "NETD_SNAT_REQ6")]
static REQUEST6: PerCpuArray<SnatRequest<CtKey6>> = PerCpuArray::with_max_entries(1, 0);

/// Destinations (peer address and port, protocol, masquerade address; the
/// masquerade port 0) whose whole range was found taken, with the time
/// until which that is believed. A full range costs a walk of every port
/// (tens of milliseconds for 64k): without this, each retry of a refused
/// flow, or a guest flooding new flows to one peer, would pay it again.
/// A port freed in the meantime is used at most a second later.
#[map(name = "NETD_NAT_FULL")]
static FULL: LruHashMap<CtKey, Full> = LruHashMap::with_max_entries(4096, 0);
#[map(name = "NETD_NAT_FULL6")]
static FULL6: LruHashMap<CtKey6, Full> = LruHashMap::with_max_entries(1024, 0);

/// A `FULL` entry: which range was full, and until when that is believed
/// (networks sharing a masquerade address may have different ranges).
#[repr(C)]
pub struct Full {
    until_ns: u64,
    port_min: u16,
    port_max: u16,
    _pad: u32,
}
const FULL_FOR_NS: u64 = 1_000_000_000;

/// Primes above 65536: each is coprime to any port-class size (at most
/// 32768), and so is its remainder by that size, so a stride of
/// `prime % size` visits every port of the class exactly once before it
/// comes back to where it started. A random one per search keeps the
/// order unpredictable (RFC 6056) and, unlike a stride of 1, does not pile
/// new flows onto the end of a run of taken ports.
const STRIDE_PRIMES: [u32; 8] = [65537, 97213, 113051, 287269, 334783, 350621, 445649, 540677];

/// One class of ports of the same parity: `len` ports from `base`, two
/// apart, walked from position `start` in steps of `stride`.
#[derive(Clone, Copy, Default)]
struct PortClass {
    base: u32,
    len: u32,
    start: u32,
    stride: u32,
}

impl PortClass {
    /// The ports of `lo..=hi` whose parity is `parity`, in a random order.
    #[inline(always)]
    fn new(lo: u32, hi: u32, parity: u32) -> PortClass {
        let base = if lo & 1 == parity { lo } else { lo + 1 };
        if base > hi {
            return PortClass::default();
        }
        let len = (hi - base) / 2 + 1;
        let r = unsafe { bpf_get_prandom_u32() };
        let prime = STRIDE_PRIMES[(r & 7) as usize];
        PortClass {
            base,
            len,
            start: (r >> 3).checked_rem(len).unwrap_or(0),
            stride: prime.checked_rem(len).unwrap_or(0),
        }
    }

    /// The `i`th port of the walk, `i < len`.
    #[inline(always)]
    fn nth(&self, i: u32) -> u32 {
        let pos = (u64::from(self.start) + u64::from(i) * u64::from(self.stride))
            .checked_rem(u64::from(self.len))
            .unwrap_or(0) as u32;
        self.base + 2 * pos
    }
}

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
    /// The network's `net_flags`.
    pub flags: u8,
    /// Search state: the destination was found full a moment ago.
    noted_full: bool,
    /// Search state: the guest's own port (tried first), the two parity
    /// classes (the guest port's own first, RFC 4787 REQ-4), and 0 once a
    /// port is claimed or the drop reason so far.
    wanted: u32,
    same: PortClass,
    other: PortClass,
    result: u32,
    /// The reply tuple of the port being tried, as a lookup key: kept here
    /// rather than on the stack, which an IPv6 tuple would strain.
    probe: K,
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
        // Field by field: a whole struct literal would be built on the
        // stack first (130 bytes for IPv6) and then copied. The search
        // state is set by `snat_new`.
        slot.orig = *orig;
        slot.xlate = *orig;
        slot.nat_addr = nat_addr;
        slot.port_min = net.port_min;
        slot.port_max = net.port_max;
        slot.bridge = bridge;
        slot.uplink = uplink;
        slot.bytes = bytes;
        slot.icmp_type = l4.icmp_type;
        slot.tcp_flags = l4.tcp_flags;
        slot.kind = nat_kind::SNAT;
        slot.flags = net.flags;
        slot.result = 0;
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
/// returned.
///
/// The port (RFC 6056's spirit, RFC 4787 REQ-3 and REQ-4): the guest's own
/// source port when it is in the range and free; otherwise every port of
/// the range with the same parity, then every one of the other parity,
/// each class from a random start with a random stride, until one is free
/// towards this destination. A flow is refused only when the whole range
/// is taken towards it.
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
    // The attempts run in `try_port`, which reaches the request through
    // its per-CPU slot, not through `req`: the compiler cannot see that
    // bpf_loop changes it, so the state goes through volatile accesses.
    // The first attempt sets up the rest of the search, in the callback's
    // stack frame rather than this one.
    let slot: *mut SnatRequest<K> = req;
    unsafe {
        K::store_source(&raw mut (*slot).xlate, nat_addr);
        core::ptr::write_volatile(&mut (*slot).result, reason::DROP_PORTS_EXHAUSTED);
    }
    let tries = 1 + (hi - lo + 1);
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

/// Sets up the walk: the guest's own port, and its two parity classes;
/// true when the destination was found full less than a second ago.
/// Not inlined: the callback's frame is on the deepest call chain of the
/// NAT66 program (program, `snat_new`, `try_port`, `ct::create`), and this
/// arithmetic would add its spills to it.
#[inline(never)]
fn start_search<K: Masquerade>(s: &mut SnatRequest<K>) -> bool {
    let lo = u32::from(s.port_min);
    let hi = u32::from(s.port_max);
    let wanted = u32::from(u16::from_be(s.orig.sport()));
    let parity = wanted & 1;
    s.same = PortClass::new(lo, hi, parity);
    s.other = PortClass::new(lo, hi, parity ^ 1);
    // Out of the range: no preferred port.
    s.wanted = if wanted >= lo && wanted <= hi {
        wanted
    } else {
        0
    };
    if s.kind == nat_kind::SNAT && s.flags & net_flags::EIM != 0 {
        // An endpoint-independent mapping keeps its port.
        let own = K::own_port(s);
        if own >= lo && own <= hi {
            s.wanted = own;
        }
    }
    full_key(s);
    match K::full().get_ptr(&s.probe) {
        Some(f) => unsafe {
            (*f).until_ns > ct::now() && (*f).port_min == s.port_min && (*f).port_max == s.port_max
        },
        None => false,
    }
}

/// `s.probe` := the `FULL` key of the request's destination: its reply
/// tuple with masquerade port 0.
#[inline(always)]
fn full_key<K: Masquerade>(s: &mut SnatRequest<K>) {
    s.xlate.set_sport(0);
    K::reverse_into(&s.xlate, &mut s.probe);
}

/// Notes that no port is free towards the request's destination.
#[inline(never)]
fn remember_full<K: Masquerade>(s: &mut SnatRequest<K>) {
    full_key(s);
    let f = Full {
        until_ns: ct::now() + FULL_FOR_NS,
        port_min: s.port_min,
        port_max: s.port_max,
        _pad: 0,
    };
    let _ = K::full().insert(&s.probe, &f, 0);
}

/// Attempt `index` of the port search: 0 is the guest's own port, then
/// the ports of its parity, then the others. Returns 1 to stop the loop.
extern "C" fn try_port<K: Masquerade>(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = K::request() else {
        return 1;
    };
    let s = unsafe { &mut *s };
    let i = index as u32;
    if i == 0 {
        s.noted_full = start_search(s);
    }
    let r = attempt(s, i);
    if r == 0 && i == 0 && s.noted_full {
        // Found full a moment ago and the preferred port is taken too:
        // refused without the walk.
        return 1;
    }
    if r == 0 && i == s.same.len + s.other.len {
        // The last port of the range is taken too.
        remember_full(s);
    }
    r
}

/// Attempt `i` (see `try_port`): 1 when the search is over.
#[inline(always)]
fn attempt<K: Masquerade>(s: &mut SnatRequest<K>, i: u32) -> i64 {
    let port = if i == 0 {
        s.wanted
    } else if i <= s.same.len {
        s.same.nth(i - 1)
    } else {
        s.other.nth(i - 1 - s.same.len)
    };
    if port == 0 || (i != 0 && port == s.wanted) {
        // No preferred port, or the preferred one again: tried already.
        return 0;
    }
    let p = (port as u16).to_be();
    if K::port_forwarded(s.nat_addr, p, s.orig.proto()) {
        return 0;
    }
    if s.kind == nat_kind::SNAT && K::held_by_other(s, p) {
        // Another guest end's endpoint-independent mapping.
        return 0;
    }
    s.xlate.set_sport(p);
    // A lookup first: a failed insert into the LRU table costs far more
    // (it takes a free element, or evicts one, before it finds the key).
    K::reverse_into(&s.xlate, &mut s.probe);
    if ct::lookup(&s.probe).is_some() {
        return 0;
    }
    match s.create() {
        Ok(()) => {
            s.result = 0;
            if s.kind == nat_kind::SNAT && s.flags & net_flags::EIM != 0 {
                K::record_mapping(s);
            }
            1
        }
        Err(CreateError::Full) => {
            s.result = reason::DROP_CT_FULL;
            1
        }
        Err(CreateError::Taken) => 0,
    }
}

/// Fair-sharing limits by bridge ifindex (see `NatLimits`).
#[map(name = "NETD_NAT_LIMITS")]
pub static LIMITS: aya_ebpf::maps::HashMap<u32, NatLimits> =
    aya_ebpf::maps::HashMap::pinned(netd_common::MAX_NETWORKS, 0);

/// Masqueraded flows per guest address (see `GuestFlows`).
#[map(name = "NETD_GUEST_FLOWS")]
pub static GUEST_FLOWS: aya_ebpf::maps::HashMap<u32, GuestFlows> =
    aya_ebpf::maps::HashMap::pinned(netd_common::GUEST_FLOWS_MAX_ENTRIES, 0);

/// Whether the guest end of `key`, on the network on `bridge` (with
/// `net_flags` `flags`), is over one of the network's fair-sharing limits:
/// as many masqueraded flows open as one guest may have, or, needing a new
/// endpoint-independent mapping, as many mappings as one guest may hold.
#[inline(always)]
pub fn over_quota(bridge: u32, flags: u8, key: &CtKey) -> bool {
    let Some(l) = (unsafe { LIMITS.get(&bridge) }) else {
        return false;
    };
    let (max_flows, max_ports) = (l.max_flows_per_guest, l.max_ports_per_guest);
    let Some(used) = (unsafe { GUEST_FLOWS.get(&key.saddr) }) else {
        return false;
    };
    if max_flows != 0 && used.flows >= max_flows {
        return true;
    }
    max_ports != 0
        && flags & net_flags::EIM != 0
        && used.ports >= max_ports
        && !mapping::has_live(key.saddr, key.sport, key.proto)
}

/// Counts a new masqueraded flow of `guest`, for networks with a limit.
#[inline(always)]
pub fn count_flow(bridge: u32, guest: u32) {
    if unsafe { LIMITS.get(&bridge) }.is_none() {
        return;
    }
    match GUEST_FLOWS.get_ptr_mut(&guest) {
        Some(f) => unsafe { (*f).flows += 1 },
        None => {
            let one = GuestFlows { flows: 1, ports: 0 };
            let _ = GUEST_FLOWS.insert(&guest, &one, 0);
        }
    }
}

/// Counts a new endpoint-independent mapping of `guest` (its flow is
/// counted by `count_flow`, which runs after).
#[inline(always)]
pub fn count_mapping(bridge: u32, guest: u32) {
    if unsafe { LIMITS.get(&bridge) }.is_none() {
        return;
    }
    match GUEST_FLOWS.get_ptr_mut(&guest) {
        Some(f) => unsafe { (*f).ports += 1 },
        None => {
            let one = GuestFlows { flows: 0, ports: 1 };
            let _ = GUEST_FLOWS.insert(&guest, &one, 0);
        }
    }
}

/// The verdict on a new flow `snat_new` could not serve: a full port range
/// is answered with ICMP "administratively prohibited" from the gateway
/// (RFC 5508 REQ-8), so the guest's application fails at once instead of
/// retrying into silence, and so is a guest over its quota; anything else
/// is a plain drop.
#[inline(always)]
pub fn refused(ctx: &mut TcContext, net: &NetConfig, bridge: u32, ip: &Ipv4, why: u32) -> i32 {
    if why == reason::DROP_PORTS_EXHAUSTED || why == reason::DROP_GUEST_QUOTA {
        return reject::unreachable(
            ctx,
            bridge,
            ip,
            net.gateway,
            reject::refusal(reject::CODE_ADMIN_PROHIBITED, why),
        );
    }
    crate::stats::drop(why, ctx.len())
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
