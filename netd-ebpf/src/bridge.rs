//! Guest -> world, at tc ingress of every netd bridge: policy, conntrack,
//! masquerade, then straight to the uplink with a redirect.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netd_common::{CtKey, NetConfig, dir, mode, nat_kind, net_flags, reason, tail};

use crate::flow::{self, FlowError};
use crate::forward::{self, Route};
use crate::parse::{self, ETH_LEN, ETH_P_IP, Ipv4, L4};
use crate::{ct, lane, maps, nat, stats};

#[inline(always)]
pub fn ingress(ctx: &mut TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(net) = maps::network(ifindex) else {
        return TC_ACT_OK;
    };
    let len = ctx.len();
    stats::count_from_guests(ifindex, len);
    match parse::eth_proto(ctx) {
        Some(ETH_P_IP) => {}
        Some(parse::ETH_P_IPV6) => {
            // Strict: IPv6 only from a guest whose MAC is bound (its
            // addresses come from SLAAC, so only the MAC can be checked).
            if lane::strict(net) && !lane::mac_bound(ctx, ifindex) {
                return stats::drop(reason::DROP_BINDING, len);
            }
            unsafe { maps::TAILS.tail_call(ctx, tail::BRIDGE_IPV6) };
            return stats::drop(reason::DROP_POLICY, len);
        }
        Some(lane::ETH_P_ARP) => {
            let r = lane::arp(ctx, net, ifindex);
            if r != 0 {
                return stats::drop(r, len);
            }
            return stats::pass(reason::PASS, len);
        }
        // Strict networks carry IPv4, ARP and IPv6 only (libvirt's
        // clean-traffic: no-other-l2-traffic), VLAN tags included.
        _ if lane::strict(net) => return stats::drop(reason::DROP_BINDING, len),
        // Everything else is the bridge's business.
        _ => return stats::pass(reason::PASS, len),
    }
    let Ok(ip) = parse::ipv4(ctx, ETH_LEN) else {
        return stats::drop(reason::DROP_MALFORMED, len);
    };
    if lane::strict(net) && !lane::ipv4_bound(ctx, ifindex, &ip) {
        return stats::drop(reason::DROP_BINDING, len);
    }
    let restricted = lane::host_restricted(net);
    if ip.saddr == 0 {
        // DHCP from unconfigured guests: the segment's own business, and
        // the host's (which on a restricted network gets DHCP only).
        if restricted {
            return lane::to_host(ctx, net, ifindex, &ip, len);
        }
        return stats::pass(reason::PASS, len);
    }
    if lane::filters_sources(net) {
        let r = lane::special_source(net, ip.saddr);
        if r != 0 {
            return stats::drop(r, len);
        }
    }
    if is_broadcast(ip.daddr) || (restricted && ip.daddr == lane::subnet_broadcast(net)) {
        // Broadcast and multicast: the segment's own business, and the
        // host's when it listens.
        if restricted {
            return lane::to_host(ctx, net, ifindex, &ip, len);
        }
        return stats::pass(reason::PASS, len);
    }
    // Open networks filter nothing, not even their sources.
    if ip.saddr & net.mask != net.subnet && lane::filters_sources(net) {
        return stats::drop(reason::DROP_SPOOFED, len);
    }
    let (l4, key) = match flow::of(ctx, &ip) {
        Ok(f) => f,
        Err(FlowError::Malformed) => return stats::drop(reason::DROP_MALFORMED, len),
        Err(FlowError::UnknownFragment) => return stats::drop(reason::DROP_FRAG_UNKNOWN, len),
    };
    // Looked up before the local-segment test: a hairpin's replies are
    // addressed to the gateway.
    if let Some(e) = ct::lookup(&key) {
        return tracked(ctx, ifindex, &ip, &l4, &key, e, len);
    }
    if ip.daddr & net.mask == net.subnet {
        // The gateway itself (DNS, DHCP renewals) or a neighbour.
        if restricted && ip.daddr == net.gateway {
            return lane::to_host(ctx, net, ifindex, &ip, len);
        }
        return stats::pass(reason::PASS, len);
    }
    if ip.ttl <= 1 && !restricted {
        // The kernel answers with time-exceeded from the gateway. (On a
        // restricted network the second stage first asks whether the
        // packet is for the host: expiring packets are still delivered.)
        return stats::pass(reason::SLOW_PATH, len);
    }
    unsafe { maps::TAILS.tail_call(ctx, tail::BRIDGE_NEW_FLOW) };
    // Only reached when the second stage is missing: never let the
    // packet go untranslated.
    stats::drop(reason::DROP_POLICY, len)
}

/// Second stage for the first packet of a flow from a guest: routing,
/// policy between networks, then masquerade or a hairpin.
#[inline(always)]
pub fn new_flow_stage(ctx: &mut TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(net) = maps::network(ifindex) else {
        return TC_ACT_OK;
    };
    let len = ctx.len();
    let Ok(ip) = parse::ipv4(ctx, ETH_LEN) else {
        return stats::drop(reason::DROP_MALFORMED, len);
    };
    // Checked by the first stage already; again here so this program
    // never translates a foreign source, however it is reached.
    if ip.saddr & net.mask != net.subnet && lane::filters_sources(net) {
        return stats::drop(reason::DROP_SPOOFED, len);
    }
    let (l4, key) = match flow::of(ctx, &ip) {
        Ok(f) => f,
        Err(_) => return stats::drop(reason::DROP_MALFORMED, len),
    };
    new_flow(ctx, net, ifindex, &ip, &l4, &key, len)
}

/// Limited broadcast and multicast (224.0.0.0/4, which covers the
/// never-translated 224.0.0.0/24).
#[inline(always)]
fn is_broadcast(daddr: u32) -> bool {
    daddr == u32::MAX || (daddr.to_ne_bytes()[0] & 0xf0) == 0xe0
}

/// A packet of a known connection: an SNAT original, or a guest's reply on
/// a forwarded port.
#[inline(always)]
fn tracked(
    ctx: &mut TcContext,
    ifindex: u32,
    ip: &Ipv4,
    l4: &L4,
    key: &CtKey,
    e: *mut netd_common::CtEntry,
    len: u32,
) -> i32 {
    let (xlate, is_snat) = unsafe {
        (
            (*e).xlate,
            (*e).nat == nat_kind::SNAT && (*e).dir == dir::ORIGINAL,
        )
    };
    ct::touch(e, ip.proto, l4.tcp_flags, len);
    if ip.ttl <= 1 {
        return stats::pass(reason::SLOW_PATH, len);
    }
    let route = forward::route(ctx, ifindex, ip, key.saddr, xlate.daddr);
    if is_snat && matches!(route, Route::Local) {
        // A masqueraded flow leads away from the host, never into it: an
        // entry that does (made for an address the host took since, say)
        // must not carry a guest past the host's own policy.
        return stats::drop(reason::DROP_POLICY, len);
    }
    if let Route::Stack = route {
        // MTU exceeded or no route: the kernel answers the guest (or
        // fragments, and the uplink's safety net translates the pieces).
        return stats::pass(reason::SLOW_PATH, len);
    }
    if nat::rewrite(ctx, ip, l4, key, &xlate).is_err() {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(
        if is_snat {
            reason::SNAT
        } else {
            reason::REVERSE_NAT
        },
        len,
    );
    match route {
        Route::Forward { .. } => {
            stats::count(reason::REDIRECT, len);
            forward::redirect(ctx, ip, &route)
        }
        _ => TC_ACT_OK,
    }
}

#[inline(always)]
fn new_flow(
    ctx: &mut TcContext,
    net: &NetConfig,
    ifindex: u32,
    ip: &Ipv4,
    l4: &L4,
    key: &CtKey,
    len: u32,
) -> i32 {
    let route = forward::route(ctx, ifindex, ip, ip.saddr, ip.daddr);
    let out = match route {
        Route::Forward { ifindex, .. } => ifindex,
        // Host-bound: a forwarded port on a host address is a hairpin;
        // anything else (DNS, ssh to the host) is the host's.
        Route::Local => return hairpin(ctx, net, ifindex, ip, l4, key, len),
        Route::Stack => 0,
    };
    // Policy before the slow path: what the kernel would forward (an
    // over-MTU packet it fragments) must be allowed as much as what is
    // redirected here.
    if let Some(other) = maps::subnet_owner(ip.daddr)
        && other != ifindex
    {
        // Between two netd networks only routed and open ones talk.
        let open = |m: u8| m == mode::ROUTE || m == mode::OPEN;
        let theirs = maps::network(other).map(|n| n.mode).unwrap_or(0);
        if !(open(net.mode) && open(theirs)) {
            return refuse(ctx, net, ifindex, ip, l4, len);
        }
    }
    if net.mode == mode::ISOLATED {
        // The host and the other guests only.
        return refuse(ctx, net, ifindex, ip, l4, len);
    }
    if out == 0 || ip.ttl <= 1 {
        // MTU exceeded or no route: the kernel answers the guest (or
        // fragments, and the uplink's safety net translates the pieces).
        // Expiring packets only reach here from restricted networks (see
        // `ingress`): the kernel sends the time-exceeded.
        return stats::pass(reason::SLOW_PATH, len);
    }
    match net.mode {
        mode::NAT => masquerade(ctx, net, ifindex, out, ip, l4, key, &route, len),
        mode::ROUTE
            if net.uplink_ifindex != 0
                && out != net.uplink_ifindex
                && maps::subnet_owner(ip.daddr).is_none() =>
        {
            stats::drop(reason::DROP_UPLINK_RESTRICTED, len)
        }
        mode::ROUTE | mode::OPEN => {
            stats::count(reason::REDIRECT, len);
            forward::redirect(ctx, ip, &route)
        }
        // Isolated: the host and the other guests only.
        _ => refuse(ctx, net, ifindex, ip, l4, len),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn masquerade(
    ctx: &mut TcContext,
    net: &NetConfig,
    bridge: u32,
    out: u32,
    ip: &Ipv4,
    l4: &L4,
    key: &CtKey,
    route: &Route,
    len: u32,
) -> i32 {
    if net.uplink_ifindex != 0 && out != net.uplink_ifindex {
        return stats::drop(reason::DROP_UPLINK_RESTRICTED, len);
    }
    if parse::is_icmp_error(ip, l4) {
        // An error about a flow we never saw: nothing to translate it to.
        return stats::drop(reason::DROP_POLICY, len);
    }
    let nat_addr = if net.nat_addr != 0 {
        net.nat_addr
    } else {
        match maps::uplink_addr(out) {
            Some(a) => a,
            None => return stats::drop(reason::DROP_NO_UPLINK_ADDR, len),
        }
    };
    if nat::over_quota(bridge, net.flags, key) {
        return nat::refused(ctx, net, bridge, ip, reason::DROP_GUEST_QUOTA);
    }
    let Some(req) = nat::SnatRequest::new(key, l4, nat_addr, net, bridge, out, len) else {
        return stats::drop(reason::DROP_CT_FULL, len);
    };
    let r = nat::snat_new(req);
    if r != 0 {
        return nat::refused(ctx, net, bridge, ip, r);
    }
    nat::count_flow(bridge, ip.saddr);
    let xlate = req.xlate;
    stats::count(reason::CT_NEW, len);
    if net.flags & net_flags::CLAMP_MSS != 0
        && ip.proto == parse::IPPROTO_TCP
        && l4.tcp_flags & parse::TCP_SYN != 0
        && !ip.is_later_fragment()
    {
        crate::mss::clamp(ctx, out, ip.l4_off() as u32, l4.csum_off as u32);
    }
    if nat::rewrite(ctx, ip, l4, key, &xlate).is_err() {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(reason::SNAT, len);
    stats::count(reason::REDIRECT, len);
    forward::redirect(ctx, ip, route)
}

/// A guest connecting to a forwarded port on one of the host's addresses
/// reaches the forward's target (maybe itself). The source becomes the
/// gateway, so the target's replies come back through here instead of
/// going straight to the guest, which would not know them.
#[inline(always)]
fn hairpin(
    ctx: &mut TcContext,
    net: &NetConfig,
    bridge: u32,
    ip: &Ipv4,
    l4: &L4,
    key: &CtKey,
    len: u32,
) -> i32 {
    let restricted = lane::host_restricted(net);
    if ip.is_later_fragment() || !matches!(ip.proto, parse::IPPROTO_TCP | parse::IPPROTO_UDP) {
        if restricted {
            return lane::to_host(ctx, net, bridge, ip, len);
        }
        return stats::pass(reason::PASS, len);
    }
    // A forward, or a guest's endpoint-independent mapping (RFC 4787
    // REQ-9), filtered as if the host's address sent it.
    let Some(target) = nat::forward_target(ip.daddr, l4.dport, ip.proto)
        .or_else(|| crate::mapping::inbound(ip.daddr, l4.dport, ip.proto, ip.daddr))
    else {
        // For the host itself.
        if restricted {
            return lane::to_host(ctx, net, bridge, ip, len);
        }
        return stats::pass(reason::PASS, len);
    };
    if ip.ttl <= 1 {
        // A forward's target is a hop away: the kernel sends time-exceeded.
        return stats::pass(reason::SLOW_PATH, len);
    }
    let Some(req) = nat::SnatRequest::new(key, l4, net.gateway, net, bridge, bridge, len) else {
        return stats::drop(reason::DROP_CT_FULL, len);
    };
    req.kind = nat_kind::DNAT;
    req.xlate.daddr = target.addr;
    req.xlate.dport = target.port;
    let r = nat::snat_new(req);
    if r != 0 {
        return nat::refused(ctx, net, bridge, ip, r);
    }
    stats::count(reason::CT_NEW, len);
    let xlate = req.xlate;
    if nat::rewrite(ctx, ip, l4, key, &xlate).is_err() {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(reason::DNAT, len);
    let route = forward::route(ctx, bridge, ip, xlate.saddr, xlate.daddr);
    match route {
        Route::Forward { .. } => {
            stats::count(reason::REDIRECT, len);
            forward::redirect(ctx, ip, &route)
        }
        _ => stats::pass(reason::SLOW_PATH, len),
    }
}

/// A refused new flow: answered with port-unreachable, except ICMP errors
/// (never answer an error with an error).
#[inline(always)]
fn refuse(ctx: &mut TcContext, net: &NetConfig, bridge: u32, ip: &Ipv4, l4: &L4, len: u32) -> i32 {
    if parse::is_icmp_error(ip, l4) {
        return stats::drop(reason::DROP_POLICY, len);
    }
    crate::reject::port_unreachable(ctx, bridge, ip, net.gateway, reason::DROP_POLICY)
}
