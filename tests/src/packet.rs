//! Crafted Ethernet/IPv4 and Ethernet/IPv6 frames for BPF_PROG_TEST_RUN
//! tests, and checkers that read them back.
//!
//! Every checksum here is computed from scratch over the whole header or
//! segment (RFC 1071 sum over the bytes, plus the pseudo-header for TCP and
//! UDP, and for ICMPv6 the IPv6 one of RFC 8200 section 8.1), never updated
//! incrementally, so it is independent of the datapath's own RFC 1624
//! arithmetic and of the kernel's csum helpers.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const ICMP_ECHOREPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
pub const ICMPV6_NEIGHBOUR_SOLICIT: u8 = 135;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

// ---------------------------------------------------------------------------
// The checksum, from scratch.

/// RFC 1071 Internet checksum of `data`: the one's complement of the one's
/// complement sum of its big-endian 16-bit words (an odd last byte is padded
/// with zero). The result is the value to store, big-endian.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 pseudo-header followed by `segment`, the bytes TCP and UDP
/// checksums cover.
pub fn with_pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + segment.len());
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    v.push(0);
    v.push(proto);
    v.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    v.extend_from_slice(segment);
    v
}

/// The checksum a TCP or UDP segment should carry, computed over the
/// pseudo-header and the segment with its checksum field taken as zero.
/// For UDP a result of 0 is sent as 0xffff (0 means "no checksum").
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut seg = segment.to_vec();
    let off = l4_csum_offset(proto).expect("TCP or UDP");
    seg[off] = 0;
    seg[off + 1] = 0;
    let c = checksum(&with_pseudo_header(src, dst, proto, &seg));
    if proto == IPPROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// Offset of the checksum inside a TCP, UDP or ICMP header.
pub fn l4_csum_offset(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        IPPROTO_ICMP => Some(2),
        _ => None,
    }
}

/// Whether a stored checksum matches a freshly computed one. 0x0000 and
/// 0xffff are both zero in one's complement and both verify at a receiver,
/// except for UDP, where 0 means "no checksum".
pub fn csum_matches(stored: u16, computed: u16, proto: u8) -> bool {
    if stored == computed {
        return true;
    }
    proto != IPPROTO_UDP && (stored | computed == 0xffff) && (stored == 0 || computed == 0)
}

/// The IPv6 pseudo-header (RFC 8200 section 8.1: source, destination,
/// upper-layer length as 32 bits, three zero bytes, next header) followed
/// by `segment`: what TCP, UDP and ICMPv6 checksums cover over IPv6.
pub fn with_pseudo_header6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    segment: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + segment.len());
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    v.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, next_header]);
    v.extend_from_slice(segment);
    v
}

/// Offset of the checksum inside a TCP, UDP or ICMPv6 header.
pub fn l4_csum_offset6(next_header: u8) -> Option<usize> {
    match next_header {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        IPPROTO_ICMPV6 => Some(2),
        _ => None,
    }
}

/// The checksum a TCP, UDP or ICMPv6 segment over IPv6 should carry,
/// computed over the IPv6 pseudo-header and the segment with its checksum
/// field taken as zero. For UDP a result of 0 is sent as 0xffff.
pub fn l4_checksum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, segment: &[u8]) -> u16 {
    let mut seg = segment.to_vec();
    let off = l4_csum_offset6(next_header).expect("TCP, UDP or ICMPv6");
    seg[off] = 0;
    seg[off + 1] = 0;
    let c = checksum(&with_pseudo_header6(src, dst, next_header, &seg));
    if next_header == IPPROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

// ---------------------------------------------------------------------------
// Building packets.

/// What follows the IPv4 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        payload: Vec<u8>,
    },
    /// `csum: false` sends checksum 0 ("none").
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        csum: bool,
    },
    /// `rest` is the second word of the header: echo id and sequence, the
    /// next-hop MTU of a frag-needed, or zero.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        payload: Vec<u8>,
    },
    /// Bytes taken as they are (fragments, truncated headers).
    Raw(Vec<u8>),
}

/// An Ethernet + IPv4 packet, described field by field. Build it with
/// [`Packet::frame`]; every length and checksum is filled in from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    /// Fragment offset in 8-byte units.
    pub frag_off: u16,
    pub ttl: u8,
    /// Protocol number; set by the constructors, needed for `L4::Raw`.
    pub proto: u8,
    /// IP options, a multiple of 4 bytes long (IHL = 5 + len / 4).
    pub options: Vec<u8>,
    pub l4: L4,
    /// Overrides the total-length field (to build lying headers).
    pub tot_len_override: Option<u16>,
}

impl Packet {
    fn base(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: L4) -> Packet {
        Packet {
            dst_mac: [0; 6],
            src_mac: [0; 6],
            src,
            dst,
            tos: 0,
            id: 0x1000,
            df: false,
            mf: false,
            frag_off: 0,
            ttl: 64,
            proto,
            options: Vec::new(),
            l4,
            tot_len_override: None,
        }
    }

    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Packet {
        let l4 = L4::Tcp {
            sport,
            dport,
            seq: 0x1000_0000,
            ack: 0,
            flags,
            window: 64240,
            payload: Vec::new(),
        };
        let mut p = Packet::base(src, dst, IPPROTO_TCP, l4);
        p.df = true;
        p
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Packet {
        let l4 = L4::Udp {
            sport,
            dport,
            payload: payload.to_vec(),
            csum: true,
        };
        Packet::base(src, dst, IPPROTO_UDP, l4)
    }

    pub fn icmp_echo(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        request: bool,
        id: u16,
        seq: u16,
        payload: &[u8],
    ) -> Packet {
        let mut rest = [0u8; 4];
        rest[..2].copy_from_slice(&id.to_be_bytes());
        rest[2..].copy_from_slice(&seq.to_be_bytes());
        let ty = if request { ICMP_ECHO } else { ICMP_ECHOREPLY };
        let l4 = L4::Icmp {
            ty,
            code: 0,
            rest,
            payload: payload.to_vec(),
        };
        Packet::base(src, dst, IPPROTO_ICMP, l4)
    }

    /// An ICMP error from `src` to `dst` quoting the first `quote_len`
    /// bytes of `quoted` (its IP header and what follows), as a router
    /// sends it.
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ty: u8,
        code: u8,
        rest: [u8; 4],
        quoted: &Packet,
        quote_len: usize,
    ) -> Packet {
        let q = quoted.ip_bytes();
        let n = quote_len.min(q.len());
        let l4 = L4::Icmp {
            ty,
            code,
            rest,
            payload: q[..n].to_vec(),
        };
        let mut p = Packet::base(src, dst, IPPROTO_ICMP, l4);
        p.tos = 0xc0;
        p
    }

    pub fn macs(mut self, dst: Mac, src: Mac) -> Packet {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    pub fn sport(&self) -> u16 {
        match &self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport,
            _ => panic!("no source port"),
        }
    }

    pub fn set_sport(&mut self, port: u16) {
        match &mut self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = port,
            _ => panic!("no source port"),
        }
    }

    pub fn set_dport(&mut self, port: u16) {
        match &mut self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = port,
            _ => panic!("no destination port"),
        }
    }

    /// Sets the echo identifier of an ICMP echo request or reply.
    pub fn set_echo_id(&mut self, id: u16) {
        match &mut self.l4 {
            L4::Icmp { rest, .. } => rest[..2].copy_from_slice(&id.to_be_bytes()),
            _ => panic!("not ICMP"),
        }
    }

    /// The bytes after the IP header, checksum included.
    pub fn l4_bytes(&self) -> Vec<u8> {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                payload,
            } => {
                let mut v = Vec::with_capacity(20 + payload.len());
                v.extend_from_slice(&sport.to_be_bytes());
                v.extend_from_slice(&dport.to_be_bytes());
                v.extend_from_slice(&seq.to_be_bytes());
                v.extend_from_slice(&ack.to_be_bytes());
                v.push(5 << 4);
                v.push(*flags);
                v.extend_from_slice(&window.to_be_bytes());
                v.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                v.extend_from_slice(payload);
                let c = l4_checksum(self.src, self.dst, IPPROTO_TCP, &v);
                v[16..18].copy_from_slice(&c.to_be_bytes());
                v
            }
            L4::Udp {
                sport,
                dport,
                payload,
                csum,
            } => {
                let mut v = Vec::with_capacity(8 + payload.len());
                v.extend_from_slice(&sport.to_be_bytes());
                v.extend_from_slice(&dport.to_be_bytes());
                v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                v.extend_from_slice(&[0, 0]);
                v.extend_from_slice(payload);
                if *csum {
                    let c = l4_checksum(self.src, self.dst, IPPROTO_UDP, &v);
                    v[6..8].copy_from_slice(&c.to_be_bytes());
                }
                v
            }
            L4::Icmp {
                ty,
                code,
                rest,
                payload,
            } => {
                let mut v = Vec::with_capacity(8 + payload.len());
                v.push(*ty);
                v.push(*code);
                v.extend_from_slice(&[0, 0]);
                v.extend_from_slice(rest);
                v.extend_from_slice(payload);
                let c = checksum(&v);
                v[2..4].copy_from_slice(&c.to_be_bytes());
                v
            }
            L4::Raw(b) => b.clone(),
        }
    }

    /// The IPv4 packet (header with a fresh checksum, then `l4_bytes`).
    pub fn ip_bytes(&self) -> Vec<u8> {
        assert!(
            self.options.len().is_multiple_of(4) && self.options.len() <= 40,
            "bad options length"
        );
        let l4 = self.l4_bytes();
        let hlen = 20 + self.options.len();
        let tot_len = self.tot_len_override.unwrap_or((hlen + l4.len()) as u16);
        let mut frag = self.frag_off & 0x1fff;
        if self.df {
            frag |= 0x4000;
        }
        if self.mf {
            frag |= 0x2000;
        }
        let mut h = Vec::with_capacity(hlen + l4.len());
        h.push(0x40 | (hlen / 4) as u8);
        h.push(self.tos);
        h.extend_from_slice(&tot_len.to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&l4);
        h
    }

    /// The whole Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        eth(self.dst_mac, self.src_mac, ETH_P_IP, &self.ip_bytes())
    }
}

/// An Ethernet + IPv6 packet (no extension headers), described field by
/// field. `L4::Icmp` is ICMPv6 here (its checksum covers the IPv6
/// pseudo-header). Build it with [`Packet6::frame`]; the payload length and
/// every checksum are filled in from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet6 {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
    pub hop_limit: u8,
    /// Set by the constructors, needed for `L4::Raw`.
    pub next_header: u8,
    pub l4: L4,
}

impl Packet6 {
    fn base(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4: L4) -> Packet6 {
        Packet6 {
            dst_mac: [0; 6],
            src_mac: [0; 6],
            src,
            dst,
            traffic_class: 0,
            flow_label: 0x12345,
            hop_limit: 64,
            next_header,
            l4,
        }
    }

    pub fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Packet6 {
        let l4 = L4::Tcp {
            sport,
            dport,
            seq: 0x1000_0000,
            ack: 0,
            flags,
            window: 64800,
            payload: Vec::new(),
        };
        Packet6::base(src, dst, IPPROTO_TCP, l4)
    }

    pub fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Packet6 {
        let l4 = L4::Udp {
            sport,
            dport,
            payload: payload.to_vec(),
            csum: true,
        };
        Packet6::base(src, dst, IPPROTO_UDP, l4)
    }

    pub fn icmp_echo(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        request: bool,
        id: u16,
        seq: u16,
        payload: &[u8],
    ) -> Packet6 {
        let mut rest = [0u8; 4];
        rest[..2].copy_from_slice(&id.to_be_bytes());
        rest[2..].copy_from_slice(&seq.to_be_bytes());
        let ty = if request {
            ICMPV6_ECHO_REQUEST
        } else {
            ICMPV6_ECHO_REPLY
        };
        let l4 = L4::Icmp {
            ty,
            code: 0,
            rest,
            payload: payload.to_vec(),
        };
        Packet6::base(src, dst, IPPROTO_ICMPV6, l4)
    }

    /// Any other ICMPv6 message (neighbour discovery, errors).
    pub fn icmp(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ty: u8,
        code: u8,
        rest: [u8; 4],
        payload: &[u8],
    ) -> Packet6 {
        let l4 = L4::Icmp {
            ty,
            code,
            rest,
            payload: payload.to_vec(),
        };
        Packet6::base(src, dst, IPPROTO_ICMPV6, l4)
    }

    pub fn macs(mut self, dst: Mac, src: Mac) -> Packet6 {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    pub fn sport(&self) -> u16 {
        match &self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport,
            _ => panic!("no source port"),
        }
    }

    pub fn set_sport(&mut self, port: u16) {
        match &mut self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = port,
            _ => panic!("no source port"),
        }
    }

    pub fn set_dport(&mut self, port: u16) {
        match &mut self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = port,
            _ => panic!("no destination port"),
        }
    }

    /// Sets the identifier of an ICMPv6 echo request or reply.
    pub fn set_echo_id(&mut self, id: u16) {
        match &mut self.l4 {
            L4::Icmp { rest, .. } => rest[..2].copy_from_slice(&id.to_be_bytes()),
            _ => panic!("not ICMPv6"),
        }
    }

    /// The bytes after the IPv6 header, checksum included.
    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        let mut csum = true;
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                payload,
            } => {
                v.extend_from_slice(&sport.to_be_bytes());
                v.extend_from_slice(&dport.to_be_bytes());
                v.extend_from_slice(&seq.to_be_bytes());
                v.extend_from_slice(&ack.to_be_bytes());
                v.push(5 << 4);
                v.push(*flags);
                v.extend_from_slice(&window.to_be_bytes());
                v.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                v.extend_from_slice(payload);
            }
            L4::Udp {
                sport,
                dport,
                payload,
                csum: with,
            } => {
                v.extend_from_slice(&sport.to_be_bytes());
                v.extend_from_slice(&dport.to_be_bytes());
                v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                v.extend_from_slice(&[0, 0]);
                v.extend_from_slice(payload);
                csum = *with;
            }
            L4::Icmp {
                ty,
                code,
                rest,
                payload,
            } => {
                v.push(*ty);
                v.push(*code);
                v.extend_from_slice(&[0, 0]);
                v.extend_from_slice(rest);
                v.extend_from_slice(payload);
            }
            L4::Raw(b) => return b.clone(),
        }
        let proto = match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            _ => IPPROTO_ICMPV6,
        };
        if csum {
            let off = l4_csum_offset6(proto).unwrap();
            let c = l4_checksum6(self.src, self.dst, proto, &v);
            v[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        v
    }

    /// The IPv6 packet: the fixed header, then `l4_bytes`.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut h = Vec::with_capacity(40 + l4.len());
        let word =
            (6u32 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0xfffff);
        h.extend_from_slice(&word.to_be_bytes());
        h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        h.push(self.next_header);
        h.push(self.hop_limit);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&l4);
        h
    }

    /// The whole Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        eth(self.dst_mac, self.src_mac, ETH_P_IPV6, &self.ip_bytes())
    }
}

pub fn eth(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ETH_LEN + payload.len());
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// An ARP request (who-has `target` tell `sender`), broadcast.
pub fn arp_request(sender_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    a.extend_from_slice(&ETH_P_IP.to_be_bytes());
    a.push(6);
    a.push(4);
    a.extend_from_slice(&1u16.to_be_bytes()); // request
    a.extend_from_slice(&sender_mac);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    eth([0xff; 6], sender_mac, ETH_P_ARP, &a)
}

pub fn mac(s: &str) -> Mac {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    assert_eq!(parts.len(), 6, "bad MAC {s}");
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("bad MAC {s}"));
    }
    m
}

// ---------------------------------------------------------------------------
// Reading packets back.

/// An IPv4 packet (no Ethernet header) as bytes, with accessors. Nothing is
/// trusted: accessors panic on a packet too short for them.
#[derive(Clone, Copy)]
pub struct Ip<'a>(pub &'a [u8]);

impl<'a> Ip<'a> {
    pub fn hdr_len(&self) -> usize {
        usize::from(self.0[0] & 0x0f) * 4
    }
    pub fn tot_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.0[2], self.0[3]]))
    }
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.0[4], self.0[5]])
    }
    pub fn frag_field(&self) -> u16 {
        u16::from_be_bytes([self.0[6], self.0[7]])
    }
    pub fn more_frags(&self) -> bool {
        self.frag_field() & 0x2000 != 0
    }
    pub fn frag_off(&self) -> u16 {
        self.frag_field() & 0x1fff
    }
    pub fn ttl(&self) -> u8 {
        self.0[8]
    }
    pub fn proto(&self) -> u8 {
        self.0[9]
    }
    pub fn csum(&self) -> u16 {
        u16::from_be_bytes([self.0[10], self.0[11]])
    }
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.0[12], self.0[13], self.0[14], self.0[15])
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.0[16], self.0[17], self.0[18], self.0[19])
    }
    pub fn header(&self) -> &'a [u8] {
        &self.0[..self.hdr_len()]
    }
    /// The bytes after the header, up to the total length or the end of
    /// what is there, whichever comes first.
    pub fn l4(&self) -> &'a [u8] {
        let end = self.tot_len().min(self.0.len());
        &self.0[self.hdr_len().min(end)..end]
    }
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_off() != 0
    }
    pub fn sport(&self) -> u16 {
        let l = self.l4();
        u16::from_be_bytes([l[0], l[1]])
    }
    pub fn dport(&self) -> u16 {
        let l = self.l4();
        u16::from_be_bytes([l[2], l[3]])
    }
    /// The stored L4 checksum (TCP, UDP or ICMP).
    pub fn l4_csum(&self) -> u16 {
        let off = l4_csum_offset(self.proto()).expect("a protocol with a checksum");
        let l = self.l4();
        u16::from_be_bytes([l[off], l[off + 1]])
    }
    pub fn tcp_flags(&self) -> u8 {
        self.l4()[13]
    }
    pub fn icmp_type(&self) -> u8 {
        self.l4()[0]
    }
    pub fn icmp_code(&self) -> u8 {
        self.l4()[1]
    }
    pub fn echo_id(&self) -> u16 {
        let l = self.l4();
        u16::from_be_bytes([l[4], l[5]])
    }
    /// The packet quoted by an ICMP error.
    pub fn icmp_quoted(&self) -> Ip<'a> {
        Ip(&self.l4()[8..])
    }
}

/// An Ethernet frame.
#[derive(Clone, Copy)]
pub struct Frame<'a>(pub &'a [u8]);

impl<'a> Frame<'a> {
    pub fn dst_mac(&self) -> Mac {
        self.0[0..6].try_into().unwrap()
    }
    pub fn src_mac(&self) -> Mac {
        self.0[6..12].try_into().unwrap()
    }
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.0[12], self.0[13]])
    }
    pub fn ip(&self) -> Ip<'a> {
        Ip(&self.0[ETH_LEN..])
    }
    pub fn ip6(&self) -> Ip6<'a> {
        Ip6(&self.0[ETH_LEN..])
    }
}

/// An IPv6 packet (no Ethernet header) as bytes, with accessors. Extension
/// headers are not walked: `l4` is what follows the fixed header.
#[derive(Clone, Copy)]
pub struct Ip6<'a>(pub &'a [u8]);

impl<'a> Ip6<'a> {
    pub fn version(&self) -> u8 {
        self.0[0] >> 4
    }
    pub fn payload_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.0[4], self.0[5]]))
    }
    pub fn next_header(&self) -> u8 {
        self.0[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.0[7]
    }
    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.0[8..24]).unwrap())
    }
    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.0[24..40]).unwrap())
    }
    /// The bytes after the fixed header, up to the payload length or the
    /// end of what is there, whichever comes first.
    pub fn l4(&self) -> &'a [u8] {
        let end = (40 + self.payload_len()).min(self.0.len());
        &self.0[40.min(end)..end]
    }
    pub fn sport(&self) -> u16 {
        let l = self.l4();
        u16::from_be_bytes([l[0], l[1]])
    }
    pub fn dport(&self) -> u16 {
        let l = self.l4();
        u16::from_be_bytes([l[2], l[3]])
    }
    /// The stored L4 checksum (TCP, UDP or ICMPv6).
    pub fn l4_csum(&self) -> u16 {
        let off = l4_csum_offset6(self.next_header()).expect("a protocol with a checksum");
        let l = self.l4();
        u16::from_be_bytes([l[off], l[off + 1]])
    }
    pub fn icmp_type(&self) -> u8 {
        self.l4()[0]
    }
    pub fn echo_id(&self) -> u16 {
        let l = self.l4();
        u16::from_be_bytes([l[4], l[5]])
    }
}

/// Checks an IPv6 packet from scratch: version, payload length against the
/// bytes there, and the TCP/UDP/ICMPv6 checksum over the IPv6
/// pseudo-header (a UDP checksum of 0 is an error: it is mandatory over
/// IPv6). Returns the problems found.
pub fn verify_ip6(ip: Ip6) -> Vec<String> {
    let mut errs = Vec::new();
    if ip.0.len() < 40 || ip.version() != 6 {
        errs.push("not a complete IPv6 header".to_string());
        return errs;
    }
    if 40 + ip.payload_len() != ip.0.len() {
        errs.push(format!(
            "IPv6 payload length {} but {} bytes after the header",
            ip.payload_len(),
            ip.0.len() - 40
        ));
    }
    let proto = ip.next_header();
    let Some(off) = l4_csum_offset6(proto) else {
        return errs;
    };
    let l4 = ip.l4();
    if l4.len() < off + 2 {
        errs.push("L4 header cut".to_string());
        return errs;
    }
    let stored = u16::from_be_bytes([l4[off], l4[off + 1]]);
    let name = match proto {
        IPPROTO_TCP => "TCP",
        IPPROTO_UDP => "UDP",
        _ => "ICMPv6",
    };
    if proto == IPPROTO_UDP && stored == 0 {
        errs.push("UDP checksum 0 over IPv6".to_string());
        return errs;
    }
    let want = l4_checksum6(ip.src(), ip.dst(), proto, l4);
    if !csum_matches(stored, want, proto) {
        errs.push(format!(
            "{name} checksum {stored:#06x}, computed {want:#06x}"
        ));
    }
    errs
}

/// Checks every checksum of an IPv4 packet from scratch: the header's, the
/// TCP/UDP/ICMP one (unless the packet is a fragment: a fragment's L4
/// checksum covers the whole datagram, see [`verify_datagram_l4`]), and for
/// ICMP errors the quoted IP header's and, when the quote holds the whole
/// quoted segment, its L4 checksum. Returns the problems found.
pub fn verify_ip(ip: Ip) -> Vec<String> {
    let mut errs = Vec::new();
    verify_ip_inner(ip, "", &mut errs, true);
    errs
}

fn verify_ip_inner(ip: Ip, what: &str, errs: &mut Vec<String>, outer: bool) {
    if ip.0.len() < 20 || ip.0[0] >> 4 != 4 || ip.hdr_len() < 20 || ip.0.len() < ip.hdr_len() {
        errs.push(format!("{what}not a complete IPv4 header"));
        return;
    }
    let mut h = ip.header().to_vec();
    h[10] = 0;
    h[11] = 0;
    let want = checksum(&h);
    if !csum_matches(ip.csum(), want, 0) {
        errs.push(format!(
            "{what}IP header checksum {:#06x}, computed {:#06x}",
            ip.csum(),
            want
        ));
    }
    if outer && ip.tot_len() != ip.0.len() {
        errs.push(format!(
            "{what}IP total length {} but {} bytes",
            ip.tot_len(),
            ip.0.len()
        ));
    }
    if ip.is_fragment() {
        return;
    }
    let l4 = ip.l4();
    // A quote may hold only part of the segment; check only a whole one.
    let whole = ip.tot_len() <= ip.0.len();
    match ip.proto() {
        IPPROTO_TCP | IPPROTO_UDP if whole => {
            let off = l4_csum_offset(ip.proto()).unwrap();
            if l4.len() < off + 2 {
                errs.push(format!("{what}L4 header cut"));
                return;
            }
            let stored = u16::from_be_bytes([l4[off], l4[off + 1]]);
            if ip.proto() == IPPROTO_UDP && stored == 0 {
                return; // no checksum; the caller checks when one is expected
            }
            let want = l4_checksum(ip.src(), ip.dst(), ip.proto(), l4);
            if !csum_matches(stored, want, ip.proto()) {
                let name = if ip.proto() == IPPROTO_TCP {
                    "TCP"
                } else {
                    "UDP"
                };
                errs.push(format!(
                    "{what}{name} checksum {stored:#06x}, computed {want:#06x}"
                ));
            }
        }
        IPPROTO_ICMP if whole => {
            if l4.len() < 8 {
                errs.push(format!("{what}ICMP header cut"));
                return;
            }
            let stored = u16::from_be_bytes([l4[2], l4[3]]);
            let mut m = l4.to_vec();
            m[2] = 0;
            m[3] = 0;
            let want = checksum(&m);
            if !csum_matches(stored, want, IPPROTO_ICMP) {
                errs.push(format!(
                    "{what}ICMP checksum {stored:#06x}, computed {want:#06x}"
                ));
            }
            if outer && matches!(l4[0], ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED) {
                verify_ip_inner(ip.icmp_quoted(), "quoted ", errs, false);
            }
        }
        _ => {}
    }
}

/// Checks the TCP/UDP checksum of a fragmented datagram over its
/// reassembled L4 bytes, with the pseudo-header of `src` and `dst`.
pub fn verify_datagram_l4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    reassembled: &[u8],
) -> Result<(), String> {
    let off = l4_csum_offset(proto).unwrap();
    let stored = u16::from_be_bytes([reassembled[off], reassembled[off + 1]]);
    let want = l4_checksum(src, dst, proto, reassembled);
    if csum_matches(stored, want, proto) {
        Ok(())
    } else {
        Err(format!(
            "datagram checksum {stored:#06x}, computed {want:#06x}"
        ))
    }
}

/// Offsets (in the frame) of every checksum field [`verify_ip`] checks.
fn csum_fields(frame: &[u8]) -> Vec<(usize, u8)> {
    let mut v = Vec::new();
    if frame.len() >= ETH_LEN + 40 && Frame(frame).ethertype() == ETH_P_IPV6 {
        let proto = Frame(frame).ip6().next_header();
        if let Some(off) = l4_csum_offset6(proto)
            && ETH_LEN + 40 + off + 2 <= frame.len()
        {
            v.push((ETH_LEN + 40 + off, proto));
        }
        return v;
    }
    if frame.len() < ETH_LEN + 20 || Frame(frame).ethertype() != ETH_P_IP {
        return v;
    }
    let ip = Frame(frame).ip();
    v.push((ETH_LEN + 10, 0));
    if ip.is_fragment() {
        return v;
    }
    let l4 = ETH_LEN + ip.hdr_len();
    if let Some(off) = l4_csum_offset(ip.proto())
        && l4 + off + 2 <= frame.len()
    {
        v.push((l4 + off, ip.proto()));
    }
    if ip.proto() == IPPROTO_ICMP
        && frame.len() >= l4 + 8 + 20
        && matches!(frame[l4], ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED)
    {
        let q = l4 + 8;
        let qip = Ip(&frame[q..]);
        v.push((q + 10, 0));
        let ql4 = q + qip.hdr_len();
        if let Some(off) = l4_csum_offset(qip.proto())
            && ql4 + off + 2 <= frame.len()
        {
            v.push((ql4 + off, qip.proto()));
        }
    }
    v
}

/// The frame with 0xffff in non-UDP checksum fields replaced by 0x0000,
/// the other representation of one's complement zero, so two frames whose
/// checksums are both valid compare equal.
fn normalise(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    for (off, proto) in csum_fields(frame) {
        if proto != IPPROTO_UDP && f[off] == 0xff && f[off + 1] == 0xff {
            f[off] = 0;
            f[off + 1] = 0;
        }
    }
    f
}

/// Asserts that `out` (IPv4 or IPv6) has valid checksums throughout
/// (recomputed from scratch) and equals `want` byte for byte.
#[track_caller]
pub fn assert_frame(what: &str, out: &[u8], want: &[u8]) {
    let errs = if out.len() < ETH_LEN {
        Vec::new()
    } else if Frame(out).ethertype() == ETH_P_IP {
        verify_ip(Frame(out).ip())
    } else if Frame(out).ethertype() == ETH_P_IPV6 {
        verify_ip6(Frame(out).ip6())
    } else {
        Vec::new()
    };
    assert!(
        errs.is_empty(),
        "{what}: bad checksums: {}\n{}",
        errs.join("; "),
        hexdump(out)
    );
    if normalise(out) != normalise(want) {
        panic!(
            "{what}: output differs from the expected frame\n{}",
            diff(out, want)
        );
    }
}

/// A hex dump, 16 bytes a line.
pub fn hexdump(b: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in b.chunks(16).enumerate() {
        let _ = write!(s, "{:04x}:", i * 16);
        for x in line {
            let _ = write!(s, " {x:02x}");
        }
        s.push('\n');
    }
    s
}

/// The differing bytes of two frames, with both dumps.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let mut s = String::new();
    if got.len() != want.len() {
        let _ = writeln!(s, "length {} (expected {})", got.len(), want.len());
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let _ = writeln!(s, "  byte {i} (0x{i:x}): {g:02x}, expected {w:02x}");
        }
    }
    let _ = write!(s, "got:\n{}expected:\n{}", hexdump(got), hexdump(want));
    s
}

/// A UDP payload (`tail` after one adjusting word) whose checksum between
/// these endpoints computes to zero, so a translator must send it as 0xffff.
pub fn payload_for_zero_csum(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    tail: &[u8],
) -> Vec<u8> {
    let mut payload = vec![0, 0];
    payload.extend_from_slice(tail);
    let mut p = Packet::udp(src, sport, dst, dport, &payload);
    if let L4::Udp { csum, .. } = &mut p.l4 {
        *csum = false;
    }
    let sum = !checksum(&with_pseudo_header(src, dst, IPPROTO_UDP, &p.l4_bytes()));
    payload[..2].copy_from_slice(&(0xffff - sum).to_be_bytes());
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&b), !0xddf2);
        // An odd length pads with zero.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn known_ipv4_header() {
        // A widely quoted example header whose checksum is 0xb861.
        let h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn icmpv6_checksum_by_hand() {
        // Echo request ::1 -> ::1, id 0, seq 0, no data. The pseudo-header
        // adds 1 + 1 (addresses), 8 (length) and 58 (next header); the
        // message 0x8000 (type 128): the sum is 0x8044.
        let p = Packet6::icmp_echo(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, true, 0, 0, b"");
        let c = (!0x8044u16).to_be_bytes();
        assert_eq!(p.l4_bytes(), [0x80, 0, c[0], c[1], 0, 0, 0, 0]);
    }

    #[test]
    fn built_ipv6_packets_verify() {
        let a: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        for p in [
            Packet6::tcp(a, 1234, b, 80, TCP_SYN),
            Packet6::udp(a, 53, b, 5353, b"hello"),
            Packet6::icmp_echo(a, b, true, 7, 1, b"ping"),
        ] {
            let f = p.frame();
            assert_eq!(Frame(&f).ethertype(), ETH_P_IPV6);
            let ip = Frame(&f).ip6();
            assert!(verify_ip6(ip).is_empty(), "{:?}", verify_ip6(ip));
            assert_eq!((ip.src(), ip.dst(), ip.hop_limit()), (a, b, 64));
            // A flipped bit in an address (pseudo-header only) is caught.
            let mut bad = f.clone();
            bad[ETH_LEN + 8 + 15] ^= 1;
            assert_eq!(verify_ip6(Frame(&bad).ip6()).len(), 1);
            // So is one in the hop limit's neighbour, the payload length.
            let mut bad = f.clone();
            bad[ETH_LEN + 5] ^= 1;
            assert!(!verify_ip6(Frame(&bad).ip6()).is_empty());
        }
    }

    #[test]
    fn built_packets_verify() {
        let a = Ipv4Addr::new(192, 168, 1, 2);
        let b = Ipv4Addr::new(10, 0, 0, 1);
        let t = Packet::tcp(a, 1234, b, 80, TCP_SYN).frame();
        assert!(verify_ip(Frame(&t).ip()).is_empty());
        let mut u = Packet::udp(a, 53, b, 5353, b"hello");
        u.options = vec![1, 1, 1, 0];
        let uf = u.frame();
        assert_eq!(Frame(&uf).ip().hdr_len(), 24);
        assert!(verify_ip(Frame(&uf).ip()).is_empty());
        assert_eq!(Frame(&uf).ip().sport(), 53);
        let e = Packet::icmp_error(b, a, ICMP_TIME_EXCEEDED, 0, [0; 4], &u, 1000).frame();
        assert!(verify_ip(Frame(&e).ip()).is_empty());
        // A flipped bit anywhere covered is caught.
        let mut bad = t.clone();
        bad[ETH_LEN + 20 + 4] ^= 1;
        assert_eq!(verify_ip(Frame(&bad).ip()).len(), 1);
        let mut bad = e.clone();
        bad[ETH_LEN + 20 + 8 + 12] ^= 1;
        // The quoted header, the quoted UDP and the ICMP checksums all break.
        assert_eq!(verify_ip(Frame(&bad).ip()).len(), 3);
    }
}
