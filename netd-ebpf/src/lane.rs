//! Guests in their lane: which sources a guest may use (never its gateway's
//! address, nor the subnet's network or broadcast address; on strict
//! networks only the MAC/IPv4 pair bound to it, as libvirt's nwfilter
//! `clean-traffic` does), and what of the host it may reach
//! (`host_access = "dhcp-dns"`). Every refusal has a reason of its own.
//!
//! The checks run at the bridge's ingress, so they guard what reaches the
//! host and what it routes; frames one guest sends to another on the same
//! bridge are switched by the bridge and never pass here.

use aya_ebpf::programs::TcContext;
use netd_common::{BindingKey, NetConfig, mode, net_flags, reason};

use crate::ipv6::Ipv6;
use crate::maps::{BINDINGS, GATEWAYS6};
use crate::parse::{
    self, ETH_LEN, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHOREPLY, ICMP_TIME_EXCEEDED, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ipv4, TCP_ACK, TCP_SYN,
};
use crate::{reject, stats};

pub const ETH_P_ARP: u16 = 0x0806;

const DNS: u16 = 53;
const DHCP_SERVER: u16 = 67;
const DHCP_CLIENT: u16 = 68;
const DHCP6_SERVER: u16 = 547;

#[inline(always)]
pub fn strict(net: &NetConfig) -> bool {
    net.flags & net_flags::STRICT != 0
}

#[inline(always)]
pub fn host_restricted(net: &NetConfig) -> bool {
    net.flags & net_flags::HOST_DHCP_DNS != 0
}

/// Whether the network filters its guests' sources at all: open networks
/// filter nothing (libvirt's `open` mode adds no rules either).
#[inline(always)]
pub fn filters_sources(net: &NetConfig) -> bool {
    net.mode != mode::OPEN
}

/// The reason no guest may send from `saddr` (wire order), or 0: the
/// gateway's address, and the subnet's network and broadcast addresses
/// (which /31 and /32 subnets do not have, RFC 3021).
#[inline(always)]
pub fn special_source(net: &NetConfig, saddr: u32) -> u32 {
    if net.gateway == 0 {
        return 0;
    }
    if saddr == net.gateway {
        return reason::DROP_SPOOF_GATEWAY;
    }
    let host_bits = !net.mask;
    if u32::from_be(host_bits) < 3 {
        return 0;
    }
    if saddr == net.subnet {
        return reason::DROP_SPOOF_NETWORK;
    }
    if saddr == net.subnet | host_bits {
        return reason::DROP_SPOOF_BROADCAST;
    }
    0
}

/// The subnet's directed broadcast address, wire order.
#[inline(always)]
pub fn subnet_broadcast(net: &NetConfig) -> u32 {
    net.subnet | !net.mask
}

/// The IPv4 address bound to the frame's source MAC on `bridge`, or 0
/// (never a valid binding). Not an Option: see `ipv6::subnet_owner`.
#[inline(always)]
fn bound_addr(ctx: &TcContext, bridge: u32) -> u32 {
    let Ok(mac) = ctx.load::<[u8; 6]>(6) else {
        return 0;
    };
    let key = BindingKey {
        bridge_ifindex: bridge,
        mac,
        _pad: [0; 2],
    };
    match unsafe { BINDINGS.get(&key) } {
        Some(b) => b.addr,
        None => 0,
    }
}

/// Whether the frame's source MAC has a binding on `bridge`.
#[inline(always)]
pub fn mac_bound(ctx: &TcContext, bridge: u32) -> bool {
    bound_addr(ctx, bridge) != 0
}

/// A DHCP client that has no address yet: 0.0.0.0, UDP 68 -> 67.
#[inline(always)]
fn is_dhcp_client(ctx: &TcContext, ip: &Ipv4) -> bool {
    if ip.proto != IPPROTO_UDP || ip.is_later_fragment() {
        return false;
    }
    match ctx.load::<[u8; 4]>(ip.l4_off()) {
        Ok(p) => p == [0, DHCP_CLIENT as u8, 0, DHCP_SERVER as u8],
        Err(_) => false,
    }
}

/// Strict networks, IPv4: the source must be the address bound to the
/// frame's MAC, or 0.0.0.0 for a DHCP client asking for one.
#[inline(always)]
pub fn ipv4_bound(ctx: &TcContext, bridge: u32, ip: &Ipv4) -> bool {
    if ip.saddr == 0 {
        return is_dhcp_client(ctx, ip);
    }
    bound_addr(ctx, bridge) == ip.saddr
}

/// ARP from a guest. Its sender address may never be a special one; on
/// strict networks the sender MAC must be the frame's and the sender
/// address the one bound to it (or 0.0.0.0: an RFC 5227 probe). Returns
/// the reason to drop it, or 0.
#[inline(always)]
pub fn arp(ctx: &TcContext, net: &NetConfig, bridge: u32) -> u32 {
    let Ok(a) = ctx.load::<[u8; 28]>(ETH_LEN) else {
        // Too short to be ARP over Ethernet/IPv4: the kernel ignores it,
        // a strict network refuses it.
        return if strict(net) { reason::DROP_BINDING } else { 0 };
    };
    let spa = u32::from_ne_bytes([a[14], a[15], a[16], a[17]]);
    if filters_sources(net) {
        let r = special_source(net, spa);
        if r != 0 {
            return r;
        }
    }
    if !strict(net) {
        return 0;
    }
    // Ethernet (1), IPv4 (0x0800), 6-byte and 4-byte addresses.
    if a[0] != 0 || a[1] != 1 || a[2] != 8 || a[3] != 0 || a[4] != 6 || a[5] != 4 {
        return reason::DROP_BINDING;
    }
    let Ok(src) = ctx.load::<[u8; 6]>(6) else {
        return reason::DROP_BINDING;
    };
    if a[8..14] != src {
        return reason::DROP_BINDING;
    }
    if spa == 0 || bound_addr(ctx, bridge) == spa {
        0
    } else {
        reason::DROP_BINDING
    }
}

/// `host_access = "dhcp-dns"`: what a guest may send to one of the host's
/// addresses: DHCP, DNS and ICMP echo (and ICMP errors about the host's
/// own packets). A TCP segment that is not a bare SYN cannot open a
/// connection, so it passes: it is either part of a connection the host
/// opened (ssh from the host to the guest) or answered with a reset.
#[inline(always)]
pub fn host_allows(ctx: &TcContext, ip: &Ipv4) -> bool {
    if ip.is_later_fragment() {
        return false;
    }
    let Ok(l4) = parse::l4(ctx, ip) else {
        return false;
    };
    match ip.proto {
        IPPROTO_UDP => l4.dport == DNS.to_be() || l4.dport == DHCP_SERVER.to_be(),
        IPPROTO_TCP => l4.dport == DNS.to_be() || l4.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN,
        IPPROTO_ICMP => matches!(
            l4.icmp_type,
            ICMP_ECHO | ICMP_ECHOREPLY | ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED
        ),
        _ => false,
    }
}

/// Applies the host policy to a packet addressed to the host: passes what
/// [`host_allows`], answers refused TCP and UDP to a unicast address with
/// a port-unreachable (the guest's connect() fails at once), drops the rest.
#[inline(always)]
pub fn to_host(ctx: &mut TcContext, net: &NetConfig, bridge: u32, ip: &Ipv4, len: u32) -> i32 {
    if host_allows(ctx, ip) {
        return stats::pass(reason::PASS, len);
    }
    // An answer needs somebody to go to, and a unicast packet to be about.
    let unicast = ip.saddr != 0
        && ip.daddr != u32::MAX
        && ip.daddr != subnet_broadcast(net)
        && (ip.daddr.to_ne_bytes()[0] & 0xf0) != 0xe0;
    if unicast && matches!(ip.proto, IPPROTO_TCP | IPPROTO_UDP) {
        return reject::port_unreachable(ctx, bridge, ip, net.gateway, reason::DROP_HOST_ACCESS);
    }
    stats::drop(reason::DROP_HOST_ACCESS, len)
}

/// Whether `saddr` is the IPv6 router address of `bridge`.
#[inline(always)]
pub fn is_gateway6(bridge: u32, saddr: &[u32; 4]) -> bool {
    match unsafe { GATEWAYS6.get(&bridge) } {
        Some(g) => {
            (g[0] ^ saddr[0]) | (g[1] ^ saddr[1]) | (g[2] ^ saddr[2]) | (g[3] ^ saddr[3]) == 0
        }
        None => false,
    }
}

/// [`host_allows`] for IPv6: DHCPv6, DNS and ICMPv6 (neighbour discovery
/// and router solicitations need it, echo is asked for). Extension headers
/// are not walked: a packet with any is refused.
#[inline(always)]
pub fn host_allows6(ctx: &TcContext, ip: &Ipv6) -> bool {
    let off = ETH_LEN + 40;
    match ip.next_header {
        IPPROTO_ICMPV6 => true,
        IPPROTO_UDP => match ctx.load::<[u8; 4]>(off) {
            Ok(p) => {
                let dport = u16::from_be_bytes([p[2], p[3]]);
                dport == DNS || dport == DHCP6_SERVER
            }
            Err(_) => false,
        },
        IPPROTO_TCP => match ctx.load::<[u8; 14]>(off) {
            Ok(h) => {
                let dport = u16::from_be_bytes([h[2], h[3]]);
                dport == DNS || h[13] & (TCP_SYN | TCP_ACK) != TCP_SYN
            }
            Err(_) => false,
        },
        _ => false,
    }
}
