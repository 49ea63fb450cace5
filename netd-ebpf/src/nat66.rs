//! NAT66 (libvirt's `<nat ipv6='yes'>`): guests' IPv6 sources masqueraded
//! to the uplink's global address, with the same conntrack and port search
//! as IPv4 in a table of its own.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use netd_common::{CtKey6, NetConfig, dir, nat_kind, reason};

use crate::ct;
use crate::forward::Route;
use crate::ipv6::{self, Ipv6};
use crate::maps::UPLINKS;
use crate::nat::{self, SnatRequest};
use crate::parse::{
    ETH_LEN, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L4,
};
use crate::stats;

const L4_OFF: usize = ETH_LEN + 40;
const SADDR_OFF: usize = ETH_LEN + 8;
const DADDR_OFF: usize = ETH_LEN + 24;

/// Ports (or the echo id) after a plain IPv6 header. Extension headers are
/// not walked: such packets are translated by address only.
#[inline(always)]
fn l4(ctx: &TcContext, ip: &Ipv6) -> Option<L4> {
    match ip.next_header {
        // Loaded up to and including the checksum field: a segment cut
        // before it is refused here, not half rewritten later.
        IPPROTO_TCP => {
            let h: [u8; 18] = ctx.load(L4_OFF).ok()?;
            Some(L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                tcp_flags: h[13],
                icmp_type: 0,
                csum_off: L4_OFF + 16,
            })
        }
        IPPROTO_UDP => {
            let h: [u8; 8] = ctx.load(L4_OFF).ok()?;
            Some(L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                tcp_flags: 0,
                icmp_type: 0,
                csum_off: L4_OFF + 6,
            })
        }
        IPPROTO_ICMPV6 => {
            let h: [u8; 8] = ctx.load(L4_OFF).ok()?;
            let id = u16::from_ne_bytes([h[4], h[5]]);
            let (sport, dport) = match h[0] {
                ICMPV6_ECHO_REQUEST => (id, 0),
                ICMPV6_ECHO_REPLY => (0, id),
                _ => (0, 0),
            };
            Some(L4 {
                sport,
                dport,
                tcp_flags: 0,
                icmp_type: h[0],
                csum_off: L4_OFF + 2,
            })
        }
        _ => Some(L4::default()),
    }
}

#[inline(always)]
fn key(ip: &Ipv6, l4: &L4) -> CtKey6 {
    CtKey6 {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: l4.sport,
        dport: l4.dport,
        proto: ip.next_header,
        _pad: [0; 3],
    }
}

/// Replaces a 128-bit address and folds the change into the L4 checksum
/// (TCP, UDP and ICMPv6 all cover the pseudo-header).
#[inline(always)]
fn set_addr(
    ctx: &mut TcContext,
    off: usize,
    old: &[u32; 4],
    new: &[u32; 4],
    l4: &L4,
    proto: u8,
) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    let mut o = *old;
    let mut n = *new;
    let diff = unsafe { bpf_csum_diff(o.as_mut_ptr(), 16, n.as_mut_ptr(), 16, 0) };
    ctx.store(off, new, 0).map_err(|_| ())?;
    if l4.csum_off != 0 {
        let mut flags = u64::from(BPF_F_PSEUDO_HDR);
        if proto == IPPROTO_UDP {
            flags |= u64::from(BPF_F_MARK_MANGLED_0);
        }
        ctx.l4_csum_replace(l4.csum_off, 0, diff as u64, flags)
            .map_err(|_| ())?;
    }
    Ok(())
}

#[inline(always)]
fn set_port(
    ctx: &mut TcContext,
    off: usize,
    old: u16,
    new: u16,
    l4: &L4,
    proto: u8,
) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0).map_err(|_| ())?;
    let flags = if proto == IPPROTO_UDP {
        2 | u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        2
    };
    ctx.l4_csum_replace(l4.csum_off, u64::from(old), u64::from(new), flags)
        .map_err(|_| ())
}

/// Not inlined, to keep its buffers off the port search's stack.
#[inline(never)]
fn rewrite(ctx: &mut TcContext, l4: &L4, cur: &CtKey6, new: &CtKey6) -> Result<(), ()> {
    let proto = cur.proto;
    set_addr(ctx, SADDR_OFF, &cur.saddr, &new.saddr, l4, proto)?;
    set_addr(ctx, DADDR_OFF, &cur.daddr, &new.daddr, l4, proto)?;
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            set_port(ctx, L4_OFF, cur.sport, new.sport, l4, proto)?;
            set_port(ctx, L4_OFF + 2, cur.dport, new.dport, l4, proto)?;
        }
        IPPROTO_ICMPV6 if l4.icmp_type == ICMPV6_ECHO_REQUEST => {
            set_port(ctx, L4_OFF + 4, cur.sport, new.sport, l4, proto)?
        }
        IPPROTO_ICMPV6 if l4.icmp_type == ICMPV6_ECHO_REPLY => {
            set_port(ctx, L4_OFF + 4, cur.dport, new.dport, l4, proto)?
        }
        _ => {}
    }
    Ok(())
}

/// Guest -> world for a NAT66 network (tail call from the bridge's
/// ingress, which checked policy): translate (an existing connection, or a
/// new one with a port from the network's range) and redirect.
#[inline(always)]
pub fn masquerade_stage(ctx: &mut TcContext) -> i32 {
    let len = ctx.len();
    let bridge = unsafe { (*ctx.skb.skb).ifindex };
    let Some(net) = crate::maps::network(bridge) else {
        return stats::drop(reason::DROP_POLICY, len);
    };
    let Ok(ip) = ipv6::parse(ctx) else {
        return stats::drop(reason::DROP_MALFORMED, len);
    };
    // The bridge's stage checked policy, but this program must not
    // masquerade for a network that does not ask for it, nor sources that
    // are not the network's, however it is reached.
    if net.mode != netd_common::mode::NAT || net.flags & netd_common::net_flags::NAT66 == 0 {
        return stats::drop(reason::DROP_POLICY, len);
    }
    if ipv6::subnet_owner(&ip.saddr) != bridge {
        return stats::drop(reason::DROP_SPOOFED, len);
    }
    let r = ipv6::route(ctx, bridge, &ip);
    let Route::Forward { ifindex: out, .. } = r else {
        return stats::pass(reason::SLOW_PATH, len);
    };
    masquerade(ctx, net, bridge, out, &ip, &r, len)
}

#[inline(always)]
fn masquerade(
    ctx: &mut TcContext,
    net: &NetConfig,
    bridge: u32,
    out: u32,
    ip: &Ipv6,
    r: &Route,
    len: u32,
) -> i32 {
    let Some(l4) = l4(ctx, ip) else {
        return stats::drop(reason::DROP_MALFORMED, len);
    };
    let k = key(ip, &l4);
    let xlate = match ct::lookup(&k) {
        Some(e) => {
            ct::touch(e, k.proto, l4.tcp_flags, len);
            unsafe { (*e).xlate }
        }
        None => {
            let Some(nat_addr) = unsafe { UPLINKS.get(&out) }
                .map(|u| u.addr6)
                .filter(|a| (a[0] | a[1] | a[2] | a[3]) != 0)
            else {
                return stats::drop(reason::DROP_NO_UPLINK_ADDR, len);
            };
            let Some(req) = SnatRequest::new(&k, &l4, nat_addr, net, bridge, out, len) else {
                return stats::drop(reason::DROP_CT_FULL, len);
            };
            let why = nat::snat_new(req);
            if why != 0 {
                // A full range is answered, as for IPv4 (RFC 5508 REQ-8).
                if why == reason::DROP_PORTS_EXHAUSTED {
                    return crate::reject::unreachable6(ctx, bridge, why);
                }
                return stats::drop(why, len);
            }
            stats::count(reason::CT_NEW, len);
            req.xlate
        }
    };
    if rewrite(ctx, &l4, &k, &xlate).is_err() {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(reason::SNAT, len);
    ipv6::redirect(ctx, ip, r, len)
}

/// World -> guest: a reply to a masqueraded IPv6 connection, translated
/// back and sent to its bridge. None when the packet is not one.
#[inline(always)]
pub fn reply(ctx: &mut TcContext, ip: &Ipv6, len: u32) -> Option<i32> {
    let l4 = l4(ctx, ip)?;
    let k = key(ip, &l4);
    let e = ct::lookup(&k)?;
    let (xlate, bridge) = unsafe {
        if (*e).dir != dir::REPLY || (*e).nat != nat_kind::SNAT {
            return None;
        }
        ((*e).xlate, (*e).bridge_ifindex)
    };
    ct::touch(e, k.proto, l4.tcp_flags, len);
    if rewrite(ctx, &l4, &k, &xlate).is_err() {
        return Some(stats::drop(reason::DROP_MALFORMED, len));
    }
    stats::count(reason::REVERSE_NAT, len);
    stats::count_to_guests(bridge, len);
    if ip.hop_limit <= 1 {
        return Some(stats::pass(reason::SLOW_PATH, len));
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Route on the translated destination.
    let mut routed = Ipv6 {
        daddr: xlate.daddr,
        ..*ip
    };
    routed.saddr = xlate.saddr;
    let r = ipv6::route(ctx, ifindex, &routed);
    Some(ipv6::redirect(ctx, ip, &r, len))
}
