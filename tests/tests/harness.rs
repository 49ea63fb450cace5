//! Checks of the test harness itself; no netd involved.

use std::net::Ipv4Addr;
use std::time::Duration;

use netd_tests::*;

fn root_links() -> Vec<String> {
    let o = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap().to_string())
        })
        .collect()
}

fn make_bridge(t: &Topology) {
    t.host
        .ip_ok(&["link", "add", "br0", "type", "bridge"])
        .unwrap();
    t.host
        .ip_ok(&["addr", "add", "10.200.0.1/24", "dev", "br0"])
        .unwrap();
    t.host.ip_ok(&["link", "set", "br0", "up"]).unwrap();
}

#[test]
fn topology_builds_and_cleans_up() {
    require_root!();
    let links_before = root_links();

    let mut t = Topology::new("harness_topology").expect("topology");
    let names: Vec<String> = t.namespaces().into_iter().map(|n| n.name).collect();
    let bpffs = t.bpffs();
    let dir = t.dir.clone();
    t.mount_bpffs().expect("mount bpffs");
    assert!(
        is_mounted(&bpffs),
        "bpffs not mounted at {}",
        bpffs.display()
    );

    make_bridge(&t);
    let g1 = t.add_guest("br0", None).expect("guest 1");
    let g2 = t
        .add_guest("br0", Some("52:54:00:aa:bb:02"))
        .expect("guest 2");
    assert_eq!(g1.host_port, "vg1");
    assert_eq!(g2.host_port, "vg2");
    assert_eq!(g2.mac, "52:54:00:aa:bb:02");
    let link = g2.exec_ok(&["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("52:54:00:aa:bb:02"), "{link}");
    let master = t.host.exec_ok(&["ip", "-o", "link", "show", "vg1"]);
    assert!(master.contains("master br0"), "{master}");

    g1.set_static("10.200.0.11/24", Some("10.200.0.1")).unwrap();
    g2.set_static("10.200.0.12/24", Some("10.200.0.1")).unwrap();
    assert_eq!(g1.ipv4_addrs(), vec![Ipv4Addr::new(10, 200, 0, 11)]);
    assert_eq!(g1.default_gateway(), Some(Ipv4Addr::new(10, 200, 0, 1)));

    g1.ns.ping_ok("10.200.0.12");
    g2.ns.ping_ok("10.200.0.11");
    g1.ns.ping_ok("10.200.0.1");
    t.host.ping_ok("10.200.0.12");

    // Router forwards host <-> upstream, v4 and v6.
    t.host.ping_ok(UPSTREAM_IP.to_string());
    t.host.ping_ok(UPSTREAM_IP6);
    t.upstream.ping_ok(HOST_IP.to_string());
    assert_eq!(t.router.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
    // Upstream has no route to guest subnets (only its /24 and the default via the router,
    // and the router has no route either).
    let r = t.router.exec(&["ip", "route", "get", "10.200.0.11"]);
    assert_ne!(
        r.status, 0,
        "router unexpectedly routes to the guest subnet: {r}"
    );

    // TCP / UDP echo tools against upstream.
    let tcp = tcp_echo_server(&t.upstream, 8080);
    let udp = udp_echo_server(&t.upstream, 5353);
    assert_eq!(
        tcp_request(&t.host, UPSTREAM_IP.to_string(), 8080, "hello tcp").unwrap(),
        "hello tcp"
    );
    assert_eq!(
        udp_request(&t.host, UPSTREAM_IP.to_string(), 5353, "hello udp").unwrap(),
        "hello udp"
    );
    assert_eq!(
        udp_request_from(&t.host, UPSTREAM_IP.to_string(), 5353, "again", Some(40123)).unwrap(),
        "again"
    );
    assert_eq!(
        tcp_request_from(&t.host, UPSTREAM_IP.to_string(), 8080, "sport", Some(40124)).unwrap(),
        "sport"
    );
    let tp = tcp.wait_peers(2, Duration::from_secs(2));
    let up = udp.wait_peers(2, Duration::from_secs(2));
    assert_eq!(tp.len(), 2, "{tp:?}");
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(tp.iter().all(|p| p.starts_with("198.51.100.2:")), "{tp:?}");
    assert!(up.iter().all(|p| p.starts_with("198.51.100.2:")), "{up:?}");
    assert_eq!(up[1], "198.51.100.2:40123");
    assert_eq!(tp[1], "198.51.100.2:40124");
    assert!(
        tcp.peer_ips()
            .iter()
            .all(|ip| ip.to_string() == "198.51.100.2")
    );

    // Nothing listens on another port: a clear error, not a hang.
    let e = tcp_request(&t.host, UPSTREAM_IP.to_string(), 8081, "x").unwrap_err();
    assert!(format!("{e:#}").contains("refused"), "{e:#}");

    // A request the guest cannot route (no NAT, upstream has no route back) times out.
    let e = request_timeout(
        &g1.ns,
        "udp",
        UPSTREAM_IP.to_string(),
        5353,
        "x",
        None,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("timed out"), "{e:#}");

    // A stray process in a namespace is killed by Drop.
    let mut stray = t.upstream.spawn(&["sleep", "1000"]);
    assert!(!t.upstream.pids().is_empty());

    // The firewall snapshot is stable between two calls.
    assert_eq!(t.firewall_snapshot(), t.firewall_snapshot());

    drop(tcp);
    drop(udp);
    drop(t);

    let st = stray.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "{st}"
    );

    let left = netns_list();
    for n in &names {
        assert!(!left.contains(n), "namespace {n} still exists: {left:?}");
    }
    assert!(!is_mounted(&bpffs), "bpffs still mounted");
    assert!(!dir.exists(), "{} still exists", dir.display());
    let links_after = root_links();
    for l in ["uplink0", "vg1", "vg2", "br0", "to-host", "to-up"] {
        if !links_before.iter().any(|x| x == l) {
            assert!(
                !links_after.iter().any(|x| x == l),
                "{l} appeared in the root netns"
            );
        }
    }
}

#[test]
fn drop_cleans_up_on_panic() {
    require_root!();
    let mut names = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut t = Topology::new("harness_panic").expect("topology");
        t.mount_bpffs().unwrap();
        names = t.namespaces().into_iter().map(|n| n.name).collect();
        names.push(format!("{}-lan", t.prefix));
        let lan = t.add_ns("lan").unwrap();
        assert_eq!(lan.name, format!("{}-lan", t.prefix));
        assert!(
            t.host
                .exec_ok(&["ip", "-o", "link", "show", "vlan"])
                .contains("vlan")
        );
        panic!("deliberate");
    }));
    assert!(r.is_err());
    let left = netns_list();
    assert!(names.len() == 4);
    for n in &names {
        assert!(
            !left.contains(n),
            "namespace {n} still exists after panic: {left:?}"
        );
    }
}

#[test]
fn guest_dhcp_from_dnsmasq() {
    require_root!();
    let mut t = Topology::new("harness_dhcp").expect("topology");
    make_bridge(&t);
    let g = t.add_guest("br0", None).expect("guest");

    let leases = t.dir.join("dnsmasq.leases");
    let log = t.dir.join("dnsmasq.log");
    let lease_arg = format!("--dhcp-leasefile={}", leases.display());
    let mut dnsmasq = t.host.spawn_logged(
        &[
            "dnsmasq",
            "--conf-file=/dev/null",
            "--keep-in-foreground",
            "--no-resolv",
            "--port=0",
            "--interface=br0",
            "--bind-dynamic",
            "--dhcp-range=10.200.0.50,10.200.0.60,1h",
            &lease_arg,
            "--pid-file=",
            "--log-facility=-",
            "--log-dhcp",
        ],
        &log,
    );

    let res = g.dhcp_with_hostname("guesty");
    let dlog = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    let ip = res.unwrap_or_else(|e| panic!("dhcp failed: {e:#}\ndnsmasq log:\n{dlog}"));

    assert!(
        ip >= Ipv4Addr::new(10, 200, 0, 50) && ip <= Ipv4Addr::new(10, 200, 0, 60),
        "leased {ip} out of range"
    );
    assert_eq!(g.ipv4_addrs(), vec![ip]);
    assert_eq!(g.default_gateway(), Some(Ipv4Addr::new(10, 200, 0, 1)));
    let env = g.dhcp_env();
    assert_eq!(
        env.get("ip").map(String::as_str),
        Some(ip.to_string().as_str()),
        "{env:?}"
    );
    assert_eq!(env.get("prefix").map(String::as_str), Some("24"), "{env:?}");
    let lf = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(
        lf.contains(&g.mac) && lf.contains("guesty"),
        "lease file: {lf}\n{dlog}"
    );
    g.ns.ping_ok("10.200.0.1");
}

/// A stand-in for `netd` that speaks just enough of the CLI contract to exercise the
/// daemon plumbing of the harness (netd itself may not exist yet).
const FAKE_NETD: &str = r#"#!/usr/bin/python3
import json, os, signal, socket, sys
args = sys.argv[1:]
sock = None
if len(args) >= 2 and args[0] == '--socket':
    sock = args[1]; args = args[2:]
if args and args[0] == 'daemon':
    opts = dict(zip(args[1::2], args[2::2]))
    path = os.path.join(opts['--run-dir'], 'netd.sock')
    sys.stderr.write('fake netd: RUST_LOG=%s args=%s netns=%s\n' % (os.environ.get('RUST_LOG'), args, os.readlink('/proc/self/ns/net')))
    sys.stderr.flush()
    s = socket.socket(socket.AF_UNIX)
    s.bind(path); s.listen(8)
    def term(*_):
        os.unlink(path)
        sys.stderr.write('fake netd: SIGTERM\n'); sys.stderr.flush()
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    while True:
        c, _ = s.accept(); c.close()
if args == ['status']:
    try:
        c = socket.socket(socket.AF_UNIX); c.connect(sock or os.environ['NETD_SOCKET'])
    except Exception as e:
        sys.stderr.write('error: %s\n' % e); sys.exit(1)
    print('running'); sys.exit(0)
if args[-2:] == ['-o', 'json']:
    print(json.dumps({'args': args[:-2], 'socket': sock})); sys.exit(0)
if args and args[0] == 'fail':
    sys.stderr.write('error: asked to fail\n'); sys.exit(1)
print(' '.join(args))
"#;

#[test]
fn daemon_plumbing_with_fake_netd() {
    require_root!();
    let mut t = Topology::new("harness_fake_netd").expect("topology");
    let fake = t.write_file("fake-netd", FAKE_NETD);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    t.set_netd_bin(&fake);
    t.start_daemon_with(&["--extra", "x"])
        .expect("start fake daemon");
    assert!(t.socket().exists());
    assert!(is_mounted(&t.bpffs()));
    let pid = t.daemon_pid().expect("daemon pid") as i32;
    assert!(t.host.pids().contains(&pid), "daemon not in the host netns");
    let log = t.daemon_log();
    assert!(log.contains("RUST_LOG=info"), "{log}");
    assert!(log.contains("'--extra', 'x'"), "{log}");
    let host_netns = t.host.exec_ok(&["readlink", "/proc/self/ns/net"]);
    assert!(log.contains(host_netns.trim()), "{log}");

    assert_eq!(t.netd_ok(&["status"]).trim(), "running");
    let v = t.netd_json(&["net", "list", "--all"]);
    assert_eq!(v["args"], serde_json::json!(["net", "list", "--all"]));
    assert_eq!(v["socket"], serde_json::json!(t.socket().to_str().unwrap()));
    let o = t.netd_bpf(&["ct", "list"]);
    assert!(
        o.stdout
            .contains(&format!("bpf ct list --bpffs {}", t.bpffs().display())),
        "{o}"
    );
    let o = t.netd(&["fail"]);
    assert_eq!(o.status, 1);
    assert!(o.stderr.starts_with("error:"));
    let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.netd_ok(&["fail"])));
    let msg = p
        .unwrap_err()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(
        msg.contains("asked to fail") && msg.contains("daemon log"),
        "{msg}"
    );

    t.restart_daemon().expect("restart");
    assert!(t.daemon_log().matches("=== harness: starting").count() == 2);
    assert!(t.daemon_log().matches("'--extra', 'x'").count() == 2);
    let st = t.stop_daemon().expect("exit status");
    assert!(st.success(), "{st}");
    assert!(t.daemon_log().contains("fake netd: SIGTERM"));
    assert!(!t.socket().exists());
    assert!(t.netd(&["status"]).status != 0);
}
