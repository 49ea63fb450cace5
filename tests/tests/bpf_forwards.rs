//! Port forwards on crafted packets, through BPF_PROG_TEST_RUN: DNAT at the
//! uplink (whose second stage, `netd_uplink_new_flow`, is reached by a tail
//! call), the guest's replies translated back at the bridge, the hairpin
//! (a guest connecting to a forwarded port on the host's address), what a
//! removed forward leaves behind, a guest's reply that took the kernel's
//! slow path (the uplink's egress safety net), and ICMP errors about a
//! forwarded connection. Each case checks the verdict, the
//! output bytes and every checksum, recomputed from scratch by
//! `netd_tests::packet`; then a timing of the forward path, printed and
//! never asserted.
//!
//! The fixture (namespace, bpffs, dataplane) is `netd_tests::bpf_fixture`:
//! br0 192.168.122.0/24 (gateway .1), up0 198.51.100.2, the client is
//! 203.0.113.10 behind the router 198.51.100.1. Forwards are installed with
//! `netd::dataplane::maps` as the daemon does. Every case uses its own host
//! ports, guests and client ports, so neither forwards nor conntrack
//! entries of one case meet another's.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netd::dataplane::{Hook, maps, maps::ForwardEntry};
use netd_common::{FORWARD_MAX_ENTRIES, ct_state, dir, nat_kind};
use netd_tests::bpf_fixture::*;
use netd_tests::packet::*;

/// A forward on the host address (the uplink's, 198.51.100.2) to guest
/// `guest` of br0.
fn fwd(e: &Env, proto: u8, hport: u16, guest: Ipv4Addr, gport: u16) -> ForwardEntry {
    ForwardEntry {
        proto,
        host: (NAT, hport),
        guest: (guest, gport),
        bridge_ifindex: e.br0,
    }
}

/// The forward's hit count as `list_forwards` reports it; None when the
/// forward is not installed.
fn hits(e: &Env, f: &ForwardEntry) -> Option<u64> {
    maps::list_forwards(&e.maps)
        .expect("list forwards")
        .into_iter()
        .find(|(x, _)| x == f)
        .map(|(_, h)| h)
}

/// Runs `p` in at up0 and checks it is forwarded to guest `n` of br0 on
/// port `gport`: destination rewritten, source kept, TTL one lower, MACs
/// from the neighbour table. Returns the packet as it should have left.
#[track_caller]
fn dnat_ok(e: &Env, what: &str, p: &Packet, n: u8, gport: u16) -> Packet {
    let want = e.rnat_ok(what, p, g(n), gport, gmac(n), BR0_MAC);
    let (rc, out) = e.in_up0(p);
    // rnat_ok already ran it once; a second run of the same packet is the
    // same connection's next packet and must look the same.
    assert_eq!(rc, TC_ACT_REDIRECT, "{what} (again)");
    assert_frame(what, &out, &want.frame());
    let ip = Frame(&out).ip();
    assert_eq!(ip.src(), p.src, "{what}: the client's address changed");
    assert!(verify_ip(ip).is_empty(), "{what}: {:?}", verify_ip(ip));
    want
}

/// Runs `frame` through `hook` and checks it passes (TC_ACT_OK) unchanged.
#[track_caller]
fn passes_unchanged(e: &Env, what: &str, hook: Hook, ifindex: u32, frame: &[u8]) {
    let (rc, out) = e.run(hook, ifindex, frame);
    assert_eq!(rc, TC_ACT_OK, "{what}: verdict\n{}", hexdump(&out));
    assert_eq!(out, frame, "{what}: the packet was changed");
}

fn with_seq(mut p: Packet, s: u32, a: u32) -> Packet {
    if let L4::Tcp { seq, ack, .. } = &mut p.l4 {
        *seq = s;
        *ack = a;
    }
    p
}

// ---------------------------------------------------------------------------
// 1. A TCP SYN forwarded to a guest, and its SYN-ACK back.

#[test]
fn tcp_syn_forwarded_and_synack_back() {
    netd_tests::require_root!();
    let e = env();
    let f = fwd(&e, IPPROTO_TCP, 8080, g(20), 80);
    maps::add_forwards(&e.maps, &[f]).expect("add forward");
    assert_eq!(hits(&e, &f), Some(0));
    let dnat_before = e.stat("dnat");

    let syn = from_router(Packet::tcp(REMOTE, 50000, NAT, 8080, TCP_SYN));
    let (rc, out) = e.in_up0(&syn);
    assert_eq!(rc, TC_ACT_REDIRECT, "SYN: verdict\n{}", hexdump(&out));
    let mut want = syn.clone().macs(gmac(20), BR0_MAC);
    want.dst = g(20);
    want.set_dport(80);
    want.ttl -= 1;
    assert_frame("SYN", &out, &want.frame());
    let ip = Frame(&out).ip();
    assert_eq!(
        (ip.src(), ip.sport(), ip.dst(), ip.dport(), ip.ttl()),
        (REMOTE, 50000, g(20), 80, 63)
    );
    assert!(verify_ip(ip).is_empty(), "SYN: {:?}", verify_ip(ip));
    assert_eq!(Frame(&out).dst_mac(), gmac(20));
    assert_eq!(Frame(&out).src_mac(), BR0_MAC);
    assert_eq!(hits(&e, &f), Some(1), "the forward's hit count");
    assert_eq!(e.stat("dnat") - dnat_before, 1, "dnat not counted once");

    let orig = ct_key(REMOTE, 50000, NAT, 8080, IPPROTO_TCP);
    let reply = ct_key(g(20), 80, REMOTE, 50000, IPPROTO_TCP);
    let o = e.ct(&orig).expect("original entry");
    let r = e.ct(&reply).expect("reply entry");
    assert_eq!(o.xlate, ct_key(REMOTE, 50000, g(20), 80, IPPROTO_TCP));
    assert_eq!(r.xlate, ct_key(NAT, 8080, REMOTE, 50000, IPPROTO_TCP));
    assert_eq!((o.dir, r.dir), (dir::ORIGINAL, dir::REPLY));
    assert_eq!((o.nat, r.nat), (nat_kind::DNAT, nat_kind::DNAT));
    assert_eq!((o.bridge_ifindex, o.uplink_ifindex), (e.br0, e.up0));
    assert_eq!((o.state, r.state), (ct_state::NEW, ct_state::NEW));

    // The guest answers; it leaves from the host's address and port.
    let synack = from_guest(
        20,
        with_seq(
            Packet::tcp(g(20), 80, REMOTE, 50000, TCP_SYN | TCP_ACK),
            0x7000_0000,
            0x1000_0001,
        ),
    );
    let back = e.snat_ok("SYN-ACK", &synack, 8080);
    let bf = back.frame();
    let ip = Frame(&bf).ip();
    assert_eq!(
        (ip.src(), ip.sport(), ip.dst(), ip.dport()),
        (NAT, 8080, REMOTE, 50000)
    );
    let o = e.ct(&orig).expect("original entry");
    let r = e.ct(&reply).expect("reply entry");
    assert_eq!(
        (o.state, r.state),
        (ct_state::ESTABLISHED, ct_state::ESTABLISHED)
    );
    assert_eq!(r.packets, 1);

    // The client's ACK belongs to the connection: translated, no new hit.
    let ack = from_router(with_seq(
        Packet::tcp(REMOTE, 50000, NAT, 8080, TCP_ACK),
        0x1000_0001,
        0x7000_0001,
    ));
    dnat_ok(&e, "ACK", &ack, 20, 80);
    assert_eq!(hits(&e, &f), Some(1), "a known connection counted a hit");
    assert_eq!(e.ct(&orig).expect("original entry").packets, 3);
}

// 2. A port range: each host port to its own guest port.

#[test]
fn port_range_forward() {
    netd_tests::require_root!();
    let e = env();
    let range: Vec<ForwardEntry> = (0..=10)
        .map(|i| fwd(&e, IPPROTO_TCP, 8000 + i, g(21), 9000 + i))
        .collect();
    maps::add_forwards(&e.maps, &range).expect("add forwards");

    let syn = from_router(Packet::tcp(REMOTE, 50100, NAT, 8005, TCP_SYN));
    dnat_ok(&e, "8005", &syn, 21, 9005);
    assert_eq!(hits(&e, &range[5]), Some(1));
    let synack = from_guest(
        21,
        Packet::tcp(g(21), 9005, REMOTE, 50100, TCP_SYN | TCP_ACK),
    );
    e.snat_ok("8005 SYN-ACK", &synack, 8005);

    // Both ends of the range.
    for (hport, gport, cport) in [(8000, 9000, 50101), (8010, 9010, 50102)] {
        let syn = from_router(Packet::tcp(REMOTE, cport, NAT, hport, TCP_SYN));
        dnat_ok(&e, &format!("{hport}"), &syn, 21, gport);
        let synack = from_guest(
            21,
            Packet::tcp(g(21), gport, REMOTE, cport, TCP_SYN | TCP_ACK),
        );
        e.snat_ok(&format!("{hport} SYN-ACK"), &synack, hport);
    }
    for (i, f) in range.iter().enumerate() {
        let want = u64::from(matches!(i, 0 | 5 | 10));
        assert_eq!(hits(&e, f), Some(want), "hits of {}", f.host.1);
    }

    // Just past the range: the host's business, untouched.
    let syn = from_router(Packet::tcp(REMOTE, 50103, NAT, 8011, TCP_SYN)).frame();
    passes_unchanged(&e, "8011", Hook::UplinkIngress, e.up0, &syn);
    assert!(
        e.ct(&ct_key(REMOTE, 50103, NAT, 8011, IPPROTO_TCP))
            .is_none()
    );
}

// 3. UDP, with and without a checksum.

#[test]
fn udp_forward_checksums() {
    netd_tests::require_root!();
    let e = env();
    let f = fwd(&e, IPPROTO_UDP, 5353, g(22), 53);
    maps::add_forwards(&e.maps, &[f]).expect("add forward");

    // No checksum: it stays "none" both ways.
    let mut q = from_router(Packet::udp(REMOTE, 40000, NAT, 5353, b"no checksum here"));
    if let L4::Udp { csum, .. } = &mut q.l4 {
        *csum = false;
    }
    let got = dnat_ok(&e, "UDP csum 0", &q, 22, 53);
    assert_eq!(Frame(&got.frame()).ip().l4_csum(), 0);
    let (_, raw) = e.in_up0(&q);
    assert_eq!(Frame(&raw).ip().l4_csum(), 0, "UDP checksum 0 must stay 0");
    let mut a = from_guest(22, Packet::udp(g(22), 53, REMOTE, 40000, b"none either"));
    if let L4::Udp { csum, .. } = &mut a.l4 {
        *csum = false;
    }
    e.snat_ok("UDP csum 0 back", &a, 5353);
    let (_, raw) = e.in_br0(&a);
    assert_eq!(Frame(&raw).ip().l4_csum(), 0, "UDP checksum 0 must stay 0");
    assert_eq!(hits(&e, &f), Some(1));
    let o = e
        .ct(&ct_key(REMOTE, 40000, NAT, 5353, IPPROTO_UDP))
        .expect("original entry");
    assert_eq!(o.state, ct_state::ESTABLISHED, "a UDP reply establishes");

    // With a checksum, another flow.
    let q = from_router(Packet::udp(REMOTE, 40001, NAT, 5353, b"\x12\x34query"));
    dnat_ok(&e, "UDP", &q, 22, 53);
    let a = from_guest(22, Packet::udp(g(22), 53, REMOTE, 40001, b"\x12\x34answer"));
    e.snat_ok("UDP back", &a, 5353);

    // A checksum that computes to zero once translated goes out as 0xffff.
    let payload = payload_for_zero_csum(REMOTE, 40002, g(22), 53, b"zero inside");
    let q = from_router(Packet::udp(REMOTE, 40002, NAT, 5353, &payload));
    let got = dnat_ok(&e, "UDP zero inside", &q, 22, 53);
    assert_eq!(Frame(&got.frame()).ip().l4_csum(), 0xffff);
    let (_, raw) = e.in_up0(&q);
    assert_eq!(Frame(&raw).ip().l4_csum(), 0xffff);
    let payload = payload_for_zero_csum(NAT, 5353, REMOTE, 40002, b"zero outside");
    let a = from_guest(22, Packet::udp(g(22), 53, REMOTE, 40002, &payload));
    e.snat_ok("UDP zero outside", &a, 5353);
    let (_, raw) = e.in_br0(&a);
    assert_eq!(Frame(&raw).ip().l4_csum(), 0xffff);
    assert_eq!(hits(&e, &f), Some(3));
}

// 4. Hairpin: a guest connects to a forwarded port on the host's address.

#[test]
fn hairpin_double_translation() {
    netd_tests::require_root!();
    let e = env();
    let f = fwd(&e, IPPROTO_TCP, 8080, g(20), 80);
    maps::add_forwards(&e.maps, &[f]).expect("add forward");
    let h0 = hits(&e, &f).unwrap();

    let syn = from_guest(21, Packet::tcp(g(21), 51000, NAT, 8080, TCP_SYN));
    let (rc, out) = e.in_br0(&syn);
    assert_eq!(
        rc,
        TC_ACT_REDIRECT,
        "hairpin SYN: verdict\n{}",
        hexdump(&out)
    );
    let mut want = syn.clone().macs(gmac(20), BR0_MAC);
    want.src = GW0;
    want.dst = g(20);
    want.set_dport(80);
    want.ttl -= 1;
    assert_frame("hairpin SYN", &out, &want.frame());
    let ip = Frame(&out).ip();
    assert_eq!(
        (ip.src(), ip.sport(), ip.dst(), ip.dport()),
        (GW0, 51000, g(20), 80),
        "both translations, the port kept"
    );
    assert!(verify_ip(ip).is_empty(), "hairpin SYN: {:?}", verify_ip(ip));
    assert_eq!(hits(&e, &f), Some(h0 + 1));

    let orig = ct_key(g(21), 51000, NAT, 8080, IPPROTO_TCP);
    let reply = ct_key(g(20), 80, GW0, 51000, IPPROTO_TCP);
    let o = e.ct(&orig).expect("original entry");
    let r = e.ct(&reply).expect("reply entry");
    assert_eq!(o.xlate, ct_key(GW0, 51000, g(20), 80, IPPROTO_TCP));
    assert_eq!(r.xlate, ct_key(NAT, 8080, g(21), 51000, IPPROTO_TCP));
    assert_eq!((o.nat, r.nat), (nat_kind::DNAT, nat_kind::DNAT));
    assert_eq!((o.dir, r.dir), (dir::ORIGINAL, dir::REPLY));
    assert_eq!(o.bridge_ifindex, e.br0);

    // The target answers the gateway; the guest hears from the host address.
    let synack = from_guest(
        20,
        with_seq(
            Packet::tcp(g(20), 80, GW0, 51000, TCP_SYN | TCP_ACK),
            0x7100_0000,
            0x1000_0001,
        ),
    );
    let (rc, out) = e.in_br0(&synack);
    assert_eq!(
        rc,
        TC_ACT_REDIRECT,
        "hairpin SYN-ACK: verdict\n{}",
        hexdump(&out)
    );
    let mut want = synack.clone().macs(gmac(21), BR0_MAC);
    want.src = NAT;
    want.set_sport(8080);
    want.dst = g(21);
    want.ttl -= 1;
    assert_frame("hairpin SYN-ACK", &out, &want.frame());
    let ip = Frame(&out).ip();
    assert_eq!(
        (ip.src(), ip.sport(), ip.dst(), ip.dport()),
        (NAT, 8080, g(21), 51000)
    );
    let o = e.ct(&orig).expect("original entry");
    assert_eq!(o.state, ct_state::ESTABLISHED);

    // The guest's next segment follows the connection.
    let ack = from_guest(
        21,
        with_seq(
            Packet::tcp(g(21), 51000, NAT, 8080, TCP_ACK),
            0x1000_0001,
            0x7100_0001,
        ),
    );
    let (rc, out) = e.in_br0(&ack);
    assert_eq!(rc, TC_ACT_REDIRECT, "hairpin ACK");
    let mut want = ack.clone().macs(gmac(20), BR0_MAC);
    want.src = GW0;
    want.dst = g(20);
    want.set_dport(80);
    want.ttl -= 1;
    assert_frame("hairpin ACK", &out, &want.frame());
    assert_eq!(
        hits(&e, &f),
        Some(h0 + 1),
        "a known connection counted a hit"
    );

    // Another guest from the same port: the gateway's port 51000 towards
    // the target is taken, so it gets another one, and its replies its own.
    let syn2 = from_guest(22, Packet::tcp(g(22), 51000, NAT, 8080, TCP_SYN));
    let (rc, out) = e.in_br0(&syn2);
    assert_eq!(rc, TC_ACT_REDIRECT, "second hairpin SYN");
    let port = Frame(&out).ip().sport();
    assert_ne!(port, 51000, "two hairpins share the gateway's port");
    let mut want = syn2.clone().macs(gmac(20), BR0_MAC);
    want.src = GW0;
    want.set_sport(port);
    want.dst = g(20);
    want.set_dport(80);
    want.ttl -= 1;
    assert_frame("second hairpin SYN", &out, &want.frame());
    let synack2 = from_guest(20, Packet::tcp(g(20), 80, GW0, port, TCP_SYN | TCP_ACK));
    let (rc, out) = e.in_br0(&synack2);
    assert_eq!(rc, TC_ACT_REDIRECT, "second hairpin SYN-ACK");
    let mut want = synack2.clone().macs(gmac(22), BR0_MAC);
    want.src = NAT;
    want.set_sport(8080);
    want.dst = g(22);
    want.set_dport(51000);
    want.ttl -= 1;
    assert_frame("second hairpin SYN-ACK", &out, &want.frame());
    assert_eq!(hits(&e, &f), Some(h0 + 2));
}

// 5. A removed forward: its connections live on, new ones don't come in.

#[test]
fn removed_forward_keeps_connections_refuses_new() {
    netd_tests::require_root!();
    let e = env();
    let f = fwd(&e, IPPROTO_TCP, 8443, g(23), 443);
    maps::add_forwards(&e.maps, &[f]).expect("add forward");

    let syn = from_router(Packet::tcp(REMOTE, 50500, NAT, 8443, TCP_SYN));
    dnat_ok(&e, "SYN", &syn, 23, 443);
    let synack = from_guest(
        23,
        with_seq(
            Packet::tcp(g(23), 443, REMOTE, 50500, TCP_SYN | TCP_ACK),
            0x7200_0000,
            0x1000_0001,
        ),
    );
    e.snat_ok("SYN-ACK", &synack, 8443);

    maps::remove_forwards(&e.maps, &[f]).expect("remove forward");
    assert_eq!(hits(&e, &f), None, "the forward is still listed");

    // The connection goes on, both ways.
    let mut ack = from_router(with_seq(
        Packet::tcp(REMOTE, 50500, NAT, 8443, TCP_PSH | TCP_ACK),
        0x1000_0001,
        0x7200_0001,
    ));
    if let L4::Tcp { payload, .. } = &mut ack.l4 {
        *payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    }
    dnat_ok(&e, "data after removal", &ack, 23, 443);
    let mut data = from_guest(
        23,
        with_seq(
            Packet::tcp(g(23), 443, REMOTE, 50500, TCP_PSH | TCP_ACK),
            0x7200_0001,
            0x1000_0013,
        ),
    );
    if let L4::Tcp { payload, .. } = &mut data.l4 {
        *payload = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    }
    e.snat_ok("reply after removal", &data, 8443);

    // A new connection to the port is not forwarded. The host address is
    // in no NAT subnet, so the datapath leaves it to the host (whose stack
    // answers a closed port with a RST): TC_ACT_OK, not rewritten, no
    // conntrack entry.
    let ct_new = e.stat("ct_new");
    let dnat = e.stat("dnat");
    let policy = e.stat("drop_policy");
    let syn2 = from_router(Packet::tcp(REMOTE, 50501, NAT, 8443, TCP_SYN)).frame();
    passes_unchanged(
        &e,
        "new SYN after removal",
        Hook::UplinkIngress,
        e.up0,
        &syn2,
    );
    assert!(
        e.ct(&ct_key(REMOTE, 50501, NAT, 8443, IPPROTO_TCP))
            .is_none(),
        "a conntrack entry for a refused connection"
    );
    assert_eq!(e.stat("ct_new"), ct_new);
    assert_eq!(e.stat("dnat"), dnat);
    assert_eq!(e.stat("drop_policy"), policy);

    // Nor through the hairpin: the guest's SYN goes to the host untouched.
    let hp = from_guest(24, Packet::tcp(g(24), 52000, NAT, 8443, TCP_SYN)).frame();
    passes_unchanged(&e, "hairpin after removal", Hook::BridgeIngress, e.br0, &hp);
    assert!(
        e.ct(&ct_key(g(24), 52000, NAT, 8443, IPPROTO_TCP))
            .is_none()
    );
}

// 6. A forwarded connection's reply that took the kernel's slow path.

/// The guest's reply as the kernel forwards it out of up0 (the bridge's
/// program left it to the stack: larger than the uplink's MTU without DF,
/// so the kernel fragments it): TTL already one lower, the router's MAC.
fn forwarded_by_kernel(mut p: Packet) -> Packet {
    p.ttl -= 1;
    p.macs(ROUTER_MAC, UP0_MAC)
}

#[test]
fn forwarded_reply_through_uplink_egress() {
    netd_tests::require_root!();
    let e = env();
    let f = fwd(&e, IPPROTO_UDP, 5354, g(25), 53);
    maps::add_forwards(&e.maps, &[f]).expect("add forward");
    let q = from_router(Packet::udp(REMOTE, 40010, NAT, 5354, b"query"));
    dnat_ok(&e, "query", &q, 25, 53);

    // A whole reply: the safety net translates it as the bridge would have.
    let a = forwarded_by_kernel(Packet::udp(g(25), 53, REMOTE, 40010, b"short answer"));
    let (rc, out) = e.run(Hook::UplinkEgress, e.up0, &a.frame());
    assert_eq!(rc, TC_ACT_OK, "whole reply: verdict\n{}", hexdump(&out));
    let mut want = a.clone();
    want.src = NAT;
    want.set_sport(5354);
    assert_frame("whole reply", &out, &want.frame());

    // A reply the kernel fragmented.
    let payload: Vec<u8> = (0..64u8).collect();
    let whole = Packet::udp(g(25), 53, REMOTE, 40010, &payload);
    let bytes = whole.l4_bytes();
    let (head, tail) = bytes.split_at(32);
    let frag = |data: &[u8], off: u16, mf: bool| {
        let mut p = forwarded_by_kernel(whole.clone());
        p.l4 = L4::Raw(data.to_vec());
        p.frag_off = off;
        p.mf = mf;
        p.id = 0x5151;
        p
    };
    let (first, second) = (frag(head, 0, true), frag(tail, 4, false));
    let (rc1, out1) = e.run(Hook::UplinkEgress, e.up0, &first.frame());
    let (rc2, out2) = e.run(Hook::UplinkEgress, e.up0, &second.frame());
    assert_eq!(
        rc1,
        TC_ACT_OK,
        "first fragment: verdict\n{}",
        hexdump(&out1)
    );
    assert_eq!(
        rc2,
        TC_ACT_OK,
        "later fragment: verdict\n{}",
        hexdump(&out2)
    );
    let xlated = Packet::udp(NAT, 5354, REMOTE, 40010, &payload).l4_bytes();
    let mut want1 = first.clone();
    want1.src = NAT;
    want1.l4 = L4::Raw(xlated[..32].to_vec());
    let mut want2 = second.clone();
    want2.src = NAT;
    want2.l4 = L4::Raw(xlated[32..].to_vec());
    assert_frame("first fragment", &out1, &want1.frame());
    assert_frame("later fragment", &out2, &want2.frame());
    let (ip1, ip2) = (Frame(&out1).ip(), Frame(&out2).ip());
    let mut reassembled = ip1.l4().to_vec();
    reassembled.extend_from_slice(ip2.l4());
    verify_datagram_l4(NAT, REMOTE, IPPROTO_UDP, &reassembled).expect("reassembled UDP checksum");
}

// 7. ICMP errors about a forwarded connection reach its guest.

/// A frag-needed from the router about `sent` (a guest's reply as it left,
/// from the host's address and port), and the error as guest `n` should get
/// it: outer destination the guest, the quote's source the guest's address
/// and port `gport`, every checksum (outer, ICMP, quoted IP, quoted L4)
/// recomputed.
#[track_caller]
fn frag_needed_reaches_guest(e: &Env, what: &str, sent: &Packet, n: u8, gport: u16) {
    let (ty, code, rest) = (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, [0, 0, 0x05, 0x78]);
    let err = from_router(Packet::icmp_error(ROUTER, NAT, ty, code, rest, sent, 1000));
    let mut quoted_as_guest = sent.clone();
    quoted_as_guest.src = g(n);
    quoted_as_guest.set_sport(gport);
    let mut want = Packet::icmp_error(ROUTER, g(n), ty, code, rest, &quoted_as_guest, 1000)
        .macs(gmac(n), BR0_MAC);
    want.ttl = err.ttl - 1;
    want.id = err.id;
    let (rc, out) = e.in_up0(&err);
    assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
    assert_frame(what, &out, &want.frame());
    let ip = Frame(&out).ip();
    assert_eq!(ip.dst(), g(n), "{what}: outer destination");
    let q = ip.icmp_quoted();
    assert_eq!((q.src(), q.sport()), (g(n), gport), "{what}: quoted source");
    assert_eq!(q.dst(), REMOTE, "{what}: quoted destination");
    assert!(verify_ip(ip).is_empty(), "{what}: {:?}", verify_ip(ip));
}

#[test]
fn icmp_errors_about_forwarded_connections() {
    netd_tests::require_root!();
    let e = env();
    let t = fwd(&e, IPPROTO_TCP, 8090, g(26), 80);
    let u = fwd(&e, IPPROTO_UDP, 8090, g(26), 8000);
    maps::add_forwards(&e.maps, &[t, u]).expect("add forwards");

    // TCP: the guest's large segment (DF) is too big for a later link.
    let syn = from_router(Packet::tcp(REMOTE, 50600, NAT, 8090, TCP_SYN));
    dnat_ok(&e, "TCP SYN", &syn, 26, 80);
    let mut data = from_guest(
        26,
        with_seq(
            Packet::tcp(g(26), 80, REMOTE, 50600, TCP_PSH | TCP_ACK),
            0x7300_0001,
            0x1000_0001,
        ),
    );
    if let L4::Tcp { payload, .. } = &mut data.l4 {
        *payload = vec![0x62; 200];
    }
    let sent = e.snat_ok("TCP data", &data, 8090);
    frag_needed_reaches_guest(&e, "frag-needed, TCP", &sent, 26, 80);

    // UDP, same host port, another protocol.
    let q = from_router(Packet::udp(REMOTE, 50601, NAT, 8090, b"request"));
    dnat_ok(&e, "UDP request", &q, 26, 8000);
    let mut a = from_guest(26, Packet::udp(g(26), 8000, REMOTE, 50601, &[0x63; 300]));
    a.df = true;
    let sent = e.snat_ok("UDP answer", &a, 8090);
    frag_needed_reaches_guest(&e, "frag-needed, UDP", &sent, 26, 8000);
}

// ---------------------------------------------------------------------------
// Timing (printed, never asserted).

/// The measured forward, and the client whose connections it times.
const BENCH_HPORT: u16 = 8888;
const BENCH_CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);

/// `n` forwards that are never hit, each with its own host key and guest
/// key, on addresses no packet here uses (10.128.0.0/16 and 10.129.0.0/16),
/// starting at index `from`.
fn filler(e: &Env, from: u32, n: u32) -> Vec<ForwardEntry> {
    (from..from + n)
        .map(|i| {
            let addr = |base: u32| Ipv4Addr::from(base + i / 60_000);
            let port = 1024 + (i % 60_000) as u16;
            ForwardEntry {
                proto: IPPROTO_TCP,
                host: (addr(0x0a80_0000), port),
                guest: (addr(0x0a81_0000), port),
                bridge_ifindex: e.br0,
            }
        })
        .collect()
}

/// Mean time of the first packet of a new forwarded connection, over
/// `frames` (each a different client port), one run per call.
fn time_new_connections(e: &Env, frames: &[Vec<u8>]) -> Duration {
    let mut total = Duration::ZERO;
    for f in frames {
        let (rc, _, d) =
            e.dp.test_run_repeat(Hook::UplinkIngress, e.up0, f, 1)
                .expect("test run");
        assert_eq!(rc, TC_ACT_REDIRECT, "not forwarded");
        total += d;
    }
    let n = frames.len() as u32;
    maps::ct_remove_where(&e.maps, |k, c| {
        c.dir == dir::ORIGINAL && k.saddr == be(BENCH_CLIENT)
    })
    .expect("conntrack cleanup");
    total / n
}

#[test]
fn bench_forward_path() {
    netd_tests::require_root!();
    let e = env();
    let measured = fwd(&e, IPPROTO_TCP, BENCH_HPORT, g(30), 80);
    maps::add_forwards(&e.maps, &[measured]).expect("add forward");
    let calls = 5_000u16;
    let frames: Vec<Vec<u8>> = (0..calls)
        .map(|i| {
            from_router(Packet::tcp(
                BENCH_CLIENT,
                20_000 + i,
                NAT,
                BENCH_HPORT,
                TCP_SYN,
            ))
            .frame()
        })
        .collect();
    // The first one checked byte for byte, so the timing is of the right path.
    dnat_ok(
        &e,
        "bench SYN",
        &from_router(Packet::tcp(BENCH_CLIENT, 20_000, NAT, BENCH_HPORT, TCP_SYN)),
        30,
        80,
    );
    maps::ct_remove_where(&e.maps, |k, c| {
        c.dir == dir::ORIGINAL && k.saddr == be(BENCH_CLIENT)
    })
    .expect("conntrack cleanup");

    let ct_before = maps::ct_entries(&e.maps).expect("conntrack").len();
    let mut installed = 1u32;
    let mut fillers = Vec::new();
    for want in [1u32, 1_000, 100_000] {
        assert!(want <= FORWARD_MAX_ENTRIES);
        let more = filler(&e, installed - 1, want - installed);
        maps::add_forwards(&e.maps, &more).expect("add filler forwards");
        fillers.extend(more);
        installed = want;
        // One warm-up batch, then the timed one.
        time_new_connections(&e, &frames[..500]);
        let per = time_new_connections(&e, &frames);
        println!(
            "netd bench: forward path, {want} forwards: {} ns/packet",
            per.as_nanos()
        );
    }
    // For comparison: a SYN to a port nothing forwards (the same tail call,
    // a missed lookup, back to the host).
    let miss: Vec<Vec<u8>> = (0..calls)
        .map(|i| from_router(Packet::tcp(BENCH_CLIENT, 20_000 + i, NAT, 8889, TCP_SYN)).frame())
        .collect();
    let mut total = Duration::ZERO;
    for f in &miss {
        let (rc, _, d) =
            e.dp.test_run_repeat(Hook::UplinkIngress, e.up0, f, 1)
                .expect("test run");
        assert_eq!(rc, TC_ACT_OK);
        total += d;
    }
    println!(
        "netd bench: unforwarded port, {installed} forwards: {} ns/packet",
        (total / u32::from(calls)).as_nanos()
    );
    let h = hits(&e, &measured).unwrap_or(0);
    println!("netd bench: the measured forward counted {h} hits");

    let t = Instant::now();
    maps::remove_forwards(&e.maps, &fillers).expect("remove filler forwards");
    println!(
        "netd bench: remove {} forwards via maps: {} ms",
        fillers.len(),
        t.elapsed().as_millis()
    );
    maps::remove_forwards(&e.maps, &[measured]).expect("remove forward");
    assert_eq!(
        maps::ct_entries(&e.maps).expect("conntrack").len(),
        ct_before,
        "the bench left conntrack entries"
    );
}

#[test]
fn bench_install_forwards() {
    netd_tests::require_root!();
    let e = env();
    // Keys of their own (10.130.0.0/16), so they meet no other test's.
    let n = 10_000u32;
    let entries: Vec<ForwardEntry> = filler(&e, 0, n)
        .into_iter()
        .map(|mut f| {
            f.host.0 = Ipv4Addr::from(u32::from(f.host.0) + 0x0002_0000);
            f.guest.0 = Ipv4Addr::from(u32::from(f.guest.0) + 0x0002_0000);
            f
        })
        .collect();
    let t = Instant::now();
    maps::add_forwards(&e.maps, &entries).expect("add forwards");
    let took = t.elapsed();
    println!(
        "netd bench: install {n} forwards via maps: {} ms",
        took.as_millis()
    );
    let wanted: HashSet<ForwardEntry> = entries.iter().copied().collect();
    let listed = maps::list_forwards(&e.maps)
        .expect("list forwards")
        .into_iter()
        .filter(|(f, _)| wanted.contains(f))
        .count();
    assert_eq!(listed, n as usize, "installed forwards not all listed");
    let t = Instant::now();
    maps::remove_forwards(&e.maps, &entries).expect("remove forwards");
    println!(
        "netd bench: remove {n} forwards via maps: {} ms",
        t.elapsed().as_millis()
    );
}
