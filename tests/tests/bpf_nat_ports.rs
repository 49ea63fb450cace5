//! The masquerade's port search on crafted packets, through
//! BPF_PROG_TEST_RUN (fixture: `netd_tests::bpf_fixture`): the guest's own
//! port when free, otherwise any free port of the range, its parity first;
//! a range full towards one destination answered with ICMP "administratively
//! prohibited" (3/13) while other destinations are still served; ports a
//! forward owns never taken. `bench_new_flow_cost` (ignored) prints the cost
//! of a new flow at 0%, 50% and 90% occupancy.
//!
//! ```text
//!  netns ndbpf<pid>
//!   br0 192.168.122.1/24    NAT, ports 1024-65535
//!   br1 192.168.123.1/24    NAT, ports 2000-2000 (narrowed per case below)
//!   up0 198.51.100.2/24, default via 198.51.100.1
//! ```

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use netd::dataplane::{Hook, maps};
use netd_common::{NetConfig, dir, map_kind, nat_kind, net_flags};
use netd_tests::bpf_fixture::*;
use netd_tests::packet::*;

/// Gives br1 the port range `lo..=hi` for one case, and on the way out
/// (also by panic) puts its config back and forgets its connections, so
/// cases do not see each other's ports.
struct Br1Range<'a> {
    e: &'a Env,
    saved: NetConfig,
}

impl<'a> Br1Range<'a> {
    fn new(e: &'a Env, lo: u16, hi: u16) -> Self {
        Self::with_flags(e, lo, hi, 0)
    }

    /// With `net_flags` (mapping and filtering behaviours) too.
    fn with_flags(e: &'a Env, lo: u16, hi: u16, flags: u8) -> Self {
        let nets = maps::list_networks(&e.maps).expect("networks");
        let (_, saved) = *nets.iter().find(|(b, _)| *b == e.br1).expect("br1");
        let cfg = NetConfig {
            port_min: lo,
            port_max: hi,
            flags,
            ..saved
        };
        maps::add_network(&e.maps, e.br1, &cfg, None).expect("add_network");
        forget_br1(e);
        Br1Range { e, saved }
    }
}

impl Drop for Br1Range<'_> {
    fn drop(&mut self) {
        let _ = maps::add_network(&self.e.maps, self.e.br1, &self.saved, None);
        forget_br1(self.e);
    }
}

fn forget_br1(e: &Env) {
    let br1 = e.br1;
    maps::ct_remove_where(&e.maps, |_, v| v.bridge_ifindex == br1).expect("ct cleanup");
    maps::nat_mappings_remove_where(&e.maps, |_, m| m.bridge_ifindex == br1)
        .expect("mapping cleanup");
}

/// A UDP datagram from guest `n` of br1.
fn udp_h(n: u8, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
    Packet::udp(h(n), sport, dst, dport, b"ping").macs(BR1_MAC, hmac(n))
}

/// Runs `p` in at br1 and returns the masquerade port it left with,
/// checking the whole frame.
#[track_caller]
fn out_br1(e: &Env, what: &str, p: &Packet) -> u16 {
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &p.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
    let port = Frame(&out).ip().sport();
    assert_frame(what, &out, &snat_of(p, port).frame());
    port
}

/// The ICMP error the gateway of br1 sends guest `n` about `refused`:
/// destination unreachable with `code`, quoting the IP header and 8 bytes.
fn unreachable_h(refused: &Packet, n: u8, code: u8) -> Packet {
    let mut w = Packet::icmp_error(GW1, h(n), ICMP_DEST_UNREACH, code, [0; 4], refused, 28);
    w.tos = 0;
    w.id = 0;
    w.ttl = 64;
    w.macs(hmac(n), BR1_MAC)
}

// ---------------------------------------------------------------------------
// 1. Forty guests, one source port, one server.

#[test]
fn forty_guests_from_one_port_get_forty_ports() {
    netd_tests::require_root!();
    let e = env();
    // The old search tried 32 ports from the guest's own and dropped the
    // rest. Guests .10-.49 of br0 (the checks below need no neighbour).
    let server = Ipv4Addr::new(203, 0, 113, 40);
    let exhausted = e.stat("drop_ports_exhausted");
    let mut ports = BTreeSet::new();
    for n in 10..50u8 {
        let p = from_guest(n, Packet::udp(g(n), 40000, server, 3478, b"stun"));
        let (rc, out) = e.in_br0(&p);
        assert_eq!(rc, TC_ACT_REDIRECT, "guest .{n}\n{}", hexdump(&out));
        let port = Frame(&out).ip().sport();
        assert_frame(&format!("guest .{n}"), &out, &snat_of(&p, port).frame());
        if n == 10 {
            assert_eq!(port, 40000, "the first guest keeps its own port");
        }
        assert!(port >= 1024, "guest .{n}: port {port} below the range");
        assert!(
            port.is_multiple_of(2),
            "guest .{n}: port {port} lost the parity"
        );
        assert!(ports.insert(port), "guest .{n}: port {port} given twice");
        // The reply to that port finds this guest.
        let k = ct_key(server, 3478, NAT, port, IPPROTO_UDP);
        let rev = e
            .ct(&k)
            .unwrap_or_else(|| panic!("guest .{n}: no reply entry"));
        assert_eq!(rev.xlate, ct_key(server, 3478, g(n), 40000, IPPROTO_UDP));
    }
    assert_eq!(ports.len(), 40);
    assert_eq!(
        e.stat("drop_ports_exhausted"),
        exhausted,
        "a guest was refused"
    );
    // Replies through the datapath, for the guests with a neighbour entry.
    for n in [10u8, 25, 40] {
        let k = e
            .ct(&ct_key(g(n), 40000, server, 3478, IPPROTO_UDP))
            .expect("entry");
        let port = u16::from_be(k.xlate.sport);
        let r = from_router(Packet::udp(server, 3478, NAT, port, b"pong"));
        e.rnat_ok(&format!("reply to .{n}"), &r, g(n), 40000, gmac(n), BR0_MAC);
    }
}

// ---------------------------------------------------------------------------
// 2. A 16-port range: parity, exhaustion, the ICMP answer, other peers.

#[test]
fn sixteen_port_range_full_answers_admin_prohibited() {
    netd_tests::require_root!();
    let e = env();
    let _range = Br1Range::new(&e, 3000, 3015);
    let server = Ipv4Addr::new(203, 0, 113, 41);
    // The guests' port 5000 is outside the range: no port to keep, but its
    // parity is kept as long as the range has ports of it.
    let mut ports = Vec::new();
    for n in 10..26u8 {
        let p = udp_h(n, 5000, server, 5060);
        ports.push(out_br1(&e, &format!("flow from .{n}"), &p));
    }
    let (even, odd) = ports.split_at(8);
    assert!(
        even.iter().all(|p| p.is_multiple_of(2)),
        "the even ports first: {ports:?}"
    );
    assert!(odd.iter().all(|p| p % 2 == 1), "then the odd: {ports:?}");
    let all: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(
        all,
        (3000..=3015).collect(),
        "every port of the range used once"
    );

    // The 17th flow to the same server: the exact code-13 frame.
    let refused = udp_h(26, 5000, server, 5060);
    let (exhausted, sent) = (e.stat("drop_ports_exhausted"), e.stat("reject_sent"));
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &refused.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "17th flow: verdict\n{}", hexdump(&out));
    assert_frame("17th flow", &out, &unreachable_h(&refused, 26, 13).frame());
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    let f = Frame(&out);
    assert_eq!((f.dst_mac(), f.src_mac()), (hmac(26), BR1_MAC));
    let ip = f.ip();
    assert_eq!((ip.src(), ip.dst()), (GW1, h(26)));
    assert_eq!((ip.proto(), ip.ttl(), ip.tot_len()), (IPPROTO_ICMP, 64, 56));
    assert_eq!((ip.icmp_type(), ip.icmp_code()), (3, 13));
    assert_eq!(&ip.l4()[4..8], &[0; 4], "unused word");
    assert_eq!(&ip.l4()[8..], &refused.ip_bytes()[..28], "quote");
    assert!(verify_ip(ip).is_empty(), "{:?}", verify_ip(ip));
    assert_eq!(e.stat("drop_ports_exhausted") - exhausted, 1, "counted");
    assert_eq!(e.stat("reject_sent") - sent, 1, "answer counted");
    assert!(
        e.ct(&ct_key(h(26), 5000, server, 5060, IPPROTO_UDP))
            .is_none(),
        "a refused flow left an entry"
    );

    // Refused again, and now from the note that the range is full
    // (no walk), still answered.
    let again = udp_h(27, 5000, server, 5060);
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &again.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "18th flow");
    assert_frame("18th flow", &out, &unreachable_h(&again, 27, 13).frame());
    // A port freed while the note holds is used once it lapses (a second).
    let freed = ct_key(h(12), 5000, server, 5060, IPPROTO_UDP);
    let freed_port = u16::from_be(e.ct(&freed).expect("12's flow").xlate.sport);
    maps::ct_remove_where(&e.maps, |k, v| {
        *k == freed
            || (k.daddr == be(NAT)
                && u16::from_be(k.dport) == freed_port
                && v.bridge_ifindex == e.br1
                && k.saddr == be(server)
                && u16::from_be(k.sport) == 5060)
    })
    .expect("free a port");
    let (rc, _) = e.run(Hook::BridgeIngress, e.br1, &again.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "within the second: refused");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(out_br1(&e, "after the second", &again), freed_port);
    // A network with a wider range on the same masquerade address is not
    // refused by br1's note.
    let wide = from_guest(30, Packet::udp(g(30), 5000, server, 5060, b"x"));
    let (rc, out) = e.in_br0(&wide);
    assert_eq!(rc, TC_ACT_REDIRECT, "br0 to the same server");
    assert!(!(3000..=3015).contains(&Frame(&out).ip().sport()));

    // The same guest to another server (or another port of it) still
    // goes out: the ports are held per destination.
    let other = udp_h(26, 5000, Ipv4Addr::new(203, 0, 113, 42), 5060);
    let p = out_br1(&e, "another server", &other);
    assert!(
        (3000..=3015).contains(&p) && p.is_multiple_of(2),
        "port {p}"
    );
    let other_port = udp_h(26, 5000, server, 5061);
    let p = out_br1(&e, "another port of the server", &other_port);
    assert!(
        (3000..=3015).contains(&p) && p.is_multiple_of(2),
        "port {p}"
    );

    // The open flows still work both ways.
    let first = udp_h(10, 5000, server, 5060);
    assert_eq!(out_br1(&e, "first flow again", &first), ports[0]);
    let r = from_router(Packet::udp(server, 5060, NAT, ports[15], b"pong"));
    e.rnat_ok("reply to the 16th", &r, h(25), 5000, hmac(25), BR1_MAC);

    // TCP and echo requests run out the same way, and are answered too.
    for n in 10..26u8 {
        out_br1(&e, "TCP", &tcp_h(n, 6000, server, 443));
    }
    let syn = tcp_h(27, 6000, server, 443);
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &syn.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "17th SYN");
    assert_frame("17th SYN", &out, &unreachable_h(&syn, 27, 13).frame());
}

fn tcp_h(n: u8, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
    Packet::tcp(h(n), sport, dst, dport, TCP_SYN).macs(BR1_MAC, hmac(n))
}

#[test]
fn guest_port_kept_when_free_and_parity_when_not() {
    netd_tests::require_root!();
    let e = env();
    let _range = Br1Range::new(&e, 3000, 3099);
    let server = Ipv4Addr::new(203, 0, 113, 43);
    // In the range and free: kept.
    assert_eq!(out_br1(&e, "3051 free", &udp_h(10, 3051, server, 9)), 3051);
    // Taken: another port of the same parity, for RTP (even) and RTCP (odd).
    for n in 11..31u8 {
        let p = out_br1(&e, "3051 taken", &udp_h(n, 3051, server, 9));
        assert_eq!(p % 2, 1, "odd guest port {p}");
        let p = out_br1(&e, "3050 taken", &udp_h(n, 3050, server, 9));
        assert_eq!(p % 2, 0, "even guest port {p}");
    }
    // An echo request's id is searched for like a port.
    for n in 10..14u8 {
        let ping =
            Packet::icmp_echo(h(n), server, true, 3020, 1, b"abcdefgh").macs(BR1_MAC, hmac(n));
        let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &ping.frame());
        assert_eq!(rc, TC_ACT_REDIRECT, "echo from .{n}");
        let id = Frame(&out).ip().echo_id();
        assert!((3000..=3099).contains(&id), "echo id {id}");
        assert_frame("echo", &out, &snat_of(&ping, id).frame());
    }
}

#[test]
fn forwarded_ports_are_never_taken() {
    netd_tests::require_root!();
    let e = env();
    let _range = Br1Range::new(&e, 3000, 3003);
    let fwd: Vec<maps::ForwardEntry> = [3000u16, 3003]
        .iter()
        .map(|&port| maps::ForwardEntry {
            proto: IPPROTO_UDP,
            host: (NAT, port),
            guest: (h(40), port),
            bridge_ifindex: e.br1,
        })
        .collect();
    maps::add_forwards(&e.maps, &fwd).expect("forwards");
    struct Unforward<'a>(&'a Env, Vec<maps::ForwardEntry>);
    impl Drop for Unforward<'_> {
        fn drop(&mut self) {
            let _ = maps::remove_forwards(&self.0.maps, &self.1);
        }
    }
    let _unforward = Unforward(&e, fwd);
    let server = Ipv4Addr::new(203, 0, 113, 44);
    let a = out_br1(&e, "first", &udp_h(10, 3000, server, 9));
    let b = out_br1(&e, "second", &udp_h(11, 3000, server, 9));
    let got: BTreeSet<u16> = [a, b].into();
    assert_eq!(got, [3001, 3002].into(), "only the unforwarded ports");
    let third = udp_h(12, 3000, server, 9);
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &third.frame());
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_frame("third", &out, &unreachable_h(&third, 12, 13).frame());
    // TCP does not see UDP's forwards.
    let t = out_br1(&e, "TCP", &tcp_h(13, 3000, server, 9));
    assert_eq!(t, 3000);
}

#[test]
fn over_budget_refusals_are_silent_but_counted() {
    netd_tests::require_root!();
    let e = env();
    let _range = Br1Range::new(&e, 3000, 3000);
    let server = Ipv4Addr::new(203, 0, 113, 45);
    out_br1(&e, "the one port", &udp_h(10, 7, server, 9));
    // The budget is per CPU; 250 refusals on two CPUs overrun it (100 per
    // second each) unless the window turns in between.
    let refused = udp_h(11, 7, server, 9);
    let frame = refused.frame();
    let (exhausted, sent) = (e.stat("drop_ports_exhausted"), e.stat("reject_sent"));
    let mut answered = 0;
    let mut silent = 0;
    let start = std::time::Instant::now();
    for _ in 0..250 {
        let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &frame);
        match rc {
            TC_ACT_REDIRECT => answered += 1,
            TC_ACT_SHOT => {
                assert_eq!(out, frame, "a silent refusal changed the packet");
                silent += 1
            }
            rc => panic!("verdict {rc}"),
        }
    }
    let took = start.elapsed();
    assert_eq!(e.stat("drop_ports_exhausted") - exhausted, 250);
    assert_eq!(e.stat("reject_sent") - sent, answered);
    if took < Duration::from_millis(900) {
        assert!(answered <= 200, "{answered} answers within a second");
        assert!(silent >= 50, "{silent} silent");
    }
    // Leave the next case (the fixture runs them one at a time) a fresh
    // budget.
    std::thread::sleep(Duration::from_millis(1100));
}

// ---------------------------------------------------------------------------
// 3. Endpoint-independent mapping and filtering (br1 with net_flags).

const A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);
const B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 61);

/// An unsolicited datagram from `from`:`sport` to NAT:`port` at up0.
fn inbound(from: Ipv4Addr, sport: u16, port: u16) -> Packet {
    from_router(Packet::udp(from, sport, NAT, port, b"knock"))
}

/// Checks `p` (in at up0) is let in to br1's guest `n`:`gport`.
#[track_caller]
fn let_in(e: &Env, what: &str, p: &Packet, n: u8, gport: u16) {
    let dnat = e.stat("dnat");
    let (rc, out) = e.in_up0(p);
    assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
    let mut want = p.clone().macs(hmac(n), BR1_MAC);
    want.dst = h(n);
    want.set_dport(gport);
    want.ttl -= 1;
    assert_frame(what, &out, &want.frame());
    assert_eq!(e.stat("dnat") - dnat, 1, "{what}: counted dnat");
}

/// Checks `p` (in at up0) is left to the host stack, untouched.
#[track_caller]
fn kept_out(e: &Env, what: &str, p: &Packet) {
    let (rc, out) = e.in_up0(p);
    assert_eq!(rc, TC_ACT_OK, "{what}: verdict\n{}", hexdump(&out));
    assert_eq!(out, p.frame(), "{what}: changed");
}

#[test]
fn endpoint_independent_mapping_keeps_one_port_per_guest_end() {
    netd_tests::require_root!();
    let e = env();
    let _net = Br1Range::with_flags(&e, 3000, 3015, net_flags::EIM);
    // Guest .10:5000 to A, then to B and to another port of A: one port.
    let p = out_br1(&e, "to A", &udp_h(10, 5000, A, 9));
    assert_eq!(out_br1(&e, "to B", &udp_h(10, 5000, B, 9)), p);
    assert_eq!(out_br1(&e, "to A:10", &udp_h(10, 5000, A, 10)), p);
    // TCP from the same port is another mapping, parity kept.
    let t = out_br1(&e, "TCP", &tcp_h(10, 5000, A, 80));
    assert!(t.is_multiple_of(2) && (3000..=3015).contains(&t), "{t}");
    // Another guest from the same port gets another port, everywhere.
    let q = out_br1(&e, ".11 to A", &udp_h(11, 5000, A, 9));
    assert_ne!(q, p);
    assert_eq!(out_br1(&e, ".11 to B", &udp_h(11, 5000, B, 9)), q);
    // The mapping is in the map, both ways, with the guest's network.
    let all = maps::nat_mappings(&e.maps).expect("mappings");
    let m = all
        .iter()
        .find(|(k, _)| k.port == p.to_be() && k.proto == IPPROTO_UDP)
        .expect("the outside end");
    assert_eq!(m.0.kind, map_kind::OUTSIDE);
    assert_eq!(m.0.addr, be(NAT));
    assert_eq!((m.1.addr, m.1.port), (be(h(10)), 5000u16.to_be()));
    assert_eq!(m.1.bridge_ifindex, e.br1);
    // Address-port-dependent filtering (the default): B cannot send in
    // before .10 sent to it, and the replies of A's flow still come back.
    kept_out(
        &e,
        "C to the mapped port",
        &inbound(Ipv4Addr::new(203, 0, 113, 62), 9, p),
    );
    let r = from_router(Packet::udp(A, 9, NAT, p, b"pong"));
    e.rnat_ok("reply from A", &r, h(10), 5000, hmac(10), BR1_MAC);

    // A network with per-destination mapping must not take a mapped port:
    // br0's guest .30 asks for port p (its own) and gets another.
    let asks = from_guest(30, Packet::udp(g(30), p, A, 9, b"x"));
    let (rc, out) = e.in_br0(&asks);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_ne!(Frame(&out).ip().sport(), p, "took a mapped port");
    maps::ct_remove_where(&e.maps, |k, _| k.saddr == be(g(30)) || k.daddr == be(g(30)))
        .expect("cleanup");
}

#[test]
fn endpoint_independent_mapping_holds_ports_per_guest_end() {
    netd_tests::require_root!();
    let e = env();
    let _net = Br1Range::with_flags(&e, 3000, 3015, net_flags::EIM);
    // Servers of its own: a refusal is remembered per destination for a
    // second, and the other cases use A and B.
    let (a, b) = (
        Ipv4Addr::new(203, 0, 113, 70),
        Ipv4Addr::new(203, 0, 113, 71),
    );
    for n in 10..26u8 {
        out_br1(&e, "filling", &udp_h(n, 5000, a, 9));
    }
    // The 17th guest end is refused towards A and towards anyone else:
    // every port is some guest end's for every destination.
    for (what, dst) in [("to A", a), ("to B", b)] {
        let p = udp_h(26, 5000, dst, 9);
        let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &p.frame());
        assert_eq!(rc, TC_ACT_REDIRECT, "{what}");
        assert_frame(what, &out, &unreachable_h(&p, 26, 13).frame());
    }
    // The 16 keep theirs towards a new destination.
    let p = out_br1(&e, ".12 to B", &udp_h(12, 5000, b, 10));
    assert!((3000..=3015).contains(&p));
}

#[test]
fn endpoint_independent_filtering_lets_anyone_in() {
    netd_tests::require_root!();
    let e = env();
    let _net = Br1Range::with_flags(&e, 3000, 3015, net_flags::EIM | net_flags::EIF);
    let p = out_br1(&e, "to A", &udp_h(10, 5000, A, 9));
    // B never heard from the guest, and reaches it on the mapped port.
    let knock = inbound(B, 7777, p);
    let_in(&e, "B to the mapped port", &knock, 10, 5000);
    // The guest answers B from the same outside port.
    assert_eq!(out_br1(&e, "answer to B", &udp_h(10, 5000, B, 7777)), p);
    // A port nobody maps stays the host's.
    let free = (3000..=3015).find(|x| *x != p).unwrap();
    kept_out(&e, "an unmapped port", &inbound(B, 7777, free));
    let k = e
        .ct(&ct_key(B, 7777, NAT, p, IPPROTO_UDP))
        .expect("B's connection");
    assert_eq!((k.nat, k.dir), (nat_kind::DNAT, dir::ORIGINAL));

    // Hairpin (RFC 4787 REQ-9): guest .11 reaches .10 through its mapping;
    // the source becomes the gateway, as for forwards.
    let hp = udp_h(11, 6000, NAT, p);
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &hp.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "hairpin\n{}", hexdump(&out));
    // (6000 is outside br1's range: the gateway's port is searched for.)
    let sport = Frame(&out).ip().sport();
    assert!((3000..=3015).contains(&sport), "{sport}");
    let mut want = hp.clone().macs(hmac(10), BR1_MAC);
    want.src = GW1;
    want.dst = h(10);
    want.set_sport(sport);
    want.set_dport(5000);
    want.ttl -= 1;
    assert_frame("hairpin", &out, &want.frame());
    // .10's answer goes back to .11 from its mapped port.
    let back = udp_h(10, 5000, GW1, sport);
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &back.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "hairpin answer\n{}", hexdump(&out));
    let mut want = back.clone().macs(hmac(11), BR1_MAC);
    want.src = NAT;
    want.set_sport(p);
    want.dst = h(11);
    want.set_dport(6000);
    want.ttl -= 1;
    assert_frame("hairpin answer", &out, &want.frame());
}

#[test]
fn address_dependent_filtering_lets_in_hosts_sent_to() {
    netd_tests::require_root!();
    let e = env();
    let _net = Br1Range::with_flags(&e, 3000, 3015, net_flags::EIM | net_flags::ADF);
    let p = out_br1(&e, "to A", &udp_h(10, 5000, A, 9));
    // A from another of its ports: in. B: not.
    let_in(&e, "A from another port", &inbound(A, 4444, p), 10, 5000);
    kept_out(&e, "B", &inbound(B, 4444, p));
    // Once the guest sends to B, B may send in from any port.
    out_br1(&e, "to B", &udp_h(10, 5000, B, 9));
    let_in(&e, "B after", &inbound(B, 4445, p), 10, 5000);
}

// ---------------------------------------------------------------------------
// 4. MSS clamping (net_flags::CLAMP_MSS) for an uplink with a smaller MTU.

/// `frame` (Ethernet, IPv4 without options, TCP without options) with TCP
/// `opts` appended to the header: lengths, data offset and both checksums
/// recomputed from scratch.
fn with_tcp_options(frame: &[u8], opts: &[u8]) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let (eth_ip, rest) = frame.split_at(ETH_LEN + 20);
    let (tcp, payload) = rest.split_at(20);
    let mut seg = tcp.to_vec();
    seg[12] = (((20 + opts.len()) / 4) << 4) as u8;
    seg[16..18].copy_from_slice(&[0, 0]);
    seg.extend_from_slice(opts);
    seg.extend_from_slice(payload);
    let mut ip = eth_ip[ETH_LEN..].to_vec();
    let tot = (20 + seg.len()) as u16;
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let c = l4_checksum(src, dst, IPPROTO_TCP, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    let mut out = eth_ip[..ETH_LEN].to_vec();
    out.extend_from_slice(&ip);
    out.extend_from_slice(&seg);
    out
}

/// A SYN's options: NOP, window scale 7, MSS `mss`, SACK permitted, NOP, NOP.
fn syn_options(mss: u16) -> Vec<u8> {
    let m = mss.to_be_bytes();
    vec![1, 3, 3, 7, 2, 4, m[0], m[1], 4, 2, 1, 1]
}

/// Gives up0 an MTU for one case, 1500 again at the end (also by panic).
struct UplinkMtu<'a>(&'a Env);

impl<'a> UplinkMtu<'a> {
    fn set(e: &'a Env, mtu: u32) -> Self {
        let st = std::process::Command::new("ip")
            .args(["-n", &e.ns, "link", "set", "up0", "mtu", &mtu.to_string()])
            .status()
            .expect("ip");
        assert!(st.success(), "ip link set up0 mtu {mtu}");
        UplinkMtu(e)
    }
}

impl Drop for UplinkMtu<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["-n", &self.0.ns, "link", "set", "up0", "mtu", "1500"])
            .status();
    }
}

/// Sends a SYN with MSS `mss` from br1's guest `n` and returns the frame
/// as it left, after checking it against the masqueraded SYN carrying
/// MSS `want_mss`.
#[track_caller]
fn syn_leaves(e: &Env, n: u8, sport: u16, mss: u16, want_mss: u16) -> Vec<u8> {
    let p = tcp_h(n, sport, A, 443);
    let frame = with_tcp_options(&p.frame(), &syn_options(mss));
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT, "SYN: verdict\n{}", hexdump(&out));
    let port = Frame(&out).ip().sport();
    let want = with_tcp_options(&snat_of(&p, port).frame(), &syn_options(want_mss));
    assert_frame(&format!("SYN with MSS {mss}"), &out, &want);
    let ip = Frame(&out).ip();
    assert!(verify_ip(ip).is_empty(), "{:?}", verify_ip(ip));
    out
}

#[test]
fn mss_clamped_to_a_smaller_uplink_mtu() {
    netd_tests::require_root!();
    let e = env();
    let _mtu = UplinkMtu::set(&e, 1492);
    {
        let _net = Br1Range::with_flags(&e, 3000, 3015, net_flags::CLAMP_MSS);
        // 1460 (for a 1500 MTU) leaves as 1452: 1492 less 40.
        let out = syn_leaves(&e, 10, 5000, 1460, 1452);
        let opts = &out[ETH_LEN + 20 + 20..ETH_LEN + 20 + 32];
        assert_eq!(&opts[4..8], &[2, 4, 0x05, 0xac], "MSS option 1452");
        // Already small enough: untouched.
        syn_leaves(&e, 11, 5000, 1400, 1400);
        syn_leaves(&e, 12, 5000, 1452, 1452);
    }
    // Without nat.clamp_mss nothing is clamped.
    let _net = Br1Range::with_flags(&e, 3000, 3015, 0);
    syn_leaves(&e, 13, 5000, 1460, 1460);
}

// ---------------------------------------------------------------------------
// 5. Fair sharing: nat.max_flows_per_guest.

/// Sets br1's flow limit for one case; none again at the end.
struct FlowLimit<'a>(&'a Env);

impl<'a> FlowLimit<'a> {
    fn set(e: &'a Env, max: u32) -> Self {
        maps::set_nat_limits(&e.maps, e.br1, max, 0).expect("limits");
        FlowLimit(e)
    }
}

impl Drop for FlowLimit<'_> {
    fn drop(&mut self) {
        let _ = maps::set_nat_limits(&self.0.maps, self.0.br1, 0, 0);
        let _ = maps::recount_guest_flows(&self.0.maps);
    }
}

#[test]
fn guest_over_its_flow_quota_is_refused_and_others_are_not() {
    netd_tests::require_root!();
    let e = env();
    let _net = Br1Range::new(&e, 3000, 3099);
    let _limit = FlowLimit::set(&e, 3);
    let server = Ipv4Addr::new(203, 0, 113, 80);
    let mut first = 0;
    for i in 0..3u16 {
        let p = out_br1(&e, "within the quota", &udp_h(10, 5000 + i, server, 9));
        if i == 0 {
            first = p;
        }
    }
    assert_eq!(maps::guest_flows_of(&e.maps, h(10)).unwrap(), 3);
    // The fourth: refused with code 13, counted under its own reason.
    let over = udp_h(10, 5003, server, 9);
    let (quota, sent, exhausted) = (
        e.stat("drop_guest_quota"),
        e.stat("reject_sent"),
        e.stat("drop_ports_exhausted"),
    );
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &over.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "over quota\n{}", hexdump(&out));
    assert_frame("over quota", &out, &unreachable_h(&over, 10, 13).frame());
    assert_eq!(e.stat("drop_guest_quota") - quota, 1);
    assert_eq!(e.stat("reject_sent") - sent, 1);
    assert_eq!(
        e.stat("drop_ports_exhausted"),
        exhausted,
        "not a port shortage"
    );
    assert!(
        e.ct(&ct_key(h(10), 5003, server, 9, IPPROTO_UDP)).is_none(),
        "a refused flow left an entry"
    );
    // Its open flows go on; another guest is not affected.
    assert_eq!(
        out_br1(&e, "an open flow", &udp_h(10, 5000, server, 9)),
        first
    );
    for i in 0..3u16 {
        out_br1(&e, "another guest", &udp_h(11, 5000 + i, server, 9));
    }
    // A flow closes (GC removes it, and recounts): room for one more.
    maps::ct_remove_where(&e.maps, |k, _| {
        *k == ct_key(h(10), 5000, server, 9, IPPROTO_UDP)
    })
    .expect("close a flow");
    maps::recount_guest_flows(&e.maps).expect("recount");
    assert_eq!(maps::guest_flows_of(&e.maps, h(10)).unwrap(), 2);
    out_br1(&e, "after one closed", &over);
    let (rc, _) = e.run(
        Hook::BridgeIngress,
        e.br1,
        &udp_h(10, 5004, server, 9).frame(),
    );
    assert_eq!(rc, TC_ACT_REDIRECT, "full again: refused (answered)");
    assert_eq!(e.stat("drop_guest_quota") - quota, 2);
}

#[test]
fn guest_over_its_port_quota_is_refused_a_new_mapping() {
    netd_tests::require_root!();
    let e = env();
    let _net = Br1Range::with_flags(&e, 3000, 3099, net_flags::EIM);
    maps::set_nat_limits(&e.maps, e.br1, 0, 2).expect("limits");
    let _limit = FlowLimit(&e);
    let (s1, s2) = (
        Ipv4Addr::new(203, 0, 113, 81),
        Ipv4Addr::new(203, 0, 113, 82),
    );
    out_br1(&e, "first port", &udp_h(10, 5000, s1, 9));
    out_br1(&e, "second port", &udp_h(10, 5001, s1, 9));
    let u = maps::guest_usage(&e.maps, h(10)).unwrap();
    assert_eq!((u.flows, u.ports), (2, 2));
    // A third port: refused, answered with code 13.
    let quota = e.stat("drop_guest_quota");
    let third = udp_h(10, 5002, s1, 9);
    let (rc, out) = e.run(Hook::BridgeIngress, e.br1, &third.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "third port\n{}", hexdump(&out));
    assert_frame("third port", &out, &unreachable_h(&third, 10, 13).frame());
    assert_eq!(e.stat("drop_guest_quota") - quota, 1);
    // Its mapped ends reach new destinations: no new port.
    out_br1(&e, "a held port, elsewhere", &udp_h(10, 5000, s2, 9));
    assert_eq!(maps::guest_usage(&e.maps, h(10)).unwrap().ports, 2);
    // Another guest is not affected.
    out_br1(&e, "another guest", &udp_h(11, 5002, s1, 9));
    // The GC's recount sees the same.
    maps::recount_guest_flows(&e.maps).expect("recount");
    let u = maps::guest_usage(&e.maps, h(10)).unwrap();
    assert_eq!((u.flows, u.ports), (3, 2));
}

// ---------------------------------------------------------------------------
// 6. A network's own timeouts ([nat.timeouts]).

struct Timeouts<'a>(&'a Env);

impl Drop for Timeouts<'_> {
    fn drop(&mut self) {
        let _ = maps::set_nat_timeouts(&self.0.maps, self.0.br1, None);
    }
}

/// Seconds until the entry keyed `k` expires.
#[track_caller]
fn expires_in(e: &Env, k: &netd_common::CtKey) -> i64 {
    let entry = e.ct(k).expect("entry");
    (entry.expires_ns as i64 - maps::monotonic_ns() as i64) / 1_000_000_000
}

#[test]
fn a_networks_own_timeouts_apply_to_its_connections() {
    netd_tests::require_root!();
    let e = env();
    let _net = Br1Range::new(&e, 3000, 3099);
    let server = Ipv4Addr::new(203, 0, 113, 90);
    // Without its own: the global defaults (UDP 60 s).
    let p = out_br1(&e, "UDP, defaults", &udp_h(10, 5000, server, 9));
    let secs = expires_in(&e, &ct_key(h(10), 5000, server, 9, IPPROTO_UDP));
    assert!((58..=60).contains(&secs), "default UDP: {secs}");
    let _ = p;
    maps::set_nat_timeouts(
        &e.maps,
        e.br1,
        Some(netd_common::NatTimeouts {
            udp: 150,
            tcp_established: 7440,
            tcp_transitory: 240,
            flags: 0,
        }),
    )
    .expect("timeouts");
    let _t = Timeouts(&e);
    out_br1(&e, "UDP", &udp_h(11, 5000, server, 9));
    let k = ct_key(h(11), 5000, server, 9, IPPROTO_UDP);
    let secs = expires_in(&e, &k);
    assert!((148..=150).contains(&secs), "UDP: {secs}");
    // The reply entry carries the same, and a reply refreshes it.
    let port = u16::from_be(e.ct(&k).unwrap().xlate.sport);
    let r = from_router(Packet::udp(server, 9, NAT, port, b"pong"));
    e.rnat_ok("UDP reply", &r, h(11), 5000, hmac(11), BR1_MAC);
    let rk = ct_key(server, 9, NAT, port, IPPROTO_UDP);
    assert!((148..=150).contains(&expires_in(&e, &rk)));
    // TCP: 4 minutes half-open, 2 h 4 min once established.
    let syn = tcp_h(12, 6000, server, 443);
    let tport = out_br1(&e, "SYN", &syn);
    let tk = ct_key(h(12), 6000, server, 443, IPPROTO_TCP);
    let secs = expires_in(&e, &tk);
    assert!((238..=240).contains(&secs), "half-open: {secs}");
    let synack = from_router(Packet::tcp(server, 443, NAT, tport, TCP_SYN | TCP_ACK));
    e.rnat_ok("SYN-ACK", &synack, h(12), 6000, hmac(12), BR1_MAC);
    let secs = expires_in(&e, &tk);
    assert!((7438..=7440).contains(&secs), "established: {secs}");
    let fin = tcp_h(12, 6000, server, 443);
    let mut fin = fin;
    if let L4::Tcp { flags, .. } = &mut fin.l4 {
        *flags = TCP_FIN | TCP_ACK;
    }
    out_br1(&e, "FIN", &fin);
    let secs = expires_in(&e, &tk);
    assert!((238..=240).contains(&secs), "closing: {secs}");
    // The old flow keeps the timeouts it was opened with.
    let secs = expires_in(&e, &ct_key(h(10), 5000, server, 9, IPPROTO_UDP));
    assert!(secs <= 60, "opened before: {secs}");
}

/// Puts the global settings back at the end (also by panic).
struct Settings<'a>(&'a Env, netd_common::Settings);

impl Drop for Settings<'_> {
    fn drop(&mut self) {
        let _ = maps::set_settings(&self.0.maps, &self.1);
    }
}

#[test]
fn udp_refreshed_by_the_guests_packets_only() {
    netd_tests::require_root!();
    let e = env();
    let _net = Br1Range::new(&e, 3000, 3099);
    let saved = maps::settings(&e.maps).expect("settings");
    let _restore = Settings(&e, saved);
    // A 1 s UDP timeout keeps the case short.
    maps::set_settings(
        &e.maps,
        &netd_common::Settings {
            udp_timeout: 1,
            ..saved
        },
    )
    .expect("settings");
    maps::set_nat_timeouts(
        &e.maps,
        e.br1,
        Some(netd_common::NatTimeouts {
            flags: netd_common::timeout_flags::REFRESH_OUTBOUND,
            ..Default::default()
        }),
    )
    .expect("timeouts");
    let t = Timeouts(&e);
    let server = Ipv4Addr::new(203, 0, 113, 91);
    let ms = |n| std::thread::sleep(Duration::from_millis(n));
    let reply = |port| from_router(Packet::udp(server, 9, NAT, port, b"pong"));

    // The guest keeps talking: the reply half, never refreshed by replies,
    // lives on with the guest's half.
    let p = out_br1(&e, "out", &udp_h(10, 5000, server, 9));
    e.rnat_ok("first reply", &reply(p), h(10), 5000, hmac(10), BR1_MAC);
    ms(600);
    out_br1(&e, "out again", &udp_h(10, 5000, server, 9));
    ms(600);
    e.rnat_ok(
        "reply after 1.2 s",
        &reply(p),
        h(10),
        5000,
        hmac(10),
        BR1_MAC,
    );

    // Only the peer talks: its replies do not keep the flow.
    let q = out_br1(&e, "out once", &udp_h(11, 5000, server, 9));
    ms(300);
    e.rnat_ok("reply at 0.3 s", &reply(q), h(11), 5000, hmac(11), BR1_MAC);
    ms(1000);
    let late = reply(q);
    let (rc, out) = e.in_up0(&late);
    assert_eq!(rc, TC_ACT_OK, "reply at 1.3 s: verdict\n{}", hexdump(&out));
    assert_eq!(out, late.frame(), "reply at 1.3 s: translated");

    // nat.refresh = "both": replies keep it.
    drop(t);
    let r = out_br1(&e, "out once (both)", &udp_h(12, 5000, server, 9));
    for i in 1..=4 {
        ms(300);
        e.rnat_ok(
            &format!("reply {i} (both)"),
            &reply(r),
            h(12),
            5000,
            hmac(12),
            BR1_MAC,
        );
    }
}

// ---------------------------------------------------------------------------
// 7. NAT66: a full range answered with ICMPv6 1/1.

#[test]
fn nat66_full_range_answers_icmpv6_admin_prohibited() {
    netd_tests::require_root!();
    let e = env_modes();
    let br4 = e.modes().br4;
    let nets = maps::list_networks(&e.maps).expect("networks");
    let (_, saved) = *nets.iter().find(|(b, _)| *b == br4).expect("br4");
    struct Restore<'a>(&'a Env, u32, NetConfig);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = maps::add_network(&self.0.maps, self.1, &self.2, None);
        }
    }
    let _restore = Restore(&e, br4, saved);
    let one = NetConfig {
        port_min: 3000,
        port_max: 3000,
        ..saved
    };
    maps::add_network(&e.maps, br4, &one, None).expect("narrow br4");
    let from =
        |n: u8, sport: u16| Packet6::udp(m6(n), sport, REMOTE6, 9, b"six").macs(BR4_MAC, mmac(n));
    let first = from(10, 5000);
    let (rc, out) = e.run(Hook::BridgeIngress, br4, &first.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "first\n{}", hexdump(&out));
    assert_eq!(Frame(&out).ip6().sport(), 3000);
    let refused = from(11, 5000);
    let (exhausted, sent) = (e.stat("drop_ports_exhausted"), e.stat("reject_sent"));
    let (rc, out) = e.run(Hook::BridgeIngress, br4, &refused.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "second\n{}", hexdump(&out));
    let mut want = Packet6::icmp(
        GW4_6,
        m6(11),
        ICMPV6_DEST_UNREACH,
        1,
        [0; 4],
        &refused.ip_bytes()[..48],
    )
    .macs(mmac(11), BR4_MAC);
    want.flow_label = 0;
    assert_frame("ICMPv6 1/1", &out, &want.frame());
    let ip = Frame(&out).ip6();
    assert_eq!((ip.icmp_type(), ip.hop_limit()), (ICMPV6_DEST_UNREACH, 64));
    assert!(verify_ip6(ip).is_empty(), "{:?}", verify_ip6(ip));
    assert_eq!(e.stat("drop_ports_exhausted") - exhausted, 1);
    assert_eq!(e.stat("reject_sent") - sent, 1);
}

// ---------------------------------------------------------------------------
// Cost of a new flow (printed; run with --ignored --nocapture).

/// Mean kernel time per new flow over `n` new flows from guest .11 of br1
/// to `server`, each from a port the guest-port preference cannot have
/// (taken by .10), so each one searches.
fn time_new_flows(e: &Env, server: Ipv4Addr, n: u16, sport0: u16) -> (Duration, u64) {
    let refused = e.stat("drop_ports_exhausted");
    let mut total = Duration::ZERO;
    for i in 0..n {
        let p = udp_h(11, sport0 + i, server, 9);
        let (rc, _, d) =
            e.dp.test_run_repeat(Hook::BridgeIngress, e.br1, &p.frame(), 1)
                .expect("test run");
        assert_eq!(rc, TC_ACT_REDIRECT);
        total += d;
    }
    (
        total / u32::from(n),
        e.stat("drop_ports_exhausted") - refused,
    )
}

/// Occupies `count` ports of br1's range towards `server` (from guest .10
/// keeping its own ports 1024.., so the taken ports form one block: the
/// hard case for a search that steps by one).
fn occupy(e: &Env, server: Ipv4Addr, count: u32) {
    for i in 0..count {
        let p = udp_h(10, 1024 + i as u16, server, 9);
        let (rc, _) = e.run(Hook::BridgeIngress, e.br1, &p.frame());
        assert_eq!(rc, TC_ACT_REDIRECT, "filling: flow {i}");
    }
}

#[test]
#[ignore = "benchmark: prints ns per new flow"]
fn bench_new_flow_cost() {
    netd_tests::require_root!();
    let e = env();
    let size = 65535 - 1024 + 1;
    let samples = 500u16;
    for (mode, flags, servers) in [
        ("per-destination mapping", 0, [50u8, 51, 52]),
        ("endpoint-independent mapping", net_flags::EIM, [54, 55, 56]),
    ] {
        let _range = Br1Range::with_flags(&e, 1024, 65535, flags);
        for (pct, server) in [0u32, 50, 90].into_iter().zip(servers) {
            let server = Ipv4Addr::new(203, 0, 113, server);
            let taken = size * pct / 100;
            occupy(&e, server, taken);
            // At 0% the guest's own port is free: the common case, one try.
            let sport0 = if pct == 0 { 20000 } else { 1024 };
            let (t, refused) = time_new_flows(&e, server, samples, sport0);
            assert_eq!(refused, 0);
            println!(
                "netd bench: nat new flow, {mode}, at {pct}% port occupancy ({taken} of {size} taken, one block): {} ns/flow",
                t.as_nanos()
            );
            forget_br1(&e);
        }
    }
    let _range = Br1Range::new(&e, 1024, 65535);
    // The worst case: a range full towards one server walks every port.
    let server = Ipv4Addr::new(203, 0, 113, 53);
    occupy(&e, server, size);
    let p = udp_h(11, 1024, server, 9);
    let (rc, _, d) =
        e.dp.test_run_repeat(Hook::BridgeIngress, e.br1, &p.frame(), 1)
            .expect("test run");
    assert!(rc == TC_ACT_REDIRECT || rc == TC_ACT_SHOT);
    println!(
        "netd bench: nat new flow refused on a full range ({size} ports walked): {} ns",
        d.as_nanos()
    );
    let p = udp_h(12, 1024, server, 9);
    let (_, _, d) =
        e.dp.test_run_repeat(Hook::BridgeIngress, e.br1, &p.frame(), 1)
            .expect("test run");
    println!(
        "netd bench: nat new flow refused again within the second (noted full): {} ns",
        d.as_nanos()
    );
}
