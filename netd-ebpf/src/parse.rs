//! Bounds-checked header access. Every read goes through
//! `bpf_skb_load_bytes`, which fails cleanly past the packet's end, so a
//! truncated packet becomes an `Err`, never an out-of-bounds read.

use aya_ebpf::programs::TcContext;

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const ICMP_ECHOREPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Offsets inside the IPv4 header.
pub const IP_CSUM_OFF: usize = 10;
pub const IP_SADDR_OFF: usize = 12;
pub const IP_DADDR_OFF: usize = 16;
pub const IP_TTL_OFF: usize = 8;

pub struct Malformed;

/// The fields of an IPv4 header the datapath uses. Addresses are in wire
/// order; lengths and fragment fields in host order.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    /// Offset of the IPv4 header in the frame.
    pub off: usize,
    pub hdr_len: usize,
    pub tot_len: u16,
    pub id: u16,
    /// Fragment offset in 8-byte units.
    pub frag_off: u16,
    pub more_frags: bool,
    pub ttl: u8,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
}

impl Ipv4 {
    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        self.off + self.hdr_len
    }
    /// A fragment other than the first: it carries no L4 header.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        self.frag_off != 0
    }
    #[inline(always)]
    pub fn is_first_fragment(&self) -> bool {
        self.frag_off == 0 && self.more_frags
    }
}

#[inline(always)]
pub fn eth_proto(ctx: &TcContext) -> Option<u16> {
    ctx.load::<[u8; 2]>(12).ok().map(u16::from_be_bytes)
}

/// Parses and validates the IPv4 header at `off`.
#[inline(always)]
pub fn ipv4(ctx: &TcContext, off: usize) -> Result<Ipv4, Malformed> {
    let h: [u8; 20] = ctx.load(off).map_err(|_| Malformed)?;
    if h[0] >> 4 != 4 {
        return Err(Malformed);
    }
    let hdr_len = usize::from(h[0] & 0x0f) * 4;
    let tot_len = u16::from_be_bytes([h[2], h[3]]);
    if hdr_len < 20
        || usize::from(tot_len) < hdr_len
        || usize::from(tot_len) + off > ctx.len() as usize
    {
        return Err(Malformed);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    Ok(Ipv4 {
        off,
        hdr_len,
        tot_len,
        id: u16::from_be_bytes([h[4], h[5]]),
        frag_off: frag & 0x1fff,
        more_frags: frag & 0x2000 != 0,
        ttl: h[8],
        proto: h[9],
        saddr: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        daddr: u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
    })
}

/// Ports (or the ICMP echo id) and the bits of L4 state the datapath needs.
#[derive(Clone, Copy, Default)]
pub struct L4 {
    /// Wire order. For ICMP echo: request (id, 0), reply (0, id).
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// Offset of the L4 checksum field, 0 when the protocol has none we fix.
    pub csum_off: usize,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Reads the L4 header of a first (or only) fragment.
#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ipv4) -> Result<L4, Malformed> {
    let off = ip.l4_off();
    match ip.proto {
        IPPROTO_TCP => {
            let h: [u8; 14] = ctx.load(off).map_err(|_| Malformed)?;
            Ok(L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                tcp_flags: h[13],
                icmp_type: 0,
                csum_off: off + 16,
            })
        }
        IPPROTO_UDP => {
            let h: [u8; 8] = ctx.load(off).map_err(|_| Malformed)?;
            Ok(L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                tcp_flags: 0,
                icmp_type: 0,
                csum_off: off + 6,
            })
        }
        IPPROTO_ICMP => {
            let h: [u8; 8] = ctx.load(off).map_err(|_| Malformed)?;
            let id = u16::from_ne_bytes([h[4], h[5]]);
            let (sport, dport) = match h[0] {
                ICMP_ECHO => (id, 0),
                ICMP_ECHOREPLY => (0, id),
                _ => (0, 0),
            };
            Ok(L4 {
                sport,
                dport,
                tcp_flags: 0,
                icmp_type: h[0],
                csum_off: off + 2,
            })
        }
        _ => Ok(L4::default()),
    }
}

#[inline(always)]
pub fn is_icmp_error(ip: &Ipv4, l4: &L4) -> bool {
    ip.proto == IPPROTO_ICMP && matches!(l4.icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED)
}
