//! The uplink's two hooks. Ingress translates replies back to guests and
//! redirects them to the bridge; everything else goes to the host stack
//! untouched, so the host's own traffic never notices netd. Egress is the
//! safety net: whatever reached the uplink from a NAT subnet by the kernel's
//! slow path is translated with the same maps, or dropped; a private source
//! address never leaves.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netd_common::{dir, mode, nat_kind, reason};

use crate::flow::{self, FlowError};
use crate::forward::{self, Route};
use crate::parse::{self, ETH_LEN, ETH_P_IP};
use crate::{ct, icmp, maps, nat, stats};

#[inline(always)]
pub fn ingress(ctx: &mut TcContext) -> i32 {
    if parse::eth_proto(ctx) != Some(ETH_P_IP) {
        return TC_ACT_OK;
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
        return refuse_unsolicited(ip.daddr, len);
    };
    let (xlate, bridge, ours) = unsafe {
        let e = &*e;
        (e.xlate, e.bridge_ifindex, e.dir == dir::REPLY && e.nat == nat_kind::SNAT)
    };
    if !ours {
        return TC_ACT_OK;
    }
    ct::touch(e, ip.proto, l4.tcp_flags, len);
    if nat::rewrite(ctx, &ip, &l4, &key, &xlate).is_err() {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(reason::REVERSE_NAT, len);
    stats::count_to_guests(bridge, len);
    if ip.ttl <= 1 {
        return stats::pass(reason::SLOW_PATH, len);
    }
    let route = forward::route(ctx, ifindex, &ip, xlate.saddr, xlate.daddr);
    match route {
        Route::Forward { .. } => {
            stats::count(reason::REDIRECT, len);
            forward::redirect(ctx, &ip, &route)
        }
        _ => stats::pass(reason::SLOW_PATH, len),
    }
}

/// New connections into a NAT subnet from outside are refused, as libvirt's
/// FORWARD rules do; anything else is the host's.
#[inline(always)]
fn refuse_unsolicited(daddr: u32, len: u32) -> i32 {
    if let Some(bridge) = maps::subnet_owner(daddr)
        && maps::network(bridge).is_some_and(|n| n.mode == mode::NAT)
    {
        return stats::drop(reason::DROP_POLICY, len);
    }
    TC_ACT_OK
}

#[inline(always)]
pub fn egress(ctx: &mut TcContext) -> i32 {
    if parse::eth_proto(ctx) != Some(ETH_P_IP) {
        return TC_ACT_OK;
    }
    let Ok(ip) = parse::ipv4(ctx, ETH_LEN) else {
        return TC_ACT_OK;
    };
    let Some(bridge) = maps::subnet_owner(ip.saddr) else {
        return TC_ACT_OK;
    };
    let Some(net) = maps::network(bridge) else {
        return TC_ACT_OK;
    };
    if net.mode != mode::NAT {
        return TC_ACT_OK;
    }
    let len = ctx.len();
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (l4, key) = match flow::of(ctx, &ip) {
        Ok(f) => f,
        Err(FlowError::Malformed) => return stats::drop(reason::DROP_MALFORMED, len),
        Err(FlowError::UnknownFragment) => return stats::drop(reason::DROP_FRAG_UNKNOWN, len),
    };
    let xlate = match ct::lookup(&key) {
        Some(e) if unsafe { (*e).dir == dir::ORIGINAL } => {
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
            let mut req = nat::SnatRequest::new(&key, &l4, nat_addr, net, bridge, ifindex, len);
            let r = nat::snat_new(&mut req);
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
