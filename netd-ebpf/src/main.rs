//! netd's datapath: entry points only. Each concern lives in its own module.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod datapath {
    use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

    use netd_ebpf::{maps, stats};

    /// Guest -> world: tc ingress on every netd bridge.
    #[classifier]
    pub fn netd_bridge_ingress(ctx: TcContext) -> i32 {
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        if maps::network(ifindex).is_none() {
            return TC_ACT_OK;
        }
        stats::count_from_guests(ifindex, ctx.len());
        stats::count(netd_common::reason::PASS, ctx.len());
        TC_ACT_OK
    }

    /// Bridge egress: filled in by the NAT issue.
    #[classifier]
    pub fn netd_bridge_egress(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// World -> guest replies: tc ingress on uplinks.
    #[classifier]
    pub fn netd_uplink_ingress(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// Safety net: tc egress on uplinks.
    #[classifier]
    pub fn netd_uplink_egress(_ctx: TcContext) -> i32 {
        TC_ACT_OK
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
