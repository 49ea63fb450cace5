//! IPv6: routed in BPF under the same policy as IPv4, so a FORWARD DROP in
//! ip6tables does not cut guests off either. Neighbour discovery, router
//! advertisements and link-local traffic stay with the kernel.

use aya_ebpf::{
    bindings::{TC_ACT_OK, bpf_fib_lookup},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netd_common::{NetConfig, mode, net_flags, reason};

use crate::forward::{self, Route};
use crate::maps::{self, SUBNETS6};
use crate::parse::{ETH_LEN, Malformed};
use crate::stats;
use crate::{lane, nat66};

const AF_INET6: u8 = 10;
const HOP_LIMIT_OFF: usize = 7;

#[derive(Clone, Copy)]
pub struct Ipv6 {
    pub next_header: u8,
    pub hop_limit: u8,
    pub payload_len: u16,
    /// Wire-order words: four registers, where sixteen bytes would each be
    /// spilled to a stack slot of their own.
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Ipv6, Malformed> {
    let h: [u8; 8] = ctx.load(ETH_LEN).map_err(|_| Malformed)?;
    if h[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let saddr: [u32; 4] = ctx.load(ETH_LEN + 8).map_err(|_| Malformed)?;
    let daddr: [u32; 4] = ctx.load(ETH_LEN + 24).map_err(|_| Malformed)?;
    Ok(Ipv6 {
        next_header: h[6],
        hop_limit: h[7],
        payload_len: u16::from_be_bytes([h[4], h[5]]),
        saddr,
        daddr,
    })
}

/// Link-local (fe80::/10), multicast (ff00::/8) or unspecified: never routed.
#[inline(always)]
fn is_link_scope(a: &[u32; 4]) -> bool {
    let first = a[0].to_ne_bytes();
    first[0] == 0xff
        || (first[0] == 0xfe && first[1] & 0xc0 == 0x80)
        || (a[0] | a[1] | a[2] | a[3]) == 0
}

/// The netd network whose IPv6 prefix holds `addr`, by bridge ifindex, or
/// 0. Not an Option: LLVM leaves a None's payload undefined, reads it from
/// whatever register, and the verifier refuses uninitialised registers.
#[inline(always)]
pub fn subnet_owner(addr: &[u32; 4]) -> u32 {
    match SUBNETS6.get(Key::new(128, *addr)) {
        Some(v) => *v,
        None => 0,
    }
}

/// IPv6 that is routed, not masqueraded, counts as route mode for policy.
#[inline(always)]
fn routes_v6(net: &NetConfig) -> bool {
    match net.mode {
        mode::ROUTE | mode::OPEN => true,
        mode::NAT => net.flags & net_flags::NAT66 == 0,
        _ => false,
    }
}

/// Not inlined: the lookup's 64-byte parameter block stays off the stack
/// of the callers' deeper call chains.
#[inline(never)]
pub fn route(ctx: &TcContext, in_ifindex: u32, ip: &Ipv6) -> Route {
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET6;
    p.l4_protocol = ip.next_header;
    p.__bindgen_anon_1.tot_len = forward::mtu_check_len(ctx, ip.payload_len.saturating_add(40));
    p.ifindex = in_ifindex;
    p.__bindgen_anon_3.ipv6_src = ip.saddr;
    p.__bindgen_anon_4.ipv6_dst = ip.daddr;
    forward::lookup(ctx, &mut p)
}

/// Decrements the hop limit (IPv6 has no header checksum) and redirects.
#[inline(always)]
pub fn redirect(ctx: &mut TcContext, ip: &Ipv6, r: &Route, len: u32) -> i32 {
    if !matches!(r, Route::Forward { .. }) {
        return stats::pass(reason::SLOW_PATH, len);
    }
    if ctx
        .store(ETH_LEN + HOP_LIMIT_OFF, &(ip.hop_limit - 1), 0)
        .is_err()
    {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(reason::REDIRECT, len);
    forward::send(ctx, r)
}

/// Guest -> world over IPv6: a program of its own (tail call from the
/// bridge's ingress), so IPv4's stack and IPv6's are not added up.
#[inline(always)]
pub fn from_guest_stage(ctx: &mut TcContext) -> i32 {
    let len = ctx.len();
    let bridge = unsafe { (*ctx.skb.skb).ifindex };
    let Some(net) = maps::network(bridge) else {
        return TC_ACT_OK;
    };
    from_guest(ctx, net, bridge, len)
}

#[inline(always)]
fn from_guest(ctx: &mut TcContext, net: &NetConfig, bridge: u32, len: u32) -> i32 {
    let Ok(ip) = parse(ctx) else {
        return stats::drop(reason::DROP_MALFORMED, len);
    };
    let restricted = lane::host_restricted(net);
    if net.mode != mode::OPEN && lane::is_gateway6(bridge, &ip.saddr) {
        return stats::drop(reason::DROP_SPOOF_GATEWAY, len);
    }
    if is_link_scope(&ip.daddr) || is_link_scope(&ip.saddr) {
        // Link-local and multicast reach the host (or stay on the segment).
        if restricted {
            return to_host(ctx, &ip, len);
        }
        return stats::pass(reason::PASS, len);
    }
    if net.mode != mode::OPEN && subnet_owner(&ip.saddr) != bridge {
        return stats::drop(reason::DROP_SPOOFED, len);
    }
    let theirs = subnet_owner(&ip.daddr);
    if theirs == bridge && restricted && lane::is_gateway6(bridge, &ip.daddr) {
        return to_host(ctx, &ip, len);
    }
    if (theirs == bridge || ip.hop_limit <= 1) && !restricted {
        // On-link, the router address itself, or expiring: the kernel's.
        return stats::pass(reason::PASS, len);
    }
    let r = route(ctx, bridge, &ip);
    let out = match r {
        Route::Forward { ifindex, .. } => ifindex,
        Route::Local if restricted => return to_host(ctx, &ip, len),
        Route::Local => return stats::pass(reason::PASS, len),
        Route::Stack => 0,
    };
    if theirs == bridge || ip.hop_limit <= 1 {
        // Restricted networks only: checked against the host above.
        return stats::pass(reason::PASS, len);
    }
    // Policy before the slow path, as for IPv4: what the kernel would
    // forward must be allowed too.
    if theirs != 0 {
        let open = |n: &NetConfig| n.mode == mode::ROUTE || n.mode == mode::OPEN;
        if !(open(net) && maps::network(theirs).is_some_and(open)) {
            return stats::drop(reason::DROP_POLICY, len);
        }
    }
    if net.mode == mode::ISOLATED {
        // The host and the other guests only.
        return stats::drop(reason::DROP_POLICY, len);
    }
    if out == 0 {
        // MTU exceeded or no route: the kernel's (a NAT66 prefix is
        // stopped at the uplink's egress).
        return stats::pass(reason::SLOW_PATH, len);
    }
    if net.mode == mode::NAT && !routes_v6(net) {
        // `forward dev=` ties the masquerade to one uplink, as for IPv4
        // (`theirs` is 0 here: NAT networks reach no other network).
        if net.uplink_ifindex != 0 && out != net.uplink_ifindex {
            return stats::drop(reason::DROP_UPLINK_RESTRICTED, len);
        }
        // Masquerade runs in a program of its own: its stack would not fit
        // on top of this one.
        unsafe { maps::TAILS.tail_call(ctx, netd_common::tail::NAT66) };
        return stats::drop(reason::DROP_POLICY, len);
    }
    if !routes_v6(net) {
        // Isolated: the host and the other guests only.
        return stats::drop(reason::DROP_POLICY, len);
    }
    if net.mode != mode::OPEN && net.uplink_ifindex != 0 && out != net.uplink_ifindex && theirs == 0
    {
        return stats::drop(reason::DROP_UPLINK_RESTRICTED, len);
    }
    redirect(ctx, &ip, &r, len)
}

/// `host_access = "dhcp-dns"`: IPv6 addressed to the host.
#[inline(always)]
fn to_host(ctx: &TcContext, ip: &Ipv6, len: u32) -> i32 {
    if lane::host_allows6(ctx, ip) {
        stats::pass(reason::PASS, len)
    } else {
        stats::drop(reason::DROP_HOST_ACCESS, len)
    }
}

/// World -> guest over IPv6, at the uplink's ingress (tail call): NAT66
/// replies and routed prefixes are delivered straight to their bridge; the
/// rest is the host's.
#[inline(always)]
pub fn to_guest(ctx: &mut TcContext) -> i32 {
    let len = ctx.len();
    let Ok(ip) = parse(ctx) else {
        return TC_ACT_OK;
    };
    if let Some(verdict) = nat66::reply(ctx, &ip, len) {
        return verdict;
    }
    let bridge = subnet_owner(&ip.daddr);
    if bridge == 0 {
        return TC_ACT_OK;
    }
    let Some(net) = maps::network(bridge) else {
        return TC_ACT_OK;
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if !routes_v6(net) {
        return stats::drop(reason::DROP_POLICY, len);
    }
    // Routed IPv6 of a NAT network is tied to its uplink too, both ways
    // (from_guest applies the same test on the way out).
    if net.mode != mode::OPEN && net.uplink_ifindex != 0 && net.uplink_ifindex != ifindex {
        return stats::drop(reason::DROP_UPLINK_RESTRICTED, len);
    }
    if ip.hop_limit <= 1 {
        return stats::pass(reason::SLOW_PATH, len);
    }
    stats::count_to_guests(bridge, len);
    let r = route(ctx, ifindex, &ip);
    redirect(ctx, &ip, &r, len)
}
