//! MSS clamping (`nat.clamp_mss`): a guest's SYN leaving through an uplink
//! whose MTU is smaller than the bridge's (PPPoE, a tunnel) has its TCP
//! MSS option lowered to what that MTU carries, so neither end sends
//! segments the uplink would have to drop. This is the nft/iptables
//! `TCPMSS --clamp-mss-to-pmtu` rule einat's users are told to add, done
//! in BPF with the checksum fixed incrementally.

use aya_ebpf::{helpers::bpf_check_mtu, programs::TcContext};

/// TCP options are at most 40 bytes.
const OPT_MAX: usize = 40;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
/// IPv4 and TCP headers without options.
const HEADERS: u32 = 40;

/// Lowers the MSS option of the TCP SYN at `tcp_off` (checksum field at
/// `csum_off`) to the MTU of `out` less 40. Packets without the option,
/// or with one already small enough, are left alone. Not inlined: the
/// option buffer would add to the new-flow program's stack.
#[inline(never)]
pub fn clamp(ctx: &mut TcContext, out: u32, tcp_off: u32, csum_off: u32) {
    let mut mtu: u32 = 0;
    // With *mtu_len 0 the helper checks the packet's own length, and sets
    // it to the device's (L3) MTU either way.
    let rc = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, out, &mut mtu, 0, 0) };
    if rc < 0 || mtu <= HEADERS {
        return;
    }
    let max = (mtu - HEADERS).min(u32::from(u16::MAX)) as u16;
    let tcp_off = tcp_off as usize;
    let Ok(b) = ctx.load::<u8>(tcp_off + 12) else {
        return;
    };
    let n = usize::from(b >> 4) * 4;
    if n <= 20 {
        return;
    }
    // 4 to 40 bytes of options (a data offset of 6 to 15 words), read a
    // byte at a time from the packet: an index into a stack buffer is an
    // offset the verifier cannot bound.
    let n = n - 20;
    let base = tcp_off + 20;
    let mut i = 0usize;
    for _ in 0..OPT_MAX {
        if i >= n {
            return;
        }
        let Ok(kind) = ctx.load::<u8>(base + i) else {
            return;
        };
        match kind {
            OPT_END => return,
            OPT_NOP => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let Ok(len) = ctx.load::<u8>(base + i + 1) else {
            return;
        };
        let len = usize::from(len);
        if kind == OPT_MSS {
            if len != 4 || i + 4 > n {
                return;
            }
            let Ok(old) = ctx.load::<u16>(base + i + 2) else {
                return;
            };
            if u16::from_be(old) <= max {
                return;
            }
            let new = max.to_be();
            if ctx.store(base + i + 2, &new, 0).is_ok() {
                let _ = ctx.l4_csum_replace(csum_off as usize, u64::from(old), u64::from(new), 2);
            }
            return;
        }
        if len < 2 {
            return;
        }
        i += len;
    }
}
