//! Refusals answered the way libvirt's `REJECT --reject-with
//! icmp-port-unreachable` rules answer them: the guest gets an ICMP error
//! from its gateway at once instead of waiting for a timeout. Answers are
//! rate-limited per CPU, like the kernel's own ICMP errors.
//!
//! Two answers: port unreachable (code 3) for what policy refuses, and
//! communication administratively prohibited (code 13) for a flow the
//! masquerade cannot serve (its port range is full towards that peer), as
//! RFC 5508 REQ-8 asks of a NAT out of resources, instead of silence.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use netd_common::reason;

use crate::ct::now;
use crate::maps::REJECT_BUDGET;
use crate::parse::{ETH_LEN, Ipv4};
use crate::stats;

/// At most this many answers per CPU per second.
const PER_SECOND: u64 = 100;
/// Quoted: the refused packet's IP header and its first 8 bytes of payload.
const QUOTE: usize = 28;
const ICMP_LEN: usize = 8 + QUOTE;
const REPLY_LEN: u32 = (ETH_LEN + 20 + ICMP_LEN) as u32;

#[inline(always)]
fn within_budget() -> bool {
    let Some(b) = REJECT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    let b = unsafe { &mut *b };
    let t = now();
    if t.saturating_sub(b.window_start_ns) >= 1_000_000_000 {
        b.window_start_ns = t;
        b.count = 0;
    }
    b.count += 1;
    b.count <= PER_SECOND
}

#[inline(always)]
fn fold(sum: i64) -> u16 {
    let mut s = sum as u64;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// ICMP destination-unreachable codes netd answers with.
pub const CODE_PORT_UNREACHABLE: u8 = 3;
pub const CODE_ADMIN_PROHIBITED: u8 = 13;

/// Turns the refused packet into a port-unreachable from `gateway` and
/// sends it back out of the bridge it came from; the refusal is counted
/// under `why` whether or not an answer goes out.
#[inline(always)]
pub fn port_unreachable(
    ctx: &mut TcContext,
    ifindex: u32,
    ip: &Ipv4,
    gateway: u32,
    why: u32,
) -> i32 {
    unreachable(
        ctx,
        ifindex,
        ip,
        gateway,
        refusal(CODE_PORT_UNREACHABLE, why),
    )
}

/// The code and the drop reason of an answer, in one argument: a BPF
/// function takes at most five.
#[inline(always)]
pub const fn refusal(code: u8, why: u32) -> u32 {
    ((code as u32) << 24) | (why & 0x00ff_ffff)
}

/// Turns the refused packet into an ICMP destination unreachable with the
/// code of `refusal` from `gateway` and sends it back out of the bridge it
/// came from; the packet is counted under the refusal's reason whether
/// answered or not (over budget, IP options, a later fragment). Not
/// inlined: its buffers would otherwise add to the stack of the masquerade
/// path.
#[inline(never)]
pub fn unreachable(
    ctx: &mut TcContext,
    ifindex: u32,
    ip: &Ipv4,
    gateway: u32,
    refusal: u32,
) -> i32 {
    let code = (refusal >> 24) as u8;
    let why = refusal & 0x00ff_ffff;
    let len = ctx.len();
    // Options would shift the quote; such packets (rare) are just dropped.
    if ip.hdr_len != 20 || ip.is_later_fragment() || !within_budget() {
        return stats::drop(why, len);
    }
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return stats::drop(why, len);
    };
    // Never answer a link-layer broadcast or multicast (RFC 1122 3.2.2):
    // the answer would also go out from that group address.
    if macs[0] & 1 != 0 {
        return stats::drop(why, len);
    }
    let Ok(quote) = ctx.load::<[u8; QUOTE]>(ETH_LEN) else {
        return stats::drop(why, len);
    };
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut __sk_buff, REPLY_LEN, 0) } != 0 {
        return stats::drop(why, len);
    }
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);

    let total = (20 + ICMP_LEN) as u16;
    let g = gateway.to_ne_bytes();
    let d = ip.saddr.to_ne_bytes();
    let mut hdr: [u8; 20] = [
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        1,
        0,
        0,
        g[0],
        g[1],
        g[2],
        g[3],
        d[0],
        d[1],
        d[2],
        d[3],
    ];
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            hdr.as_mut_ptr() as *mut u32,
            20,
            0,
        )
    };
    let c = fold(sum).to_ne_bytes();
    hdr[10] = c[0];
    hdr[11] = c[1];

    let mut icmp = [0u8; ICMP_LEN];
    icmp[0] = 3; // destination unreachable
    icmp[1] = code;
    icmp[8..].copy_from_slice(&quote);
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            icmp.as_mut_ptr() as *mut u32,
            ICMP_LEN as u32,
            0,
        )
    };
    let c = fold(sum).to_ne_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];

    if ctx.store(0, &eth, 0).is_err()
        || ctx.store(ETH_LEN, &hdr, 0).is_err()
        || ctx.store(ETH_LEN + 20, &icmp, 0).is_err()
    {
        return stats::drop(why, len);
    }
    stats::count(reason::REJECT_SENT, len);
    stats::count(why, len);
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// ICMPv6 destination unreachable, code 1: communication with the
/// destination administratively prohibited (RFC 4443).
pub const CODE6_ADMIN_PROHIBITED: u8 = 1;
/// Quoted: the refused packet's IPv6 header and its first 8 bytes of
/// payload (ports, or an echo's id).
const QUOTE6: usize = 48;
const ICMP6_LEN: usize = 8 + QUOTE6;
const REPLY6_LEN: u32 = (ETH_LEN + 40 + ICMP6_LEN) as u32;

/// The IPv6 form of `unreachable`, for a NAT66 flow the masquerade cannot
/// serve: ICMPv6 destination unreachable, code 1, from the network's
/// router address (NETD_GATEWAYS6), sent back out of the bridge; counted
/// under `why` whether answered or not, rate-limited with the IPv4 answers.
/// Not inlined: its buffers would otherwise add to the stack of the NAT66
/// path.
#[inline(never)]
pub fn unreachable6(ctx: &mut TcContext, ifindex: u32, why: u32) -> i32 {
    let len = ctx.len();
    let Some(gw) = (unsafe { crate::maps::GATEWAYS6.get(&ifindex) }).copied() else {
        return stats::drop(why, len);
    };
    if !within_budget() {
        return stats::drop(why, len);
    }
    // Every buffer here counts against the NAT66 program's stack: the
    // quote is read straight into the message, the MACs swapped in halves.
    let (Ok(dmac), Ok(smac)) = (ctx.load::<[u8; 6]>(0), ctx.load::<[u8; 6]>(6)) else {
        return stats::drop(why, len);
    };
    let mut icmp = [0u8; ICMP6_LEN];
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ETH_LEN as u32,
            icmp.as_mut_ptr().add(8) as *mut _,
            QUOTE6 as u32,
        )
    };
    if rc != 0 {
        return stats::drop(why, len);
    }
    // Never an ICMPv6 error about one (only echo requests are answered).
    if icmp[8 + 6] == 58 && icmp[8 + 40] != 128 {
        return stats::drop(why, len);
    }
    // The refused packet's source (quoted header bytes 8-23) is the
    // answer's destination.
    let word = |i: usize| {
        u32::from_ne_bytes([
            icmp[8 + 8 + i],
            icmp[8 + 9 + i],
            icmp[8 + 10 + i],
            icmp[8 + 11 + i],
        ])
    };
    let plen = ICMP6_LEN as u32;
    // The IPv6 header in wire-order words: version 6, hop limit 64.
    let mut hdr: [u32; 10] = [
        0x6000_0000u32.to_be(),
        ((plen << 16) | (58 << 8) | 64).to_be(),
        gw[0],
        gw[1],
        gw[2],
        gw[3],
        word(0),
        word(4),
        word(8),
        word(12),
    ];
    icmp[0] = 1; // destination unreachable
    icmp[1] = CODE6_ADMIN_PROHIBITED;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut __sk_buff, REPLY6_LEN, 0) } != 0 {
        return stats::drop(why, len);
    }
    // The checksum covers the pseudo-header: both addresses (the header's
    // last 32 bytes), the length and the next header.
    let mut pseudo: [u32; 2] = [plen.to_be(), 58u32.to_be()];
    let sum = unsafe {
        let s = bpf_csum_diff(core::ptr::null_mut(), 0, hdr.as_mut_ptr().add(2), 32, 0);
        let s = bpf_csum_diff(core::ptr::null_mut(), 0, pseudo.as_mut_ptr(), 8, s as u32);
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            icmp.as_mut_ptr() as *mut u32,
            ICMP6_LEN as u32,
            s as u32,
        )
    };
    let c = fold(sum).to_ne_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    if ctx.store(0, &smac, 0).is_err()
        || ctx.store(6, &dmac, 0).is_err()
        || ctx.store(ETH_LEN, &hdr, 0).is_err()
        || ctx.store(ETH_LEN + 40, &icmp, 0).is_err()
    {
        return stats::drop(why, len);
    }
    stats::count(reason::REJECT_SENT, len);
    stats::count(why, len);
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
