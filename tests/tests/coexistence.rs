//! netd and the host firewall: netd writes no rule, and no rule the owner
//! writes (Docker's FORWARD DROP, a flush during a transfer) cuts guests off.

use netd_tests::*;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

const NET: &str = r#"
name = "default"
mode = "nat"
bridge = "virbr0"
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.2", end = "192.168.122.254" }
"#;

fn topology(name: &str) -> (Topology, Guest) {
    let mut t = Topology::new(name).expect("topology");
    t.start_daemon().expect("daemon");
    let def = t.write_file("default.toml", NET);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    let g = t.add_guest("virbr0", None).unwrap();
    g.dhcp().expect("lease");
    (t, g)
}

#[test]
fn rulesets_are_byte_identical_before_during_and_after() {
    require_netd!();
    let mut t = Topology::new("fw_identical").unwrap();
    // A ruleset of the owner's, so there is something to clobber.
    t.host.exec_ok(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
    ]);
    t.host.exec_ok(&["nft", "add", "table", "inet", "owner"]);
    let before = t.firewall_snapshot_raw();
    t.start_daemon().unwrap();
    let def = t.write_file("default.toml", NET);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    let g = t.add_guest("virbr0", None).unwrap();
    g.dhcp().unwrap();
    let srv = tcp_echo_server(&t.upstream, 7000);
    assert_eq!(tcp_request(&g.ns, UPSTREAM_IP, 7000, "x").unwrap(), "x");
    drop(srv);
    let during = t.firewall_snapshot_raw();
    t.netd_ok(&["net", "stop", "default"]);
    let after = t.firewall_snapshot_raw();
    assert_eq!(strip_counters(&before), strip_counters(&during));
    assert_eq!(strip_counters(&before), strip_counters(&after));
}

/// iptables-save prints a timestamp comment and per-chain counters that
/// move with traffic; everything else must match byte for byte.
fn strip_counters(s: &str) -> String {
    s.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                l.split(" [").next().unwrap_or(l)
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn docker_style_forward_drop_does_not_cut_guests_off() {
    require_netd!();
    let (t, g) = topology("fw_forward_drop");
    t.host.exec_ok(&["iptables", "-P", "FORWARD", "DROP"]);
    t.host.sh_ok(
        "nft add table inet dockerish && \
         nft 'add chain inet dockerish forward { type filter hook forward priority 0; policy drop; }'",
    );
    let _tcp = tcp_echo_server(&t.upstream, 7001);
    let _udp = udp_echo_server(&t.upstream, 7002);
    assert_eq!(tcp_request(&g.ns, UPSTREAM_IP, 7001, "tcp").unwrap(), "tcp");
    assert_eq!(udp_request(&g.ns, UPSTREAM_IP, 7002, "udp").unwrap(), "udp");
    assert!(g.ns.ping(UPSTREAM_IP, 3));
    // The guest's gateway services (DHCP renew) keep working too.
    assert!(g.dhcp().is_ok());
    // Bulk TCP: segments larger than the MTU (GSO/GRO) must take the BPF
    // path too, in both directions, or the FORWARD DROP stops them.
    let guest_ip = g.ipv4_addrs()[0];
    t.netd_ok(&[
        "forward",
        "add",
        "default",
        "--proto",
        "tcp",
        "--port",
        "7300",
        "--to",
        &format!("{guest_ip}:7300"),
    ]);
    bulk(&t.upstream, &g.ns, &UPSTREAM_IP.to_string(), 7200, &t);
    bulk(&g.ns, &t.upstream, &HOST_IP.to_string(), 7300, &t);
}

/// Sends 32 MiB from `from` to a sink in `to`, addressed as `addr:port`,
/// and checks every byte arrived within 20 s.
fn bulk(to: &Ns, from: &Ns, addr: &str, port: u16, t: &Topology) {
    const BYTES: usize = 32 << 20;
    let sink = t.dir.join(format!("bulk-{port}.count"));
    let mut server = to.spawn(&[
        "python3",
        "-c",
        &format!(
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', {port})); s.listen(1)\nc,_=s.accept(); n=0\nwhile True:\n  b=c.recv(1<<20)\n  if not b: break\n  n+=len(b)\nopen('{}','w').write(str(n))\n",
            sink.display()
        ),
    ]);
    std::thread::sleep(Duration::from_millis(400));
    let out = from.exec_timeout(
        &[
            "python3",
            "-c",
            &format!("import socket\ns=socket.create_connection(('{addr}', {port}), timeout=20)\ns.sendall(b'x' * {BYTES})\ns.close()"),
        ],
        Duration::from_secs(30),
    );
    assert!(out.success(), "bulk send to {addr}:{port} failed: {out}");
    assert!(
        wait_until(Duration::from_secs(20), || sink.exists()),
        "the sink never finished"
    );
    let _ = server.wait();
    let got: usize = std::fs::read_to_string(&sink)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(got, BYTES);
}

#[test]
fn flushing_the_firewall_mid_transfer_does_not_interrupt_it() {
    require_netd!();
    let (t, g) = topology("fw_flush");
    t.host
        .exec_ok(&["iptables", "-A", "FORWARD", "-j", "ACCEPT"]);
    t.host.exec_ok(&["nft", "add", "table", "inet", "owner"]);
    // A steady stream from the guest: the upstream sink counts bytes.
    let sink = t.dir.join("sink.count");
    let mut server = t.upstream.spawn(&[
        "python3",
        "-c",
        &format!(
            r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7100)); s.listen(1)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    n += len(b)
open("{}", "w").write(str(n))
"#,
            sink.display()
        ),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let mut client = std::process::Command::new("ip")
        .args(["netns", "exec", &g.ns.name, "python3", "-c"])
        .arg(format!(
            r#"
import socket, time
s = socket.create_connection(("{UPSTREAM_IP}", 7100), timeout=5)
end = time.time() + 4
n = 0
while time.time() < end:
    s.sendall(b"x" * 4096); n += 4096
    time.sleep(0.002)
s.close(); print(n)
"#
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    t.host.exec_ok(&["iptables", "-F"]);
    std::thread::sleep(Duration::from_millis(500));
    t.host.exec_ok(&["nft", "flush", "ruleset"]);
    let start = Instant::now();
    let status = client.wait().unwrap();
    let mut sent = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut sent)
        .unwrap();
    let mut err = String::new();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "transfer broke: {err}");
    assert!(wait_until(Duration::from_secs(5), || sink.exists()));
    let _ = server.wait();
    let received: u64 = std::fs::read_to_string(&sink)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let sent: u64 = sent.trim().parse().unwrap();
    assert_eq!(received, sent, "bytes lost after {:?}", start.elapsed());
    assert!(sent > 100_000, "the transfer barely ran: {sent} bytes");
}
