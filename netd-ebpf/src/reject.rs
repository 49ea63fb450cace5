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
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
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
