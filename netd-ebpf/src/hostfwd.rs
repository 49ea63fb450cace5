//! Forwards for clients on the host itself. Their packets never cross the
//! uplink's ingress, so the socket's destination is rewritten at connect()
//! and sendmsg() instead, and a UDP reply's source is mapped back at
//! recvmsg() so the application sees the address it talked to.

use aya_ebpf::{helpers::bpf_get_netns_cookie, programs::SockAddrContext};
use netd_common::ForwardKey;

use crate::maps::{FORWARDS_REV, settings};
use crate::nat;

/// Allow the operation (sock_addr programs return 1 to proceed).
const PROCEED: i32 = 1;

/// Only sockets in the daemon's own network namespace are touched: another
/// namespace's 203.0.113.3 is not ours.
#[inline(always)]
fn in_our_netns(ctx: &SockAddrContext) -> bool {
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) };
    let ours = settings().netns_cookie;
    ours != 0 && cookie == ours
}

/// connect4 and sendmsg4: a forwarded (address, port) goes to the guest.
#[inline(always)]
pub fn to_guest(ctx: &SockAddrContext) -> i32 {
    if !in_our_netns(ctx) {
        return PROCEED;
    }
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    let port = sa.user_port as u16;
    if let Some(t) = nat::forward_target(sa.user_ip4, port, proto) {
        sa.user_ip4 = t.addr;
        sa.user_port = u32::from(t.port);
    }
    PROCEED
}

/// recvmsg4: a datagram from a forward's guest end shows the host end.
#[inline(always)]
pub fn from_guest(ctx: &SockAddrContext) -> i32 {
    if !in_our_netns(ctx) {
        return PROCEED;
    }
    let sa = unsafe { &mut *ctx.sock_addr };
    let k = ForwardKey {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        proto: sa.protocol as u8,
        _pad: 0,
    };
    if let Some(host) = unsafe { FORWARDS_REV.get(&k) } {
        sa.user_ip4 = host.addr;
        sa.user_port = u32::from(host.port);
    }
    PROCEED
}
