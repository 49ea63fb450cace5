//! End to end: the masquerade's port pool with the real daemon, guests in
//! namespaces and real UDP. Topology: guest -> host (netd) -> router ->
//! upstream.
//! - Forty addresses of one guest namespace send from the same port to one
//!   upstream server: all forty are answered, each from its own outside port.
//! - A forward that would starve the pool (UDP 1024-65535) is refused in
//!   one line and changes nothing; the boundary (1024 left) is accepted,
//!   `net info` shows what is left, and outbound UDP still works with it.
//! - Endpoint-independent mapping: the guest sends to upstream A from port
//!   5000; upstream B sends to the same outside port: with endpoint-
//!   independent filtering the guest gets it, with address-port-dependent
//!   filtering (the default) it does not.
//! - Fair sharing: a guest over `nat.max_flows_per_guest` is refused at once.
//! - Mapping logs: `nat.log = "mappings"` writes who used which outside
//!   port, start and end.

use netd_tests::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const NAT_NET: &str = r#"
name = "default"
mode = "nat"
bridge = "virbr0"
[ipv4]
address = "192.168.122.1/24"
"#;

fn nat_topology(name: &str) -> Topology {
    nat_topology_with(name, "")
}

fn nat_topology_with(name: &str, extra: &str) -> Topology {
    let mut t = Topology::new(name).expect("topology");
    t.start_daemon().expect("daemon");
    let def = t.write_file("default.toml", &format!("{NAT_NET}{extra}"));
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    t
}

/// Sends one datagram from each of `addrs`, all from `sport`, to
/// upstream:`dport`, and prints the addresses that got their echo back.
const MANY_CLIENTS: &str = r#"
import socket, sys, time, select
dst, dport, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = {}
for a in sys.argv[4:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, sport))
    socks[s] = a
deadline = time.time() + 8
answered = set()
sent_at = 0
while len(answered) < len(socks) and time.time() < deadline:
    if time.time() - sent_at > 1:
        # (Re)send for the ones not answered yet: the first datagram of an
        # address may wait for ARP on the way back.
        for s, a in socks.items():
            if a not in answered:
                s.sendto(('hi from %s' % a).encode(), (dst, dport))
        sent_at = time.time()
    r, _, _ = select.select(list(socks), [], [], 0.2)
    for s in r:
        d, _ = s.recvfrom(2048)
        if d.decode() == 'hi from %s' % socks[s]:
            answered.add(socks[s])
for a in sorted(answered):
    print(a)
"#;

fn guest_with_addresses(t: &mut Topology, n: u8) -> (Guest, Vec<String>) {
    guest_from(t, 100, n)
}

/// A guest namespace holding 192.168.122.`first` and the `n - 1` after it.
fn guest_from(t: &mut Topology, first: u8, n: u8) -> (Guest, Vec<String>) {
    let g = t.add_guest("virbr0", None).expect("guest");
    let addrs: Vec<String> = (0..n)
        .map(|i| format!("192.168.122.{}", first + i))
        .collect();
    let mut script = String::from("set -e\nip link set eth0 up\n");
    for a in &addrs {
        script.push_str(&format!("ip addr add {a}/24 dev eth0\n"));
    }
    script.push_str("ip route add default via 192.168.122.1\n");
    g.ns.sh_ok(&script);
    // A new bridge port (STP on) forwards only after the forward delay.
    assert!(
        wait_until(Duration::from_secs(10), || g.ns.ping("192.168.122.1", 1)),
        "the guest never reached its gateway"
    );
    (g, addrs)
}

/// The outside (address, port) of every datagram the server saw.
fn outside_ports(srv: &Server, n: usize) -> Vec<(String, u16)> {
    srv.wait_peers(n, Duration::from_secs(5))
        .iter()
        .map(|p| {
            let (a, port) = p.rsplit_once(':').expect("peer");
            (a.to_string(), port.parse().expect("port"))
        })
        .collect()
}

#[test]
fn forty_addresses_from_one_port_get_forty_outside_ports() {
    require_netd!();
    let mut t = nat_topology("nat_ports_forty");
    let (g, addrs) = guest_with_addresses(&mut t, 40);
    let srv = udp_echo_server(&t.upstream, 3478);
    let mut argv = vec![
        "/usr/bin/python3".to_string(),
        "-c".into(),
        MANY_CLIENTS.into(),
        UPSTREAM_IP.to_string(),
        "3478".into(),
        "40000".into(),
    ];
    argv.extend(addrs.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let o = g.ns.exec_timeout(&argv, Duration::from_secs(30));
    assert!(o.success(), "{o}");
    let answered: BTreeSet<&str> = o.stdout.lines().collect();
    let want: BTreeSet<&str> = addrs.iter().map(String::as_str).collect();
    assert_eq!(answered, want, "every address answered");

    // The server saw the host's address only, from forty distinct ports
    // (retransmissions of an address reuse its port).
    let seen = outside_ports(&srv, 40);
    let ports: BTreeSet<u16> = seen.iter().map(|(_, p)| *p).collect();
    for (a, _) in &seen {
        assert_eq!(a, &HOST_IP.to_string());
    }
    assert_eq!(ports.len(), 40, "distinct outside ports: {ports:?}");
    assert!(ports.contains(&40000), "one keeps its own port: {ports:?}");
    assert!(
        ports.iter().all(|p| *p >= 1024 && p % 2 == 0),
        "in range, parity kept: {ports:?}"
    );
    let stats = t.netd_bpf(&["stats", "-o", "json"]);
    let v: Value = serde_json::from_str(&stats.stdout).expect("stats JSON");
    let count = |name: &str| {
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == name)
            .map_or(0, |r| r["packets"].as_u64().unwrap())
    };
    assert_eq!(count("drop_ports_exhausted"), 0, "nothing refused: {v}");
    assert!(count("snat") >= 40, "{v}");

    // The doctor counts distinct ports per protocol and address.
    let s = t.netd_json(&["status"]);
    let check = s["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "nat-ports")
        .unwrap_or_else(|| panic!("no nat-ports check: {s:#}"))
        .clone();
    assert_eq!(check["level"], "OK", "{check}");
    let text = t.netd_ok(&["net", "info", "default"]);
    assert!(
        text.contains("Timeouts:         udp 60s (refreshed by the guest's packets), tcp established 21600s, tcp handshake 60s, tcp closing 10s (defaults)"),
        "{text}"
    );
    let msg = check["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "40 of 64512 masquerade ports (1024-65535) on {HOST_IP}"
        )) && msg.contains("udp"),
        "{msg}"
    );
}

fn udp_left(t: &Topology) -> (u64, u64) {
    let info: Value = t.netd_json(&["net", "info", "default"]);
    let m = info["masquerade_ports"]
        .as_array()
        .unwrap_or_else(|| panic!("no masquerade_ports: {info:#}"))
        .iter()
        .find(|m| m["proto"] == "udp")
        .expect("udp")
        .clone();
    (m["left"].as_u64().unwrap(), m["size"].as_u64().unwrap())
}

#[test]
fn forward_of_every_udp_port_is_refused() {
    require_netd!();
    let mut t = nat_topology("nat_ports_forward_all");
    let (g, _) = guest_with_addresses(&mut t, 1);
    assert_eq!(udp_left(&t), (64512, 64512));

    let o = t.netd(&[
        "forward",
        "add",
        "default",
        "--proto",
        "udp",
        "--port",
        "1024-65535",
        "--to",
        "192.168.122.100",
    ]);
    assert_eq!(o.status, 1, "{o}");
    assert_eq!(
        o.stderr.trim(),
        "error: udp forward of port 1024-65535 would leave network \"default\" 0 of its 64512 masquerade ports (1024-65535) for udp, fewer than nat.min_free_ports = 1024; forward fewer ports, widen [nat] ports, or lower min_free_ports in the [nat] section of \"default\"",
    );
    // Nothing changed: no forward, no map entry, all ports left.
    let list = t.netd_json(&["forward", "list", "default"]);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list:#}");
    let fw = t.netd_bpf(&["forwards", "list", "-o", "json"]);
    assert_eq!(fw.stdout.trim(), "[]", "{fw}");
    assert_eq!(udp_left(&t), (64512, 64512));

    // The boundary: exactly 1024 left is accepted, and shown.
    t.netd_ok(&[
        "forward",
        "add",
        "default",
        "--proto",
        "udp",
        "--port",
        "2048-65535",
        "--to",
        "192.168.122.100",
    ]);
    assert_eq!(udp_left(&t), (1024, 64512));
    let text = t.netd_ok(&["net", "info", "default"]);
    assert!(
        text.contains(
            "Masquerade ports: tcp 64512 of 64512, udp 1024 of 64512 left after forwards"
        ),
        "{text}"
    );
    // One more port is one too many.
    let o = t.netd(&[
        "forward",
        "add",
        "default",
        "--proto",
        "udp",
        "--port",
        "2047",
        "--to",
        "192.168.122.100",
    ]);
    assert_eq!(o.status, 1, "{o}");
    assert!(o.stderr.contains(" 1023 of its 64512 "), "{o}");

    // The guest's UDP still goes out, from one of the 1024 ports left,
    // though its own port 40000 is forwarded.
    let srv = udp_echo_server(&t.upstream, 3479);
    let reply = udp_request_from(&g.ns, UPSTREAM_IP, 3479, "still here", Some(40000))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nct: {}\nstats: {}\nserver: {:?}",
                t.netd_bpf(&["ct", "list"]),
                t.netd_bpf(&["stats"]),
                srv.peers()
            )
        });
    assert_eq!(reply, "still here");
    let seen = outside_ports(&srv, 1);
    assert!((1024..=2047).contains(&seen[0].1), "{seen:?}");
}

/// A `--config` forward is judged against the persistent definition it
/// goes into, not the running one: here the pending definition narrows the
/// masquerade to 1101 ports, so a 101-port forward would leave it 1000.
#[test]
fn a_config_forward_is_judged_against_the_persistent_pool() {
    require_netd!();
    let t = nat_topology("nat_ports_config_side");
    let narrower = t.write_file(
        "narrow.toml",
        &format!("{NAT_NET}[nat]\nports = \"30000-31100\"\n"),
    );
    t.netd_ok(&["net", "define", narrower.to_str().unwrap()]);
    let add = |scope: &str| {
        t.netd(&[
            "forward",
            "add",
            "default",
            "--proto",
            "udp",
            "--port",
            "30000-30100",
            "--to",
            "192.168.122.100",
            scope,
        ])
    };
    let o = add("--config");
    assert_eq!(o.status, 1, "{o}");
    assert!(
        o.stderr
            .contains(" 1000 of its 1101 masquerade ports (30000-31100)"),
        "{o}"
    );
    let inactive = t.netd_ok(&["net", "dump", "default", "--inactive"]);
    assert!(!inactive.contains("30000-30100"), "{inactive}");
    // The running network still masquerades on 1024-65535: live is fine.
    t.netd_ok(&[
        "forward",
        "add",
        "default",
        "--proto",
        "udp",
        "--port",
        "30000-30100",
        "--to",
        "192.168.122.100",
        "--live",
    ]);
}

/// In the guest: from port 5000, one datagram to A and its echo, then
/// whatever else arrives on the port within `wait` seconds, one line each.
const GUEST_5000: &str = r#"
import socket, sys
a, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 5000))
s.settimeout(1)
for _ in range(5):
    s.sendto(b'hello A', (a, port))
    try:
        d, src = s.recvfrom(2048)
        break
    except socket.timeout:
        pass
print('echo', d.decode(), flush=True)
s.settimeout(wait)
try:
    while True:
        d, src = s.recvfrom(2048)
        print('from %s:%d %s' % (src[0], src[1], d.decode()), flush=True)
except socket.timeout:
    print('done', flush=True)
"#;

/// From upstream's second address B (203.0.113.11:4000), one datagram.
const KNOCK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('203.0.113.11', 4000))
s.sendto(b'knock from B', (sys.argv[1], int(sys.argv[2])))
"#;

/// The guest's log once it is done: A's echo, then what B's knock on the
/// outside port A saw brought. Returns (log, outside port).
fn knock_after_a(t: &mut Topology) -> (String, u16) {
    let (g, _) = guest_with_addresses(t, 1);
    t.upstream.sh_ok("ip addr add 203.0.113.11/24 dev eth0");
    let srv = udp_echo_server(&t.upstream, 3478);
    let log = t.dir.join("guest5000.log");
    let mut child = g.ns.spawn_logged(
        &[
            "/usr/bin/python3",
            "-c",
            GUEST_5000,
            &UPSTREAM_IP.to_string(),
            "3478",
            "4",
        ],
        &log,
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || read().contains("echo hello A")),
        "no echo from A: {}",
        read()
    );
    let seen = outside_ports(&srv, 1);
    assert_eq!(seen[0].0, HOST_IP.to_string());
    let port = seen[0].1;
    let o = t.upstream.exec(&[
        "/usr/bin/python3",
        "-c",
        KNOCK,
        &HOST_IP.to_string(),
        &port.to_string(),
    ]);
    assert!(o.success(), "{o}");
    assert!(
        wait_until(Duration::from_secs(10), || read().contains("done")),
        "the guest never finished: {}",
        read()
    );
    let _ = child.wait();
    (read(), port)
}

#[test]
fn endpoint_independent_filtering_lets_another_host_in() {
    require_netd!();
    let mut t = nat_topology_with(
        "nat_ports_eif",
        "[nat]\nmapping = \"endpoint-independent\"\nfiltering = \"endpoint-independent\"\n[nat.timeouts]\nudp = 150\n",
    );
    let (log, port) = knock_after_a(&mut t);
    // This network's own UDP timeout, shown and applied.
    let text = t.netd_ok(&["net", "info", "default"]);
    assert!(
        text.contains("Timeouts:         udp 150s (refreshed by the guest's packets), tcp established 21600s, tcp handshake 60s, tcp closing 10s ([nat.timeouts])"),
        "{text}"
    );
    let ct: Value = serde_json::from_str(
        &t.netd_bpf(&["ct", "list", "--port", "3478", "-o", "json"])
            .stdout,
    )
    .expect("ct JSON");
    let left = ct[0]["expires_in_secs"].as_u64().expect("an entry");
    assert!((140..=150).contains(&left), "{ct:#}");
    assert!(
        log.contains("from 203.0.113.11:4000 knock from B"),
        "B's datagram did not reach the guest:\n{log}"
    );
    // The mapping is listed with its kind and who may send in.
    let rows: Value = serde_json::from_str(&t.netd_bpf(&["nat", "list", "-o", "json"]).stdout)
        .expect("nat list JSON");
    let m = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "mapping")
        .unwrap_or_else(|| panic!("no mapping row: {rows:#}"));
    assert_eq!(m["inside"], "192.168.122.100:5000", "{m}");
    assert_eq!(m["outside"], format!("{HOST_IP}:{port}"), "{m}");
    assert_eq!(m["proto"], "udp");
    assert_eq!(m["bridge"], "virbr0", "{m}");
    assert!(m["peer"].as_str().unwrap().starts_with("any"), "{m}");
    let text = t.netd_bpf(&["nat", "list"]).stdout;
    assert!(text.contains("mapping"), "{text}");
}

#[test]
fn address_port_dependent_filtering_keeps_another_host_out() {
    require_netd!();
    // The default: endpoint-independent mapping, address-port-dependent
    // filtering.
    let mut t = nat_topology("nat_ports_apdf");
    let (log, _) = knock_after_a(&mut t);
    assert!(!log.contains("knock from B"), "B got in:\n{log}");
    let rows = t.netd_bpf(&["nat", "list", "-o", "json"]).stdout;
    assert!(rows.contains("address-port-dependent filtering"), "{rows}");
}

#[test]
fn guest_over_max_flows_is_refused_at_once_and_others_are_not() {
    require_netd!();
    let mut t = nat_topology_with("nat_ports_quota", "[nat]\nmax_flows_per_guest = 3\n");
    let (a, _) = guest_from(&mut t, 100, 1);
    let (b, _) = guest_from(&mut t, 101, 1);
    let _srv = tcp_echo_server(&t.upstream, 8080);
    for i in 0..3 {
        assert_eq!(
            tcp_request(&a.ns, UPSTREAM_IP, 8080, &format!("hello {i}")).unwrap(),
            format!("hello {i}")
        );
    }
    // The fourth connection is refused by ICMP 3/13, which the guest's TCP
    // reports at once as "no route to host", not after a timeout.
    let start = std::time::Instant::now();
    let e = tcp_request(&a.ns, UPSTREAM_IP, 8080, "one too many").unwrap_err();
    assert!(
        format!("{e:#}").contains("No route to host"),
        "refused how? {e:#}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let stats: Value =
        serde_json::from_str(&t.netd_bpf(&["stats", "-o", "json"]).stdout).expect("stats");
    let quota = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "drop_guest_quota")
        .map(|r| r["packets"].as_u64().unwrap())
        .unwrap_or(0);
    assert!(quota >= 1, "{stats}");
    // Another guest of the network is not affected.
    for i in 0..3 {
        assert_eq!(
            tcp_request(&b.ns, UPSTREAM_IP, 8080, &format!("b {i}")).unwrap(),
            format!("b {i}")
        );
    }
    // Once the closed connections expire (10 s) the GC's recount gives the
    // first guest room again.
    assert!(
        wait_until(Duration::from_secs(30), || tcp_request(
            &a.ns,
            UPSTREAM_IP,
            8080,
            "again"
        )
        .is_ok_and(|r| r == "again")),
        "the quota never freed up"
    );
}

#[test]
fn mapping_log_says_who_used_an_outside_port() {
    require_netd!();
    let mut t = Topology::new("nat_ports_log").expect("topology");
    t.start_daemon().expect("daemon");
    let log = t.dir.join("nat-mappings.log");
    let def = t.write_file(
        "default.toml",
        &format!(
            "name = \"default\"\nmode = \"nat\"\nbridge = \"virbr0\"\n[nat]\nlog = \"mappings\"\nlog_file = \"{}\"\n[ipv4]\naddress = \"192.168.122.1/24\"\ndhcp = {{ start = \"192.168.122.2\", end = \"192.168.122.254\" }}\n",
            log.display()
        ),
    );
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    let g = t.add_guest("virbr0", None).unwrap();
    let ip = g.dhcp().expect("lease");
    let srv = udp_echo_server(&t.upstream, 3480);
    let reply = udp_request_from(&g.ns, UPSTREAM_IP, 3480, "log me", Some(5000)).unwrap();
    assert_eq!(reply, "log me");
    let port = outside_ports(&srv, 1)[0].1;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let want = format!(
        " nat mapping start network=default mac={} ip={ip} port=5000 outside={HOST_IP}:{port} proto=udp",
        g.mac
    );
    assert!(
        wait_until(Duration::from_secs(15), || read().contains(&want)),
        "no start line {want:?} in:\n{}",
        read()
    );
    // Exactly one line for the mapping, stamped like 2026-12-03T14:03:07Z.
    let text = read();
    let line = text.lines().find(|l| l.contains(&want)).unwrap();
    let stamp = line.split(' ').next().unwrap();
    assert!(
        stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{line}"
    );
    assert_eq!(text.matches(&want).count(), 1, "{text}");
    // When the mapping goes (flushed here), its end is logged.
    let state = t.state_dir();
    let f = t.netd_bpf(&[
        "ct",
        "flush",
        "--network",
        "default",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(f.success(), "{f}");
    let end = want.replace(" start ", " end ");
    assert!(
        wait_until(Duration::from_secs(15), || read().contains(&end)),
        "no end line in:\n{}",
        read()
    );
}
