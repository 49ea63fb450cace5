//! The uplink's two hooks. Ingress translates replies back to guests and
//! redirects them to the bridge; everything else goes to the host stack
//! untouched, so the host's own traffic never notices netd. Egress is the
//! safety net: whatever reached the uplink from a NAT subnet by the kernel's
//! slow path is translated with the same maps, or dropped; a private source
//! address never leaves.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netd_common::{CtKey, dir, mode, nat_kind, reason, tail};

use crate::flow::{self, FlowError};
use crate::forward::{self, Route};
use crate::parse::{self, ETH_LEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, Ipv4, L4};
use crate::{ct, icmp, maps, nat, stats};

#[inline(always)]
pub fn ingress(ctx: &mut TcContext) -> i32 {
    match parse::eth_proto(ctx) {
        Some(ETH_P_IP) => {}
        Some(parse::ETH_P_IPV6) => {
            unsafe { maps::TAILS.tail_call(ctx, tail::UPLINK_IPV6) };
            // Without the second stage, IPv6 is simply the host's.
            return TC_ACT_OK;
        }
        _ => return TC_ACT_OK,
    }
    let Ok(ip) = parse::ipv4(ctx, ETH_LEN) else {
        return TC_ACT_OK;
    };
    let len = ctx.len();
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Ok((l4, key)) = flow::of(ctx, &ip) else {
        return TC_ACT_OK;
    };
    if parse::is_icmp_error(&ip, &l4) {
        return icmp::error_to_guest(ctx, ifindex, &ip, &l4, len);
    }
    let Some(e) = ct::lookup(&key) else {
        if ip.is_later_fragment() || !matches!(ip.proto, IPPROTO_TCP | IPPROTO_UDP) {
            return unsolicited(ctx, &ip, len);
        }
        unsafe { maps::TAILS.tail_call(ctx, tail::UPLINK_NEW_FLOW) };
        return unsolicited(ctx, &ip, len);
    };
    let (xlate, bridge, ours) = unsafe {
        let e = &*e;
        let masq_reply = e.dir == dir::REPLY && e.nat == nat_kind::SNAT;
        let forwarded = e.dir == dir::ORIGINAL && e.nat == nat_kind::DNAT;
        (e.xlate, e.bridge_ifindex, masq_reply || forwarded)
    };
    if !ours {
        return TC_ACT_OK;
    }
    ct::touch(e, ip.proto, l4.tcp_flags, len);
    to_guest(
        ctx,
        ifindex,
        &ip,
        &l4,
        &key,
        &xlate,
        bridge,
        len,
        reason::REVERSE_NAT,
    )
}

/// Rewrites a packet for a guest and sends it to the bridge.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn to_guest(
    ctx: &mut TcContext,
    ifindex: u32,
    ip: &Ipv4,
    l4: &L4,
    key: &CtKey,
    xlate: &CtKey,
    bridge: u32,
    len: u32,
    why: u32,
) -> i32 {
    if nat::rewrite(ctx, ip, l4, key, xlate).is_err() {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(why, len);
    stats::count_to_guests(bridge, len);
    if ip.ttl <= 1 {
        return stats::pass(reason::SLOW_PATH, len);
    }
    let route = forward::route(ctx, ifindex, ip, xlate.saddr, xlate.daddr);
    match route {
        Route::Forward { .. } => {
            stats::count(reason::REDIRECT, len);
            forward::redirect(ctx, ip, &route)
        }
        _ => stats::pass(reason::SLOW_PATH, len),
    }
}

/// Second stage for a TCP or UDP packet no connection knows: a port
/// forward opens one, anything else for a NAT subnet is refused, and the
/// rest is the host's.
#[inline(always)]
pub fn new_flow_stage(ctx: &mut TcContext) -> i32 {
    let len = ctx.len();
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Ok(ip) = parse::ipv4(ctx, ETH_LEN) else {
        return TC_ACT_OK;
    };
    let Ok(l4) = parse::l4(ctx, &ip) else {
        return TC_ACT_OK;
    };
    let key = flow::key(&ip, &l4);
    let (ip, l4) = (&ip, &l4);
    // A port forward, or else an endpoint-independent mapping whose
    // filtering lets the sender in.
    let Some(target) = nat::forward_target(ip.daddr, l4.dport, ip.proto)
        .or_else(|| crate::mapping::inbound(ip.daddr, l4.dport, ip.proto, ip.saddr))
    else {
        return unsolicited(ctx, ip, len);
    };
    let mut xlate = key;
    xlate.daddr = target.addr;
    xlate.dport = target.port;
    let origin = ct::Origin {
        nat: nat_kind::DNAT,
        tcp_flags: l4.tcp_flags,
        bridge: target.bridge_ifindex,
        uplink: ifindex,
        bytes: len,
    };
    if ct::create(&key, &xlate, &origin).is_err() {
        return stats::drop(reason::DROP_CT_FULL, len);
    }
    stats::count(reason::CT_NEW, len);
    to_guest(
        ctx,
        ifindex,
        ip,
        l4,
        &key,
        &xlate,
        target.bridge_ifindex,
        len,
        reason::DNAT,
    )
}

/// Traffic for a netd subnet that no connection or forward claims: routed
/// and open networks take it (straight to the bridge, past netfilter), NAT
/// and isolated ones refuse it, as libvirt's FORWARD rules do. Anything
/// else is the host's.
#[inline(always)]
fn unsolicited(ctx: &mut TcContext, ip: &Ipv4, len: u32) -> i32 {
    let Some(bridge) = maps::subnet_owner(ip.daddr) else {
        return TC_ACT_OK;
    };
    let Some(net) = maps::network(bridge) else {
        return TC_ACT_OK;
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match net.mode {
        mode::ROUTE if net.uplink_ifindex != 0 && net.uplink_ifindex != ifindex => {
            stats::drop(reason::DROP_UPLINK_RESTRICTED, len)
        }
        mode::ROUTE | mode::OPEN => {
            if ip.ttl <= 1 {
                return stats::pass(reason::SLOW_PATH, len);
            }
            stats::count_to_guests(bridge, len);
            let route = forward::route(ctx, ifindex, ip, ip.saddr, ip.daddr);
            match route {
                Route::Forward { .. } => {
                    stats::count(reason::REDIRECT, len);
                    forward::redirect(ctx, ip, &route)
                }
                _ => stats::pass(reason::SLOW_PATH, len),
            }
        }
        _ => stats::drop(reason::DROP_POLICY, len),
    }
}

#[inline(always)]
pub fn egress(ctx: &mut TcContext) -> i32 {
    let len = ctx.len();
    match parse::eth_proto(ctx) {
        Some(ETH_P_IP) => {}
        Some(parse::ETH_P_IPV6) => return egress6(ctx, len),
        _ => return TC_ACT_OK,
    }
    let Ok(ip) = parse::ipv4(ctx, ETH_LEN) else {
        // A header too broken to translate: it still must not carry a
        // guest's private address out.
        return match ctx.load::<u32>(ETH_LEN + parse::IP_SADDR_OFF) {
            Ok(saddr) if private_source(saddr) => stats::drop(reason::DROP_MALFORMED, len),
            _ => TC_ACT_OK,
        };
    };
    let Some(bridge) = maps::subnet_owner(ip.saddr) else {
        return TC_ACT_OK;
    };
    let Some(net) = maps::network(bridge) else {
        return TC_ACT_OK;
    };
    if net.mode == mode::ISOLATED {
        // The kernel's slow path (an over-MTU packet it fragments, say)
        // must not take an isolated guest out either.
        return stats::drop(reason::DROP_POLICY, len);
    }
    if net.mode != mode::NAT {
        return TC_ACT_OK;
    }
    if maps::subnet_owner(ip.daddr).is_some() {
        // For another netd network: never the uplink's business, and
        // masquerading it would open a way into that network.
        return stats::drop(reason::DROP_POLICY, len);
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (l4, key) = match flow::of(ctx, &ip) {
        Ok(f) => f,
        Err(FlowError::Malformed) => return stats::drop(reason::DROP_MALFORMED, len),
        Err(FlowError::UnknownFragment) => return stats::drop(reason::DROP_FRAG_UNKNOWN, len),
    };
    let xlate = match ct::lookup(&key) {
        // A masqueraded flow, or a guest's reply on a forwarded port (the
        // kernel fragmented it, say): both leave as their entry says.
        Some(e) if unsafe { (*e).dir == dir::ORIGINAL || (*e).nat == nat_kind::DNAT } => {
            ct::touch(e, ip.proto, l4.tcp_flags, len);
            unsafe { (*e).xlate }
        }
        Some(_) => return stats::drop(reason::DROP_POLICY, len),
        None => {
            if ip.is_later_fragment() || parse::is_icmp_error(&ip, &l4) {
                return stats::drop(reason::DROP_FRAG_UNKNOWN, len);
            }
            let nat_addr = if net.nat_addr != 0 {
                net.nat_addr
            } else {
                match maps::uplink_addr(ifindex) {
                    Some(a) => a,
                    None => return stats::drop(reason::DROP_NO_UPLINK_ADDR, len),
                }
            };
            if ip.daddr == nat_addr {
                // For the host itself: never leaves, never masqueraded.
                return stats::drop(reason::DROP_POLICY, len);
            }
            let Some(req) = nat::SnatRequest::new(&key, &l4, nat_addr, net, bridge, ifindex, len)
            else {
                return stats::drop(reason::DROP_CT_FULL, len);
            };
            let r = nat::snat_new(req);
            if r != 0 {
                return stats::drop(r, len);
            }
            stats::count(reason::CT_NEW, len);
            req.xlate
        }
    };
    if nat::rewrite(ctx, &ip, &l4, &key, &xlate).is_err() {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(reason::SNAT, len);
    stats::pass(reason::SLOW_PATH, len)
}

/// Whether `saddr` belongs to a network whose addresses never leave as
/// they are: NAT (masqueraded) and isolated ones.
#[inline(always)]
fn private_source(saddr: u32) -> bool {
    match maps::subnet_owner(saddr).and_then(maps::network) {
        Some(n) => n.mode == mode::NAT || n.mode == mode::ISOLATED,
        None => false,
    }
}

/// IPv6 leaving by the kernel's slow path: a NAT66 prefix is masqueraded
/// only in BPF, and an isolated network's never leaves, so neither may go
/// out as it is (routed prefixes pass).
#[inline(always)]
fn egress6(ctx: &TcContext, len: u32) -> i32 {
    let Ok(saddr) = ctx.load::<[u32; 4]>(ETH_LEN + 8) else {
        return TC_ACT_OK;
    };
    let bridge = crate::ipv6::subnet_owner(&saddr);
    if bridge == 0 {
        return TC_ACT_OK;
    }
    match maps::network(bridge) {
        Some(n) if n.mode == mode::ISOLATED => stats::drop(reason::DROP_POLICY, len),
        Some(n) if n.mode == mode::NAT && n.flags & netd_common::net_flags::NAT66 != 0 => {
            stats::drop(reason::DROP_POLICY, len)
        }
        _ => TC_ACT_OK,
    }
}
