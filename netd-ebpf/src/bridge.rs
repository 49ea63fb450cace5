//! Guest -> world, at tc ingress of every netd bridge: policy, conntrack,
//! masquerade, then straight to the uplink with a redirect.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netd_common::{CtKey, NetConfig, dir, mode, nat_kind, reason};

use crate::flow::{self, FlowError};
use crate::forward::{self, Route};
use crate::parse::{self, ETH_LEN, ETH_P_IP, Ipv4, L4};
use crate::{ct, maps, nat, stats};

#[inline(always)]
pub fn ingress(ctx: &mut TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(net) = maps::network(ifindex) else {
        return TC_ACT_OK;
    };
    let len = ctx.len();
    stats::count_from_guests(ifindex, len);
    if parse::eth_proto(ctx) != Some(ETH_P_IP) {
        // ARP and everything else is the bridge's business.
        return stats::pass(reason::PASS, len);
    }
    let Ok(ip) = parse::ipv4(ctx, ETH_LEN) else {
        return stats::drop(reason::DROP_MALFORMED, len);
    };
    if ip.saddr == 0 || is_local_segment(net, ip.daddr) {
        // DHCP from unconfigured guests, and traffic for the segment or the
        // gateway itself: the host stack handles it.
        return stats::pass(reason::PASS, len);
    }
    if ip.saddr & net.mask != net.subnet {
        return stats::drop(reason::DROP_SPOOFED, len);
    }
    if ip.ttl <= 1 {
        // The kernel answers with time-exceeded from the gateway.
        return stats::pass(reason::SLOW_PATH, len);
    }
    let (l4, key) = match flow::of(ctx, &ip) {
        Ok(f) => f,
        Err(FlowError::Malformed) => return stats::drop(reason::DROP_MALFORMED, len),
        Err(FlowError::UnknownFragment) => return stats::drop(reason::DROP_FRAG_UNKNOWN, len),
    };
    if let Some(e) = ct::lookup(&key) {
        return tracked(ctx, ifindex, &ip, &l4, &key, e, len);
    }
    new_flow(ctx, net, ifindex, &ip, &l4, &key, len)
}

/// Broadcast, multicast (224.0.0.0/4 covers 224.0.0.0/24) and the subnet
/// itself never leave the segment untranslated or translated.
#[inline(always)]
fn is_local_segment(net: &NetConfig, daddr: u32) -> bool {
    let first_octet = daddr.to_ne_bytes()[0];
    daddr == u32::MAX || (first_octet & 0xf0) == 0xe0 || daddr & net.mask == net.subnet
}

/// A packet of a known connection: an SNAT original, or a guest's reply on
/// a forwarded port.
#[inline(always)]
fn tracked(ctx: &mut TcContext, ifindex: u32, ip: &Ipv4, l4: &L4, key: &CtKey, e: *mut netd_common::CtEntry, len: u32) -> i32 {
    let (xlate, is_snat) = unsafe { ((*e).xlate, (*e).nat == nat_kind::SNAT && (*e).dir == dir::ORIGINAL) };
    ct::touch(e, ip.proto, l4.tcp_flags, len);
    let route = forward::route(ctx, ifindex, ip, key.saddr, xlate.daddr);
    if let Route::Stack = route {
        // MTU exceeded or no route: the kernel answers the guest (or
        // fragments, and the uplink's safety net translates the pieces).
        return stats::pass(reason::SLOW_PATH, len);
    }
    if nat::rewrite(ctx, ip, l4, key, &xlate).is_err() {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(if is_snat { reason::SNAT } else { reason::REVERSE_NAT }, len);
    match route {
        Route::Forward { .. } => {
            stats::count(reason::REDIRECT, len);
            forward::redirect(ctx, ip, &route)
        }
        _ => TC_ACT_OK,
    }
}

#[inline(always)]
fn new_flow(ctx: &mut TcContext, net: &NetConfig, ifindex: u32, ip: &Ipv4, l4: &L4, key: &CtKey, len: u32) -> i32 {
    let route = forward::route(ctx, ifindex, ip, ip.saddr, ip.daddr);
    let out = match route {
        Route::Forward { ifindex, .. } => ifindex,
        // Host-bound (DNS, the uplink's own address) or the kernel's call.
        Route::Local => return stats::pass(reason::PASS, len),
        Route::Stack => return stats::pass(reason::SLOW_PATH, len),
    };
    if let Some(other) = maps::subnet_owner(ip.daddr)
        && other != ifindex
    {
        // Between two netd networks only routed and open ones talk.
        let open = |m: u8| m == mode::ROUTE || m == mode::OPEN;
        let theirs = maps::network(other).map(|n| n.mode).unwrap_or(0);
        if !(open(net.mode) && open(theirs)) {
            return stats::drop(reason::DROP_POLICY, len);
        }
    }
    match net.mode {
        mode::NAT => masquerade(ctx, net, ifindex, out, ip, l4, key, &route, len),
        mode::ROUTE | mode::OPEN => {
            stats::count(reason::REDIRECT, len);
            forward::redirect(ctx, ip, &route)
        }
        _ => stats::drop(reason::DROP_POLICY, len),
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
    let mut req = nat::SnatRequest::new(key, l4, nat_addr, net, bridge, out, len);
    let r = nat::snat_new(&mut req);
    if r != 0 {
        return stats::drop(r, len);
    }
    let xlate = req.xlate;
    stats::count(reason::CT_NEW, len);
    if nat::rewrite(ctx, ip, l4, key, &xlate).is_err() {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(reason::SNAT, len);
    stats::count(reason::REDIRECT, len);
    forward::redirect(ctx, ip, route)
}
