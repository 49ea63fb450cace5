//! Every network mode, and IPv6, on crafted packets through
//! BPF_PROG_TEST_RUN: IPv6 routed in BPF (route mode, and NAT without
//! NAT66), link-scope and multicast left to the kernel, spoofed sources
//! dropped; NAT66 for TCP, UDP and ICMPv6 echo, out and back; IPv4 in route
//! mode; and the ICMP port-unreachable an isolated network's guest gets for
//! a refused flow.
//!
//! The fixture is `netd_tests::bpf_fixture` with [`env_modes`]: the
//! shared namespace and dataplane of this test binary, plus a routed
//! (br2), an isolated (br3) and a NAT66 (br4) network, IPv6 on br0 and on
//! the uplink. Cases run one at a time under its mutex, each with its own
//! guests and ports, and check the verdict, the output bytes, every
//! checksum (recomputed from scratch by `netd_tests::packet`, with the IPv6
//! pseudo-header) and the reason counters.
//!
//! ```text
//!  netns ndbpf<pid>
//!   br0 192.168.122.1/24 2001:db8:122::1/64     NAT (IPv6 routed)
//!   br2 192.168.124.1/24 2001:db8:124::1/64     ROUTE
//!   br3 192.168.125.1/24 2001:db8:125::1/64     ISOLATED
//!   br4 192.168.126.1/24 fd00:126::1/64         NAT + NAT66
//!   up0 198.51.100.2/24 2001:db8:100::2/64, default via .1 / ::1
//! ```

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use netd::dataplane::{Hook, maps};
use netd_tests::bpf_fixture::*;
use netd_tests::packet::*;

// ---------------------------------------------------------------------------
// Helpers.

fn on_bridge(e: &Env, br: u32, p: &Packet6) -> (u32, Vec<u8>) {
    e.run(Hook::BridgeIngress, br, &p.frame())
}

fn tcp6_with(mut p: Packet6, seq: u32, ack: u32, payload: &[u8]) -> Packet6 {
    if let L4::Tcp {
        seq: s,
        ack: a,
        payload: pl,
        ..
    } = &mut p.l4
    {
        *s = seq;
        *a = ack;
        *pl = payload.to_vec();
    }
    p
}

/// Runs `p` from a guest of `br` and checks it is redirected towards the
/// router with nothing changed but the MACs and the hop limit.
#[track_caller]
fn routed_out(e: &Env, what: &str, br: u32, p: &Packet6) -> Packet6 {
    let before = e.stat("redirect");
    let (rc, out) = on_bridge(e, br, p);
    assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
    let mut want = p.clone().macs(ROUTER_MAC, UP0_MAC);
    want.hop_limit -= 1;
    assert_frame(what, &out, &want.frame());
    assert_eq!(e.stat("redirect") - before, 1, "{what}: redirect count");
    want
}

/// Runs `p` in at up0 and checks it is redirected to guest `mac` behind
/// `bridge_mac`, nothing changed but the MACs and the hop limit.
#[track_caller]
fn routed_in(e: &Env, what: &str, p: &Packet6, mac: Mac, bridge_mac: Mac) -> Packet6 {
    let (rc, out) = e.run(Hook::UplinkIngress, e.up0, &p.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
    let mut want = p.clone().macs(mac, bridge_mac);
    want.hop_limit -= 1;
    assert_frame(what, &out, &want.frame());
    want
}

/// Checks `frame` is handed to the kernel (TC_ACT_OK) unchanged, counted
/// under `reason`.
#[track_caller]
fn passes(e: &Env, what: &str, hook: Hook, ifindex: u32, frame: &[u8], reason: &str) {
    let before = e.stat(reason);
    let (rc, out) = e.run(hook, ifindex, frame);
    assert_eq!(rc, TC_ACT_OK, "{what}: verdict\n{}", hexdump(&out));
    assert_eq!(out, frame, "{what}: a passed packet was changed");
    assert_eq!(e.stat(reason) - before, 1, "{what}: {reason} not counted");
}

fn from_router6(p: Packet6) -> Packet6 {
    p.macs(UP0_MAC, ROUTER_MAC)
}

/// Guest `n` of the NAT66 network br4.
fn from_m6(n: u8, mut p: Packet6) -> Packet6 {
    p.src = m6(n);
    p.macs(BR4_MAC, mmac(n))
}

/// `p` from a NAT66 guest as it should leave: source NAT6:`port` (the echo
/// id for ICMPv6), hop limit one lower, towards the router.
fn snat6_of(p: &Packet6, port: u16) -> Packet6 {
    let mut w = p.clone().macs(ROUTER_MAC, UP0_MAC);
    w.src = NAT6;
    w.hop_limit -= 1;
    match w.l4 {
        L4::Icmp { .. } => w.set_echo_id(port),
        _ => w.set_sport(port),
    }
    w
}

/// Runs `p` from a guest of br4 and checks it leaves masqueraded from
/// NAT6:`port`.
#[track_caller]
fn masq_ok(e: &Env, what: &str, p: &Packet6, port: u16) -> Packet6 {
    let before = e.stat("snat");
    let (rc, out) = on_bridge(e, e.modes().br4, p);
    assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
    let want = snat6_of(p, port);
    assert_frame(what, &out, &want.frame());
    assert_eq!(e.stat("snat") - before, 1, "{what}: snat count");
    want
}

/// Runs the reply `p` in at up0 and checks it is translated back to
/// guest `n` of br4, `port` (the echo id for ICMPv6).
#[track_caller]
fn unmasq_ok(e: &Env, what: &str, p: &Packet6, n: u8, port: u16) -> Packet6 {
    let before = e.stat("reverse_nat");
    let (rc, out) = e.run(Hook::UplinkIngress, e.up0, &p.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
    let mut want = p.clone().macs(mmac(n), BR4_MAC);
    want.dst = m6(n);
    want.hop_limit -= 1;
    match want.l4 {
        L4::Icmp { .. } => want.set_echo_id(port),
        _ => want.set_dport(port),
    }
    assert_frame(what, &out, &want.frame());
    assert_eq!(
        e.stat("reverse_nat") - before,
        1,
        "{what}: reverse_nat count"
    );
    want
}

// ---------------------------------------------------------------------------
// 1. IPv6 routed in BPF.

#[test]
fn ipv6_routed_from_route_network() {
    netd_tests::require_root!();
    let e = env_modes();
    let br2 = e.modes().br2;
    let from = |n: u8, p: Packet6| p.macs(BR2_MAC, rmac(n));

    let syn = from(10, Packet6::tcp(r6(10), 40010, REMOTE6, 443, TCP_SYN));
    routed_out(&e, "TCP SYN", br2, &syn);
    let data = from(
        10,
        tcp6_with(
            Packet6::tcp(r6(10), 40010, REMOTE6, 443, TCP_ACK | TCP_PSH),
            0x1000_0001,
            0x7000_0001,
            b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
        ),
    );
    let mut data = data;
    data.traffic_class = 0x28;
    data.hop_limit = 2;
    routed_out(&e, "TCP data, hop limit 2", br2, &data);
    let udp = from(11, Packet6::udp(r6(11), 5353, REMOTE6, 53, b"query"));
    routed_out(&e, "UDP", br2, &udp);
    let ping = from(
        12,
        Packet6::icmp_echo(r6(12), REMOTE6, true, 0x77, 1, b"ping"),
    );
    routed_out(&e, "echo request", br2, &ping);

    // Replies, and anything else for the routed prefix, come straight in.
    let synack = from_router6(tcp6_with(
        Packet6::tcp(REMOTE6, 443, r6(10), 40010, TCP_SYN | TCP_ACK),
        0x7000_0000,
        0x1000_0001,
        b"",
    ));
    let before = e.stat("redirect");
    routed_in(
        &e,
        "SYN-ACK to the routed guest",
        &synack,
        rmac(10),
        BR2_MAC,
    );
    assert_eq!(e.stat("redirect") - before, 1);
    let unsolicited = from_router6(Packet6::udp(REMOTE6, 53, r6(13), 7777, b"hello"));
    routed_in(&e, "unsolicited UDP in", &unsolicited, rmac(13), BR2_MAC);

    // Left to the kernel: expiring (it sends the time-exceeded), for the
    // gateway itself, for an on-link neighbour.
    let mut last = syn.clone();
    last.hop_limit = 1;
    passes(
        &e,
        "hop limit 1",
        Hook::BridgeIngress,
        br2,
        &last.frame(),
        "pass",
    );
    let gw = from(10, Packet6::tcp(r6(10), 40011, GW2_6, 22, TCP_SYN));
    passes(
        &e,
        "to the gateway",
        Hook::BridgeIngress,
        br2,
        &gw.frame(),
        "pass",
    );
    let nb = from(10, Packet6::udp(r6(10), 40012, r6(11), 9, b"x"));
    passes(
        &e,
        "to a neighbour",
        Hook::BridgeIngress,
        br2,
        &nb.frame(),
        "pass",
    );
    let mut last_in = unsolicited.clone();
    last_in.hop_limit = 1;
    passes(
        &e,
        "hop limit 1 in",
        Hook::UplinkIngress,
        e.up0,
        &last_in.frame(),
        "slow_path",
    );
}

#[test]
fn ipv6_routed_from_nat_network_without_nat66() {
    netd_tests::require_root!();
    let e = env_modes();
    let syn = Packet6::tcp(g6(20), 40020, REMOTE6, 80, TCP_SYN).macs(BR0_MAC, gmac(20));
    let out = routed_out(&e, "SYN from br0, source kept", e.br0, &syn);
    assert_eq!(Frame(&out.frame()).ip6().src(), g6(20));
    let ping = Packet6::icmp_echo(g6(21), REMOTE6, true, 0x99, 3, b"p").macs(BR0_MAC, gmac(21));
    routed_out(&e, "echo from br0", e.br0, &ping);
    let synack = from_router6(Packet6::tcp(REMOTE6, 80, g6(20), 40020, TCP_SYN | TCP_ACK));
    routed_in(&e, "SYN-ACK to br0", &synack, gmac(20), BR0_MAC);
}

#[test]
fn ipv6_link_scope_and_multicast_pass() {
    netd_tests::require_root!();
    let e = env_modes();
    let m = e.modes();
    let ll: Ipv6Addr = "fe80::5054:ff:fe00:20a".parse().unwrap();
    let ll_router: Ipv6Addr = "fe80::1".parse().unwrap();
    let all_routers: Ipv6Addr = "ff02::2".parse().unwrap();
    let solicited: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    let mdns: Ipv6Addr = "ff02::fb".parse().unwrap();
    let global_mc: Ipv6Addr = "ff0e::1234".parse().unwrap();
    let mut rs = Packet6::icmp(ll, all_routers, ICMPV6_ROUTER_SOLICIT, 0, [0; 4], b"");
    rs.hop_limit = 255;
    let mut ns = Packet6::icmp(
        r6(10),
        solicited,
        ICMPV6_NEIGHBOUR_SOLICIT,
        0,
        [0; 4],
        &GW2_6.octets(),
    );
    ns.hop_limit = 255;
    let mut dad = ns.clone();
    dad.src = Ipv6Addr::UNSPECIFIED;
    let cases = [
        ("router solicitation", rs),
        ("neighbour solicitation", ns),
        ("DAD probe from ::", dad),
        (
            "TCP to a link-local address",
            Packet6::tcp(r6(10), 40030, ll_router, 22, TCP_SYN),
        ),
        (
            "TCP from a link-local address",
            Packet6::tcp(ll, 40031, REMOTE6, 22, TCP_SYN),
        ),
        ("mDNS", Packet6::udp(r6(10), 5353, mdns, 5353, b"q")),
        (
            "global-scope multicast",
            Packet6::udp(r6(10), 5000, global_mc, 5000, b"m"),
        ),
    ];
    for (br, mac, bmac, name) in [
        (m.br2, rmac(10), BR2_MAC, "route"),
        (m.br3, imac(10), BR3_MAC, "isolated"),
        (m.br4, mmac(10), BR4_MAC, "NAT66"),
        (e.br0, gmac(10), BR0_MAC, "NAT"),
    ] {
        for (what, p) in &cases {
            let f = p.clone().macs(bmac, mac).frame();
            passes(
                &e,
                &format!("{name}: {what}"),
                Hook::BridgeIngress,
                br,
                &f,
                "pass",
            );
        }
    }
}

#[test]
fn ipv6_spoofed_sources_dropped() {
    netd_tests::require_root!();
    let e = env_modes();
    let m = e.modes();
    let outside: Ipv6Addr = "2001:db8:999::10".parse().unwrap();
    for (br, bmac, src, what) in [
        (m.br2, BR2_MAC, outside, "route: a foreign prefix"),
        (m.br2, BR2_MAC, g6(10), "route: another network's prefix"),
        (m.br4, BR4_MAC, r6(10), "NAT66: the routed network's prefix"),
        (m.br4, BR4_MAC, outside, "NAT66: a foreign prefix"),
        (e.br0, BR0_MAC, m6(10), "NAT: the NAT66 network's prefix"),
        (m.br3, BR3_MAC, outside, "isolated: a foreign prefix"),
    ] {
        let p = Packet6::tcp(src, 40040, REMOTE6, 80, TCP_SYN).macs(bmac, [0x52, 0x54, 0, 9, 9, 9]);
        e.dropped(what, Hook::BridgeIngress, br, &p.frame(), "drop_spoofed");
        let u = Packet6::udp(src, 40041, REMOTE6, 53, b"x").macs(bmac, [0x52, 0x54, 0, 9, 9, 9]);
        e.dropped(what, Hook::BridgeIngress, br, &u.frame(), "drop_spoofed");
    }
}

#[test]
fn ipv6_malformed_dropped() {
    netd_tests::require_root!();
    let e = env_modes();
    let br2 = e.modes().br2;
    let whole = Packet6::udp(r6(10), 40060, REMOTE6, 53, b"x")
        .macs(BR2_MAC, rmac(10))
        .frame();
    // IPv6 by its ethertype, IPv4 by its version.
    let mut v4 = whole.clone();
    v4[ETH_LEN] = 0x45;
    e.dropped(
        "version 4 under ETH_P_IPV6",
        Hook::BridgeIngress,
        br2,
        &v4,
        "drop_malformed",
    );
}

#[test]
fn ipv6_errors_reach_routed_guests() {
    netd_tests::require_root!();
    let e = env_modes();
    // A router on the path reports the MTU to a routed guest's flow: it
    // must arrive, or path MTU discovery (IPv6 routers never fragment)
    // breaks.
    let big = Packet6::tcp(r6(14), 40070, REMOTE6, 443, TCP_ACK).macs(BR2_MAC, rmac(14));
    let quoted = big.ip_bytes();
    let mut ptb = Packet6::icmp(
        ROUTER6,
        r6(14),
        ICMPV6_PACKET_TOO_BIG,
        0,
        1280u32.to_be_bytes(),
        &quoted,
    );
    ptb.hop_limit = 255;
    routed_in(
        &e,
        "packet too big to a routed guest",
        &from_router6(ptb),
        rmac(14),
        BR2_MAC,
    );
    let mut unreach = Packet6::icmp(REMOTE6, r6(14), ICMPV6_DEST_UNREACH, 4, [0; 4], &quoted);
    unreach.hop_limit = 50;
    routed_in(
        &e,
        "port unreachable to a routed guest",
        &from_router6(unreach),
        rmac(14),
        BR2_MAC,
    );
    // And a guest's own errors leave as they are.
    let mut te = Packet6::icmp(r6(14), REMOTE6, ICMPV6_TIME_EXCEEDED, 0, [0; 4], &quoted);
    te.hop_limit = 64;
    routed_out(
        &e,
        "time exceeded from a routed guest",
        e.modes().br2,
        &te.macs(BR2_MAC, rmac(14)),
    );
}

#[test]
fn ipv6_policy_isolated_and_between_networks() {
    netd_tests::require_root!();
    let e = env_modes();
    let m = e.modes();
    // Isolated: the host and the other guests only, both ways.
    let out = Packet6::tcp(i6(10), 40050, REMOTE6, 80, TCP_SYN).macs(BR3_MAC, imac(10));
    e.dropped(
        "isolated to the world",
        Hook::BridgeIngress,
        m.br3,
        &out.frame(),
        "drop_policy",
    );
    let gw = Packet6::udp(i6(10), 40051, GW3_6, 53, b"dns").macs(BR3_MAC, imac(10));
    passes(
        &e,
        "isolated to its gateway",
        Hook::BridgeIngress,
        m.br3,
        &gw.frame(),
        "pass",
    );
    let inbound = from_router6(Packet6::tcp(REMOTE6, 80, i6(10), 40050, TCP_SYN));
    e.dropped(
        "world to isolated",
        Hook::UplinkIngress,
        e.up0,
        &inbound.frame(),
        "drop_policy",
    );
    // NAT66 guests take no unsolicited traffic.
    let inbound = from_router6(Packet6::tcp(REMOTE6, 80, m6(30), 40050, TCP_SYN));
    e.dropped(
        "world to a NAT66 guest",
        Hook::UplinkIngress,
        e.up0,
        &inbound.frame(),
        "drop_policy",
    );
    // Only routed and open networks talk to each other.
    let across = Packet6::tcp(r6(10), 40052, g6(10), 22, TCP_SYN).macs(BR2_MAC, rmac(10));
    e.dropped(
        "routed to a NAT network's guest",
        Hook::BridgeIngress,
        m.br2,
        &across.frame(),
        "drop_policy",
    );
    let across = Packet6::tcp(i6(10), 40053, r6(10), 22, TCP_SYN).macs(BR3_MAC, imac(10));
    e.dropped(
        "isolated to a routed guest",
        Hook::BridgeIngress,
        m.br3,
        &across.frame(),
        "drop_policy",
    );
    // The rest is the host's: its own address, prefixes netd does not own.
    let host = from_router6(Packet6::tcp(REMOTE6, 40054, NAT6, 22, TCP_SYN));
    let (rc, o) = e.run(Hook::UplinkIngress, e.up0, &host.frame());
    assert_eq!((rc, o), (TC_ACT_OK, host.frame()), "to the host");
    let other: Ipv6Addr = "2001:db8:999::1".parse().unwrap();
    let elsewhere = from_router6(Packet6::tcp(REMOTE6, 40055, other, 22, TCP_SYN));
    let (rc, o) = e.run(Hook::UplinkIngress, e.up0, &elsewhere.frame());
    assert_eq!(
        (rc, o),
        (TC_ACT_OK, elsewhere.frame()),
        "to a prefix nobody owns"
    );
}

// ---------------------------------------------------------------------------
// 2. NAT66.

#[test]
fn nat66_tcp_out_and_back() {
    netd_tests::require_root!();
    let e = env_modes();
    let ct_new = e.stat("ct_new");
    let syn = from_m6(10, Packet6::tcp(m6(10), 40100, REMOTE6, 80, TCP_SYN));
    masq_ok(&e, "SYN", &syn, 40100);
    assert_eq!(e.stat("ct_new") - ct_new, 1);

    let synack = from_router6(tcp6_with(
        Packet6::tcp(REMOTE6, 80, NAT6, 40100, TCP_SYN | TCP_ACK),
        0x7000_0000,
        0x1000_0001,
        b"",
    ));
    unmasq_ok(&e, "SYN-ACK", &synack, 10, 40100);

    let data = from_m6(
        10,
        tcp6_with(
            Packet6::tcp(m6(10), 40100, REMOTE6, 80, TCP_ACK | TCP_PSH),
            0x1000_0001,
            0x7000_0001,
            b"GET / HTTP/1.1\r\n\r\n",
        ),
    );
    masq_ok(&e, "data", &data, 40100);
    let answer = from_router6(tcp6_with(
        Packet6::tcp(REMOTE6, 80, NAT6, 40100, TCP_ACK | TCP_PSH | TCP_FIN),
        0x7000_0001,
        0x1000_0013,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ));
    unmasq_ok(&e, "answer", &answer, 10, 40100);
    assert_eq!(
        e.stat("ct_new") - ct_new,
        1,
        "one connection, not one per packet"
    );

    // A reply for a port nobody masqueraded is not translated.
    let stray = from_router6(Packet6::tcp(REMOTE6, 80, NAT6, 40101, TCP_ACK));
    let (rc, o) = e.run(Hook::UplinkIngress, e.up0, &stray.frame());
    assert_eq!((rc, o), (TC_ACT_OK, stray.frame()), "stray reply");
}

#[test]
fn nat66_udp_out_and_back_port_taken() {
    netd_tests::require_root!();
    let e = env_modes();
    let q12 = from_m6(12, Packet6::udp(m6(12), 5000, REMOTE6, 53, b"query 12"));
    masq_ok(&e, "UDP .12", &q12, 5000);
    // Same source port to the same peer from another guest: another port.
    let q13 = from_m6(13, Packet6::udp(m6(13), 5000, REMOTE6, 53, b"query 13"));
    let (rc, out) = on_bridge(&e, e.modes().br4, &q13);
    assert_eq!(rc, TC_ACT_REDIRECT, "UDP .13: verdict\n{}", hexdump(&out));
    let port = Frame(&out).ip6().sport();
    assert_ne!(port, 5000, "second guest got the taken port");
    assert!(port >= 1024, "port {port} outside the range");
    assert_frame("UDP .13", &out, &snat6_of(&q13, port).frame());

    let a13 = from_router6(Packet6::udp(REMOTE6, 53, NAT6, port, b"answer 13"));
    unmasq_ok(&e, "UDP back to .13", &a13, 13, 5000);
    let a12 = from_router6(Packet6::udp(REMOTE6, 53, NAT6, 5000, b"answer 12"));
    unmasq_ok(&e, "UDP back to .12", &a12, 12, 5000);
}

#[test]
fn nat66_port_below_the_range_is_moved_into_it() {
    netd_tests::require_root!();
    let e = env_modes();
    let ntp = from_m6(18, Packet6::udp(m6(18), 123, REMOTE6, 123, b"ntp request"));
    let (rc, out) = on_bridge(&e, e.modes().br4, &ntp);
    assert_eq!(rc, TC_ACT_REDIRECT, "NTP: verdict\n{}", hexdump(&out));
    let port = Frame(&out).ip6().sport();
    assert!(port >= 1024, "port {port} outside 1024-65535");
    assert_frame("NTP out", &out, &snat6_of(&ntp, port).frame());
    let answer = from_router6(Packet6::udp(REMOTE6, 123, NAT6, port, b"ntp answer"));
    unmasq_ok(&e, "NTP back", &answer, 18, 123);
}

#[test]
fn nat66_icmpv6_echo_out_and_back() {
    netd_tests::require_root!();
    let e = env_modes();
    let id = 0x3333;
    let p14 = from_m6(
        14,
        Packet6::icmp_echo(m6(14), REMOTE6, true, id, 1, b"ping payload 14"),
    );
    masq_ok(&e, "echo .14", &p14, id);
    let p15 = from_m6(
        15,
        Packet6::icmp_echo(m6(15), REMOTE6, true, id, 9, b"ping payload 15"),
    );
    let (rc, out) = on_bridge(&e, e.modes().br4, &p15);
    assert_eq!(rc, TC_ACT_REDIRECT, "echo .15: verdict\n{}", hexdump(&out));
    let nat_id = Frame(&out).ip6().echo_id();
    assert_ne!(nat_id, id, "second guest got the taken echo id");
    assert_frame("echo .15", &out, &snat6_of(&p15, nat_id).frame());

    let r15 = from_router6(Packet6::icmp_echo(
        REMOTE6,
        NAT6,
        false,
        nat_id,
        9,
        b"ping payload 15",
    ));
    unmasq_ok(&e, "echo reply .15", &r15, 15, id);
    let r14 = from_router6(Packet6::icmp_echo(
        REMOTE6,
        NAT6,
        false,
        id,
        1,
        b"ping payload 14",
    ));
    unmasq_ok(&e, "echo reply .14", &r14, 14, id);
}

/// A UDP payload (`tail` after one adjusting word) whose checksum between
/// these endpoints computes to zero, so it must be sent as 0xffff.
fn payload_for_zero_csum6(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    tail: &[u8],
) -> Vec<u8> {
    let mut payload = vec![0, 0];
    payload.extend_from_slice(tail);
    let mut p = Packet6::udp(src, sport, dst, dport, &payload);
    if let L4::Udp { csum, .. } = &mut p.l4 {
        *csum = false;
    }
    let sum = !checksum(&with_pseudo_header6(src, dst, IPPROTO_UDP, &p.l4_bytes()));
    payload[..2].copy_from_slice(&(0xffff - sum).to_be_bytes());
    payload
}

#[test]
fn nat66_udp_checksum_computing_to_zero_is_sent_as_ffff() {
    netd_tests::require_root!();
    let e = env_modes();
    let payload = payload_for_zero_csum6(NAT6, 33601, REMOTE6, 53, b"zero outside");
    let out = from_m6(16, Packet6::udp(m6(16), 33601, REMOTE6, 53, &payload));
    assert_ne!(Frame(&out.frame()).ip6().l4_csum(), 0xffff);
    let sent = masq_ok(&e, "zero outside", &out, 33601);
    assert_eq!(Frame(&sent.frame()).ip6().l4_csum(), 0xffff);
    let payload = payload_for_zero_csum6(REMOTE6, 53, m6(16), 33601, b"zero inside");
    let back = from_router6(Packet6::udp(REMOTE6, 53, NAT6, 33601, &payload));
    let got = unmasq_ok(&e, "zero inside", &back, 16, 33601);
    assert_eq!(Frame(&got.frame()).ip6().l4_csum(), 0xffff);
}

/// Puts the uplink's addresses back when a test that changed them ends,
/// also by panic.
struct RestoreUplink<'a>(&'a Env);

impl Drop for RestoreUplink<'_> {
    fn drop(&mut self) {
        let _ = maps::set_uplink(&self.0.maps, self.0.up0, Some(NAT), Some(NAT6));
    }
}

#[test]
fn nat66_without_uplink_address_drops_new_flows() {
    netd_tests::require_root!();
    let e = env_modes();
    let q = from_m6(17, Packet6::udp(m6(17), 6000, REMOTE6, 53, b"kept"));
    masq_ok(&e, "before", &q, 6000);
    {
        let _restore = RestoreUplink(&e);
        maps::set_uplink(&e.maps, e.up0, Some(NAT), None).expect("set_uplink");
        let n = from_m6(17, Packet6::udp(m6(17), 6001, REMOTE6, 53, b"new"));
        e.dropped(
            "new flow, no IPv6 on the uplink",
            Hook::BridgeIngress,
            e.modes().br4,
            &n.frame(),
            "drop_no_uplink_addr",
        );
        // A known connection keeps its translation.
        masq_ok(&e, "known flow, no IPv6 on the uplink", &q, 6000);
    }
    let n = from_m6(17, Packet6::udp(m6(17), 6001, REMOTE6, 53, b"new"));
    masq_ok(&e, "address back", &n, 6001);
}

// ---------------------------------------------------------------------------
// IPv4 in route mode: forwarded as it is.

#[test]
fn ipv4_routed_from_route_network() {
    netd_tests::require_root!();
    let e = env_modes();
    let br2 = e.modes().br2;
    let syn = Packet::tcp(r4(10), 40200, REMOTE, 443, TCP_SYN).macs(BR2_MAC, rmac(10));
    let (rc, out) = e.run(Hook::BridgeIngress, br2, &syn.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "SYN: verdict\n{}", hexdump(&out));
    let mut want = syn.clone().macs(ROUTER_MAC, UP0_MAC);
    want.ttl -= 1;
    assert_frame("SYN routed, source kept", &out, &want.frame());

    let synack =
        Packet::tcp(REMOTE, 443, r4(10), 40200, TCP_SYN | TCP_ACK).macs(UP0_MAC, ROUTER_MAC);
    let (rc, out) = e.run(Hook::UplinkIngress, e.up0, &synack.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "SYN-ACK: verdict\n{}", hexdump(&out));
    let mut want = synack.clone().macs(rmac(10), BR2_MAC);
    want.ttl -= 1;
    assert_frame("SYN-ACK routed in", &out, &want.frame());
}

// ---------------------------------------------------------------------------
// 3. Refused flows from an isolated network: ICMP port-unreachable.

/// The port-unreachable the gateway of br3 sends guest `n` for `refused`
/// (as the guest sent it): from the gateway, quoting the refused packet's
/// IP header and first 8 bytes, MACs swapped.
fn unreachable_for(refused: &Packet, n: u8) -> Packet {
    let mut w = Packet::icmp_error(GW3, i4(n), ICMP_DEST_UNREACH, 3, [0; 4], refused, 28);
    w.tos = 0;
    w.id = 0;
    w.ttl = 64;
    w.macs(imac(n), BR3_MAC)
}

/// Runs `p` from isolated guest `n` and checks the answer is the
/// port-unreachable, redirected back out of br3, and counted.
#[track_caller]
fn rejected(e: &Env, what: &str, p: &Packet, n: u8) -> Vec<u8> {
    let (sent, policy) = (e.stat("reject_sent"), e.stat("drop_policy"));
    let (rc, out) = e.run(Hook::BridgeIngress, e.modes().br3, &p.frame());
    assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
    assert_frame(what, &out, &unreachable_for(p, n).frame());
    assert_eq!(e.stat("reject_sent") - sent, 1, "{what}: reject_sent");
    assert_eq!(e.stat("drop_policy") - policy, 1, "{what}: drop_policy");
    out
}

#[test]
fn isolated_udp_refused_with_port_unreachable() {
    netd_tests::require_root!();
    let e = env_modes();
    let p = Packet::udp(i4(10), 5353, REMOTE, 7000, b"hello?").macs(BR3_MAC, imac(10));
    let out = rejected(&e, "UDP to the world", &p, 10);

    // The same answer, field by field.
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    let f = Frame(&out);
    assert_eq!((f.dst_mac(), f.src_mac()), (imac(10), BR3_MAC));
    assert_eq!(f.ethertype(), ETH_P_IP);
    let ip = f.ip();
    assert_eq!((ip.src(), ip.dst()), (GW3, i4(10)));
    assert_eq!((ip.proto(), ip.ttl(), ip.tot_len()), (IPPROTO_ICMP, 64, 56));
    assert_eq!((ip.icmp_type(), ip.icmp_code()), (3, 3));
    assert_eq!(&ip.l4()[4..8], &[0; 4], "unused word");
    let sent = p.ip_bytes();
    assert_eq!(&ip.l4()[8..], &sent[..28], "quote: IP header + 8 bytes");
    assert!(verify_ip(ip).is_empty(), "{:?}", verify_ip(ip));
}

#[test]
fn isolated_tcp_echo_and_long_datagrams_refused() {
    netd_tests::require_root!();
    let e = env_modes();
    let syn = Packet::tcp(i4(11), 40300, REMOTE, 80, TCP_SYN).macs(BR3_MAC, imac(11));
    rejected(&e, "TCP SYN", &syn, 11);
    let ping =
        Packet::icmp_echo(i4(11), REMOTE, true, 0x55, 1, b"abcdefgh").macs(BR3_MAC, imac(11));
    rejected(&e, "echo request", &ping, 11);
    // Longer than the answer: cut to it.
    let big = Packet::udp(i4(12), 40301, REMOTE, 9999, &[0xa5; 1200]).macs(BR3_MAC, imac(12));
    rejected(&e, "1200-byte datagram", &big, 12);
    // Between networks the isolated one is refused the same way.
    let across = Packet::udp(i4(13), 40302, g(10), 53, b"dns?").macs(BR3_MAC, imac(13));
    rejected(&e, "to a guest of another network", &across, 13);
    // Its own segment is the bridge's business.
    let gw = Packet::udp(i4(13), 40303, GW3, 53, b"dns?").macs(BR3_MAC, imac(13));
    let (rc, o) = e.run(Hook::BridgeIngress, e.modes().br3, &gw.frame());
    assert_eq!((rc, o), (TC_ACT_OK, gw.frame()), "to the gateway");
}

#[test]
fn isolated_icmp_error_not_answered() {
    netd_tests::require_root!();
    let e = env_modes();
    let br3 = e.modes().br3;
    // The guest reports an unreachable port to the world: never answer an
    // error with an error.
    let probe = Packet::udp(REMOTE, 33434, i4(14), 33435, b"traceroute");
    for (ty, code) in [(ICMP_DEST_UNREACH, 3), (ICMP_TIME_EXCEEDED, 0)] {
        let err = Packet::icmp_error(i4(14), REMOTE, ty, code, [0; 4], &probe, 1000)
            .macs(BR3_MAC, imac(14));
        let sent = e.stat("reject_sent");
        e.dropped(
            &format!("ICMP error {ty}/{code}"),
            Hook::BridgeIngress,
            br3,
            &err.frame(),
            "drop_policy",
        );
        assert_eq!(e.stat("reject_sent"), sent, "an error was answered");
    }
}

#[test]
fn isolated_packet_with_ip_options_dropped_silently() {
    netd_tests::require_root!();
    let e = env_modes();
    // Options would shift the quote: such (rare) packets are not answered.
    let mut p = Packet::udp(i4(16), 40500, REMOTE, 7000, b"opts");
    p.options = vec![1, 1, 1, 0];
    let f = p.macs(BR3_MAC, imac(16)).frame();
    let sent = e.stat("reject_sent");
    e.dropped(
        "UDP with IP options",
        Hook::BridgeIngress,
        e.modes().br3,
        &f,
        "drop_policy",
    );
    assert_eq!(e.stat("reject_sent"), sent);
}

/// Pins the calling thread to the CPU it runs on (the reject budget is per
/// CPU) until dropped.
struct Pinned(libc::cpu_set_t);

impl Pinned {
    fn here() -> Pinned {
        // SAFETY: plain syscalls on this thread's affinity with a
        // zero-initialised set of the right size.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            let sz = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, sz, &mut old), 0);
            let cpu = libc::sched_getcpu();
            assert!(cpu >= 0);
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            assert_eq!(libc::sched_setaffinity(0, sz, &one), 0);
            Pinned(old)
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `here`.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
        }
    }
}

#[test]
fn reject_rate_limited() {
    netd_tests::require_root!();
    let e = env_modes();
    let br3 = e.modes().br3;
    let _pin = Pinned::here();
    // Let any budget window an earlier case opened on this CPU run out.
    std::thread::sleep(Duration::from_millis(1100));
    let p = Packet::udp(i4(15), 40400, REMOTE, 7000, b"flood").macs(BR3_MAC, imac(15));
    let frame = p.frame();
    let want = unreachable_for(&p, 15).frame();
    let (sent, policy) = (e.stat("reject_sent"), e.stat("drop_policy"));
    let start = Instant::now();
    let verdicts: Vec<(u32, Vec<u8>)> = (0..130)
        .map(|_| e.run(Hook::BridgeIngress, br3, &frame))
        .collect();
    let took = start.elapsed();
    assert_eq!(e.stat("drop_policy") - policy, 130, "every one refused");
    if took >= Duration::from_millis(900) {
        eprintln!("130 runs took {took:?}: the budget window may have turned, not counting");
        return;
    }
    for (i, (rc, out)) in verdicts.iter().enumerate() {
        if i < 100 {
            assert_eq!(*rc, TC_ACT_REDIRECT, "answer {i}");
            assert_frame(&format!("answer {i}"), out, &want);
        } else {
            assert_eq!(*rc, TC_ACT_SHOT, "packet {i} past the budget");
            assert_eq!(out, &frame, "packet {i}: a silent drop changed it");
        }
    }
    assert_eq!(e.stat("reject_sent") - sent, 100, "answers per second");
}

// ---------------------------------------------------------------------------
// `forward dev=`: a network tied to one uplink, over IPv6 too.

/// Publishes changed network configs for one test and puts the originals
/// back when it ends, also by panic.
struct Reconfigured<'a> {
    e: &'a Env,
    saved: Vec<(u32, netd_common::NetConfig)>,
}

impl<'a> Reconfigured<'a> {
    fn new(e: &'a Env) -> Self {
        Reconfigured {
            e,
            saved: Vec::new(),
        }
    }

    /// Ties the network of `br` to uplink `ifindex` (0: any).
    fn restrict(&mut self, br: u32, ifindex: u32) {
        let nets = maps::list_networks(&self.e.maps).expect("networks");
        let (_, cfg) = *nets.iter().find(|(b, _)| *b == br).expect("network");
        if !self.saved.iter().any(|(b, _)| *b == br) {
            self.saved.push((br, cfg));
        }
        let cfg = netd_common::NetConfig {
            uplink_ifindex: ifindex,
            ..cfg
        };
        maps::add_network(&self.e.maps, br, &cfg, None).expect("add_network");
    }
}

impl Drop for Reconfigured<'_> {
    fn drop(&mut self) {
        for (br, cfg) in &self.saved {
            let _ = maps::add_network(&self.e.maps, *br, cfg, None);
        }
    }
}

#[test]
fn uplink_restriction_applies_to_ipv6() {
    netd_tests::require_root!();
    let e = env_modes();
    let m = e.modes();
    let mut r = Reconfigured::new(&e);
    // Every route here leaves through up0: tie the networks to another
    // interface (br1 will do) and nothing may leave or come in.
    let other = e.br1;
    for br in [m.br2, m.br4, e.br0] {
        r.restrict(br, other);
    }
    let cases: [(&str, Hook, u32, Vec<u8>); 7] = [
        (
            "NAT66 out",
            Hook::BridgeIngress,
            m.br4,
            from_m6(20, Packet6::udp(m6(20), 7100, REMOTE6, 53, b"q")).frame(),
        ),
        (
            "NAT (IPv4) out",
            Hook::BridgeIngress,
            m.br4,
            Packet::udp(m4(20), 7101, REMOTE, 53, b"q")
                .macs(BR4_MAC, mmac(20))
                .frame(),
        ),
        (
            "NAT, IPv6 routed, out",
            Hook::BridgeIngress,
            e.br0,
            Packet6::udp(g6(22), 7102, REMOTE6, 53, b"q")
                .macs(BR0_MAC, gmac(22))
                .frame(),
        ),
        (
            "NAT, IPv6 routed, in",
            Hook::UplinkIngress,
            e.up0,
            from_router6(Packet6::udp(REMOTE6, 53, g6(22), 7102, b"a")).frame(),
        ),
        (
            "route, IPv6 out",
            Hook::BridgeIngress,
            m.br2,
            Packet6::udp(r6(22), 7103, REMOTE6, 53, b"q")
                .macs(BR2_MAC, rmac(22))
                .frame(),
        ),
        (
            "route, IPv6 in",
            Hook::UplinkIngress,
            e.up0,
            from_router6(Packet6::udp(REMOTE6, 53, r6(22), 7103, b"a")).frame(),
        ),
        (
            "route, IPv4 in",
            Hook::UplinkIngress,
            e.up0,
            Packet::udp(REMOTE, 53, r4(22), 7104, b"a")
                .macs(UP0_MAC, ROUTER_MAC)
                .frame(),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, hook, ifindex, frame) in &cases {
        let before = e.stat("drop_uplink_restricted");
        let (rc, out) = e.run(*hook, *ifindex, frame);
        let counted = e.stat("drop_uplink_restricted") - before;
        if (rc, counted, &out) != (TC_ACT_SHOT, 1, frame) {
            wrong.push(format!("{what}: verdict {rc}, counted {counted}"));
        }
    }
    assert!(wrong.is_empty(), "not dropped as restricted: {wrong:#?}");
    // Tied to the uplink they use: all through.
    for br in [m.br2, m.br4, e.br0] {
        r.restrict(br, e.up0);
    }
    for (what, hook, ifindex, frame) in &cases {
        let (rc, out) = e.run(*hook, *ifindex, frame);
        assert_eq!(
            rc,
            TC_ACT_REDIRECT,
            "{what}, tied to up0: verdict\n{}",
            hexdump(&out)
        );
    }
}
