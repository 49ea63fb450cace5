//! End to end, in namespaces with the real daemon, dnsmasq and udhcpc:
//! guests kept in their lane.
//! - `strict = true`: a guest sends only from the MAC/IP pair its lease or
//!   its host entry gives it. Changing its IP or its MAC cuts it off;
//!   changing back brings it back. A guest with a host entry works from its
//!   first packet, without DHCP.
//! - `host_access = "dhcp-dns"`: a guest gets its lease, DNS answers and
//!   pings the gateway, but a TCP listener on the host is refused at once,
//!   on the bridge's address and on the uplink's.

use netd_tests::*;
use std::time::{Duration, Instant};

fn define_start(t: &Topology, name: &str, toml: &str) {
    let f = t.write_file(&format!("{name}.toml"), toml);
    t.netd_ok(&["net", "define", f.to_str().unwrap()]);
    t.netd_ok(&["net", "start", name]);
}

fn reason(t: &Topology, name: &str) -> u64 {
    let stats: serde_json::Value =
        serde_json::from_str(&t.netd_bpf(&["stats", "-o", "json"]).stdout).unwrap();
    stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == name)
        .unwrap_or_else(|| panic!("no reason {name} in {stats}"))["packets"]
        .as_u64()
        .unwrap()
}

/// One TCP round trip to the upstream echo server, with a short timeout.
fn reaches(ns: &Ns, port: u16) -> bool {
    request_timeout(
        ns,
        "tcp",
        UPSTREAM_IP,
        port,
        "hi",
        None,
        Duration::from_secs(2),
    )
    .is_ok_and(|r| r == "hi")
}

fn set_ip(g: &Guest, cidr: &str, gw: &str) {
    g.ns.sh_ok(&format!(
        "ip -4 addr flush dev {GUEST_IF} && ip addr add {cidr} dev {GUEST_IF} && \
         ip route replace default via {gw}"
    ));
}

#[test]
fn strict_guests_keep_to_their_binding() {
    require_netd!();
    let mut t = Topology::new("lane_strict").unwrap();
    t.start_daemon().unwrap();
    define_start(
        &t,
        "strict",
        r#"
name = "strict"
mode = "nat"
bridge = "st0"
strict = true
# No STP: a new port forwards at once, so "the first packet" means it.
stp = { enabled = false }
[ipv4]
address = "10.71.0.1/24"
dhcp = { start = "10.71.0.10", end = "10.71.0.50" }
hosts = [{ mac = "52:54:00:71:00:05", ip = "10.71.0.5" }]
"#,
    );
    let _srv = tcp_echo_server(&t.upstream, 7100);

    // A guest with a host entry, no DHCP: its very first packet goes through.
    let fixed = t.add_guest("st0", Some("52:54:00:71:00:05")).unwrap();
    fixed.set_static("10.71.0.5/24", Some("10.71.0.1")).unwrap();
    assert!(
        reaches(&fixed.ns, 7100),
        "host entry: first connection failed; {}",
        t.netd_bpf(&["stats"]).stdout
    );

    // A leased guest, once its binding is synced (a poll of the lease file).
    let g = t.add_guest("st0", None).unwrap();
    let ip = g.dhcp().unwrap();
    let cidr = format!("{ip}/24");
    assert!(
        wait_until(Duration::from_secs(3), || reaches(&g.ns, 7100)),
        "leased guest cannot reach upstream"
    );

    // Another IP: cut off, upstream and gateway alike; back: reconnected.
    let before = reason(&t, "drop_binding");
    set_ip(&g, "10.71.0.99/24", "10.71.0.1");
    assert!(!reaches(&g.ns, 7100), "a changed IP still reaches upstream");
    assert!(
        !g.ns.ping("10.71.0.1", 1),
        "a changed IP still pings the gateway"
    );
    assert!(
        reason(&t, "drop_binding") > before,
        "no drop_binding counted"
    );
    set_ip(&g, &cidr, "10.71.0.1");
    assert!(
        wait_until(Duration::from_secs(5), || reaches(&g.ns, 7100)),
        "the leased IP back, still cut off"
    );

    // Another MAC: cut off; back: reconnected.
    g.ns.ip_ok(&["link", "set", GUEST_IF, "address", "52:54:00:71:00:77"])
        .unwrap();
    assert!(
        !reaches(&g.ns, 7100),
        "a changed MAC still reaches upstream"
    );
    assert!(
        !g.ns.ping("10.71.0.1", 1),
        "a changed MAC still pings the gateway"
    );
    g.ns.ip_ok(&["link", "set", GUEST_IF, "address", &g.mac])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(8), || reaches(&g.ns, 7100)),
        "the leased MAC back, still cut off"
    );

    // A host entry added live binds at once: its guest's first connection
    // works, with no lease and no wait.
    t.netd_ok(&[
        "net",
        "update",
        "strict",
        "add-host",
        "--mac",
        "52:54:00:71:00:06",
        "--ip",
        "10.71.0.6",
    ]);
    let live = t.add_guest("st0", Some("52:54:00:71:00:06")).unwrap();
    live.set_static("10.71.0.6/24", Some("10.71.0.1")).unwrap();
    assert!(
        reaches(&live.ns, 7100),
        "live host entry: first connection failed"
    );
    t.netd_ok(&[
        "net",
        "update",
        "strict",
        "remove-host",
        "--mac",
        "52:54:00:71:00:06",
        "--ip",
        "10.71.0.6",
    ]);
    assert!(
        !reaches(&live.ns, 7100),
        "a removed host entry still reaches upstream"
    );

    // The host-entry guest claiming the leased guest's address: refused,
    // while the leased guest keeps working.
    set_ip(&fixed, &cidr, "10.71.0.1");
    assert!(
        !reaches(&fixed.ns, 7100),
        "a stolen address reached upstream"
    );
    assert!(
        reaches(&g.ns, 7100),
        "the owner lost its address to a thief"
    );
    set_ip(&fixed, "10.71.0.5/24", "10.71.0.1");
    assert!(
        wait_until(Duration::from_secs(5), || reaches(&fixed.ns, 7100)),
        "host entry guest back on its own address, still cut off"
    );
}

/// A DNS query for `name` (type A) to `server`, from `ns`; the first
/// address answered, or what went wrong.
fn dns_a(ns: &Ns, server: &str, name: &str) -> String {
    let script = format!(
        r#"
import socket, struct
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
for label in "{name}".split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, ("{server}", 53))
try:
    r = s.recv(512)
except Exception as e:
    print("error", type(e).__name__); raise SystemExit
an = struct.unpack(">H", r[6:8])[0]
i = len(q)
for _ in range(an):
    if r[i] & 0xc0 == 0xc0:
        i += 2
    else:
        while r[i]: i += r[i] + 1
        i += 1
    ty, cl, ttl, rdlen = struct.unpack(">HHIH", r[i:i+10])
    i += 10
    if ty == 1:
        print(socket.inet_ntoa(r[i:i+4])); raise SystemExit
    i += rdlen
print("no answer")
"#
    );
    ns.exec(&["python3", "-c", &script])
        .stdout
        .trim()
        .to_string()
}

#[test]
fn dhcp_dns_host_access_refuses_the_hosts_other_services() {
    require_netd!();
    let mut t = Topology::new("lane_host").unwrap();
    t.start_daemon().unwrap();
    define_start(
        &t,
        "hostacc",
        r#"
name = "hostacc"
mode = "nat"
bridge = "ha0"
host_access = "dhcp-dns"
[ipv4]
address = "10.72.0.1/24"
dhcp = { start = "10.72.0.10", end = "10.72.0.50" }
[dns]
domain = "lane"
hosts = [{ ip = "10.72.0.9", names = ["db"] }]
"#,
    );
    // A TCP listener on every host address, and proof it is up.
    let _listener = tcp_echo_server(&t.host, 7200);
    assert_eq!(
        tcp_request(&t.router, HOST_IP, 7200, "up").unwrap(),
        "up",
        "the host's listener is not up"
    );
    let _srv = tcp_echo_server(&t.upstream, 7201);

    // DHCP: a real lease from dnsmasq.
    let g = t.add_guest("ha0", None).unwrap();
    let ip = g.dhcp().unwrap();
    assert!(ip.octets()[..3] == [10, 72, 0], "{ip}");
    // DNS: dnsmasq answers on the gateway.
    assert_eq!(dns_a(&g.ns, "10.72.0.1", "db.lane"), "10.72.0.9");
    // ICMP echo to the gateway.
    g.ns.ping_ok("10.72.0.1");

    // TCP to the host: refused at once on the bridge's and the uplink's
    // address (an ICMP port-unreachable, not a timeout).
    let before = reason(&t, "drop_host_access");
    for addr in ["10.72.0.1".to_string(), HOST_IP.to_string()] {
        let start = Instant::now();
        let r = request_timeout(
            &g.ns,
            "tcp",
            &addr,
            7200,
            "in",
            None,
            Duration::from_secs(4),
        );
        let took = start.elapsed();
        let err = r.expect_err(&format!("the host's listener answered on {addr}"));
        assert!(
            took < Duration::from_secs(3),
            "{addr}: refused only after {took:?}: {err:#}"
        );
        assert!(format!("{err:#}").contains("refused"), "{addr}: {err:#}");
    }
    assert!(reason(&t, "drop_host_access") >= before + 2);
    // The world is still there.
    assert_eq!(tcp_request(&g.ns, UPSTREAM_IP, 7201, "out").unwrap(), "out");
    // And a renewal still works (DHCP to the server's own address).
    let again = g.dhcp().unwrap();
    assert_eq!(again, ip);
}
