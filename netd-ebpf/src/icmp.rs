//! ICMP errors about masqueraded flows and forwarded connections
//! (fragmentation needed, time exceeded, unreachable). The quoted packet
//! inside is the one we sent, so its source is translated back to the guest
//! as well as the outer destination, and every checksum involved follows:
//! the quoted IP header's, the quoted UDP/TCP one when present, and the ICMP
//! checksum over it all.
//! Without this, PMTU discovery and traceroute break behind NAT.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netd_common::{CtKey, dir, nat_kind, reason};

use crate::csum::{self, L4Csum};
use crate::forward::{self, Route};
use crate::parse::{ICMP_ECHO, IP_DADDR_OFF, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4, L4};
use crate::{ct, stats};

#[inline(always)]
pub fn error_to_guest(ctx: &mut TcContext, ifindex: u32, ip: &Ipv4, _l4: &L4, len: u32) -> i32 {
    let icmp_csum = ip.l4_off() + 2;
    let q = ip.l4_off() + 8;
    let Ok(h) = ctx.load::<[u8; 20]>(q) else {
        return TC_ACT_OK;
    };
    let q_hdr_len = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || q_hdr_len < 20 {
        return TC_ACT_OK;
    }
    let q_proto = h[9];
    let q_saddr = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    let q_daddr = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    // An error is sent to the source of what it quotes: one addressed
    // elsewhere (a guest's private address, say) is not about our flow.
    if ip.daddr != q_saddr {
        return TC_ACT_OK;
    }
    let q_l4 = q + q_hdr_len;
    // Where the quoted packet's port (or echo id) sits, and its value.
    let (sport, dport, port_off) = match q_proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let Ok(p) = ctx.load::<[u8; 4]>(q_l4) else {
                return TC_ACT_OK;
            };
            (
                u16::from_ne_bytes([p[0], p[1]]),
                u16::from_ne_bytes([p[2], p[3]]),
                q_l4,
            )
        }
        IPPROTO_ICMP => {
            let Ok(p) = ctx.load::<[u8; 6]>(q_l4) else {
                return TC_ACT_OK;
            };
            if p[0] != ICMP_ECHO {
                return TC_ACT_OK;
            }
            (u16::from_ne_bytes([p[4], p[5]]), 0, q_l4 + 4)
        }
        _ => (0, 0, 0),
    };
    let quoted = CtKey {
        saddr: q_saddr,
        daddr: q_daddr,
        sport,
        dport,
        proto: q_proto,
        _pad: [0; 3],
    };
    let Some(e) = ct::lookup(&quoted.reversed()) else {
        return TC_ACT_OK;
    };
    let (guest, guest_port, bridge) = unsafe {
        let e = &*e;
        // What we sent was a masqueraded flow's original or a forwarded
        // connection's reply; either way `xlate` leads to the guest.
        let masq = e.dir == dir::REPLY && e.nat == nat_kind::SNAT;
        let forwarded = e.dir == dir::ORIGINAL && e.nat == nat_kind::DNAT;
        if !(masq || forwarded) {
            return TC_ACT_OK;
        }
        (e.xlate.daddr, e.xlate.dport, e.bridge_ifindex)
    };
    if rewrite(
        ctx, ip, icmp_csum, q, q_l4, q_proto, q_saddr, guest, port_off, sport, guest_port,
    )
    .is_err()
    {
        return stats::drop(reason::DROP_MALFORMED, len);
    }
    stats::count(reason::REVERSE_NAT, len);
    stats::count_to_guests(bridge, len);
    if ip.ttl <= 1 {
        return stats::pass(reason::SLOW_PATH, len);
    }
    let route = forward::route(ctx, ifindex, ip, ip.saddr, guest);
    match route {
        Route::Forward { .. } => forward::redirect(ctx, ip, &route),
        _ => stats::pass(reason::SLOW_PATH, len),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &mut TcContext,
    ip: &Ipv4,
    icmp_csum: usize,
    q: usize,
    q_l4: usize,
    q_proto: u8,
    q_saddr: u32,
    guest: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), csum::CsumError> {
    let no_l4 = L4Csum {
        off: 0,
        proto: IPPROTO_ICMP,
        pseudo: false,
    };
    // Outer destination: the ICMP checksum has no pseudo-header.
    csum::set_addr(ctx, ip.off, ip.off + IP_DADDR_OFF, ip.daddr, guest, no_l4)?;

    // The quoted L4 checksum covers the quoted source address and port; a
    // quoted echo request's covers only its id (ICMP has no pseudo-header).
    let q_csum_off = match q_proto {
        IPPROTO_UDP => q_l4 + 6,
        IPPROTO_TCP => q_l4 + 16,
        IPPROTO_ICMP if port_off != 0 => q_l4 + 2,
        _ => 0,
    };
    if q_csum_off != 0
        && let Ok(old) = ctx.load::<u16>(q_csum_off)
        && !(q_proto == IPPROTO_UDP && old == 0)
    {
        let mut new = if q_proto == IPPROTO_ICMP {
            old
        } else {
            csum::update32(old, q_saddr, guest)
        };
        new = csum::update16(new, old_port, new_port);
        if q_proto == IPPROTO_UDP && new == 0 {
            // A UDP checksum that computes to zero is sent as 0xffff: 0
            // would mean "none" (what BPF_F_MARK_MANGLED_0 does elsewhere).
            new = 0xffff;
        }
        ctx.store(q_csum_off, &new, 0)
            .map_err(|_| csum::CsumError)?;
        csum::fold_into(ctx, icmp_csum, u32::from(old), u32::from(new), 2)?;
    }

    // The quoted IP header's source and its header checksum.
    let old_q_csum: u16 = ctx.load(q + 10).map_err(|_| csum::CsumError)?;
    let new_q_csum = csum::update32(old_q_csum, q_saddr, guest);
    ctx.store(q + 12, &guest, 0).map_err(|_| csum::CsumError)?;
    ctx.store(q + 10, &new_q_csum, 0)
        .map_err(|_| csum::CsumError)?;
    csum::fold_into(ctx, icmp_csum, q_saddr, guest, 4)?;
    csum::fold_into(
        ctx,
        icmp_csum,
        u32::from(old_q_csum),
        u32::from(new_q_csum),
        2,
    )?;

    if port_off != 0 && old_port != new_port {
        ctx.store(port_off, &new_port, 0)
            .map_err(|_| csum::CsumError)?;
        csum::fold_into(ctx, icmp_csum, u32::from(old_port), u32::from(new_port), 2)?;
    }
    Ok(())
}
