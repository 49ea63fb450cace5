//! Packet robustness at scale: random, truncated and malformed frames
//! through every tc program with BPF_PROG_TEST_RUN, with invariants
//! checked for each frame.
//!
//! Frames (at least [`DEFAULT_FRAMES`] per run, `NETD_FUZZ_FRAMES` to
//! change) are built from well-formed TCP, UDP, ICMP, ICMPv6, ARP and
//! DHCP packets between guests of every network, the gateways, the host,
//! the world and the broadcast and multicast addresses, then bent: bad
//! IHL, bad total length, fragment storms (many pieces of one datagram,
//! random offsets), IPv6 extension-header chains, TCP data offset out of
//! range, zero-length and lying UDP, VLAN tags, truncation, flipped bytes,
//! Ethernet padding, TTL 0 and 1, or plain random bytes. Replies from the
//! uplink reuse the ports the datapath handed out, so translation back is
//! exercised too. Each frame runs through one program of its side (bridge
//! or uplink, hooks and second stages alike); what a bridge hook hands to
//! the kernel is then also run through the uplink's egress, as if the
//! kernel had routed it there.
//!
//! Invariants, for every run:
//! - the verdict is OK, SHOT or REDIRECT;
//! - no frame leaves towards the uplink (redirected with the uplink's MAC,
//!   or passed by the uplink's egress) with a source inside a NAT or
//!   isolated network (IPv4, and the NAT66 and isolated IPv6 prefixes);
//! - every frame the programs changed, whose IP and L4 checksums were right
//!   on the way in, has right ones on the way out (checked from scratch by
//!   `netd_tests::packet`);
//! - no frame crosses an isolation boundary: nothing from a bridge is
//!   redirected to another bridge (no two networks here may talk), an
//!   isolated network's frames only come back to the sender as a refusal,
//!   and nothing from the uplink addressed to a NAT or isolated guest's own
//!   address is delivered to it;
//! - every SHOT is counted under a drop reason (the drop counters grow);
//! - guests stay in their lane: br1 runs strict (guests 10 and 11 bound)
//!   and br1 and br2 keep guests to DHCP and DNS on the host, so nothing
//!   from an unbound MAC/IPv4 pair (ARP included) passes br1's ingress,
//!   and no TCP connection attempt to a host address other than DNS is
//!   let in (only dropped, or answered back to the guest).
//!
//! A "fragment storm" is many pieces of one datagram in a row (shuffled,
//! duplicated, lying offsets, the last one missing), each counted as a
//! frame. Frames the kernel's BPF_PROG_TEST_RUN refuses (an IPv4 or IPv6
//! header cut short; the wire would still deliver them) are counted apart.
//!
//! The seed is printed; `NETD_FUZZ_SEED=N` replays a run.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use netd::dataplane::{Dataplane, maps};
use netd_common::{net_flags, progs};
use netd_tests::bpf_fixture::*;
use netd_tests::packet::*;

/// Half of them are built for the bridges' side and half for the uplink's,
/// and each goes through every program of its side: every program sees
/// over 100,000 frames per run.
const DEFAULT_FRAMES: usize = 230_000;
/// The run stops early (and fails) past this: a hang is a failure too.
const TIME_LIMIT: Duration = Duration::from_secs(150);

/// SplitMix64: small, fast, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn u8(&mut self) -> u8 {
        self.next() as u8
    }
    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// One network of the fixture as the fuzzer sees it.
#[derive(Clone, Copy)]
struct Net {
    ifindex: u32,
    bridge_mac: Mac,
    gw: Ipv4Addr,
    gw6: Ipv6Addr,
    guest: fn(u8) -> Ipv4Addr,
    guest6: fn(u8) -> Ipv6Addr,
    mac: fn(u8) -> Mac,
    /// Its IPv4 guests' addresses must never leave untranslated.
    private4: bool,
    /// Its IPv6 guests' addresses must never leave untranslated.
    private6: bool,
    isolated: bool,
}

fn h6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x123, 0, 0, 0, 0, u16::from(n))
}

fn nets(env: &Env) -> Vec<Net> {
    let m = env.modes();
    vec![
        Net {
            ifindex: env.br0,
            bridge_mac: BR0_MAC,
            gw: GW0,
            gw6: GW0_6,
            guest: g,
            guest6: g6,
            mac: gmac,
            private4: true,
            private6: false,
            isolated: false,
        },
        Net {
            ifindex: env.br1,
            bridge_mac: BR1_MAC,
            gw: GW1,
            gw6: GW0_6,
            guest: h,
            guest6: h6,
            mac: hmac,
            private4: true,
            private6: false,
            isolated: false,
        },
        Net {
            ifindex: m.br2,
            bridge_mac: BR2_MAC,
            gw: GW2,
            gw6: GW2_6,
            guest: r4,
            guest6: r6,
            mac: rmac,
            private4: false,
            private6: false,
            isolated: false,
        },
        Net {
            ifindex: m.br3,
            bridge_mac: BR3_MAC,
            gw: GW3,
            gw6: GW3_6,
            guest: i4,
            guest6: i6,
            mac: imac,
            private4: true,
            private6: true,
            isolated: true,
        },
        Net {
            ifindex: m.br4,
            bridge_mac: BR4_MAC,
            gw: GW4,
            gw6: GW4_6,
            guest: m4,
            guest6: m6,
            mac: mmac,
            private4: true,
            private6: true,
            isolated: false,
        },
    ]
}

fn private4(nets: &[Net], a: Ipv4Addr) -> bool {
    nets.iter()
        .any(|n| n.private4 && a.octets()[..3] == n.gw.octets()[..3])
}

fn private6(nets: &[Net], a: Ipv6Addr) -> bool {
    nets.iter()
        .any(|n| n.private6 && a.segments()[..4] == n.gw6.segments()[..4])
}

/// Where a frame enters.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Bridge(usize),
    Uplink,
}

const BRIDGE_PROGS: [&str; 5] = [
    progs::BRIDGE_INGRESS,
    progs::BRIDGE_EGRESS,
    progs::BRIDGE_NEW_FLOW,
    progs::BRIDGE_IPV6,
    progs::NAT66,
];
const UPLINK_PROGS: [&str; 4] = [
    progs::UPLINK_INGRESS,
    progs::UPLINK_EGRESS,
    progs::UPLINK_NEW_FLOW,
    progs::UPLINK_IPV6,
];

struct Fuzz<'a> {
    env: &'a Env,
    nets: Vec<Net>,
    rng: Rng,
    /// (proto, remote, remote port, our address, our port) of flows that
    /// left translated: the uplink side answers some of them.
    flows: Vec<(u8, Ipv4Addr, u16, Ipv4Addr, u16)>,
    counters: maps::ReasonCounters,
    /// The drop counters' total after the last run that could change it.
    drops: u64,
    runs: u64,
    /// Frames BPF_PROG_TEST_RUN refused to run (too short for their
    /// network header).
    untestable: u64,
    checks: u64,
    per_prog: std::collections::BTreeMap<&'static str, (u64, u64, u64, u64)>,
    failures: Vec<String>,
    failed: std::collections::BTreeMap<&'static str, u64>,
    /// How often each invariant was checked (where it applied).
    applied: std::collections::BTreeMap<&'static str, u64>,
}

impl<'a> Fuzz<'a> {
    fn v4_addr(&mut self, side: Side) -> Ipv4Addr {
        if let Side::Bridge(i) = side
            && self.rng.chance(25)
        {
            // The host, as the guests of this bridge see it.
            return if self.rng.chance(50) {
                self.nets[i].gw
            } else {
                NAT
            };
        }
        let n = self.rng.pick(&self.nets);
        match self.rng.below(14) {
            0..=3 => (n.guest)(self.rng.pick(&[10, 11, 12, 13, 20, 40])),
            4 => (n.guest)(self.rng.u8()),
            5 => n.gw,
            6 => NAT,
            7 => ROUTER,
            8 | 9 => REMOTE,
            10 => Ipv4Addr::BROADCAST,
            11 => self.rng.pick(&[
                Ipv4Addr::new(224, 0, 0, 251),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::LOCALHOST,
            ]),
            12 if side == Side::Uplink => NAT,
            _ => Ipv4Addr::from(self.rng.next() as u32),
        }
    }

    fn v6_addr(&mut self) -> Ipv6Addr {
        let n = self.rng.pick(&self.nets);
        match self.rng.below(10) {
            0..=3 => (n.guest6)(self.rng.pick(&[10, 11, 20, 40])),
            4 => n.gw6,
            5 => NAT6,
            6 | 7 => REMOTE6,
            8 => self.rng.pick(&[
                "fe80::1".parse().unwrap(),
                "ff02::1".parse().unwrap(),
                "ff02::1:2".parse().unwrap(),
                Ipv6Addr::UNSPECIFIED,
                ROUTER6,
            ]),
            _ => Ipv6Addr::from(u128::from(self.rng.next()) << 64 | u128::from(self.rng.next())),
        }
    }

    fn port(&mut self) -> u16 {
        match self.rng.below(6) {
            0 => self.rng.pick(&[53, 67, 68, 22, 80, 443, 2000]),
            1 => 0,
            _ => 1024 + self.rng.u16() % 64000,
        }
    }

    fn l4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Packet {
        match self.rng.below(8) {
            0..=2 => {
                let any = self.rng.u8();
                let flags = self.rng.pick(&[
                    TCP_SYN,
                    TCP_SYN | TCP_ACK,
                    TCP_ACK,
                    TCP_FIN | TCP_ACK,
                    TCP_RST,
                    any,
                ]);
                let (sp, dp) = (self.port(), self.port());
                Packet::tcp(src, sp, dst, dp, flags)
            }
            3..=4 => {
                let n = self.rng.pick(&[0, 1, 8, 40, 300]);
                let payload = self.rng.bytes(n);
                let (sp, dp) = (self.port(), self.port());
                let mut p = Packet::udp(src, sp, dst, dp, &payload);
                if let L4::Udp { csum, .. } = &mut p.l4
                    && self.rng.chance(15)
                {
                    *csum = false;
                }
                p
            }
            5 | 6 => {
                let n = self.rng.below(64);
                let payload = self.rng.bytes(n);
                let id = self.port();
                Packet::icmp_echo(src, dst, self.rng.chance(60), id, self.rng.u16(), &payload)
            }
            _ => {
                let quoted = self.quoted(dst, src);
                let ty = self
                    .rng
                    .pick(&[ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, 5, 12]);
                let code = self.rng.pick(&[0, 1, 3, ICMP_FRAG_NEEDED]);
                let ql = self.rng.pick(&[0, 8, 20, 27, 28, 48, 1000]);
                Packet::icmp_error(src, dst, ty, code, [0, 0, 5, 220], &quoted, ql)
            }
        }
    }

    /// What an ICMP error quotes: often a flow that left translated.
    fn quoted(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Packet {
        if !self.flows.is_empty() && self.rng.chance(60) {
            let (proto, remote, rport, ours, oport) = self.rng.pick(&self.flows);
            return match proto {
                IPPROTO_TCP => Packet::tcp(ours, oport, remote, rport, TCP_SYN),
                IPPROTO_UDP => Packet::udp(ours, oport, remote, rport, b"q"),
                _ => Packet::icmp_echo(ours, remote, true, oport, 1, b"q"),
            };
        }
        let sp = self.port();
        let dp = self.port();
        match self.rng.below(3) {
            0 => Packet::tcp(src, sp, dst, dp, TCP_SYN),
            1 => Packet::udp(src, sp, dst, dp, b"q"),
            _ => Packet::icmp_echo(src, dst, true, sp, 1, b""),
        }
    }

    /// A reply from the world to a flow that left translated.
    fn reply(&mut self) -> Option<Packet> {
        if self.flows.is_empty() {
            return None;
        }
        let (proto, remote, rport, ours, oport) = self.rng.pick(&self.flows);
        let flags = self
            .rng
            .pick(&[TCP_SYN | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST]);
        let n = self.rng.below(100);
        let payload = self.rng.bytes(n);
        Some(match proto {
            IPPROTO_TCP => Packet::tcp(remote, rport, ours, oport, flags),
            IPPROTO_UDP => Packet::udp(remote, rport, ours, oport, &payload),
            _ => Packet::icmp_echo(remote, ours, false, oport, 1, &payload),
        })
    }

    fn v6_packet(&mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Packet6 {
        let (sp, dp) = (self.port(), self.port());
        let mut p = match self.rng.below(5) {
            0 | 1 => Packet6::tcp(
                src,
                sp,
                dst,
                dp,
                self.rng.pick(&[TCP_SYN, TCP_ACK, TCP_SYN | TCP_ACK]),
            ),
            2 => {
                let n = self.rng.pick(&[0, 8, 100]);
                let payload = self.rng.bytes(n);
                Packet6::udp(src, sp, dst, dp, &payload)
            }
            3 => Packet6::icmp_echo(src, dst, self.rng.chance(60), sp, 1, b"ping"),
            _ => {
                let ty = self.rng.pick(&[
                    ICMPV6_DEST_UNREACH,
                    ICMPV6_PACKET_TOO_BIG,
                    ICMPV6_TIME_EXCEEDED,
                    ICMPV6_ROUTER_SOLICIT,
                    ICMPV6_NEIGHBOUR_SOLICIT,
                ]);
                let n = self.rng.pick(&[0, 8, 48, 100]);
                let payload = self.rng.bytes(n);
                Packet6::icmp(src, dst, ty, 0, [0, 0, 5, 0], &payload)
            }
        };
        if self.rng.chance(10) {
            p.hop_limit = self.rng.pick(&[0, 1]);
        }
        p
    }

    /// Many pieces of one datagram (or of a few sharing an id): in and out
    /// of order, duplicated, overlapping, some with a lying offset or the
    /// last one missing. Each piece's header checksum is right.
    fn storm(&mut self, side: Side) -> Vec<Vec<u8>> {
        let (src, dst, dst_mac, src_mac) = match side {
            Side::Bridge(i) => {
                let n = self.nets[i];
                let k = self.rng.pick(&[10, 11, 20]);
                ((n.guest)(k), self.v4_addr(side), n.bridge_mac, (n.mac)(k))
            }
            Side::Uplink => match self.reply() {
                Some(p) => (p.src, p.dst, UP0_MAC, ROUTER_MAC),
                None => (REMOTE, NAT, UP0_MAC, ROUTER_MAC),
            },
        };
        let n = 100 + self.rng.below(1300);
        let payload = self.rng.bytes(n);
        let (sp, dp) = (self.port(), self.port());
        let mut p = if self.rng.chance(50) {
            Packet::udp(src, sp, dst, dp, &payload)
        } else {
            let mut t = Packet::tcp(src, sp, dst, dp, TCP_ACK);
            if let L4::Tcp { payload: pl, .. } = &mut t.l4 {
                *pl = payload;
            }
            t
        };
        p.id = self.rng.pick(&[0x3333, 0x3334, self.rng.0 as u16]);
        let ip = p.ip_bytes();
        let hl = usize::from(ip[0] & 0x0f) * 4;
        let data = &ip[hl..];
        let step = 8 * (1 + self.rng.below(40));
        let mut pieces: Vec<(usize, usize)> = (0..data.len())
            .step_by(step)
            .map(|o| (o, (o + step).min(data.len())))
            .collect();
        if self.rng.chance(30) {
            // Out of order.
            for i in (1..pieces.len()).rev() {
                let j = self.rng.below(i + 1);
                pieces.swap(i, j);
            }
        }
        if self.rng.chance(20) && pieces.len() > 1 {
            pieces.pop();
        }
        let mut out = Vec::new();
        for (k, &(a, b)) in pieces.iter().enumerate() {
            let mut h = ip[..hl].to_vec();
            let last = b == data.len();
            let mut off = (a / 8) as u16;
            if self.rng.chance(5) {
                off = self.rng.u16() & 0x1fff;
            }
            let mf: u16 = if last { 0 } else { 0x2000 };
            h[6..8].copy_from_slice(&(off | mf).to_be_bytes());
            let tl = (hl + b - a) as u16;
            h[2..4].copy_from_slice(&tl.to_be_bytes());
            refresh_ip_csum(&mut h);
            h.extend_from_slice(&data[a..b]);
            let f = eth(dst_mac, src_mac, ETH_P_IP, &h);
            if k % 4 == 0 && self.rng.chance(20) {
                out.push(f.clone());
            }
            out.push(f);
        }
        out
    }

    /// Wraps an IPv6 packet's L4 in a chain of extension headers.
    fn ext_chain(&mut self, ip6: &mut Vec<u8>) {
        let l4 = ip6.split_off(40);
        let mut next = ip6[6];
        let mut chain: Vec<u8> = Vec::new();
        let n = 1 + self.rng.below(4);
        let mut headers = Vec::new();
        for _ in 0..n {
            headers.push(self.rng.pick(&[0u8, 43, 60, 44, 51, 59, 135]));
        }
        for &hdr in headers.iter().rev() {
            let mut h = match hdr {
                44 => {
                    let mut f = vec![next, 0, 0, 0, 0, 0, 0, 0];
                    let off = if self.rng.chance(50) {
                        0
                    } else {
                        self.rng.u16() & 0xfff8
                    };
                    let mf = u16::from(self.rng.chance(50));
                    f[2..4].copy_from_slice(&(off | mf).to_be_bytes());
                    f[4..8].copy_from_slice(&(self.rng.next() as u32).to_be_bytes());
                    f
                }
                51 => {
                    let words = self.rng.below(4) as u8;
                    let mut f = vec![next, words + 1];
                    f.extend(self.rng.bytes(6 + 4 * usize::from(words + 1)));
                    f
                }
                _ => {
                    let words = self.rng.below(3) as u8;
                    let mut f = vec![next, words];
                    f.extend(vec![0; 6 + 8 * usize::from(words)]);
                    f
                }
            };
            if self.rng.chance(5) {
                // A header that lies about its length.
                h[1] = self.rng.u8();
            }
            h.extend(chain);
            chain = h;
            next = hdr;
        }
        ip6[6] = next;
        chain.extend(l4);
        let len = (chain.len() as u16).to_be_bytes();
        ip6[4] = len[0];
        ip6[5] = len[1];
        ip6.extend(chain);
    }

    /// A frame for `side`, and a name for what it is.
    fn frame(&mut self, side: Side) -> (Vec<u8>, &'static str) {
        let (dst_mac, src_mac, guest_net) = match side {
            Side::Bridge(i) => {
                let n = self.nets[i];
                let mac = (n.mac)(self.rng.pick(&[10, 11, 12, 20]));
                (n.bridge_mac, mac, Some(n))
            }
            Side::Uplink => (UP0_MAC, ROUTER_MAC, None),
        };
        let kind = self.rng.below(100);
        // Raw and ARP frames first.
        if kind < 5 {
            // The kernel hands no program a frame shorter than an Ethernet
            // header (BPF_PROG_TEST_RUN refuses one too).
            let n = ETH_LEN + self.rng.below(80);
            let mut f = self.rng.bytes(n);
            if self.rng.chance(60) {
                let et = self.rng.pick(&[ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, 0x8100]);
                f[12..14].copy_from_slice(&et.to_be_bytes());
            }
            return (f, "random bytes");
        }
        if kind < 10 {
            let sender = match guest_net {
                Some(n) if self.rng.chance(50) => (n.guest)(10),
                _ => self.v4_addr(side),
            };
            let target = self.v4_addr(side);
            let mut f = arp_request(src_mac, sender, target);
            f[20] = 0;
            f[21] = self.rng.pick(&[1, 2, 3, 0xff]);
            if self.rng.chance(30) {
                let i = 14 + self.rng.below(28);
                f[i] = self.rng.u8();
            }
            if self.rng.chance(20) {
                let n = ETH_LEN + self.rng.below(f.len() - ETH_LEN);
                f.truncate(n);
            }
            return (f, "ARP");
        }
        if let Some(n) = guest_net
            && kind < 14
        {
            // A guest knocking on the host's door: a connection attempt
            // to one of its addresses, from the guest's own address.
            let k = self.rng.pick(&[10, 11, 12, 20]);
            let dst = if self.rng.chance(50) { n.gw } else { NAT };
            let (sp, dp) = (self.port(), self.port());
            let p = Packet::tcp((n.guest)(k), sp, dst, dp, TCP_SYN).macs(dst_mac, (n.mac)(k));
            return (p.frame(), "TCP to the host");
        }
        if kind < 35 {
            return self.frame6(side, dst_mac, src_mac, guest_net);
        }
        // IPv4.
        let mut p = match (side, guest_net) {
            (Side::Uplink, _) if self.rng.chance(50) => match self.reply() {
                Some(p) => p,
                None => {
                    let (s, d) = (self.v4_addr(side), self.v4_addr(side));
                    self.l4(s, d)
                }
            },
            (_, Some(n)) if self.rng.chance(70) => {
                let src = (n.guest)(self.rng.pick(&[10, 11, 12, 20]));
                let dst = self.v4_addr(side);
                self.l4(src, dst)
            }
            _ => {
                let (s, d) = (self.v4_addr(side), self.v4_addr(side));
                self.l4(s, d)
            }
        };
        p.dst_mac = if self.rng.chance(5) {
            [0xff; 6]
        } else {
            dst_mac
        };
        p.src_mac = src_mac;
        if self.rng.chance(10) {
            p.ttl = self.rng.pick(&[0, 1, 2]);
        }
        if self.rng.chance(5) {
            p.df = true;
        }
        if self.rng.chance(5) {
            let words = 1 + self.rng.below(10);
            p.options = self.rng.bytes(words * 4);
        }
        let mut what = "IPv4";
        let mut ip = p.ip_bytes();
        match self.rng.below(14) {
            0 => {
                ip[0] = 0x40 | (self.rng.u8() & 0x0f);
                what = "bad IHL";
            }
            1 => {
                let any = self.rng.u16();
                let tl = self
                    .rng
                    .pick(&[0, 19, 20, 21, ip.len() as u16 + 1, 1500, any]);
                ip[2..4].copy_from_slice(&tl.to_be_bytes());
                what = "bad total length";
            }
            2 | 3 => {
                // A piece of a fragment storm: one id, random offsets.
                let any = self.rng.u16();
                let id = self.rng.pick(&[0x1000u16, 0x1001, 0x2222, any]);
                ip[4..6].copy_from_slice(&id.to_be_bytes());
                let off: u16 = if self.rng.chance(40) {
                    0
                } else {
                    self.rng.u16() & 0x1fff
                };
                let mf: u16 = if self.rng.chance(60) { 0x2000 } else { 0 };
                ip[6..8].copy_from_slice(&(off | mf).to_be_bytes());
                refresh_ip_csum(&mut ip);
                what = "fragment";
            }
            4 if ip[9] == IPPROTO_TCP && ip.len() >= (ip[0] as usize & 0xf) * 4 + 18 => {
                let hl = (ip[0] as usize & 0xf) * 4;
                ip[hl + 12] = (self.rng.u8() & 0xf0) | (ip[hl + 12] & 0x0f);
                // With a checksum that matches, so what comes out is held
                // to a right one too.
                refresh_l4_csum(&mut ip);
                what = "TCP data offset";
            }
            5 if ip[9] == IPPROTO_UDP => {
                let o = (ip[0] as usize & 0xf) * 4 + 4;
                let l = self.rng.pick(&[0u16, 1, 7, 8, 9, 0xffff]);
                ip[o..o + 2].copy_from_slice(&l.to_be_bytes());
                what = "UDP length";
            }
            6 => {
                let n = self.rng.below(ip.len());
                ip.truncate(n);
                what = "truncated";
            }
            7 => {
                for _ in 0..1 + self.rng.below(4) {
                    let i = self.rng.below(ip.len());
                    ip[i] = self.rng.u8();
                }
                what = "flipped bytes";
            }
            8 => {
                let n = 1 + self.rng.below(30);
                ip.extend(vec![0; n]);
                what = "padded";
            }
            9 => {
                // A VLAN tag (or two) in front.
                let mut tagged = vec![0x00, self.rng.u8(), 0x08, 0x00];
                if self.rng.chance(30) {
                    tagged = vec![0x00, self.rng.u8(), 0x81, 0x00, 0x00, 5, 0x08, 0x00];
                }
                tagged.extend(ip);
                let et = self.rng.pick(&[0x8100u16, 0x88a8]);
                return (eth(p.dst_mac, p.src_mac, et, &tagged), "VLAN");
            }
            _ => {}
        }
        (eth(p.dst_mac, p.src_mac, ETH_P_IP, &ip), what)
    }

    fn frame6(
        &mut self,
        side: Side,
        dst_mac: Mac,
        src_mac: Mac,
        guest_net: Option<Net>,
    ) -> (Vec<u8>, &'static str) {
        let src = match guest_net {
            Some(n) if self.rng.chance(70) => (n.guest6)(self.rng.pick(&[10, 11, 20])),
            _ => self.v6_addr(),
        };
        let dst = match side {
            Side::Uplink if self.rng.chance(40) => NAT6,
            _ => self.v6_addr(),
        };
        let p = self.v6_packet(src, dst).macs(dst_mac, src_mac);
        let mut ip = p.ip_bytes();
        let mut what = "IPv6";
        match self.rng.below(8) {
            0 | 1 => {
                self.ext_chain(&mut ip);
                what = "IPv6 extension headers";
            }
            2 => {
                let n = self.rng.below(ip.len());
                ip.truncate(n);
                what = "IPv6 truncated";
            }
            3 => {
                let l = self.rng.u16();
                ip[4..6].copy_from_slice(&l.to_be_bytes());
                what = "IPv6 bad payload length";
            }
            4 => {
                let i = self.rng.below(ip.len());
                ip[i] = self.rng.u8();
                what = "IPv6 flipped byte";
            }
            _ => {}
        }
        (eth(dst_mac, src_mac, ETH_P_IPV6, &ip), what)
    }

    /// The lane invariants at a bridge's ingress: on the strict network
    /// (br1) nothing passes from a MAC/IPv4 pair that is not bound (DHCP
    /// from 0.0.0.0 aside), ARP included; on the restricted ones (br1, br2)
    /// no TCP connection attempt to a host address other than DNS passes.
    fn lane(&mut self, b: usize, frame: &[u8], rc: u32, out: &[u8], ctx: &dyn Fn(&str) -> String) {
        let dropped = rc == TC_ACT_SHOT;
        let fin = Frame(frame);
        let strict = b == 1;
        if strict && fin.ethertype() == ETH_P_IP && frame.len() >= ETH_LEN + 20 {
            self.applied("strict binding of a passed frame");
            let src = fin.ip().src();
            let ok = dropped
                || src.is_unspecified()
                || [(hmac(10), h(10)), (hmac(11), h(11))].contains(&(fin.src_mac(), src));
            if !ok {
                self.fail("strict", ctx(&format!("unbound {src} passed")));
            }
        }
        if strict && fin.ethertype() == ETH_P_ARP && frame.len() >= ETH_LEN + 28 {
            self.applied("strict binding of a passed frame");
            let spa = Ipv4Addr::new(frame[28], frame[29], frame[30], frame[31]);
            let sha: Mac = frame[22..28].try_into().unwrap();
            let ok = dropped
                || sha == fin.src_mac()
                    && (spa.is_unspecified()
                        || [(hmac(10), h(10)), (hmac(11), h(11))].contains(&(sha, spa)));
            if !ok {
                self.fail(
                    "strict",
                    ctx(&format!("ARP for {spa} from {sha:02x?} passed")),
                );
            }
        }
        let restricted = b == 1 || b == 2;
        if restricted && fin.ethertype() == ETH_P_IP && frame.len() >= ETH_LEN + 40 {
            let ip = fin.ip();
            let host = [self.nets[b].gw, NAT].contains(&ip.dst());
            let syn = ip.proto() == IPPROTO_TCP
                && !ip.is_fragment()
                && ip.hdr_len() >= 20
                && ip.l4().len() >= 14
                && ip.tcp_flags() & (TCP_SYN | TCP_ACK) == TCP_SYN;
            if host && syn && ip.dport() != 53 {
                self.applied("host access of a connection attempt");
                // Passed to the host, or redirected anywhere but back to
                // the guest as a refusal: a way in.
                let refused = dropped
                    || rc == TC_ACT_REDIRECT
                        && Frame(out).dst_mac() == fin.src_mac()
                        && Frame(out).ip().proto() == IPPROTO_ICMP;
                if !refused {
                    self.fail(
                        "host access",
                        ctx(&format!("SYN to {}:{} let in", ip.dst(), ip.dport())),
                    );
                }
            }
        }
    }

    fn applied(&mut self, check: &'static str) {
        self.checks += 1;
        *self.applied.entry(check).or_default() += 1;
    }

    /// Records a broken invariant: counted by kind, the first few kept.
    fn fail(&mut self, kind: &'static str, msg: String) {
        let n = self.failed.entry(kind).or_default();
        *n += 1;
        if *n <= 3 {
            self.failures.push(msg);
        }
    }

    /// Runs one frame through `prog` on `ifindex` and checks every
    /// invariant. Returns the verdict and the frame as it left.
    fn run(
        &mut self,
        prog: &'static str,
        side: Side,
        ifindex: u32,
        frame: &[u8],
        what: &str,
    ) -> (u32, Vec<u8>) {
        let before = self.drops;
        let (rc, out) = match self.env.dp.test_run_program(prog, ifindex, frame, 1) {
            Ok((rc, out, _)) => (rc, out),
            // BPF_PROG_TEST_RUN refuses an IPv4 or IPv6 frame too short
            // for the network header (the wire would deliver it); counted.
            Err(_) if frame.len() < ETH_LEN + 40 => {
                self.untestable += 1;
                return (TC_ACT_SHOT, Vec::new());
            }
            Err(e) => panic!(
                "BPF_PROG_TEST_RUN of {prog} on {ifindex}, {what}: {e:#}\n{}",
                hexdump(frame)
            ),
        };
        self.runs += 1;
        let e = self.per_prog.entry(prog).or_default();
        e.0 += 1;
        match rc {
            TC_ACT_OK => e.1 += 1,
            TC_ACT_SHOT => e.2 += 1,
            TC_ACT_REDIRECT => e.3 += 1,
            _ => {}
        }
        let ctx = |m: &str| {
            format!(
                "{prog} on {ifindex}, {what}: {m}\n in:  {}\n out: {}",
                hexdump(frame),
                hexdump(&out)
            )
        };

        // The verdict is one the datapath means.
        self.applied("verdict");
        if ![TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&rc) {
            self.fail("verdict", ctx(&format!("verdict {rc}")));
        }
        // Every drop is counted.
        if rc != TC_ACT_OK {
            // Only drops and refusals (redirected answers) count drops; a
            // pass never does, so the counters are read after these only.
            self.drops = self.counters.drops().expect("drop counters");
        }
        if rc == TC_ACT_SHOT {
            self.applied("drop counted");
            if self.drops <= before {
                self.fail("uncounted drop", ctx("dropped without a drop reason"));
            }
        }
        if prog == progs::BRIDGE_INGRESS
            && let Side::Bridge(b) = side
        {
            self.lane(b, frame, rc, &out, &ctx);
        }
        if rc == TC_ACT_SHOT || out.len() < ETH_LEN {
            return (rc, out);
        }
        let f = Frame(&out);
        let et = f.ethertype();
        let to_uplink = (rc == TC_ACT_REDIRECT && f.src_mac() == UP0_MAC)
            || (rc == TC_ACT_OK && prog == progs::UPLINK_EGRESS);
        // No private source towards the uplink.
        if to_uplink {
            self.applied("source towards the uplink");
            if et == ETH_P_IP && out.len() >= ETH_LEN + 20 && private4(&self.nets, f.ip().src()) {
                self.fail(
                    "private source out",
                    ctx(&format!(
                        "private source {} towards the uplink",
                        f.ip().src()
                    )),
                );
            }
            if et == ETH_P_IPV6 && out.len() >= ETH_LEN + 40 && private6(&self.nets, f.ip6().src())
            {
                self.fail(
                    "private source out",
                    ctx(&format!(
                        "private source {} towards the uplink",
                        f.ip6().src()
                    )),
                );
            }
        }
        // Right checksums on everything changed that was right coming in.
        if out != frame && et == Frame(frame).ethertype() {
            let inp = &frame[ETH_LEN..];
            let outp = &out[ETH_LEN..];
            if et == ETH_P_IP && verify_ip(Ip(inp)).is_empty() {
                self.applied("checksums of a changed frame");
                let errs = verify_ip(Ip(outp));
                if !errs.is_empty() {
                    self.fail(
                        "bad checksum",
                        ctx(&format!("bad checksums on the way out: {errs:?}")),
                    );
                }
            }
            if et == ETH_P_IPV6 && verify_ip6(Ip6(inp)).is_empty() {
                self.applied("checksums of a changed frame");
                let errs = verify_ip6(Ip6(outp));
                if !errs.is_empty() {
                    self.fail(
                        "bad checksum",
                        ctx(&format!("bad checksums on the way out: {errs:?}")),
                    );
                }
            }
        }
        // Isolation.
        if rc == TC_ACT_REDIRECT {
            self.applied("isolation of a redirect");
            let target = self.nets.iter().position(|n| n.bridge_mac == f.src_mac());
            match (side, target) {
                (Side::Bridge(from), Some(to)) if from != to => {
                    self.fail(
                        "isolation",
                        ctx(&format!("crossed from bridge {from} to bridge {to}")),
                    );
                }
                (Side::Bridge(from), _) if self.nets[from].isolated => {
                    // Only a refusal, back to the sender.
                    let back = target == Some(from) && f.dst_mac() == Frame(frame).src_mac();
                    let icmp = et == ETH_P_IP
                        && f.ip().proto() == IPPROTO_ICMP
                        && f.ip().icmp_type() == ICMP_DEST_UNREACH;
                    if !(back && icmp) {
                        self.fail(
                            "isolation",
                            ctx("an isolated network's frame went somewhere"),
                        );
                    }
                }
                (Side::Uplink, Some(to)) => {
                    let n = self.nets[to];
                    let fin = Frame(frame);
                    let orig_private = match fin.ethertype() {
                        ETH_P_IP if frame.len() >= ETH_LEN + 20 => {
                            private4(&self.nets, fin.ip().dst()) && n.private4
                        }
                        ETH_P_IPV6 if frame.len() >= ETH_LEN + 40 => {
                            private6(&self.nets, fin.ip6().dst()) && n.private6
                        }
                        _ => false,
                    };
                    if n.isolated || orig_private {
                        self.fail(
                            "isolation",
                            ctx(&format!("the world reached bridge {to}'s private guest")),
                        );
                    }
                }
                _ => {}
            }
        }
        // Remember flows that left translated, to answer them.
        if to_uplink && et == ETH_P_IP && out.len() >= ETH_LEN + 28 {
            let ip = f.ip();
            if ip.src() == NAT && !ip.is_fragment() && ip.l4().len() >= 8 {
                let flow = match ip.proto() {
                    IPPROTO_TCP | IPPROTO_UDP => {
                        Some((ip.proto(), ip.dst(), ip.dport(), ip.src(), ip.sport()))
                    }
                    IPPROTO_ICMP if ip.icmp_type() == ICMP_ECHO => {
                        Some((IPPROTO_ICMP, ip.dst(), 0, ip.src(), ip.echo_id()))
                    }
                    _ => None,
                };
                if let Some(fl) = flow {
                    if self.flows.len() < 4096 {
                        self.flows.push(fl);
                    } else {
                        let i = self.rng.below(4096);
                        self.flows[i] = fl;
                    }
                }
            }
        }
        let _ = side;
        (rc, out)
    }
}

/// Recomputes the TCP or UDP checksum of an unfragmented packet whose
/// header was bent on purpose.
fn refresh_l4_csum(ip: &mut [u8]) {
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let Some(off) = l4_csum_offset(proto) else {
        return;
    };
    if ip.len() < hl + off + 2 {
        return;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let c = l4_checksum(src, dst, proto, &ip[hl..]);
    ip[hl + off..hl + off + 2].copy_from_slice(&c.to_be_bytes());
}

fn refresh_ip_csum(ip: &mut [u8]) {
    let hl = (usize::from(ip[0] & 0x0f) * 4).clamp(20, ip.len());
    ip[10] = 0;
    ip[11] = 0;
    let c = checksum(&ip[..hl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn frames_through_every_program_keep_every_invariant() {
    let env = env_modes();
    let frames: usize = std::env::var("NETD_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_FRAMES);
    let seed: u64 = std::env::var("NETD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("bpf_fuzz: seed {seed} (NETD_FUZZ_SEED={seed} replays), {frames} frames");
    let counters = maps::ReasonCounters::open(&env.maps).expect("stats map");
    // br1 strict and restricted to DHCP and DNS on the host (guests 10 and
    // 11 bound), br2 restricted: the lane checks get the same frames.
    let old1 = env.set_net_flags(env.br1, net_flags::STRICT | net_flags::HOST_DHCP_DNS);
    let old2 = env.set_net_flags(env.modes().br2, net_flags::HOST_DHCP_DNS);
    let bound: BTreeMap<Mac, Ipv4Addr> = [(hmac(10), h(10)), (hmac(11), h(11))].into();
    maps::sync_bindings(&env.maps, env.br1, &bound).expect("bindings");
    let mut fz = Fuzz {
        env: &env,
        nets: nets(&env),
        rng: Rng(seed),
        flows: Vec::new(),
        drops: counters.drops().expect("drop counters"),
        counters,
        runs: 0,
        untestable: 0,
        checks: 0,
        per_prog: Default::default(),
        failures: Vec::new(),
        failed: Default::default(),
        applied: Default::default(),
    };
    assert_eq!(
        BRIDGE_PROGS.len() + UPLINK_PROGS.len(),
        Dataplane::TC_PROGRAMS.len(),
        "a tc program is missing from the fuzzer"
    );
    let start = Instant::now();
    let mut kinds: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut done = 0;
    let mut pending = std::collections::VecDeque::new();
    for i in 0..frames {
        if start.elapsed() > TIME_LIMIT {
            fz.fail("time limit", format!("time limit reached after {i} frames"));
            break;
        }
        if pending.is_empty() {
            let side = if fz.rng.chance(50) {
                Side::Bridge(fz.rng.below(fz.nets.len()))
            } else {
                Side::Uplink
            };
            if fz.rng.chance(1) {
                for f in fz.storm(side) {
                    pending.push_back((side, f, "fragment storm"));
                }
            } else {
                let (f, what) = fz.frame(side);
                pending.push_back((side, f, what));
            }
        }
        let (side, frame, what) = pending.pop_front().expect("a frame");
        *kinds.entry(what).or_default() += 1;
        // Through every program of its side: the hooks where frames
        // arrive, and the second stages they tail-call, on their own.
        let (progs_of_side, ifindex): (&[&'static str], u32) = match side {
            Side::Bridge(b) => (&BRIDGE_PROGS, fz.nets[b].ifindex),
            Side::Uplink => (&UPLINK_PROGS, env.up0),
        };
        for &prog in progs_of_side {
            let (rc, out) = fz.run(prog, side, ifindex, &frame, what);
            // What a bridge's ingress hands the kernel may be routed out of
            // the uplink: the uplink's egress must make it safe.
            // (Not what the kernel delivers itself: the host's own addresses,
            // broadcast and multicast never leave by the uplink.)
            let local = out.len() >= ETH_LEN + 20 && Frame(&out).ethertype() == ETH_P_IP && {
                let d = Frame(&out).ip().dst();
                d == NAT
                    || d.is_broadcast()
                    || d.is_multicast()
                    || fz.nets.iter().any(|n| n.gw == d)
            };
            if prog == progs::BRIDGE_INGRESS && rc == TC_ACT_OK && out.len() >= ETH_LEN && !local {
                let mut routed = out.clone();
                routed[0..6].copy_from_slice(&ROUTER_MAC);
                routed[6..12].copy_from_slice(&UP0_MAC);
                fz.run(
                    progs::UPLINK_EGRESS,
                    side,
                    env.up0,
                    &routed,
                    "routed by the kernel",
                );
            }
        }
        done = i + 1;
    }
    let elapsed = start.elapsed();
    env.set_net_flags(env.br1, old1);
    env.set_net_flags(env.modes().br2, old2);
    maps::sync_bindings(&env.maps, env.br1, &BTreeMap::new()).expect("bindings");
    println!(
        "bpf_fuzz: {done} frames, {} program runs ({} more refused by the kernel as too short), {} invariant checks in {:.1?}",
        fz.runs, fz.untestable, fz.checks, elapsed
    );
    for (p, (n, ok, shot, redirect)) in &fz.per_prog {
        println!("  {p:22} {n:7} runs: {ok} ok, {shot} shot, {redirect} redirect");
    }
    for (c, n) in &fz.applied {
        println!("  checked: {c:32} {n:7}");
    }
    for (k, n) in &kinds {
        println!("  {k:26} {n:7} frames");
    }
    // Each side gets half the frames, give or take chance.
    let floor = (done as u64 * 45 / 100).min(100_000);
    for p in Dataplane::TC_PROGRAMS {
        let runs = fz.per_prog.get(p).map(|r| r.0).unwrap_or(0);
        assert!(runs >= floor, "{p} ran {runs} times, fewer than {floor}");
    }
    assert!(
        fz.failed.is_empty(),
        "seed {seed}: invariants broken {:?}; the first ones:\n{}",
        fz.failed,
        fz.failures.join("\n\n")
    );
    assert!(done >= frames, "only {done} of {frames} frames ran");
}

// ---------------------------------------------------------------------------
// What the fuzzer found, one case each, so each stays fixed.

/// The uplink's egress (the slow path's safety net) let an isolated
/// network's IPv4, and a NAT66 or isolated prefix's IPv6, leave as it was.
#[test]
fn found_slow_path_sources_are_stopped_at_the_uplink() {
    let env = env_modes();
    let up = |p: Vec<u8>| p;
    let f = Packet::tcp(i4(10), 41000, REMOTE, 80, TCP_SYN).macs(ROUTER_MAC, UP0_MAC);
    env.dropped(
        "isolated IPv4",
        netd::dataplane::Hook::UplinkEgress,
        env.up0,
        &up(f.frame()),
        "drop_policy",
    );
    for src in [m6(10), i6(10)] {
        let f = Packet6::tcp(src, 41001, REMOTE6, 80, TCP_SYN).macs(ROUTER_MAC, UP0_MAC);
        env.dropped(
            &format!("IPv6 from {src}"),
            netd::dataplane::Hook::UplinkEgress,
            env.up0,
            &f.frame(),
            "drop_policy",
        );
    }
    let f = Packet6::tcp(r6(10), 41002, REMOTE6, 80, TCP_SYN).macs(ROUTER_MAC, UP0_MAC);
    let (rc, out) = env.run(netd::dataplane::Hook::UplinkEgress, env.up0, &f.frame());
    assert_eq!(
        (rc, out),
        (TC_ACT_OK, f.frame()),
        "a routed prefix leaves as it is"
    );
    // A NAT guest's packet for another netd network is not masqueraded.
    let f = Packet::udp(g(10), 41003, h(10), 53, b"q").macs(ROUTER_MAC, UP0_MAC);
    env.dropped(
        "NAT guest to another network",
        netd::dataplane::Hook::UplinkEgress,
        env.up0,
        &f.frame(),
        "drop_policy",
    );
    // Nor one for the host's own address (its conntrack entry then led a
    // restricted guest's SYN into the host).
    let f = Packet::tcp(g(10), 41004, NAT, 22, TCP_SYN).macs(ROUTER_MAC, UP0_MAC);
    env.dropped(
        "NAT guest to the uplink's address",
        netd::dataplane::Hook::UplinkEgress,
        env.up0,
        &f.frame(),
        "drop_policy",
    );
    let p = from_guest(10, Packet::tcp(g(10), 41004, NAT, 22, TCP_SYN));
    let (rc, out) = env.in_br0(&p);
    assert_eq!(
        (rc, out),
        (TC_ACT_OK, p.frame()),
        "then the SYN is the host's, untranslated"
    );
}

/// Refusals answered a link-layer broadcast, from ff:ff:ff:ff:ff:ff.
#[test]
fn found_no_answer_to_a_link_layer_broadcast() {
    let env = env_modes();
    let m = env.modes();
    let f = Packet::tcp(i4(10), 41010, REMOTE, 80, TCP_SYN).macs([0xff; 6], imac(10));
    env.dropped(
        "isolated, broadcast MAC",
        netd::dataplane::Hook::BridgeIngress,
        m.br3,
        &f.frame(),
        "drop_policy",
    );
    let f = Packet::tcp(i4(10), 41011, REMOTE, 80, TCP_SYN).macs(BR3_MAC, imac(10));
    let (rc, out) = env.run(netd::dataplane::Hook::BridgeIngress, m.br3, &f.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "unicast is answered");
    assert_eq!(Frame(&out).src_mac(), BR3_MAC);
}

/// An ICMP error from the world addressed to anything but the address
/// the quoted packet left from was translated into that flow's guest.
#[test]
fn found_icmp_errors_only_for_the_quoted_source() {
    let env = env_modes();
    let p = from_guest(10, Packet::udp(g(10), 41020, REMOTE, 53, b"q"));
    let sent = env.snat_ok("flow out", &p, 41020);
    for dst in [g(11), m4(11), h(10)] {
        let e = from_router(Packet::icmp_error(
            ROUTER,
            dst,
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &sent,
            28,
        ));
        let (rc, out) = env.in_up0(&e);
        assert_eq!(
            (rc, out),
            (TC_ACT_OK, e.frame()),
            "error to {dst}: left to the host, unchanged"
        );
    }
    let e = from_router(Packet::icmp_error(
        ROUTER,
        NAT,
        ICMP_DEST_UNREACH,
        3,
        [0; 4],
        &sent,
        28,
    ));
    let (rc, out) = env.in_up0(&e);
    assert_eq!(rc, TC_ACT_REDIRECT, "the real error reaches the guest");
    assert_eq!(Frame(&out).ip().dst(), g(10));
}

/// NAT66 rewrote the source of a segment cut before its checksum, then
/// failed and dropped it uncounted (and left a conntrack entry).
#[test]
fn found_nat66_refuses_cut_segments_before_rewriting() {
    let env = env_modes();
    let m = env.modes();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let p = if proto == IPPROTO_TCP {
            Packet6::tcp(m6(10), 41030, REMOTE6, 80, TCP_SYN)
        } else {
            Packet6::udp(m6(10), 41030, REMOTE6, 53, b"")
        };
        let mut f = p.macs(BR4_MAC, mmac(10)).frame();
        f.truncate(ETH_LEN + 40 + 6);
        env.dropped(
            &format!("cut segment, proto {proto}"),
            netd::dataplane::Hook::BridgeIngress,
            m.br4,
            &f,
            "drop_malformed",
        );
    }
}

/// Over-MTU (or unroutable) packets went to the kernel's forwarding before
/// the policy between networks ran: NAT to NAT, isolated to anywhere.
#[test]
fn found_policy_runs_before_the_slow_path() {
    let env = env_modes();
    let m = env.modes();
    let big = vec![0x5a; 1600];
    let p = from_guest(10, Packet::udp(g(10), 41040, h(10), 9, &big));
    let before = env.stat("slow_path");
    let (rc, out) = env.in_br0(&p);
    assert_eq!(
        rc,
        TC_ACT_REDIRECT,
        "NAT to NAT over MTU is refused\n{}",
        hexdump(&out)
    );
    assert_eq!(Frame(&out).ip().icmp_type(), ICMP_DEST_UNREACH);
    let p = Packet::udp(i4(10), 41041, REMOTE, 9, &big).macs(BR3_MAC, imac(10));
    let (rc, out) = env.run(netd::dataplane::Hook::BridgeIngress, m.br3, &p.frame());
    assert_eq!(
        rc,
        TC_ACT_REDIRECT,
        "isolated over MTU is refused\n{}",
        hexdump(&out)
    );
    let p6 = Packet6::udp(i6(10), 41042, REMOTE6, 9, &big).macs(BR3_MAC, imac(10));
    env.dropped(
        "isolated IPv6 over MTU",
        netd::dataplane::Hook::BridgeIngress,
        m.br3,
        &p6.frame(),
        "drop_policy",
    );
    assert_eq!(env.stat("slow_path"), before, "nothing went the slow way");
    // A NAT guest's own over-MTU packet to the world still goes the slow
    // way (the kernel answers with fragmentation-needed or fragments it).
    let p = from_guest(10, Packet::udp(g(10), 41043, REMOTE, 9, &big));
    let (rc, _) = env.in_br0(&p);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(env.stat("slow_path"), before + 1);
}
