//! Guests in their lane, on crafted packets through BPF_PROG_TEST_RUN:
//! sources no guest may use (the gateway's address, the subnet's network
//! and broadcast addresses, the IPv6 router address), strict networks'
//! MAC/IPv4 bindings (ARP included, DHCP let through), and
//! `host_access = "dhcp-dns"` on every host address. Every case checks the
//! verdict and the exact reason counter; refusals answered with an ICMP
//! error are checked byte by byte and by checksum (from scratch, by
//! `netd_tests::packet`).
//!
//! The fixture is `netd_tests::bpf_fixture` ([`env_modes`]): br0 is a NAT
//! network (192.168.122.0/24, 2001:db8:122::/64 routed), br2 routed, br3
//! isolated. Cases that need strict or restricted host access set br0's
//! flags for their run and put them back, whatever happens.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use netd::dataplane::{Hook, maps};
use netd_common::net_flags;
use netd_tests::bpf_fixture::*;
use netd_tests::packet::*;

const BCAST: Ipv4Addr = Ipv4Addr::BROADCAST;

/// Runs `f` with br0's flags set to `flags` and guest 10 of br0 bound to
/// its address, then restores both.
fn on_br0_with(env: &Env, flags: u8, f: impl FnOnce(&Env)) {
    let old = env.set_net_flags(env.br0, flags);
    let want: BTreeMap<[u8; 6], Ipv4Addr> = [(gmac(10), g(10))].into();
    maps::sync_bindings(&env.maps, env.br0, &want).expect("bindings");
    let r = catch_unwind(AssertUnwindSafe(|| f(env)));
    env.set_net_flags(env.br0, old);
    maps::sync_bindings(&env.maps, env.br0, &BTreeMap::new()).expect("bindings");
    if let Err(p) = r {
        resume_unwind(p);
    }
}

/// Runs `frame` in at br0 and checks the verdict and that `reason` grew by
/// exactly one. Returns the frame as it left.
#[track_caller]
fn expect(env: &Env, what: &str, frame: &[u8], rc: u32, reason: &str) -> Vec<u8> {
    expect_on(env, what, env.br0, frame, rc, reason)
}

#[track_caller]
fn expect_on(env: &Env, what: &str, br: u32, frame: &[u8], rc: u32, reason: &str) -> Vec<u8> {
    let before = env.stat(reason);
    let (got, out) = env.run(Hook::BridgeIngress, br, frame);
    assert_eq!(got, rc, "{what}: verdict\n{}", hexdump(&out));
    assert_eq!(
        env.stat(reason) - before,
        1,
        "{what}: {reason} not counted once"
    );
    out
}

fn from(mac: Mac, p: Packet) -> Vec<u8> {
    p.macs(BR0_MAC, mac).frame()
}

fn from6(mac: Mac, p: Packet6) -> Vec<u8> {
    p.macs(BR0_MAC, mac).frame()
}

/// An ARP frame whose Ethernet source is `eth_src` and whose sender is
/// (`sha`, `spa`).
fn arp(eth_src: Mac, sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = arp_request(sha, spa, tpa);
    f[6..12].copy_from_slice(&eth_src);
    f
}

#[test]
fn special_ipv4_sources_are_dropped_under_their_own_reasons() {
    let env = env_modes();
    let m = env.modes();
    let cases = [
        (GW0, "drop_spoof_gateway"),
        (Ipv4Addr::new(192, 168, 122, 0), "drop_spoof_network"),
        (Ipv4Addr::new(192, 168, 122, 255), "drop_spoof_broadcast"),
    ];
    for (src, reason) in cases {
        let tcp = from(gmac(10), Packet::tcp(src, 40000, REMOTE, 80, TCP_SYN));
        env.dropped(
            &format!("TCP from {src}"),
            Hook::BridgeIngress,
            env.br0,
            &tcp,
            reason,
        );
        // Broadcast and multicast pass unchecked otherwise: not these.
        let udp = Packet::udp(src, 40001, BCAST, 9999, b"x").macs([0xff; 6], gmac(10));
        env.dropped(
            &format!("broadcast from {src}"),
            Hook::BridgeIngress,
            env.br0,
            &udp.frame(),
            reason,
        );
        let ping = from(gmac(10), Packet::icmp_echo(src, GW0, true, 7, 1, b"p"));
        env.dropped(
            &format!("ping from {src}"),
            Hook::BridgeIngress,
            env.br0,
            &ping,
            reason,
        );
        let a = arp(gmac(10), gmac(10), src, Ipv4Addr::new(192, 168, 122, 11));
        env.dropped(
            &format!("ARP from {src}"),
            Hook::BridgeIngress,
            env.br0,
            &a,
            reason,
        );
    }
    // The routed and the isolated network's gateways too.
    let p = Packet::tcp(GW2, 40002, REMOTE, 80, TCP_SYN).macs(BR2_MAC, rmac(10));
    env.dropped(
        "routed: TCP from the gateway",
        Hook::BridgeIngress,
        m.br2,
        &p.frame(),
        "drop_spoof_gateway",
    );
    let p = Packet::tcp(Ipv4Addr::new(192, 168, 125, 255), 40003, GW3, 22, TCP_SYN)
        .macs(BR3_MAC, imac(10));
    env.dropped(
        "isolated: TCP from the broadcast address",
        Hook::BridgeIngress,
        m.br3,
        &p.frame(),
        "drop_spoof_broadcast",
    );
    // A guest's own address still goes out masqueraded, and its ARP passes.
    let p = from_guest(10, Packet::tcp(g(10), 40004, REMOTE, 80, TCP_SYN));
    env.snat_ok("a real guest", &p, 40004);
    let a = arp(gmac(10), gmac(10), g(10), GW0);
    expect(&env, "a real guest's ARP", &a, TC_ACT_OK, "pass");
}

#[test]
fn the_ipv6_gateway_is_no_guest_source() {
    let env = env_modes();
    let m = env.modes();
    let p = Packet6::tcp(GW0_6, 40010, REMOTE6, 80, TCP_SYN);
    env.dropped(
        "NAT network, IPv6",
        Hook::BridgeIngress,
        env.br0,
        &from6(gmac(10), p),
        "drop_spoof_gateway",
    );
    let p = Packet6::icmp_echo(GW2_6, REMOTE6, true, 3, 1, b"p").macs(BR2_MAC, rmac(10));
    env.dropped(
        "routed network, IPv6 echo",
        Hook::BridgeIngress,
        m.br2,
        &p.frame(),
        "drop_spoof_gateway",
    );
    // Even towards link scope (neighbour discovery): the gateway is the host's.
    let ns = Packet6::icmp(
        GW0_6,
        "ff02::1:ff00:10".parse().unwrap(),
        ICMPV6_NEIGHBOUR_SOLICIT,
        0,
        [0; 4],
        &[0; 16],
    );
    env.dropped(
        "NS from the gateway",
        Hook::BridgeIngress,
        env.br0,
        &from6(gmac(10), ns),
        "drop_spoof_gateway",
    );
    // A guest's own address is routed.
    let p = Packet6::tcp(g6(10), 40011, REMOTE6, 80, TCP_SYN);
    expect(
        &env,
        "a real guest, IPv6",
        &from6(gmac(10), p),
        TC_ACT_REDIRECT,
        "redirect",
    );
}

#[test]
fn strict_lets_only_the_bound_pair_through() {
    let env = env_modes();
    on_br0_with(&env, net_flags::STRICT, |env| {
        let ok = Packet::tcp(g(10), 40020, REMOTE, 80, TCP_SYN).macs(BR0_MAC, gmac(10));
        env.snat_ok("bound pair", &ok, 40020);
        let wrong_ip = from(gmac(10), Packet::tcp(g(11), 40021, REMOTE, 80, TCP_SYN));
        env.dropped(
            "bound MAC, another IP",
            Hook::BridgeIngress,
            env.br0,
            &wrong_ip,
            "drop_binding",
        );
        let wrong_mac = from(gmac(12), Packet::tcp(g(10), 40022, REMOTE, 80, TCP_SYN));
        env.dropped(
            "bound IP, another MAC",
            Hook::BridgeIngress,
            env.br0,
            &wrong_mac,
            "drop_binding",
        );
        let to_gw = from(gmac(12), Packet::udp(g(12), 40023, GW0, 53, b"q"));
        env.dropped(
            "unbound guest to the gateway",
            Hook::BridgeIngress,
            env.br0,
            &to_gw,
            "drop_binding",
        );
        // ARP: sender address, sender MAC against the frame's, probes.
        let a = arp(gmac(10), gmac(10), g(11), GW0);
        env.dropped(
            "ARP claiming another IP",
            Hook::BridgeIngress,
            env.br0,
            &a,
            "drop_binding",
        );
        let a = arp(gmac(10), gmac(12), g(10), GW0);
        env.dropped(
            "ARP with another sender MAC",
            Hook::BridgeIngress,
            env.br0,
            &a,
            "drop_binding",
        );
        let a = arp(gmac(12), gmac(12), g(10), GW0);
        env.dropped(
            "ARP from an unbound MAC",
            Hook::BridgeIngress,
            env.br0,
            &a,
            "drop_binding",
        );
        let mut a = arp(gmac(10), gmac(10), g(10), GW0);
        a.truncate(30);
        env.dropped(
            "truncated ARP",
            Hook::BridgeIngress,
            env.br0,
            &a,
            "drop_binding",
        );
        let a = arp(gmac(10), gmac(10), g(10), GW0);
        expect(env, "bound ARP", &a, TC_ACT_OK, "pass");
        let a = arp(gmac(13), gmac(13), Ipv4Addr::UNSPECIFIED, g(13));
        expect(env, "ARP probe of an unbound guest", &a, TC_ACT_OK, "pass");
        // DHCP from a guest with nothing yet passes; nothing else from 0.0.0.0.
        let d =
            Packet::udp(Ipv4Addr::UNSPECIFIED, 68, BCAST, 67, &[1; 240]).macs([0xff; 6], gmac(13));
        expect(env, "DHCP discover", &d.frame(), TC_ACT_OK, "pass");
        let d =
            Packet::udp(Ipv4Addr::UNSPECIFIED, 68, BCAST, 68, &[1; 40]).macs([0xff; 6], gmac(13));
        env.dropped(
            "not DHCP from 0.0.0.0",
            Hook::BridgeIngress,
            env.br0,
            &d.frame(),
            "drop_binding",
        );
        // IPv6 needs a bound MAC; other Ethernet types (VLAN tags) none pass.
        let p = Packet6::tcp(g6(12), 40024, REMOTE6, 80, TCP_SYN);
        env.dropped(
            "IPv6 from an unbound MAC",
            Hook::BridgeIngress,
            env.br0,
            &from6(gmac(12), p),
            "drop_binding",
        );
        let p = Packet6::tcp(g6(10), 40025, REMOTE6, 80, TCP_SYN);
        expect(
            env,
            "IPv6 from the bound MAC",
            &from6(gmac(10), p),
            TC_ACT_REDIRECT,
            "redirect",
        );
        let inner = Packet::tcp(g(10), 40026, REMOTE, 80, TCP_SYN).ip_bytes();
        let mut tagged = vec![0x00, 0x05, 0x08, 0x00];
        tagged.extend_from_slice(&inner);
        let v = eth(BR0_MAC, gmac(10), 0x8100, &tagged);
        env.dropped(
            "VLAN-tagged",
            Hook::BridgeIngress,
            env.br0,
            &v,
            "drop_binding",
        );
    });
    // Without strict the same frames are the usual business.
    let inner = Packet::tcp(g(10), 40027, REMOTE, 80, TCP_SYN).ip_bytes();
    let mut tagged = vec![0x00, 0x05, 0x08, 0x00];
    tagged.extend_from_slice(&inner);
    expect(
        &env,
        "VLAN-tagged, not strict",
        &eth(BR0_MAC, gmac(10), 0x8100, &tagged),
        TC_ACT_OK,
        "pass",
    );
    let a = arp(gmac(10), gmac(12), g(11), GW0);
    expect(&env, "odd ARP, not strict", &a, TC_ACT_OK, "pass");
}

/// Checks `out` is a port-unreachable from the gateway to guest 10
/// quoting `sent`.
#[track_caller]
fn port_unreachable(what: &str, out: &[u8], sent: &Packet) {
    let f = Frame(out);
    assert_eq!(f.dst_mac(), gmac(10), "{what}: to the guest");
    assert_eq!(f.src_mac(), BR0_MAC, "{what}: from the bridge");
    let ip = f.ip();
    assert_eq!((ip.src(), ip.dst()), (GW0, g(10)), "{what}: addresses");
    assert_eq!(
        (ip.icmp_type(), ip.icmp_code()),
        (ICMP_DEST_UNREACH, 3),
        "{what}: type"
    );
    let errs = verify_ip(ip);
    assert!(errs.is_empty(), "{what}: {errs:?}\n{}", hexdump(out));
    let q = ip.icmp_quoted();
    assert_eq!(
        (q.src(), q.dst(), q.proto()),
        (sent.src, sent.dst, sent.proto),
        "{what}: quote"
    );
}

#[test]
fn dhcp_dns_host_access_keeps_guests_to_dhcp_dns_and_ping() {
    let env = env_modes();
    on_br0_with(&env, net_flags::HOST_DHCP_DNS, |env| {
        // Refused with a port-unreachable: TCP and UDP to the gateway and
        // to the uplink's address (a host address found by the FIB lookup).
        for (i, dst) in [GW0, NAT].into_iter().enumerate() {
            let port = 40030 + i as u16 * 4;
            let syn = Packet::tcp(g(10), port, dst, 22, TCP_SYN);
            let out = expect(
                env,
                &format!("SSH to {dst}"),
                &from(gmac(10), syn.clone()),
                TC_ACT_REDIRECT,
                "drop_host_access",
            );
            port_unreachable(&format!("SSH to {dst}"), &out, &syn);
            let mut expiring = syn.clone();
            expiring.ttl = 1;
            expiring.set_sport(port + 1);
            expect(
                env,
                &format!("TTL 1 SSH to {dst}"),
                &from(gmac(10), expiring),
                TC_ACT_REDIRECT,
                "drop_host_access",
            );
            let ntp = Packet::udp(g(10), port + 2, dst, 123, b"t");
            let out = expect(
                env,
                &format!("NTP to {dst}"),
                &from(gmac(10), ntp.clone()),
                TC_ACT_REDIRECT,
                "drop_host_access",
            );
            port_unreachable(&format!("NTP to {dst}"), &out, &ntp);
            // Allowed: DNS over UDP and TCP, ping, segments of connections
            // the host opened.
            for (what, p) in [
                ("DNS/UDP", Packet::udp(g(10), port + 3, dst, 53, b"q")),
                ("DNS/TCP", Packet::tcp(g(10), port + 3, dst, 53, TCP_SYN)),
                ("ping", Packet::icmp_echo(g(10), dst, true, port, 1, b"p")),
                (
                    "SYN-ACK",
                    Packet::tcp(g(10), 22, dst, port + 3, TCP_SYN | TCP_ACK),
                ),
                ("ACK", Packet::tcp(g(10), 22, dst, port + 3, TCP_ACK)),
            ] {
                expect(
                    env,
                    &format!("{what} to {dst}"),
                    &from(gmac(10), p),
                    TC_ACT_OK,
                    "pass",
                );
            }
            let gre = Packet {
                proto: 47,
                ..Packet::udp(g(10), 1, dst, 1, b"")
            };
            let mut gre = gre;
            gre.l4 = L4::Raw(vec![0; 8]);
            env.dropped(
                &format!("GRE to {dst}"),
                Hook::BridgeIngress,
                env.br0,
                &from(gmac(10), gre),
                "drop_host_access",
            );
        }
        // DHCP, from nothing and from a leased address.
        let d =
            Packet::udp(Ipv4Addr::UNSPECIFIED, 68, BCAST, 67, &[1; 240]).macs([0xff; 6], gmac(13));
        expect(env, "DHCP discover", &d.frame(), TC_ACT_OK, "pass");
        let d = Packet::udp(g(10), 68, GW0, 67, &[1; 240]);
        expect(env, "DHCP renewal", &from(gmac(10), d), TC_ACT_OK, "pass");
        // From 0.0.0.0 only DHCP: anything else is dropped unanswered
        // (the fuzzer found it let through).
        let p = Packet::tcp(Ipv4Addr::UNSPECIFIED, 68, GW0, 22, TCP_SYN);
        env.dropped(
            "TCP from 0.0.0.0 to the host",
            Hook::BridgeIngress,
            env.br0,
            &from(gmac(13), p),
            "drop_host_access",
        );
        // Broadcast to other services: dropped, and never answered.
        let nb = Packet::udp(g(10), 137, Ipv4Addr::new(192, 168, 122, 255), 137, b"n")
            .macs([0xff; 6], gmac(10));
        env.dropped(
            "NetBIOS to the subnet broadcast",
            Hook::BridgeIngress,
            env.br0,
            &nb.frame(),
            "drop_host_access",
        );
        let nb = Packet::udp(g(10), 5353, Ipv4Addr::new(224, 0, 0, 251), 5353, b"m")
            .macs([1, 0, 0x5e, 0, 0, 0xfb], gmac(10));
        env.dropped(
            "mDNS",
            Hook::BridgeIngress,
            env.br0,
            &nb.frame(),
            "drop_host_access",
        );
        // The world is still reachable.
        let p = Packet::tcp(g(10), 40050, REMOTE, 22, TCP_SYN).macs(BR0_MAC, gmac(10));
        env.snat_ok("SSH to the world", &p, 40050);

        // IPv6: the router address, the uplink's and link-local.
        let ll: Ipv6Addr = "fe80::5054:ff:feaa:1".parse().unwrap();
        for dst in [GW0_6, NAT6, ll] {
            let p = Packet6::tcp(g6(10), 40060, dst, 22, TCP_SYN);
            env.dropped(
                &format!("SSH to {dst}"),
                Hook::BridgeIngress,
                env.br0,
                &from6(gmac(10), p),
                "drop_host_access",
            );
            for (what, p) in [
                ("DNS", Packet6::udp(g6(10), 40061, dst, 53, b"q")),
                ("ping", Packet6::icmp_echo(g6(10), dst, true, 9, 1, b"p")),
            ] {
                expect(
                    env,
                    &format!("{what} to {dst}"),
                    &from6(gmac(10), p),
                    TC_ACT_OK,
                    "pass",
                );
            }
        }
        let p = Packet6::udp(g6(10), 546, "ff02::1:2".parse().unwrap(), 547, b"s");
        expect(
            env,
            "DHCPv6 solicit",
            &from6(gmac(10), p),
            TC_ACT_OK,
            "pass",
        );
        let p = Packet6::tcp(g6(10), 40062, REMOTE6, 22, TCP_SYN);
        expect(
            env,
            "IPv6 SSH to the world",
            &from6(gmac(10), p),
            TC_ACT_REDIRECT,
            "redirect",
        );
    });
    // With host_access = "all", the host's SSH is reachable.
    let p = Packet::tcp(g(10), 40070, GW0, 22, TCP_SYN);
    expect(
        &env,
        "SSH to the gateway, all",
        &from(gmac(10), p),
        TC_ACT_OK,
        "pass",
    );
    let p = Packet::tcp(g(10), 40071, NAT, 22, TCP_SYN);
    expect(
        &env,
        "SSH to the uplink address, all",
        &from(gmac(10), p),
        TC_ACT_OK,
        "pass",
    );
}
