//! End to end: masquerade through the eBPF datapath.
//! Topology: guest -> host (netd) -> router -> upstream.

use netd_tests::*;
use std::time::Duration;

const NAT_NET: &str = r#"
name = "default"
mode = "nat"
bridge = "virbr0"
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.2", end = "192.168.122.254" }
"#;

fn nat_topology(name: &str) -> Topology {
    let mut t = Topology::new(name).expect("topology");
    t.start_daemon().expect("daemon");
    let def = t.write_file("default.toml", NAT_NET);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    t
}

#[test]
fn guest_reaches_upstream_as_the_host() {
    require_netd!();
    let mut t = nat_topology("nat_basic");
    let g = t.add_guest("virbr0", None).unwrap();
    let ip = g.dhcp().expect("lease");
    assert!(ip.to_string().starts_with("192.168.122."), "{ip}");

    let tcp = tcp_echo_server(&t.upstream, 8080);
    let udp = udp_echo_server(&t.upstream, 5353);
    assert_eq!(
        tcp_request(&g.ns, UPSTREAM_IP, 8080, "hello").unwrap(),
        "hello"
    );
    assert_eq!(
        udp_request(&g.ns, UPSTREAM_IP, 5353, "ping").unwrap(),
        "ping"
    );
    assert!(g.ns.ping(UPSTREAM_IP, 3), "guest ping to upstream");

    // Upstream only ever sees the host's uplink address.
    for peer in tcp.peer_ips().into_iter().chain(udp.peer_ips()) {
        assert_eq!(peer.to_string(), HOST_IP.to_string());
    }
    assert!(!tcp.peer_ips().is_empty() && !udp.peer_ips().is_empty());

    // The flows are in the pinned conntrack map, as the CLI shows it: the
    // original tuple from the guest and the translated one from the host.
    let ct = t.netd_bpf(&[
        "ct", "list", "--proto", "tcp", "--port", "8080", "-o", "json",
    ]);
    assert!(ct.success(), "{ct}");
    let rows: serde_json::Value = serde_json::from_str(&ct.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0]["src"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{ip}:")),
        "{rows:?}"
    );
    assert!(
        rows[0]["xlate_src"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{HOST_IP}:")),
        "{rows:?}"
    );
    assert_eq!(rows[0]["dst"], format!("{UPSTREAM_IP}:8080"));
    let nat = t.netd_bpf(&["nat", "list", "-o", "json"]);
    assert!(nat.stdout.contains("snat"), "{nat}");
    let stats = t.netd_bpf(&["stats", "-o", "json"]);
    assert!(stats.success(), "{stats}");
    let v: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    let snat = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "snat")
        .unwrap()["packets"]
        .as_u64()
        .unwrap();
    assert!(snat > 0, "no packet was masqueraded by the datapath: {v}");
}

#[test]
fn upstream_cannot_open_connections_to_guests() {
    require_netd!();
    let mut t = nat_topology("nat_inbound");
    let g = t.add_guest("virbr0", None).unwrap();
    let ip = g.dhcp().expect("lease");
    // Give the router a route to the guest subnet, so only netd's policy
    // stands between upstream and the guest.
    t.router.exec_ok(&[
        "ip",
        "route",
        "add",
        "192.168.122.0/24",
        "via",
        &HOST_IP.to_string(),
    ]);
    let srv = tcp_echo_server(&g.ns, 2222);
    let r = request_timeout(
        &t.upstream,
        "tcp",
        ip,
        2222,
        "x",
        None,
        Duration::from_secs(2),
    );
    assert!(r.is_err(), "upstream reached the guest: {r:?}");
    assert!(srv.peers().is_empty());
    // While the guest itself can still go out.
    let up = tcp_echo_server(&t.upstream, 8081);
    assert_eq!(tcp_request(&g.ns, UPSTREAM_IP, 8081, "out").unwrap(), "out");
    drop(up);
}

#[test]
fn same_source_port_from_two_guests_gets_two_translations() {
    require_netd!();
    let mut t = nat_topology("nat_collision");
    let a = t.add_guest("virbr0", None).unwrap();
    let b = t.add_guest("virbr0", None).unwrap();
    a.dhcp().unwrap();
    b.dhcp().unwrap();
    let srv = udp_echo_server(&t.upstream, 6000);
    assert_eq!(
        udp_request_from(&a.ns, UPSTREAM_IP, 6000, "a", Some(40000)).unwrap(),
        "a"
    );
    assert_eq!(
        udp_request_from(&b.ns, UPSTREAM_IP, 6000, "b", Some(40000)).unwrap(),
        "b"
    );
    let peers = srv.wait_peers(2, Duration::from_secs(3));
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert_ne!(peers[0], peers[1], "both guests got the same translation");
    assert!(
        peers.iter().all(|p| p.starts_with(&HOST_IP.to_string())),
        "{peers:?}"
    );
}

#[test]
fn ttl_expiry_at_the_router_comes_back_to_the_guest() {
    require_netd!();
    let mut t = nat_topology("nat_ttl");
    let g = t.add_guest("virbr0", None).unwrap();
    g.dhcp().unwrap();
    // TTL 2: the host forwards it (TTL 1), the router must drop it and
    // answer with time-exceeded, which only reaches the guest if the ICMP
    // error is translated back through the NAT.
    let out = g.exec(&[
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "2",
        "-t",
        "2",
        &UPSTREAM_IP.to_string(),
    ]);
    assert!(
        out.stdout.contains("Time to live exceeded")
            && out.stdout.contains(&ROUTER_HOST_IP.to_string()),
        "{out}"
    );
    // The same for a UDP probe, the way traceroute sends them.
    let probe = format!(
        r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 2)
s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
s.settimeout(3)
s.sendto(b"probe", ("{UPSTREAM_IP}", 33434))
try:
    s.recv(100)
except OSError as e:
    print("error", e.errno)
    sys.exit(0)
except socket.timeout:
    print("timeout")
    sys.exit(1)
"#
    );
    let out = g.exec(&["python3", "-c", &probe]);
    // EHOSTUNREACH (113) is how Linux reports a time-exceeded to a UDP socket.
    assert!(out.stdout.contains("error 113"), "{out}");
}

#[test]
fn a_second_nat_network_cannot_reach_into_the_first() {
    require_netd!();
    let mut t = nat_topology("nat_cross");
    let other = t.write_file(
        "other.toml",
        r#"
name = "other"
mode = "nat"
bridge = "virbr1"
[ipv4]
address = "192.168.100.1/24"
dhcp = { start = "192.168.100.10", end = "192.168.100.20" }
"#,
    );
    t.netd_ok(&["net", "define", other.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "other"]);
    let a = t.add_guest("virbr0", None).unwrap();
    let b = t.add_guest("virbr1", None).unwrap();
    let a_ip = a.dhcp().unwrap();
    b.dhcp().unwrap();
    let srv = tcp_echo_server(&a.ns, 3000);
    let r = request_timeout(&b.ns, "tcp", a_ip, 3000, "x", None, Duration::from_secs(2));
    assert!(
        r.is_err(),
        "a guest of 'other' reached into 'default': {r:?}"
    );
    assert!(srv.peers().is_empty());
    // Both still reach upstream.
    let up = tcp_echo_server(&t.upstream, 8082);
    assert_eq!(tcp_request(&b.ns, UPSTREAM_IP, 8082, "b").unwrap(), "b");
    assert_eq!(tcp_request(&a.ns, UPSTREAM_IP, 8082, "a").unwrap(), "a");
    drop(up);
}

#[test]
fn a_new_uplink_address_is_used_for_new_flows() {
    require_netd!();
    let mut t = nat_topology("nat_readdress");
    let g = t.add_guest("virbr0", None).unwrap();
    g.dhcp().unwrap();
    let srv = udp_echo_server(&t.upstream, 6100);
    assert_eq!(udp_request(&g.ns, UPSTREAM_IP, 6100, "one").unwrap(), "one");
    // The host is renumbered, as a DHCP-configured uplink may be.
    t.host
        .exec_ok(&["ip", "addr", "del", "198.51.100.2/24", "dev", UPLINK]);
    t.host
        .exec_ok(&["ip", "addr", "add", "198.51.100.3/24", "dev", UPLINK]);
    t.host.exec_ok(&[
        "ip",
        "route",
        "replace",
        "default",
        "via",
        &ROUTER_HOST_IP.to_string(),
    ]);
    assert!(wait_until(Duration::from_secs(5), || {
        t.netd_json(&["net", "info", "default"])["masquerade_address"] == "198.51.100.3"
    }));
    assert!(
        wait_until(Duration::from_secs(5), || {
            udp_request_from(&g.ns, UPSTREAM_IP, 6100, "two", Some(45000)).is_ok()
                && srv
                    .peer_ips()
                    .iter()
                    .any(|p| p.to_string() == "198.51.100.3")
        }),
        "peers: {:?}",
        srv.peers()
    );
    // Entries for the old address were flushed, as MASQUERADE does.
    let ct = t.netd_bpf(&["ct", "list", "-o", "json"]);
    assert!(!ct.stdout.contains("198.51.100.2:"), "{ct}");
}
