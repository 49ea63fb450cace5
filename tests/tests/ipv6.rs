//! End to end: IPv6 on netd networks — SLAAC, DHCPv6 with a DUID host
//! entry, routed IPv6 through the datapath, and NAT66.

use netd_tests::*;
use std::time::Duration;

fn define_start(t: &Topology, name: &str, toml: &str) {
    let f = t.write_file(&format!("{name}.toml"), toml);
    t.netd_ok(&["net", "define", f.to_str().unwrap()]);
    t.netd_ok(&["net", "start", name]);
}

/// The guest's global IPv6 addresses on eth0.
fn global_v6(g: &Guest) -> Vec<String> {
    let out = g.exec(&[
        "ip", "-6", "-j", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .collect()
}

fn wait_slaac(g: &Guest, prefix: &str) -> String {
    let mut found = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            found = global_v6(g).into_iter().find(|a| a.starts_with(prefix));
            found.is_some()
        }),
        "no SLAAC address in {prefix}: {:?}",
        global_v6(g)
    );
    found.unwrap()
}

#[test]
fn slaac_guest_gets_an_address_in_the_prefix() {
    require_netd!();
    let mut t = Topology::new("v6_slaac").unwrap();
    t.start_daemon().unwrap();
    define_start(
        &t,
        "v6",
        "name = \"v6\"\nmode = \"nat\"\nbridge = \"v6br\"\nmtu = 1400\n[ipv4]\naddress = \"10.60.0.1/24\"\n[ipv6]\naddress = \"fd00:60::1/64\"\nslaac = true\n",
    );
    let g = t.add_guest("v6br", None).unwrap();
    let a = wait_slaac(&g, "fd00:60:");
    assert!(
        g.ns.ping("fd00:60::1", 3),
        "guest {a} cannot reach its router"
    );
    // The MTU is advertised in the router advertisements.
    assert!(
        wait_until(Duration::from_secs(10), || g
            .exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/mtu"])
            .stdout
            .trim()
            == "1400"),
        "RA MTU not applied"
    );
}

#[test]
fn dhcpv6_range_and_duid_host_entry() {
    require_netd!();
    let mut t = Topology::new("v6_dhcp").unwrap();
    t.start_daemon().unwrap();
    let fixed_mac = "52:54:00:00:00:61";
    let duid = format!("00:03:00:01:{fixed_mac}");
    define_start(
        &t,
        "d6",
        &format!(
            r#"
name = "d6"
mode = "nat"
bridge = "d6br"
[ipv4]
address = "10.61.0.1/24"
[ipv6]
address = "fd00:61::1/64"
dhcp = {{ start = "fd00:61::100", end = "fd00:61::1ff" }}
hosts = [{{ duid = "{duid}", ip = "fd00:61::77", name = "fixed" }}]
"#
        ),
    );
    let any = t.add_guest("d6br", None).unwrap();
    let fixed = t.add_guest("d6br", Some(fixed_mac)).unwrap();
    let a = dhcpv6(&t, &any, "any");
    let lo = u128::from("fd00:61::100".parse::<std::net::Ipv6Addr>().unwrap());
    let hi = u128::from("fd00:61::1ff".parse::<std::net::Ipv6Addr>().unwrap());
    let got = u128::from(a.parse::<std::net::Ipv6Addr>().unwrap());
    assert!((lo..=hi).contains(&got), "{a} outside the range");
    assert_eq!(dhcpv6(&t, &fixed, "fixed"), "fd00:61::77");
}

/// Runs ISC dhclient for DHCPv6 with a DUID-LL (from the MAC) and our own
/// script, and returns the address it bound.
fn dhcpv6(t: &Topology, g: &Guest, tag: &str) -> String {
    let dir = t.dir.join(format!("dhcp6-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script");
    let out = dir.join("address");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$reason\" in BOUND6|REBOOT6|RENEW6) ip -6 addr add \"$new_ip6_address/128\" dev \"$interface\"; echo \"$new_ip6_address\" > {} ;; esac\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", &script.to_string_lossy()])
        .status()
        .unwrap();
    let lease = dir.join("lease");
    let pid = dir.join("pid");
    let o = g.exec(&[
        "dhclient",
        "-6",
        "-1",
        "-D",
        "LL",
        "-sf",
        &script.to_string_lossy(),
        "-lf",
        &lease.to_string_lossy(),
        "-pf",
        &pid.to_string_lossy(),
        "eth0",
    ]);
    if let Ok(p) = std::fs::read_to_string(&pid) {
        let _ = std::process::Command::new("kill").arg(p.trim()).status();
    }
    std::fs::read_to_string(&out)
        .unwrap_or_else(|_| panic!("no DHCPv6 lease: {o}\n{}", t.daemon_log()))
        .trim()
        .to_string()
}

#[test]
fn routed_ipv6_reaches_upstream_past_a_forward_drop() {
    require_netd!();
    let mut t = Topology::new("v6_routed").unwrap();
    t.start_daemon().unwrap();
    define_start(
        &t,
        "r6",
        "name = \"r6\"\nmode = \"route\"\nbridge = \"r6br\"\n[ipv4]\naddress = \"10.62.0.1/24\"\n[ipv6]\naddress = \"2001:db8:200::1/64\"\nslaac = true\n",
    );
    t.router.exec_ok(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:200::/64",
        "via",
        "2001:db8:100::2",
    ]);
    t.host.exec_ok(&["ip6tables", "-P", "FORWARD", "DROP"]);
    let g = t.add_guest("r6br", None).unwrap();
    let a = wait_slaac(&g, "2001:db8:200:");
    let srv = tcp_echo_server_on(&t.upstream, "::", 8600);
    assert_eq!(tcp_request(&g.ns, UPSTREAM_IP6, 8600, "v6").unwrap(), "v6");
    assert_eq!(
        srv.peer_ips()[0].to_string(),
        a,
        "routed IPv6 keeps the guest's address"
    );
    // And back in: upstream reaches the guest.
    let back = tcp_echo_server_on(&g.ns, "::", 8601);
    assert_eq!(tcp_request(&t.upstream, &a, 8601, "in").unwrap(), "in");
    drop(back);
    let stats: serde_json::Value =
        serde_json::from_str(&t.netd_bpf(&["stats", "-o", "json"]).stdout).unwrap();
    let redirected = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "redirect")
        .unwrap()["packets"]
        .as_u64()
        .unwrap();
    assert!(
        redirected > 0,
        "IPv6 did not go through the datapath: {stats}"
    );
}

#[test]
fn nat66_shows_the_hosts_address_upstream() {
    require_netd!();
    let mut t = Topology::new("v6_nat66").unwrap();
    t.start_daemon().unwrap();
    define_start(
        &t,
        "n6",
        "name = \"n6\"\nmode = \"nat\"\nbridge = \"n6br\"\n[ipv4]\naddress = \"10.63.0.1/24\"\n[ipv6]\naddress = \"fd00:63::1/64\"\nslaac = true\nnat = true\n",
    );
    let g = t.add_guest("n6br", None).unwrap();
    let a = wait_slaac(&g, "fd00:63:");
    let tcp = tcp_echo_server_on(&t.upstream, "::", 8660);
    let udp = udp_echo_server_on(&t.upstream, "::", 8661);
    assert!(g.ns.ping(UPSTREAM_IP6, 3), "ping6 through NAT66");
    assert_eq!(
        udp_request(&g.ns, UPSTREAM_IP6, 8661, "six").unwrap(),
        "six"
    );
    assert_eq!(
        tcp_request(&g.ns, UPSTREAM_IP6, 8660, "six").unwrap(),
        "six"
    );
    for p in tcp.peer_ips().into_iter().chain(udp.peer_ips()) {
        assert_eq!(p.to_string(), HOST_IP6, "guest {a} leaked");
    }
}
