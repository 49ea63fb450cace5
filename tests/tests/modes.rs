//! End to end: every network mode, and policy between networks.

use netd_tests::*;
use std::time::{Duration, Instant};

fn define_start(t: &Topology, name: &str, toml: &str) {
    let f = t.write_file(&format!("{name}.toml"), toml);
    t.netd_ok(&["net", "define", f.to_str().unwrap()]);
    t.netd_ok(&["net", "start", name]);
}

fn net(name: &str, mode: &str, bridge: &str, third_octet: u8) -> String {
    format!(
        r#"
name = "{name}"
mode = "{mode}"
bridge = "{bridge}"
[ipv4]
address = "10.{third_octet}.0.1/24"
dhcp = {{ start = "10.{third_octet}.0.10", end = "10.{third_octet}.0.50" }}
"#
    )
}

/// How a UDP request ends: a reply, an ICMP refusal, or silence.
fn udp_probe(ns: &Ns, addr: impl std::fmt::Display, port: u16) -> (String, Duration) {
    let script = format!(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect(("{addr}", {port}))
s.send(b"probe")
try:
    print(s.recv(100).decode())
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"#
    );
    let start = Instant::now();
    let out = ns.exec(&["python3", "-c", &script]);
    (out.stdout.trim().to_string(), start.elapsed())
}

#[test]
fn routed_network_is_reachable_unchanged_both_ways() {
    require_netd!();
    let mut t = Topology::new("mode_route").unwrap();
    t.start_daemon().unwrap();
    define_start(&t, "routed", &net("routed", "route", "rt0", 30));
    let info = t.netd_json(&["net", "info", "routed"]);
    let note = info["notes"].to_string();
    assert!(
        note.contains(&format!("ip route add 10.30.0.0/24 via {HOST_IP}")),
        "{info}"
    );
    let g = t.add_guest("rt0", None).unwrap();
    let ip = g.dhcp().unwrap();
    t.router.exec_ok(&[
        "ip",
        "route",
        "add",
        "10.30.0.0/24",
        "via",
        &HOST_IP.to_string(),
    ]);
    // Even with the host's FORWARD chain dropping everything.
    t.host.exec_ok(&["iptables", "-P", "FORWARD", "DROP"]);
    let in_srv = tcp_echo_server(&g.ns, 8000);
    assert_eq!(tcp_request(&t.upstream, ip, 8000, "in").unwrap(), "in");
    assert_eq!(in_srv.peer_ips()[0].to_string(), UPSTREAM_IP.to_string());
    let out_srv = tcp_echo_server(&t.upstream, 8001);
    assert_eq!(tcp_request(&g.ns, UPSTREAM_IP, 8001, "out").unwrap(), "out");
    // No translation: upstream sees the guest's own address.
    assert_eq!(out_srv.peer_ips()[0].to_string(), ip.to_string());
}

#[test]
fn open_network_passes_everything() {
    require_netd!();
    let mut t = Topology::new("mode_open").unwrap();
    t.start_daemon().unwrap();
    define_start(&t, "wide", &net("wide", "open", "op0", 31));
    let g = t.add_guest("op0", None).unwrap();
    let ip = g.dhcp().unwrap();
    t.router.exec_ok(&[
        "ip",
        "route",
        "add",
        "10.31.0.0/24",
        "via",
        &HOST_IP.to_string(),
    ]);
    let _u = udp_echo_server(&g.ns, 9000);
    assert_eq!(udp_request(&t.upstream, ip, 9000, "u").unwrap(), "u");
    assert!(t.upstream.ping(ip, 2));
    assert!(g.ns.ping(UPSTREAM_IP, 2));
}

#[test]
fn isolated_network_reaches_only_its_guests_and_the_host() {
    require_netd!();
    let mut t = Topology::new("mode_isolated").unwrap();
    t.start_daemon().unwrap();
    define_start(&t, "island", &net("island", "isolated", "is0", 32));
    let a = t.add_guest("is0", None).unwrap();
    let b = t.add_guest("is0", None).unwrap();
    let _ = a.dhcp().unwrap();
    let b_ip = b.dhcp().unwrap();
    // Isolated guests get no default route from DHCP; give one, as a guest
    // with a static configuration would have, to prove the host refuses.
    a.exec_ok(&["ip", "route", "replace", "default", "via", "10.32.0.1"]);
    assert!(a.ns.ping(b_ip, 2), "guest to guest");
    assert!(a.ns.ping("10.32.0.1", 2), "guest to host");
    let (r, took) = udp_probe(&a.ns, UPSTREAM_IP, 7777);
    assert_eq!(
        r, "refused",
        "upstream must answer nothing; netd refuses with port-unreachable"
    );
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");
    let tcp = request_timeout(
        &a.ns,
        "tcp",
        UPSTREAM_IP,
        7778,
        "x",
        None,
        Duration::from_secs(3),
    );
    assert!(tcp.is_err());
    // Upstream to the guest, even with a route.
    t.router.exec_ok(&[
        "ip",
        "route",
        "add",
        "10.32.0.0/24",
        "via",
        &HOST_IP.to_string(),
    ]);
    let _srv = tcp_echo_server(&b.ns, 8002);
    assert!(
        request_timeout(
            &t.upstream,
            "tcp",
            b_ip,
            8002,
            "x",
            None,
            Duration::from_secs(2)
        )
        .is_err()
    );
    let stats: serde_json::Value =
        serde_json::from_str(&t.netd_bpf(&["stats", "-o", "json"]).stdout).unwrap();
    let sent = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "reject_sent")
        .unwrap()["packets"]
        .as_u64()
        .unwrap();
    assert!(sent >= 1, "{stats}");
}

#[test]
fn bridge_mode_uses_the_hosts_bridge_and_never_touches_it() {
    require_netd!();
    let mut t = Topology::new("mode_bridge").unwrap();
    t.start_daemon().unwrap();
    // The host's own bridge with a "LAN" behind it that runs a DHCP server.
    // A fixed MAC, as hosts configure theirs (otherwise the kernel takes
    // the lowest port MAC, which changes as guests come and go).
    t.host.exec_ok(&[
        "ip",
        "link",
        "add",
        "name",
        "br0",
        "address",
        "02:00:00:00:0b:00",
        "type",
        "bridge",
    ]);
    t.host.exec_ok(&["ip", "link", "set", "br0", "up"]);
    let lan = t.add_port_ns("lan", None).unwrap();
    let lan_port = lan.host_port.clone();
    t.host
        .exec_ok(&["ip", "link", "set", &lan_port, "master", "br0"]);
    lan.exec_ok(&["ip", "addr", "add", "10.40.0.1/24", "dev", "eth0"]);
    let leases = t.dir.join("lan.leases");
    let mut dhcpd = lan.ns.spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--port=0",
        "--pid-file=",
        "--interface=eth0",
        "--dhcp-range=10.40.0.100,10.40.0.110,1h",
        &format!("--dhcp-leasefile={}", leases.display()),
    ]);
    let snapshot = |t: &Topology| {
        let v: serde_json::Value =
            serde_json::from_str(&t.host.exec_ok(&["ip", "-j", "-d", "link", "show", "br0"]))
                .unwrap();
        let mut l = v[0].clone();
        l.as_object_mut().unwrap().remove("stats64");
        l.as_object_mut().unwrap().remove("operstate");
        // Running timers, not configuration.
        let info = l["linkinfo"]["info_data"].as_object_mut().unwrap();
        for timer in [
            "gc_timer",
            "hello_timer",
            "tcn_timer",
            "topology_change_timer",
        ] {
            info.remove(timer);
        }
        l.to_string()
    };
    let before = snapshot(&t);
    define_start(
        &t,
        "lan",
        "name = \"lan\"\nmode = \"bridge\"\nbridge = \"br0\"\n",
    );
    let g = t.add_guest("br0", None).unwrap();
    let ip = g.dhcp().unwrap();
    assert!(ip.to_string().starts_with("10.40.0.1"), "{ip}");
    assert!(
        std::fs::read_to_string(&leases)
            .unwrap()
            .contains(&ip.to_string())
    );
    // No dataplane, no dnsmasq of ours.
    let info = t.netd_json(&["net", "info", "lan"]);
    assert!(info["dnsmasq_pid"].is_null(), "{info}");
    assert!(!t.bpffs().join("links/br0:bridge_ingress").exists());
    t.netd_ok(&["net", "stop", "lan"]);
    assert_eq!(snapshot(&t), before, "netd changed the host's bridge");
    // Starting a bridge network whose bridge is missing is an error.
    define_start(
        &t,
        "lan2",
        "name = \"lan2\"\nmode = \"bridge\"\nbridge = \"br0\"\n",
    );
    t.netd_ok(&["net", "stop", "lan2"]);
    let f = t.write_file(
        "ghost.toml",
        "name = \"ghost\"\nmode = \"bridge\"\nbridge = \"nosuchbr\"\n",
    );
    t.netd_ok(&["net", "define", f.to_str().unwrap()]);
    let o = t.netd(&["net", "start", "ghost"]);
    assert_eq!(o.status, 1, "{o}");
    assert!(o.stderr.contains("does not exist"), "{o}");
    let _ = dhcpd.kill();
    let _ = dhcpd.wait();
}

#[test]
fn policy_holds_across_three_networks_of_different_modes() {
    require_netd!();
    let mut t = Topology::new("mode_cross").unwrap();
    t.start_daemon().unwrap();
    define_start(&t, "natted", &net("natted", "nat", "nt0", 50));
    define_start(&t, "routed", &net("routed", "route", "rt0", 51));
    define_start(&t, "wide", &net("wide", "open", "op0", 52));
    let n = t.add_guest("nt0", None).unwrap();
    let r = t.add_guest("rt0", None).unwrap();
    let o = t.add_guest("op0", None).unwrap();
    let n_ip = n.dhcp().unwrap();
    let r_ip = r.dhcp().unwrap();
    let o_ip = o.dhcp().unwrap();
    let _sn = udp_echo_server(&n.ns, 6000);
    let _sr = udp_echo_server(&r.ns, 6000);
    let _so = udp_echo_server(&o.ns, 6000);
    // Routed and open talk to each other.
    assert_eq!(udp_probe(&r.ns, o_ip, 6000).0, "probe");
    assert_eq!(udp_probe(&o.ns, r_ip, 6000).0, "probe");
    // NAT refuses both ways.
    assert_eq!(udp_probe(&n.ns, r_ip, 6000).0, "refused");
    assert_eq!(udp_probe(&r.ns, n_ip, 6000).0, "refused");
    assert_eq!(udp_probe(&o.ns, n_ip, 6000).0, "refused");
    // And all of them still reach upstream.
    let _up = udp_echo_server(&t.upstream, 6001);
    for g in [&n, &r, &o] {
        t.router.exec(&[
            "ip",
            "route",
            "add",
            "10.51.0.0/24",
            "via",
            &HOST_IP.to_string(),
        ]);
        t.router.exec(&[
            "ip",
            "route",
            "add",
            "10.52.0.0/24",
            "via",
            &HOST_IP.to_string(),
        ]);
        assert_eq!(udp_request(&g.ns, UPSTREAM_IP, 6001, "up").unwrap(), "up");
    }
}
