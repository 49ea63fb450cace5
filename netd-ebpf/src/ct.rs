//! Connection tracking. A connection has two entries, one keyed by the tuple
//! each direction carries on the wire, each holding the tuple to rewrite
//! that direction into. Both are written together, with a rollback when the
//! second write fails, so a lookup never finds half a connection.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, maps::LruHashMap};
use aya_ebpf::{macros::map, maps::HashMap};
use netd_common::{
    CtEntryOf, CtKey, CtKey6, MAX_NETWORKS, NatTimeouts, ct_state, dir, nat_kind, timeout_flags,
};

/// NAT networks' own timeouts, by bridge ifindex.
#[map(name = "NETD_NAT_TIMEOUTS")]
pub static NAT_TIMEOUTS: HashMap<u32, NatTimeouts> = HashMap::pinned(MAX_NETWORKS, 0);

use crate::maps::{CT, CT6, SCRATCH, SCRATCH6, settings};
use crate::parse::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// A tuple conntrack can key: IPv4 or IPv6, each with its own table.
pub trait Tuple: Copy + 'static {
    fn reversed(&self) -> Self;
    fn proto(&self) -> u8;
    fn table() -> &'static LruHashMap<Self, CtEntryOf<Self>>;
    /// A per-CPU slot to build an entry in.
    fn scratch() -> Option<*mut CtEntryOf<Self>>;
}

impl Tuple for CtKey {
    #[inline(always)]
    fn reversed(&self) -> Self {
        CtKey::reversed(self)
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn table() -> &'static LruHashMap<Self, CtEntryOf<Self>> {
        &CT
    }
    #[inline(always)]
    fn scratch() -> Option<*mut CtEntryOf<Self>> {
        SCRATCH.get_ptr_mut(0)
    }
}

impl Tuple for CtKey6 {
    #[inline(always)]
    fn reversed(&self) -> Self {
        CtKey6::reversed(self)
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn table() -> &'static LruHashMap<Self, CtEntryOf<Self>> {
        &CT6
    }
    #[inline(always)]
    fn scratch() -> Option<*mut CtEntryOf<Self>> {
        SCRATCH6.get_ptr_mut(0)
    }
}

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// A live (unexpired) entry.
#[inline(always)]
pub fn lookup<K: Tuple>(key: &K) -> Option<*mut CtEntryOf<K>> {
    let e = K::table().get_ptr_mut(key)?;
    if unsafe { (*e).expires_ns } < now() && !revive(e) {
        return None;
    }
    Some(e)
}

/// Whether the reply entry of a masqueraded UDP flow refreshed by the
/// guest's packets only (`nat.refresh = "outbound"`) lives on with its
/// original entry: the guest's packets refresh only that one, and replies
/// refresh nothing. It takes the original's expiry. Not inlined: it runs
/// only for expired entries, and its key copy stays off the callers' stack.
#[inline(never)]
fn revive<K: Tuple>(e: *mut CtEntryOf<K>) -> bool {
    let e = unsafe { &mut *e };
    if !refreshed_outbound(e) {
        return false;
    }
    let Some(orig) = K::table().get_ptr(&e.xlate.reversed()) else {
        return false;
    };
    let until = unsafe { (*orig).expires_ns };
    if until < now() {
        return false;
    }
    e.expires_ns = until;
    true
}

/// The reply side of a masqueraded UDP flow whose network refreshes on
/// outbound traffic only.
#[inline(always)]
fn refreshed_outbound<K: Tuple>(e: &CtEntryOf<K>) -> bool {
    e.dir == dir::REPLY
        && e.nat == nat_kind::SNAT
        && e.timeouts & timeout_flags::PACKED_REFRESH_OUTBOUND != 0
}

/// The timeout of a connection in `state`: the network's own when the
/// entry carries it (`timeouts`, see `NatTimeouts::packed`), else global.
#[inline(always)]
fn timeout_ns(proto: u8, state: u8, timeouts: u32) -> u64 {
    if let Some(secs) = NatTimeouts::unpack(timeouts, proto, state == ct_state::ESTABLISHED) {
        return u64::from(secs) * 1_000_000_000;
    }
    let s = settings();
    let secs = match proto {
        IPPROTO_TCP => match state {
            ct_state::ESTABLISHED => s.tcp_established_timeout,
            ct_state::CLOSING => s.tcp_closing_timeout,
            _ => s.tcp_syn_timeout,
        },
        IPPROTO_UDP => s.udp_timeout,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => s.icmp_timeout,
        _ => s.udp_timeout,
    };
    u64::from(secs) * 1_000_000_000
}

/// The state a TCP connection moves to when a segment with `flags` is seen
/// in direction `d`.
#[inline(always)]
fn next_state(state: u8, d: u8, flags: u8) -> u8 {
    if d == dir::ORIGINAL && flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
        // A fresh SYN on the tuple of a closing connection (a client reusing
        // its port) opens a new one: both entries get the handshake timeout
        // again, so the reply does not find them expired mid-handshake.
        return ct_state::NEW;
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        return ct_state::CLOSING;
    }
    if state == ct_state::NEW && d == dir::REPLY && flags & TCP_ACK != 0 {
        return ct_state::ESTABLISHED;
    }
    if state == ct_state::NEW && d == dir::ORIGINAL && flags & TCP_SYN == 0 && flags & TCP_ACK != 0
    {
        // An ACK from the initiator after the handshake we missed (for
        // example a flow picked up after a conntrack flush).
        return ct_state::ESTABLISHED;
    }
    state
}

/// Accounts a packet on `e` and advances the state; a state change is
/// mirrored onto the other direction's entry so both expire together.
#[inline(always)]
pub fn touch<K: Tuple>(e: *mut CtEntryOf<K>, proto: u8, tcp_flags: u8, bytes: u32) {
    let t = now();
    let e = unsafe { &mut *e };
    e.packets += 1;
    e.bytes += u64::from(bytes);
    e.last_seen_ns = t;
    let mut state = e.state;
    if proto == IPPROTO_TCP {
        e.tcp_flags |= tcp_flags;
        state = next_state(e.state, e.dir, tcp_flags);
    } else if e.dir == dir::REPLY {
        state = ct_state::ESTABLISHED;
    }
    // Replies do not refresh a flow that only the guest's packets may.
    let hold = proto == IPPROTO_UDP && refreshed_outbound(e);
    if !hold {
        e.expires_ns = t + timeout_ns(proto, state, e.timeouts);
    }
    if state != e.state {
        e.state = state;
        if let Some(peer) = K::table().get_ptr_mut(&e.xlate.reversed()) {
            let peer = unsafe { &mut *peer };
            peer.state = state;
            if !hold {
                peer.expires_ns = e.expires_ns;
            }
        }
    }
}

pub enum CreateError {
    /// The tuple the reply would carry is taken.
    Taken,
    /// The map refused the write.
    Full,
}

/// What a new connection records besides its tuples.
pub struct Origin {
    pub nat: u8,
    pub tcp_flags: u8,
    pub bridge: u32,
    pub uplink: u32,
    pub bytes: u32,
}

/// Writes both entries of a new connection. `orig` is the tuple the
/// initiator sends and `xlate` the tuple it leaves with; the reply entry is
/// keyed by `xlate.reversed()` and translates back to `orig.reversed()`.
///
/// Not inlined: its entry is the largest thing on the stack, and BPF gives
/// a whole call chain 512 bytes.
#[inline(never)]
pub fn create<K: Tuple>(orig: &K, xlate: &K, o: &Origin) -> Result<(), CreateError> {
    let (nat, bridge, uplink, tcp_flags, bytes) = (o.nat, o.bridge, o.uplink, o.tcp_flags, o.bytes);
    let t = now();
    let state = ct_state::NEW;
    // A network's own timeouts, looked up once here rather than per packet.
    let timeouts = match unsafe { NAT_TIMEOUTS.get(&bridge) } {
        Some(n) => n.packed(orig.proto()),
        None => 0,
    };
    let expires = t + timeout_ns(orig.proto(), state, timeouts);
    let reply_key = xlate.reversed();
    let table = K::table();
    // The entry is built in a per-CPU scratch slot, not on the stack: an
    // IPv6 entry is 120 bytes and the stack is 512 for the whole chain.
    let Some(e) = K::scratch() else {
        return Err(CreateError::Full);
    };
    let e = unsafe { &mut *e };
    *e = CtEntryOf {
        xlate: orig.reversed(),
        created_ns: t,
        last_seen_ns: t,
        expires_ns: expires,
        packets: 0,
        bytes: 0,
        bridge_ifindex: bridge,
        uplink_ifindex: uplink,
        dir: dir::REPLY,
        state,
        nat,
        tcp_flags: 0,
        timeouts,
    };
    // Claim the reply tuple first: it is the one two flows can race for.
    if table
        .insert(&reply_key, &*e, u64::from(BPF_NOEXIST))
        .is_err()
    {
        match table.get_ptr_mut(&reply_key) {
            Some(old) if unsafe { (*old).expires_ns } < t => {
                if table.insert(&reply_key, &*e, 0).is_err() {
                    return Err(CreateError::Full);
                }
            }
            _ => return Err(CreateError::Taken),
        }
    }
    e.xlate = *xlate;
    e.dir = dir::ORIGINAL;
    e.packets = 1;
    e.bytes = u64::from(bytes);
    e.tcp_flags = tcp_flags;
    if table.insert(orig, &*e, 0).is_err() {
        let _ = table.remove(&reply_key);
        return Err(CreateError::Full);
    }
    Ok(())
}
