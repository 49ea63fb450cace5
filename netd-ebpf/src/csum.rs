//! Header rewrites with incremental checksum updates (RFC 1624), done by
//! the kernel's csum helpers so CHECKSUM_PARTIAL packets stay correct.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use crate::parse::{IP_CSUM_OFF, IPPROTO_UDP};

pub struct CsumError;

/// How a change to a field affects the L4 checksum.
#[derive(Clone, Copy)]
pub struct L4Csum {
    /// Offset of the L4 checksum, 0 for none (later fragments, unknown protocols).
    pub off: usize,
    pub proto: u8,
    /// ICMP's checksum has no pseudo-header: address changes don't touch it.
    pub pseudo: bool,
}

impl L4Csum {
    #[inline(always)]
    fn flags(&self, size: u64, pseudo: bool) -> u64 {
        let mut f = size;
        if pseudo {
            f |= u64::from(BPF_F_PSEUDO_HDR);
        }
        // A UDP checksum of 0 means "none" and must stay 0.
        if self.proto == IPPROTO_UDP {
            f |= u64::from(BPF_F_MARK_MANGLED_0);
        }
        f
    }
}

/// Rewrites an IPv4 address at `addr_off`, fixing the IP header checksum of
/// the header at `ip_off` and the pseudo-header part of the L4 checksum.
#[inline(always)]
pub fn set_addr(
    ctx: &mut TcContext,
    ip_off: usize,
    addr_off: usize,
    old: u32,
    new: u32,
    l4: L4Csum,
) -> Result<(), CsumError> {
    if old == new {
        return Ok(());
    }
    ctx.store(addr_off, &new, 0).map_err(|_| CsumError)?;
    ctx.l3_csum_replace(ip_off + IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .map_err(|_| CsumError)?;
    if l4.off != 0 && l4.pseudo {
        ctx.l4_csum_replace(l4.off, u64::from(old), u64::from(new), l4.flags(4, true))
            .map_err(|_| CsumError)?;
    }
    Ok(())
}

/// Rewrites a 16-bit field covered by the L4 checksum (a port, an echo id).
#[inline(always)]
pub fn set_port(
    ctx: &mut TcContext,
    off: usize,
    old: u16,
    new: u16,
    l4: L4Csum,
) -> Result<(), CsumError> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0).map_err(|_| CsumError)?;
    if l4.off != 0 {
        ctx.l4_csum_replace(l4.off, u64::from(old), u64::from(new), l4.flags(2, false))
            .map_err(|_| CsumError)?;
    }
    Ok(())
}

/// Folds a change of any 16/32-bit word into a checksum field that covers
/// it as plain data (the ICMP checksum over a quoted packet).
#[inline(always)]
pub fn fold_into(
    ctx: &mut TcContext,
    csum_off: usize,
    old: u32,
    new: u32,
    size: u64,
) -> Result<(), CsumError> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(csum_off, u64::from(old), u64::from(new), size)
        .map_err(|_| CsumError)
}

/// Decrements the TTL of a forwarded packet.
#[inline(always)]
pub fn dec_ttl(ctx: &mut TcContext, ip_off: usize, ttl: u8) -> Result<(), CsumError> {
    // TTL shares a 16-bit checksum word with the protocol byte.
    let proto: u8 = ctx.load(ip_off + 9).map_err(|_| CsumError)?;
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl - 1, proto]);
    ctx.store(ip_off + crate::parse::IP_TTL_OFF, &(ttl - 1), 0)
        .map_err(|_| CsumError)?;
    ctx.l3_csum_replace(
        ip_off + IP_CSUM_OFF,
        u64::from(old.to_be()),
        u64::from(new.to_be()),
        2,
    )
    .map_err(|_| CsumError)
}

/// RFC 1624 incremental update of a 16-bit one's-complement checksum for a
/// word changing from `old` to `new`, all in wire order as loaded.
#[inline(always)]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let c = update16(csum, old as u16, new as u16);
    update16(c, (old >> 16) as u16, (new >> 16) as u16)
}
