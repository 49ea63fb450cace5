//! End to end: a running network's persistent and live definitions, like
//! virsh's. `net define` of a running network waits for the next start;
//! live edits change both sides, or one with `--live` / `--config`; each
//! edit is one small journal record, never a rewrite of the definition.

use netd_tests::*;
use serde_json::Value;
use std::net::Ipv4Addr;

const NET: &str = r#"
name = "default"
mode = "nat"
bridge = "virbr0"
stp = { enabled = false, delay = 0 }
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.2", end = "192.168.122.99" }
"#;

/// The same network with another DHCP range.
const NEW_RANGE: &str = r#"
name = "default"
mode = "nat"
bridge = "virbr0"
stp = { enabled = false, delay = 0 }
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.200", end = "192.168.122.220" }
"#;

fn started() -> Topology {
    let mut t = Topology::new("pending").expect("topology");
    t.start_daemon().expect("daemon");
    let def = t.write_file("default.toml", NET);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    t
}

fn info(t: &Topology) -> Value {
    t.netd_json(&["net", "info", "default"])
}

fn live(t: &Topology) -> String {
    t.netd_ok(&["net", "dump", "default"])
}

fn persistent(t: &Topology) -> String {
    t.netd_ok(&["net", "dump", "default", "--inactive"])
}

fn journal(t: &Topology) -> std::path::PathBuf {
    t.config_dir().join("networks").join("default.journal")
}

/// Host ports of the network's forwards that are in the datapath map now.
fn installed_ports(t: &Topology) -> Vec<String> {
    let v = t.netd_json(&["forward", "list", "default"]);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["installed_on"].as_array().unwrap().is_empty())
        .map(|f| f["port"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pending_definition_survives_live_edits_and_is_used_at_the_next_start() {
    require_netd!();
    let mut t = started();
    assert_eq!(info(&t)["pending_changes"], false);
    assert!(t.netd_ok(&["net", "info", "default"]).contains("Pending changes:  no"));

    // A new range for the running network: persistent only.
    let def = t.write_file("default-new.toml", NEW_RANGE);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    assert_eq!(info(&t)["pending_changes"], true);
    assert_eq!(info(&t)["dhcp_range"], "192.168.122.2-192.168.122.99");
    assert!(t.netd_ok(&["net", "info", "default"]).contains("Pending changes:  yes"));
    assert!(persistent(&t).contains("192.168.122.200"), "{}", persistent(&t));
    assert!(live(&t).contains("192.168.122.99"), "{}", live(&t));

    // A live edit changes both sides and keeps the pending range (issue #11's bug).
    t.netd_ok(&[
        "forward", "add", "default", "--proto", "tcp", "--port", "8080", "--to",
        "192.168.122.50:80",
    ]);
    let p = persistent(&t);
    assert!(p.contains("192.168.122.200") && p.contains("8080"), "{p}");
    let l = live(&t);
    assert!(l.contains("192.168.122.99") && l.contains("8080"), "{l}");
    assert_eq!(installed_ports(&t), vec!["8080"]);
    // One short record, not a rewrite of the definition file.
    let j = std::fs::read_to_string(journal(&t)).expect("journal");
    assert_eq!(j.lines().count(), 1, "{j}");
    assert!(j.len() < 200, "{j}");
    let file = std::fs::read_to_string(t.config_dir().join("networks/default.toml")).unwrap();
    assert!(!file.contains("8080") && file.contains("192.168.122.200"), "{file}");

    // Both sides survive a daemon restart (journals folded in at load).
    t.restart_daemon().expect("restart");
    assert_eq!(info(&t)["pending_changes"], true);
    let p = persistent(&t);
    assert!(p.contains("192.168.122.200") && p.contains("8080"), "{p}");
    let l = live(&t);
    assert!(l.contains("192.168.122.99") && l.contains("8080"), "{l}");

    // Stop + start: the persistent definition, journal compacted into the file.
    t.netd_ok(&["net", "stop", "default"]);
    t.netd_ok(&["net", "start", "default"]);
    assert_eq!(info(&t)["pending_changes"], false);
    assert_eq!(info(&t)["dhcp_range"], "192.168.122.200-192.168.122.220");
    assert!(!journal(&t).exists(), "journal not compacted on start");
    let file = std::fs::read_to_string(t.config_dir().join("networks/default.toml")).unwrap();
    assert!(file.contains("8080") && file.contains("192.168.122.200"), "{file}");
    assert_eq!(installed_ports(&t), vec!["8080"]);

    // A real DHCP client gets an address of the new range.
    let g = t.add_guest("virbr0", None).unwrap();
    let ip = g.dhcp().expect("lease");
    let o = u32::from(ip);
    assert!(
        o >= u32::from(Ipv4Addr::new(192, 168, 122, 200))
            && o <= u32::from(Ipv4Addr::new(192, 168, 122, 220)),
        "{ip} is outside the new range"
    );
    assert!(g.ns.ping("192.168.122.1", 3));
}

#[test]
fn live_and_config_edits_change_only_their_side() {
    require_netd!();
    let t = started();
    let fwd = |port: &str, flag: Option<&str>| {
        let mut a = vec![
            "forward", "add", "default", "--proto", "tcp", "--port", port, "--to",
            "192.168.122.50",
        ];
        a.extend(flag);
        t.netd_ok(&a);
    };
    fwd("9090", Some("--live"));
    fwd("9191", Some("--config"));
    fwd("9292", None);
    let (l, p) = (live(&t), persistent(&t));
    assert!(l.contains("9090") && !l.contains("9191") && l.contains("9292"), "{l}");
    assert!(!p.contains("9090") && p.contains("9191") && p.contains("9292"), "{p}");
    // The datapath follows the live side only.
    let mut ports = installed_ports(&t);
    ports.sort();
    assert_eq!(ports, vec!["9090", "9292"]);
    assert_eq!(info(&t)["pending_changes"], true);

    // Hosts: --live reaches dnsmasq's hosts file, --config does not.
    let host = |mac: &str, ip: &str, flag: &str| {
        t.netd_ok(&[
            "net", "update", "default", "add-host", "--mac", mac, "--ip", ip, flag,
        ]);
    };
    host("52:54:00:aa:00:01", "192.168.122.31", "--live");
    host("52:54:00:aa:00:02", "192.168.122.32", "--config");
    let hosts = std::fs::read_to_string(t.run_dir().join("dnsmasq/default.hostsfile")).unwrap();
    assert!(hosts.contains("192.168.122.31") && !hosts.contains("192.168.122.32"), "{hosts}");
    let (l, p) = (live(&t), persistent(&t));
    assert!(l.contains("192.168.122.31") && !l.contains("192.168.122.32"), "{l}");
    assert!(!p.contains("192.168.122.31") && p.contains("192.168.122.32"), "{p}");

    // Remove from one side only.
    t.netd_ok(&[
        "forward", "remove", "default", "--proto", "tcp", "--port", "9292", "--live",
    ]);
    assert!(!live(&t).contains("9292") && persistent(&t).contains("9292"));
    assert_eq!(installed_ports(&t), vec!["9090"]);

    // Both flags: a usage error; nothing changes.
    let before = (live(&t), persistent(&t));
    let o = t.netd(&[
        "forward", "add", "default", "--proto", "tcp", "--port", "9393", "--to",
        "192.168.122.50", "--live", "--config",
    ]);
    assert_eq!(o.status, 2, "{o}");
    assert_eq!(before, (live(&t), persistent(&t)));

    // --live on a stopped network: one line, exit 1, nothing changes.
    t.netd_ok(&["net", "stop", "default"]);
    let before = persistent(&t);
    let o = t.netd(&[
        "forward", "add", "default", "--proto", "tcp", "--port", "9494", "--to",
        "192.168.122.50", "--live",
    ]);
    assert_eq!(o.status, 1, "{o}");
    assert_eq!(o.stderr.lines().count(), 1, "{o}");
    assert!(o.stderr.starts_with("error: ") && o.stderr.contains("not running"), "{o}");
    assert_eq!(before, persistent(&t));
    // A plain edit of a stopped network changes its persistent definition.
    fwd("9595", None);
    assert!(persistent(&t).contains("9595"));

    // The next start uses the persistent side: --live edits are gone.
    t.netd_ok(&["net", "start", "default"]);
    let l = live(&t);
    for (port, want) in [("9090", false), ("9191", true), ("9292", true), ("9595", true)] {
        assert_eq!(l.contains(port), want, "{port}: {l}");
    }
    assert!(!l.contains("192.168.122.31") && l.contains("192.168.122.32"), "{l}");
    assert_eq!(info(&t)["pending_changes"], false);
}
