//! Types shared by the BPF programs and the userspace daemon.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so the layout
//! is identical on both sides and no uninitialised bytes reach a hash key.
//! Addresses and ports are stored in network byte order, exactly as they
//! appear on the wire, so the datapath never swaps bytes.
#![no_std]

/// Pinned map names. The daemon and the `netd bpf` commands open these under
/// the bpffs directory.
pub mod maps {
    pub const NETWORKS: &str = "NETD_NETWORKS";
    pub const SUBNETS: &str = "NETD_SUBNETS";
    pub const SUBNETS6: &str = "NETD_SUBNETS6";
    pub const UPLINKS: &str = "NETD_UPLINKS";
    pub const CONNTRACK: &str = "NETD_CT";
    pub const CONNTRACK6: &str = "NETD_CT6";
    pub const FRAGS: &str = "NETD_FRAGS";
    pub const FORWARDS: &str = "NETD_FORWARDS";
    pub const STATS: &str = "NETD_STATS";
    pub const NET_STATS: &str = "NETD_NET_STATS";
    pub const SETTINGS: &str = "NETD_SETTINGS";
    pub const FORWARDS_REV: &str = "NETD_FWD_REV";
    pub const TAILS: &str = "NETD_TAILS";
    /// Strict networks: the MAC/IPv4 pair each guest may send from.
    pub const BINDINGS: &str = "NETD_BINDINGS";
    /// Each network's IPv6 router address (no guest may send from it).
    pub const GATEWAYS6: &str = "NETD_GATEWAYS6";
    pub const NAT_MAPPINGS: &str = "NETD_NAT_MAP";
    pub const NAT_LIMITS: &str = "NETD_NAT_LIMITS";
    pub const GUEST_FLOWS: &str = "NETD_GUEST_FLOWS";
    pub const NAT_TIMEOUTS: &str = "NETD_NAT_TIMEOUTS";
    pub const ALL: &[&str] = &[
        NETWORKS,
        SUBNETS,
        SUBNETS6,
        UPLINKS,
        CONNTRACK,
        CONNTRACK6,
        FRAGS,
        FORWARDS,
        FORWARDS_REV,
        STATS,
        NET_STATS,
        SETTINGS,
        TAILS,
        BINDINGS,
        GATEWAYS6,
        NAT_MAPPINGS,
        NAT_LIMITS,
        GUEST_FLOWS,
        NAT_TIMEOUTS,
    ];
}

/// Program names (the function names in netd-ebpf/src/main.rs).
pub mod progs {
    pub const BRIDGE_INGRESS: &str = "netd_bridge_ingress";
    pub const BRIDGE_EGRESS: &str = "netd_bridge_egress";
    pub const UPLINK_INGRESS: &str = "netd_uplink_ingress";
    pub const UPLINK_EGRESS: &str = "netd_uplink_egress";
    /// Tail-called for the first packet of a flow from a guest.
    pub const BRIDGE_NEW_FLOW: &str = "netd_bridge_new_flow";
    /// Tail-called for a packet no connection knows at the uplink.
    pub const UPLINK_NEW_FLOW: &str = "netd_uplink_new_flow";
    /// Tail-called for IPv6 from a guest of a NAT66 network.
    pub const NAT66: &str = "netd_nat66";
    /// Tail-called for IPv6 at a bridge's and an uplink's ingress.
    pub const BRIDGE_IPV6: &str = "netd_bridge_ipv6";
    pub const UPLINK_IPV6: &str = "netd_uplink_ipv6";
    pub const CONNECT4: &str = "netd_connect4";
    pub const SENDMSG4: &str = "netd_sendmsg4";
    pub const RECVMSG4: &str = "netd_recvmsg4";
}

/// Slots of the tail-call program array. The first packet of a flow takes
/// a second program: policy, port search and forwards live there, so each
/// program stays small enough for the verifier.
pub mod tail {
    pub const BRIDGE_NEW_FLOW: u32 = 0;
    pub const UPLINK_NEW_FLOW: u32 = 1;
    pub const NAT66: u32 = 2;
    pub const BRIDGE_IPV6: u32 = 3;
    pub const UPLINK_IPV6: u32 = 4;
    pub const COUNT: u32 = 5;
}

pub const MAX_NETWORKS: u32 = 256;
pub const MAX_UPLINKS: u32 = 64;
pub const CT_MAX_ENTRIES: u32 = 262_144;
pub const FRAG_MAX_ENTRIES: u32 = 8_192;
pub const FORWARD_MAX_ENTRIES: u32 = 131_072;
pub const BINDING_MAX_ENTRIES: u32 = 65_536;

/// Network modes as the datapath sees them.
pub mod mode {
    pub const NAT: u8 = 1;
    pub const ROUTE: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const ISOLATED: u8 = 4;
}

/// One netd network, keyed by its bridge's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Subnet address and mask, network byte order.
    pub subnet: u32,
    pub mask: u32,
    /// The bridge's own address (the guests' gateway), network byte order.
    pub gateway: u32,
    /// Fixed masquerade address (libvirt's `<nat><address>`), or 0 to use
    /// the uplink's current address.
    pub nat_addr: u32,
    /// Masquerade port range, host byte order, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    /// Restrict forwarding to this uplink (libvirt's `forward dev=`), 0 = any.
    pub uplink_ifindex: u32,
    pub mode: u8,
    /// `net_flags::*`.
    pub flags: u8,
    pub _pad: [u8; 2],
}

pub mod net_flags {
    /// IPv6 is masqueraded (libvirt's `<nat ipv6='yes'>`) instead of routed.
    pub const NAT66: u8 = 1;
    /// `strict = true`: guests send only from the MAC/IPv4 pair bound to
    /// them (NETD_BINDINGS), ARP included.
    pub const STRICT: u8 = 2;
    /// `host_access = "dhcp-dns"`: guests reach only DHCP, DNS and ICMP on
    /// the host's addresses.
    pub const HOST_DHCP_DNS: u8 = 4;
    /// Endpoint-independent mapping (RFC 4787 REQ-1): a guest address and
    /// port keep one outside port for every destination.
    pub const EIM: u8 = 8;
    /// Endpoint-independent filtering (RFC 4787 REQ-8): any outside host
    /// may send to a mapped port while the mapping lives.
    pub const EIF: u8 = 16;
    /// Address-dependent filtering: hosts the guest has sent to may send
    /// to its mapped port from any of their ports.
    pub const ADF: u8 = 32;
    /// Guests' SYNs get their MSS clamped to the uplink's MTU.
    pub const CLAMP_MSS: u8 = 64;
}

/// Key of NETD_BINDINGS: a guest's MAC on one bridge.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingKey {
    pub bridge_ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The IPv4 address (wire order) a bound MAC may send from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    pub addr: u32,
    pub _pad: u32,
}

/// Key of the subnets LPM trie: which network owns an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubnetKey {
    pub prefixlen: u32,
    pub addr: u32,
}

/// An uplink, keyed by ifindex: its current primary IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uplink {
    pub addr: u32,
    pub _pad: u32,
    /// The uplink's global IPv6 address for NAT66 (wire-order words), all
    /// zero when none.
    pub addr6: [u32; 4],
}

/// A connection tuple exactly as it appears on the wire. For ICMP echo the
/// identifier stands in for a port: a request is (id, 0), a reply (0, id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The tuple a packet travelling the other way carries.
    pub const fn reversed(&self) -> CtKey {
        CtKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// Conntrack entry directions.
pub mod dir {
    /// Key is the tuple the connection's initiator sends.
    pub const ORIGINAL: u8 = 0;
    /// Key is the tuple of the replies.
    pub const REPLY: u8 = 1;
}

/// Conntrack states.
pub mod ct_state {
    pub const NEW: u8 = 0;
    pub const ESTABLISHED: u8 = 1;
    pub const CLOSING: u8 = 2;
}

/// Kinds of translation an entry applies.
pub mod nat_kind {
    pub const NONE: u8 = 0;
    /// Masquerade: originals get their source rewritten.
    pub const SNAT: u8 = 1;
    /// Port forward: originals get their destination rewritten.
    pub const DNAT: u8 = 2;
}

/// One direction of a tracked connection.
///
/// `xlate` is the tuple a matching packet leaves with: for an SNAT original
/// it is (nat addr:port -> peer), for its reply (peer -> guest addr:port).
/// The entry for the other direction is keyed by `xlate.reversed()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryOf<K> {
    pub xlate: K,
    /// CLOCK_MONOTONIC nanoseconds.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub expires_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Bridge of the network the guest end lives on.
    pub bridge_ifindex: u32,
    /// Uplink the translated side uses.
    pub uplink_ifindex: u32,
    pub dir: u8,
    pub state: u8,
    pub nat: u8,
    /// TCP flags seen in this direction (FIN=1, SYN=2, RST=4, ACK=16).
    pub tcp_flags: u8,
    /// The network's own timeouts when it sets them, packed by
    /// `NatTimeouts::packed` at creation; 0: the global `Settings`.
    pub timeouts: u32,
}

/// An IPv4 conntrack entry.
pub type CtEntry = CtEntryOf<CtKey>;
/// An IPv6 conntrack entry (NAT66).
pub type CtEntry6 = CtEntryOf<CtKey6>;

/// An IPv6 connection tuple, as on the wire (NAT66 only; routed IPv6 is
/// not tracked).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey6 {
    /// Addresses as four wire-order words (as loaded from the packet): the
    /// BPF side keeps them in four registers instead of sixteen bytes.
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey6 {
    pub const fn reversed(&self) -> CtKey6 {
        CtKey6 {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// Key for following non-first fragments of a translated datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Ports of a fragmented datagram, learnt from its first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
    pub expires_ns: u64,
}

/// A port forward, keyed by (proto, host address, host port). The daemon
/// writes one key per host address, so the datapath makes one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ForwardKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardTarget {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    pub bridge_ifindex: u32,
    pub _pad2: u32,
    pub hits: u64,
}

/// A packets-and-bytes counter, one per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-network traffic counters, keyed by bridge ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// From guests, seen at the bridge's ingress.
    pub from_guests: Counter,
    /// To guests, translated back at the uplink or bridge egress.
    pub to_guests: Counter,
}

/// Why a packet was counted: indexes of the per-CPU STATS array.
pub mod reason {
    pub const PASS: u32 = 0;
    pub const SNAT: u32 = 1;
    pub const REVERSE_NAT: u32 = 2;
    pub const CT_NEW: u32 = 3;
    pub const REDIRECT: u32 = 4;
    pub const SLOW_PATH: u32 = 5;
    pub const DROP_MALFORMED: u32 = 6;
    pub const DROP_SPOOFED: u32 = 7;
    pub const DROP_POLICY: u32 = 8;
    pub const DROP_PORTS_EXHAUSTED: u32 = 9;
    pub const DROP_CT_FULL: u32 = 10;
    pub const DROP_NO_UPLINK_ADDR: u32 = 11;
    pub const DROP_FRAG_UNKNOWN: u32 = 12;
    pub const DNAT: u32 = 13;
    pub const DROP_UPLINK_RESTRICTED: u32 = 14;
    pub const CSUM_FILLED: u32 = 15;
    pub const REJECT_SENT: u32 = 16;
    /// A guest sent from its gateway's address (IPv4 or IPv6).
    pub const DROP_SPOOF_GATEWAY: u32 = 17;
    /// A guest sent from its subnet's network address.
    pub const DROP_SPOOF_NETWORK: u32 = 18;
    /// A guest sent from its subnet's broadcast address.
    pub const DROP_SPOOF_BROADCAST: u32 = 19;
    /// Strict network: the frame's MAC/IP pair is not the guest's binding.
    pub const DROP_BINDING: u32 = 20;
    /// `host_access = "dhcp-dns"`: something other than DHCP, DNS or ICMP
    /// addressed to the host.
    pub const DROP_HOST_ACCESS: u32 = 21;
    /// A guest over its network's `nat.max_flows_per_guest`.
    pub const DROP_GUEST_QUOTA: u32 = 22;
    pub const COUNT: u32 = 23;

    /// Names for the CLI and metrics, indexed by reason.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass",
        "snat",
        "reverse_nat",
        "ct_new",
        "redirect",
        "slow_path",
        "drop_malformed",
        "drop_spoofed",
        "drop_policy",
        "drop_ports_exhausted",
        "drop_ct_full",
        "drop_no_uplink_addr",
        "drop_frag_unknown",
        "dnat",
        "drop_uplink_restricted",
        "csum_filled",
        "reject_sent",
        "drop_spoof_gateway",
        "drop_spoof_network",
        "drop_spoof_broadcast",
        "drop_binding",
        "drop_host_access",
        "drop_guest_quota",
    ];

    pub const fn is_drop(r: u32) -> bool {
        matches!(r, 6..=12 | 14 | 17..=22)
    }
}

/// Global datapath settings, slot 0 of the SETTINGS array. Timeouts in seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub tcp_syn_timeout: u32,
    pub tcp_established_timeout: u32,
    pub tcp_closing_timeout: u32,
    pub udp_timeout: u32,
    pub icmp_timeout: u32,
    pub _pad: u32,
    /// The daemon's network namespace: the host-local forward programs act
    /// only on sockets there.
    pub netns_cookie: u64,
}

impl Settings {
    /// Linux nf_conntrack's defaults, shortened for established TCP to what
    /// Cilium uses: long enough for idle SSH sessions, short enough for GC.
    pub const DEFAULT: Settings = Settings {
        tcp_syn_timeout: 60,
        tcp_established_timeout: 21_600,
        tcp_closing_timeout: 10,
        udp_timeout: 60,
        icmp_timeout: 30,
        _pad: 0,
        netns_cookie: 0,
    };
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Key of the NAT mappings map (endpoint-independent mapping): one entry
/// per mapping for each way it is looked up, told apart by `kind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatMapKey {
    /// INSIDE: the guest's address; OUTSIDE: the masquerade address;
    /// PEER: the address of a host the guest sent to.
    pub addr: u32,
    /// INSIDE: the guest's port; OUTSIDE and PEER: the outside port.
    pub port: u16,
    pub proto: u8,
    pub kind: u8,
}

/// `NatMapKey::kind`.
pub mod map_kind {
    /// Guest address and port -> outside address and port.
    pub const INSIDE: u8 = 1;
    /// Outside address and port -> guest address and port.
    pub const OUTSIDE: u8 = 2;
    /// A host the guest sent to from a mapped port (address-dependent
    /// filtering lets it in).
    pub const PEER: u8 = 3;
}

/// The other end of a mapping (for PEER entries only `expires_ns` counts).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatMapping {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    /// Bridge of the guest's network.
    pub bridge_ifindex: u32,
    pub _pad2: u32,
    pub created_ns: u64,
    /// CLOCK_MONOTONIC; refreshed by each new outbound flow of the mapping.
    pub expires_ns: u64,
}

pub const NAT_MAP_MAX_ENTRIES: u32 = 131_072;

/// A NAT network's fair-sharing limits, keyed by bridge ifindex (absent or
/// 0: no limit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatLimits {
    pub max_flows_per_guest: u32,
    /// Endpoint-independent mappings (outside ports) one guest address may
    /// hold.
    pub max_ports_per_guest: u32,
}

/// Masqueraded flows of one guest address (wire order), counted by the
/// datapath as they open and recounted from conntrack by the daemon's GC,
/// which is what takes closed ones off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestFlows {
    pub flows: u32,
    /// Its live endpoint-independent mappings.
    pub ports: u32,
}

pub const GUEST_FLOWS_MAX_ENTRIES: u32 = 65_536;

/// A NAT network's own connection timeouts in seconds (RFC 4787 REQ-5,
/// RFC 5382 REQ-5), keyed by bridge ifindex; networks without one use the
/// global `Settings`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatTimeouts {
    pub udp: u32,
    pub tcp_established: u32,
    /// Half-open and closing connections.
    pub tcp_transitory: u32,
    /// `timeout_flags::*`.
    pub flags: u32,
}

pub mod timeout_flags {
    /// RFC 4787 REQ-6: only the guest's packets keep a UDP flow alive
    /// (`nat.refresh = "outbound"`); replies alone let it expire.
    pub const REFRESH_OUTBOUND: u32 = 1;
    /// Where `NatTimeouts::packed` carries it for UDP.
    pub const PACKED_REFRESH_OUTBOUND: u32 = 1 << 31;
}

impl NatTimeouts {
    /// The form a conntrack entry carries (`CtEntryOf::timeouts`), so the
    /// per-packet path needs no lookup: UDP the seconds; TCP established
    /// minutes (high 16 bits) and transitory seconds (low 16 bits).
    pub const fn packed(&self, proto: u8) -> u32 {
        match proto {
            17 => {
                let secs = if self.udp > 0xffff { 0xffff } else { self.udp };
                if self.flags & timeout_flags::REFRESH_OUTBOUND != 0 {
                    secs | timeout_flags::PACKED_REFRESH_OUTBOUND
                } else {
                    secs
                }
            }
            6 => {
                let est = self.tcp_established.div_ceil(60);
                let est = if est > 0xffff { 0xffff } else { est };
                let tr = if self.tcp_transitory > 0xffff {
                    0xffff
                } else {
                    self.tcp_transitory
                };
                (est << 16) | tr
            }
            _ => 0,
        }
    }

    /// The timeout in seconds of a connection in `state` from `packed`;
    /// None when it carries none.
    pub const fn unpack(packed: u32, proto: u8, established: bool) -> Option<u32> {
        match proto {
            17 => {
                let secs = packed & 0xffff;
                if secs == 0 { None } else { Some(secs) }
            }
            _ if packed == 0 => None,
            6 if established => Some((packed >> 16) * 60),
            6 => Some(packed & 0xffff),
            _ => None,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    macro_rules! pod {
        ($($t:ty),*) => { $( unsafe impl aya::Pod for $t {} )* };
    }
    pod!(
        NetConfig,
        SubnetKey,
        Uplink,
        CtKey,
        CtKey6,
        CtEntry,
        CtEntry6,
        FragKey,
        FragPorts,
        ForwardKey,
        ForwardTarget,
        Counter,
        NetStats,
        Settings,
        BindingKey,
        Binding,
        NatMapKey,
        NatMapping,
        NatLimits,
        GuestFlows,
        NatTimeouts
    );
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<NetConfig>(), 28);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(size_of::<CtEntry>(), 16 + 5 * 8 + 16);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(size_of::<FragPorts>(), 16);
        assert_eq!(size_of::<ForwardKey>(), 8);
        assert_eq!(size_of::<ForwardTarget>(), 24);
        assert_eq!(size_of::<Settings>(), 32);
        assert_eq!(size_of::<BindingKey>(), 12);
        assert_eq!(size_of::<Binding>(), 8);
        assert_eq!(size_of::<NatMapKey>(), 8);
        assert_eq!(size_of::<NatMapping>(), 32);
        assert_eq!(size_of::<NatTimeouts>(), 16);
    }

    #[test]
    fn every_drop_reason_is_named_drop() {
        for (i, name) in reason::NAMES.iter().enumerate() {
            assert_eq!(
                reason::is_drop(i as u32),
                name.starts_with("drop_"),
                "{name}"
            );
        }
    }

    #[test]
    fn timeouts_pack_and_unpack() {
        let t = NatTimeouts {
            udp: 150,
            tcp_established: 7440,
            tcp_transitory: 240,
            flags: 0,
        };
        assert_eq!(NatTimeouts::unpack(t.packed(17), 17, false), Some(150));
        // The refresh direction rides along for UDP, global timeout or not.
        let out = NatTimeouts {
            flags: timeout_flags::REFRESH_OUTBOUND,
            ..t
        };
        assert_eq!(out.packed(17), 150 | timeout_flags::PACKED_REFRESH_OUTBOUND);
        assert_eq!(NatTimeouts::unpack(out.packed(17), 17, false), Some(150));
        let only = NatTimeouts {
            flags: timeout_flags::REFRESH_OUTBOUND,
            ..NatTimeouts::default()
        };
        assert_eq!(NatTimeouts::unpack(only.packed(17), 17, false), None);
        assert_eq!(only.packed(6), 0);
        assert_eq!(NatTimeouts::unpack(t.packed(6), 6, true), Some(7440));
        assert_eq!(NatTimeouts::unpack(t.packed(6), 6, false), Some(240));
        assert_eq!(NatTimeouts::unpack(t.packed(1), 1, false), None);
        assert_eq!(NatTimeouts::unpack(0, 17, false), None);
        // Established rounds up to whole minutes, never below what was set.
        let odd = NatTimeouts {
            tcp_established: 7441,
            ..t
        };
        assert_eq!(NatTimeouts::unpack(odd.packed(6), 6, true), Some(7500));
    }

    #[test]
    fn reversed_swaps_ends() {
        let k = CtKey {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto: 6,
            _pad: [0; 3],
        };
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(k.reversed().saddr, 2);
        assert_eq!(k.reversed().sport, 4);
    }
}
