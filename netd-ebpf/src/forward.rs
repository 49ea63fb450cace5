//! Routing decisions with `bpf_fib_lookup`, and the redirect that sends a
//! packet straight to its egress device, past the host's netfilter.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::{csum, parse::Ipv4, stats};
use netd_common::reason;

const AF_INET: u8 = 2;

pub enum Route {
    /// Forward out of `ifindex`; MACs are known unless `neigh` is false.
    Forward {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
        neigh: bool,
    },
    /// Addressed to the host itself.
    Local,
    /// Anything the kernel should handle: no route, MTU exceeded (it sends
    /// the ICMP), forwarding disabled.
    Stack,
}

/// Looks up the route for `saddr -> daddr` as if the packet arrived on
/// `in_ifindex`.
#[inline(always)]
pub fn route(ctx: &TcContext, in_ifindex: u32, ip: &Ipv4, saddr: u32, daddr: u32) -> Route {
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.__bindgen_anon_1.tot_len = mtu_check_len(ctx, ip.tot_len);
    p.ifindex = in_ifindex;
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    lookup(ctx, &mut p)
}

/// The length the FIB lookup checks against the egress MTU. A GSO packet
/// is longer than the MTU by design and is cut into segments on the way
/// out, so it must not be checked (it would be sent to the slow path, which
/// a FORWARD DROP policy blocks); every other packet is, so an oversized one
/// goes to the kernel, which answers with fragmentation-needed.
#[inline(always)]
pub fn mtu_check_len(ctx: &TcContext, tot_len: u16) -> u16 {
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        0
    } else {
        tot_len
    }
}

/// Runs a prepared FIB lookup (IPv4 or IPv6) and says what to do.
#[inline(always)]
pub fn lookup(ctx: &TcContext, p: &mut bpf_fib_lookup) -> Route {
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let neigh = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        BPF_FIB_LKUP_RET_NOT_FWDED => return Route::Local,
        // MTU exceeded (the kernel sends the ICMP), no route, forwarding off.
        _ => return Route::Stack,
    };
    Route::Forward {
        ifindex: p.ifindex,
        smac: p.smac,
        dmac: p.dmac,
        neigh,
    }
}

/// Decrements the TTL and redirects. Must only be called for packets whose
/// TTL is above 1 (the caller leaves expiring ones to the kernel, which
/// sends the time-exceeded).
#[inline(always)]
pub fn redirect(ctx: &mut TcContext, ip: &Ipv4, route: &Route) -> i32 {
    if !matches!(route, Route::Forward { .. }) {
        return TC_ACT_OK;
    }
    if csum::dec_ttl(ctx, ip.off, ip.ttl).is_err() {
        return stats::drop(reason::DROP_MALFORMED, ctx.len());
    }
    send(ctx, route)
}

/// Sends a packet out of the route's device: with the MACs the lookup
/// found, or through the kernel's neighbour resolution.
#[inline(always)]
pub fn send(ctx: &mut TcContext, route: &Route) -> i32 {
    let Route::Forward {
        ifindex,
        smac,
        dmac,
        neigh,
    } = route
    else {
        return TC_ACT_OK;
    };
    if !*neigh {
        return unsafe { bpf_redirect_neigh(*ifindex, core::ptr::null_mut(), 0, 0) as i32 };
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dmac);
    macs[6..].copy_from_slice(smac);
    if ctx.store(0, &macs, 0).is_err() {
        return stats::drop(reason::DROP_MALFORMED, ctx.len());
    }
    unsafe { bpf_redirect(*ifindex, 0) as i32 }
}
