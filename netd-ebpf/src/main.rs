//! netd's datapath: entry points only. Each concern lives in its own module
//! of the library half of this crate.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        bindings::TC_ACT_OK,
        macros::{cgroup_sock_addr, classifier},
        programs::{SockAddrContext, TcContext},
    };
    use netd_ebpf::{bridge, hostfwd, uplink};

    /// Guest -> world: tc ingress on every netd bridge.
    #[classifier]
    pub fn netd_bridge_ingress(mut ctx: TcContext) -> i32 {
        bridge::ingress(&mut ctx)
    }

    /// Second stage of bridge ingress (tail call): a new flow from a guest.
    #[classifier]
    pub fn netd_bridge_new_flow(mut ctx: TcContext) -> i32 {
        bridge::new_flow_stage(&mut ctx)
    }

    /// Second stage of uplink ingress (tail call): port forwards.
    #[classifier]
    pub fn netd_uplink_new_flow(mut ctx: TcContext) -> i32 {
        uplink::new_flow_stage(&mut ctx)
    }

    /// IPv6 masquerade (tail call from bridge ingress).
    #[classifier]
    pub fn netd_nat66(mut ctx: TcContext) -> i32 {
        netd_ebpf::nat66::masquerade_stage(&mut ctx)
    }

    /// IPv6 from guests (tail call from bridge ingress).
    #[classifier]
    pub fn netd_bridge_ipv6(mut ctx: TcContext) -> i32 {
        netd_ebpf::ipv6::from_guest_stage(&mut ctx)
    }

    /// IPv6 towards guests (tail call from uplink ingress).
    #[classifier]
    pub fn netd_uplink_ipv6(mut ctx: TcContext) -> i32 {
        netd_ebpf::ipv6::to_guest(&mut ctx)
    }

    /// Bridge egress: towards guests (used by the mode-specific policy).
    #[classifier]
    pub fn netd_bridge_egress(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// World -> guest replies: tc ingress on uplinks.
    #[classifier]
    pub fn netd_uplink_ingress(mut ctx: TcContext) -> i32 {
        uplink::ingress(&mut ctx)
    }

    /// Safety net: tc egress on uplinks.
    #[classifier]
    pub fn netd_uplink_egress(mut ctx: TcContext) -> i32 {
        uplink::egress(&mut ctx)
    }

    /// Host-local clients of a port forward: TCP connect().
    #[cgroup_sock_addr(connect4)]
    pub fn netd_connect4(ctx: SockAddrContext) -> i32 {
        hostfwd::to_guest(&ctx)
    }

    /// Host-local clients of a port forward: unconnected UDP sendto().
    #[cgroup_sock_addr(sendmsg4)]
    pub fn netd_sendmsg4(ctx: SockAddrContext) -> i32 {
        hostfwd::to_guest(&ctx)
    }

    /// Host-local UDP clients see replies from the address they used.
    #[cgroup_sock_addr(recvmsg4)]
    pub fn netd_recvmsg4(ctx: SockAddrContext) -> i32 {
        hostfwd::from_guest(&ctx)
    }

    #[cfg(not(test))]
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
