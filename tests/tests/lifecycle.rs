//! End-to-end tests of the network lifecycle (the Foundation issue): DHCP from the real
//! dnsmasq, live host entries, stop/undefine cleanup, bridge properties, daemon restart
//! and autostart, refusal of bad input without side effects, and a firewall left alone.
//!
//! Every test builds its own [`Topology`] with its own daemon, so they run in parallel.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use netd_tests::*;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Local helpers.

/// A topology with a running daemon.
fn topo(name: &str) -> Topology {
    let mut t = Topology::new(name).expect("topology");
    t.start_daemon().expect("daemon");
    t
}

/// Writes `<defs>/FILE.toml` and returns its path as a string.
fn def_file(t: &Topology, file: &str, text: &str) -> String {
    t.write_file(&format!("{file}.toml"), text)
        .to_string_lossy()
        .into_owned()
}

/// `netd net define` of `text`.
#[track_caller]
fn define(t: &Topology, file: &str, text: &str) {
    let p = def_file(t, file, text);
    t.netd_ok(&["net", "define", &p]);
}

/// `netd net info NAME -o json`.
#[track_caller]
fn info(t: &Topology, name: &str) -> Value {
    t.netd_json(&["net", "info", name])
}

fn dnsmasq_pid(t: &Topology, name: &str) -> Option<u32> {
    info(t, name)["dnsmasq_pid"].as_u64().map(|p| p as u32)
}

/// `ip -n host -d -j link show DEV`, the one object; None when there is no such device.
fn link_details(t: &Topology, dev: &str) -> Option<Value> {
    let o = t.host.ip(&["-d", "-j", "link", "show", "dev", dev]);
    if !o.success() {
        return None;
    }
    let v: Value = serde_json::from_str(&o.stdout).expect("ip -j output");
    v.as_array().and_then(|a| a.first().cloned())
}

fn link_exists(t: &Topology, dev: &str) -> bool {
    t.host.ip(&["link", "show", "dev", dev]).success()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Names in `<bpffs>/links` that belong to interface `dev`.
fn pinned_links(t: &Topology, dev: &str) -> Vec<String> {
    let prefix = format!("{}:", dev.replace('.', ":"));
    let mut v: Vec<String> = fs::read_dir(t.bpffs().join("links"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Files of network NAME under `<run-dir>/dnsmasq`.
fn dnsmasq_files(t: &Topology, name: &str) -> Vec<String> {
    let prefix = format!("{name}.");
    let mut v: Vec<String> = fs::read_dir(t.run_dir().join("dnsmasq"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix) || n.starts_with(&format!(".{prefix}")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs netd and checks the error contract: exit 1, exactly one stderr line, starting
/// "error:". Returns that line.
#[track_caller]
fn netd_err(t: &Topology, args: &[&str]) -> String {
    let o = t.netd(args);
    assert_eq!(
        o.status,
        1,
        "`netd {}` should fail with exit 1: {o}",
        args.join(" ")
    );
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "`netd {}`: stderr must be exactly one line: {o}",
        args.join(" ")
    );
    assert!(
        lines[0].starts_with("error:"),
        "`netd {}`: stderr must start with `error:`: {o}",
        args.join(" ")
    );
    lines[0].to_string()
}

/// Removes keys whose values change on their own (counters, lifetimes) from `ip -j` output.
fn strip_volatile(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in [
                "stats",
                "stats64",
                "valid_life_time",
                "preferred_life_time",
                "expires",
            ] {
                m.remove(k);
            }
            for x in m.values_mut() {
                strip_volatile(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

fn ip_json(t: &Topology, args: &[&str]) -> Value {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    let out = t.host.ip_ok(&a).expect("ip -j");
    let mut v: Value = serde_json::from_str(&out).expect("ip -j output");
    strip_volatile(&mut v);
    v
}

/// Every file under `dir` with its contents (sockets and other specials by name only);
/// folders only through the files in them.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                // Empty folders netd keeps for its files (dnsmasq/, leases/) do not count.
                walk(root, &p, out);
            } else if ft.is_file() {
                out.insert(
                    rel,
                    String::from_utf8_lossy(&fs::read(&p).unwrap_or_default()).into_owned(),
                );
            } else {
                out.insert(rel, "<special>".into());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Names under `<bpffs>` (pinned maps and links), without contents.
fn bpffs_names(t: &Topology) -> Vec<String> {
    tree(&t.bpffs()).into_keys().collect()
}

/// What a refused command must leave exactly as it was.
#[derive(Debug, PartialEq)]
struct HostState {
    addr: Value,
    route: Value,
    route6: Value,
    link: Value,
    config: BTreeMap<String, String>,
    state: BTreeMap<String, String>,
    run: BTreeMap<String, String>,
    bpffs: Vec<String>,
    netd_list: Value,
}

fn host_state(t: &Topology) -> HostState {
    HostState {
        addr: ip_json(t, &["addr"]),
        route: ip_json(t, &["route"]),
        route6: ip_json(t, &["-6", "route"]),
        link: ip_json(t, &["link"]),
        config: tree(&t.config_dir()),
        state: tree(&t.state_dir()),
        run: tree(&t.run_dir()),
        bpffs: bpffs_names(t),
        netd_list: t.netd_json(&["net", "list", "--all"]),
    }
}

/// Runs a command that must be refused, and checks that it changed nothing.
#[track_caller]
fn refused(t: &Topology, what: &str, args: &[&str]) -> String {
    let before = host_state(t);
    let line = netd_err(t, args);
    let after = host_state(t);
    eprintln!("refused ({what}): {line}");
    assert_eq!(
        before,
        after,
        "{what}: `netd {}` failed ({line}) but changed the host",
        args.join(" ")
    );
    line
}

/// Defining `text` must be refused with a message containing `needle`, changing nothing.
#[track_caller]
fn refused_def(t: &Topology, what: &str, text: &str, needle: &str) {
    let file = format!(
        "bad-{}",
        what.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let p = def_file(t, &file, text);
    let line = refused(t, what, &["net", "define", &p]);
    assert!(
        line.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: error should mention {needle:?}: {line}"
    );
    // `net create` goes through the same checks and must not leave anything either.
    let line = refused(t, what, &["net", "create", &p]);
    assert!(
        line.to_lowercase().contains(&needle.to_lowercase()),
        "{what} (create): error should mention {needle:?}: {line}"
    );
}

fn in_range(ip: Ipv4Addr, lo: Ipv4Addr, hi: Ipv4Addr) -> bool {
    (u32::from(lo)..=u32::from(hi)).contains(&u32::from(ip))
}

fn step(t0: Instant, what: &str) {
    eprintln!("[{:>6.2}s] {what}", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// 1. DHCP, static hosts, leases.

const LAN: &str = r#"
name = "lan"
bridge = "ndlan0"
[ipv4]
address = "10.51.0.1/24"
dhcp = { start = "10.51.0.100", end = "10.51.0.199" }
hosts = [{ mac = "52:54:00:51:00:50", ip = "10.51.0.50", name = "fixed" }]
"#;

#[test]
fn dhcp_lease_static_host_and_leases_listing() {
    require_netd!();
    let t0 = Instant::now();
    let mut t = topo("lifecycle_dhcp");
    define(&t, "lan", LAN);
    t.netd_ok(&["net", "start", "lan"]);
    step(t0, "network started");

    let dynamic = t.add_guest("ndlan0", None).expect("guest");
    let ip = dynamic.dhcp_with_hostname("dyn-a").expect("dhcp");
    step(t0, "dynamic guest leased");
    assert!(
        in_range(
            ip,
            Ipv4Addr::new(10, 51, 0, 100),
            Ipv4Addr::new(10, 51, 0, 199)
        ),
        "leased {ip} is outside the DHCP range"
    );
    let env = dynamic.dhcp_env();
    assert_eq!(env.get("router").map(String::as_str), Some("10.51.0.1"));
    assert_eq!(env.get("serverid").map(String::as_str), Some("10.51.0.1"));
    assert_eq!(dynamic.default_gateway(), Some(Ipv4Addr::new(10, 51, 0, 1)));

    let fixed = t
        .add_guest("ndlan0", Some("52:54:00:51:00:50"))
        .expect("guest");
    let fip = fixed.dhcp().expect("dhcp");
    step(t0, "static guest leased");
    assert_eq!(
        fip,
        Ipv4Addr::new(10, 51, 0, 50),
        "static host entry ignored"
    );

    dynamic.ns.ping_ok("10.51.0.1");
    fixed.ns.ping_ok("10.51.0.1");
    dynamic.ns.ping_ok(fip);
    step(t0, "pings done");

    // Table output: one row per guest with MAC, IP and host name.
    let table = t.netd_ok(&["leases", "lan"]);
    let header = table.lines().next().unwrap_or_default();
    for col in ["MAC", "IP", "HOSTNAME"] {
        assert!(header.contains(col), "leases header lacks {col}: {table}");
    }
    let row = |mac: &str| {
        table
            .lines()
            .find(|l| l.contains(mac))
            .unwrap_or_else(|| panic!("no lease row for {mac}:\n{table}"))
            .to_string()
    };
    let r = row(&dynamic.mac);
    assert!(
        r.contains(&ip.to_string()) && r.contains("dyn-a"),
        "bad row {r:?}"
    );
    let r = row("52:54:00:51:00:50");
    assert!(
        r.contains("10.51.0.50") && r.contains("fixed"),
        "bad row {r:?}"
    );
    assert_eq!(table.lines().count(), 3, "header + 2 leases:\n{table}");

    // JSON output.
    let leases = t.netd_json(&["leases", "lan"]);
    let leases = leases.as_array().expect("array");
    assert_eq!(leases.len(), 2, "{leases:#?}");
    let find = |mac: &str| {
        leases
            .iter()
            .find(|l| l["mac"].as_str() == Some(mac))
            .unwrap_or_else(|| panic!("no lease for {mac}: {leases:#?}"))
    };
    let l = find(&dynamic.mac);
    assert_eq!(l["ip"].as_str(), Some(ip.to_string().as_str()));
    assert_eq!(l["hostname"].as_str(), Some("dyn-a"));
    assert!(l["expiry"].as_u64().unwrap_or(0) > 0, "{l}");
    let l = find("52:54:00:51:00:50");
    assert_eq!(l["ip"].as_str(), Some("10.51.0.50"));
    assert_eq!(l["hostname"].as_str(), Some("fixed"));

    netd_err(&t, &["leases", "nosuch"]);
    step(t0, "done");
}

// ---------------------------------------------------------------------------
// 2. Live host entries.

const UPD: &str = r#"
name = "upd"
bridge = "ndupd0"
[ipv4]
address = "10.52.0.1/24"
dhcp = { start = "10.52.0.100", end = "10.52.0.199" }
"#;

#[test]
fn update_add_and_remove_host_without_restarting_dnsmasq() {
    require_netd!();
    let t0 = Instant::now();
    let mut t = topo("lifecycle_update");
    define(&t, "upd", UPD);
    t.netd_ok(&["net", "start", "upd"]);
    let pid = dnsmasq_pid(&t, "upd").expect("dnsmasq pid");
    let mac = "52:54:00:52:00:60";

    t.netd_ok(&[
        "net",
        "update",
        "upd",
        "add-host",
        "--mac",
        mac,
        "--ip",
        "10.52.0.60",
        "--name",
        "added",
    ]);
    step(t0, "host added");
    let dump = t.netd_ok(&["net", "dump", "upd"]);
    assert!(
        dump.contains(mac) && dump.contains("10.52.0.60"),
        "dump: {dump}"
    );
    // Persisted as one journal record beside the definition (folded into
    // the file at the next start), and in the definition the next start uses.
    let stored = fs::read_to_string(t.config_dir().join("networks/upd.journal")).unwrap();
    assert!(stored.contains(mac), "not persisted: {stored}");
    let inactive = t.netd_ok(&["net", "dump", "upd", "--inactive"]);
    assert!(inactive.contains(mac), "not persisted: {inactive}");

    let g = t.add_guest("ndupd0", Some(mac)).expect("guest");
    assert_eq!(g.dhcp().expect("dhcp"), Ipv4Addr::new(10, 52, 0, 60));
    g.ns.ping_ok("10.52.0.1");
    step(t0, "guest got the added address");
    assert_eq!(dnsmasq_pid(&t, "upd"), Some(pid), "dnsmasq was restarted");
    assert_eq!(info(&t, "upd")["dnsmasq_restarts"].as_u64(), Some(0));
    let leases = t.netd_json(&["leases", "upd"]);
    assert!(
        leases.as_array().unwrap().iter().any(|l| {
            l["mac"].as_str() == Some(mac)
                && l["ip"].as_str() == Some("10.52.0.60")
                && l["hostname"].as_str() == Some("added")
        }),
        "{leases:#}"
    );

    // Duplicates are refused.
    netd_err(
        &t,
        &[
            "net",
            "update",
            "upd",
            "add-host",
            "--mac",
            mac,
            "--ip",
            "10.52.0.61",
        ],
    );
    netd_err(
        &t,
        &[
            "net",
            "update",
            "upd",
            "add-host",
            "--mac",
            "52:54:00:52:00:61",
            "--ip",
            "10.52.0.60",
        ],
    );

    t.netd_ok(&[
        "net",
        "update",
        "upd",
        "remove-host",
        "--mac",
        mac,
        "--ip",
        "10.52.0.60",
    ]);
    step(t0, "host removed");
    let dump = t.netd_ok(&["net", "dump", "upd"]);
    assert!(!dump.contains(mac), "still in the definition: {dump}");
    let stored = fs::read_to_string(t.config_dir().join("networks/upd.toml")).unwrap();
    assert!(!stored.contains(mac), "still stored: {stored}");
    let inactive = t.netd_ok(&["net", "dump", "upd", "--inactive"]);
    assert!(!inactive.contains(mac), "still stored: {inactive}");
    let hosts = fs::read_to_string(t.run_dir().join("dnsmasq/upd.hostsfile")).unwrap();
    assert!(!hosts.contains(mac), "still in the hostsfile: {hosts}");
    assert_eq!(dnsmasq_pid(&t, "upd"), Some(pid), "dnsmasq was restarted");
    // Removing it again: nothing to remove.
    netd_err(
        &t,
        &[
            "net",
            "update",
            "upd",
            "remove-host",
            "--mac",
            mac,
            "--ip",
            "10.52.0.60",
        ],
    );

    // The entry is gone for dnsmasq too: the same MAC, from a fresh guest, now gets a
    // dynamic address.
    t.host.ip_ok(&["link", "del", &g.host_port]).unwrap();
    let g2 = t.add_guest("ndupd0", Some(mac)).expect("guest");
    let ip2 = g2.dhcp().expect("dhcp");
    step(t0, "guest got a dynamic address");
    assert!(
        in_range(
            ip2,
            Ipv4Addr::new(10, 52, 0, 100),
            Ipv4Addr::new(10, 52, 0, 199)
        ),
        "after remove-host the MAC still got {ip2}"
    );
    assert_eq!(dnsmasq_pid(&t, "upd"), Some(pid), "dnsmasq was restarted");

    // A stored but stopped network takes host entries too.
    t.netd_ok(&["net", "stop", "upd"]);
    t.netd_ok(&[
        "net",
        "update",
        "upd",
        "add-host",
        "--mac",
        mac,
        "--ip",
        "10.52.0.70",
    ]);
    t.netd_ok(&["net", "start", "upd"]);
    let hosts = fs::read_to_string(t.run_dir().join("dnsmasq/upd.hostsfile")).unwrap();
    assert!(
        hosts.contains(mac) && hosts.contains("10.52.0.70"),
        "{hosts}"
    );
    step(t0, "done");
}

// ---------------------------------------------------------------------------
// 3. Stop, transient networks, undefine.

const GONE: &str = r#"
name = "gone"
bridge = "ndgone0"
[ipv4]
address = "10.53.0.1/24"
dhcp = { start = "10.53.0.100", end = "10.53.0.199" }
"#;

const TRANS: &str = r#"
name = "trans"
bridge = "ndtrans0"
[ipv4]
address = "10.54.0.1/24"
dhcp = { start = "10.54.0.100", end = "10.54.0.199" }
"#;

#[track_caller]
fn assert_stopped_clean(t: &mut Topology, name: &str, bridge: &str, dnsmasq: u32) {
    assert!(
        !link_exists(t, bridge),
        "bridge {bridge} still exists after stop"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(dnsmasq)),
        "dnsmasq {dnsmasq} still alive after stop"
    );
    let daemon = t.daemon_pid().expect("daemon running");
    let pids = t.host.pids();
    assert_eq!(
        pids,
        vec![daemon as i32],
        "processes left in the host namespace besides the daemon"
    );
    assert_eq!(
        pinned_links(t, bridge),
        Vec::<String>::new(),
        "pinned links left"
    );
    assert_eq!(
        dnsmasq_files(t, name),
        Vec::<String>::new(),
        "dnsmasq files left"
    );
}

#[test]
fn stop_removes_everything_create_is_transient_undefine_removes_toml() {
    require_netd!();
    let t0 = Instant::now();
    let mut t = topo("lifecycle_stop");
    define(&t, "gone", GONE);
    assert!(t.config_dir().join("networks/gone.toml").is_file());
    t.netd_ok(&["net", "start", "gone"]);
    let pid = dnsmasq_pid(&t, "gone").expect("dnsmasq pid");
    assert!(pid_alive(pid));
    assert!(link_exists(&t, "ndgone0"));
    assert_eq!(
        pinned_links(&t, "ndgone0"),
        vec!["ndgone0:bridge_egress", "ndgone0:bridge_ingress"]
    );
    let files = dnsmasq_files(&t, "gone");
    assert!(
        files.contains(&"gone.conf".to_string()) && files.contains(&"gone.hostsfile".to_string()),
        "{files:?}"
    );
    assert!(t.host.pids().contains(&(pid as i32)));
    step(t0, "started");

    t.netd_ok(&["net", "stop", "gone"]);
    step(t0, "stopped");
    assert_stopped_clean(&mut t, "gone", "ndgone0", pid);
    // Stopped but still defined.
    let all = t.netd_json(&["net", "list", "--all"]);
    let entry = all
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "gone")
        .unwrap_or_else(|| panic!("gone missing from list --all: {all:#}"));
    assert_eq!(entry["active"], false);
    assert_eq!(entry["persistent"], true);
    let active = t.netd_json(&["net", "list"]);
    assert!(
        !active
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "gone"),
        "{active:#}"
    );

    // Transient: create starts it, stop forgets it.
    let p = def_file(&t, "trans", TRANS);
    t.netd_ok(&["net", "create", &p]);
    step(t0, "transient created");
    let i = info(&t, "trans");
    assert_eq!(i["active"], true);
    assert_eq!(i["persistent"], false);
    assert!(!t.config_dir().join("networks/trans.toml").exists());
    let tpid = i["dnsmasq_pid"].as_u64().expect("dnsmasq pid") as u32;
    let g = t.add_guest("ndtrans0", None).expect("guest");
    g.dhcp().expect("dhcp on the transient network");
    g.ns.ping_ok("10.54.0.1");
    // Not undefinable (it is not defined); stop instead.
    netd_err(&t, &["net", "undefine", "trans"]);
    t.netd_ok(&["net", "stop", "trans"]);
    step(t0, "transient stopped");
    assert_stopped_clean(&mut t, "trans", "ndtrans0", tpid);
    let all = t.netd_json(&["net", "list", "--all"]);
    assert!(
        !all.as_array().unwrap().iter().any(|n| n["name"] == "trans"),
        "transient network still listed after stop: {all:#}"
    );
    netd_err(&t, &["net", "info", "trans"]);
    netd_err(&t, &["net", "start", "trans"]);

    // Undefine removes the TOML.
    t.netd_ok(&["net", "undefine", "gone"]);
    assert!(!t.config_dir().join("networks/gone.toml").exists());
    let all = t.netd_json(&["net", "list", "--all"]);
    assert_eq!(all, serde_json::json!([]), "{all:#}");
    netd_err(&t, &["net", "start", "gone"]);
    let left: Vec<_> = fs::read_dir(t.config_dir().join("networks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "config dir not empty: {left:?}");
    step(t0, "done");
}

// ---------------------------------------------------------------------------
// 4. Bridge properties.

const PROPS: &str = r#"
name = "props"
bridge = "ndprops0"
mtu = 1400
stp = { enabled = false, delay = 0 }
[ipv4]
address = "10.55.0.1/24"
dhcp = { start = "10.55.0.100", end = "10.55.0.199" }
"#;

const STP: &str = r#"
name = "stpnet"
bridge = "ndstp0"
stp = { enabled = true, delay = 3 }
[ipv4]
address = "10.55.1.1/24"
"#;

const NONAME: &str = r#"
name = "noname"
[ipv4]
address = "10.55.2.1/24"
dhcp = { start = "10.55.2.100", end = "10.55.2.199" }
"#;

fn is_kvm_mac(m: &str) -> bool {
    m.len() == 17
        && m.starts_with("52:54:00:")
        && m.split(':')
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn bridge_mac_stp_mtu_and_default_name() {
    require_netd!();
    let t0 = Instant::now();
    let mut t = topo("lifecycle_bridge");
    define(&t, "props", PROPS);
    t.netd_ok(&["net", "start", "props"]);
    let l = link_details(&t, "ndprops0").expect("bridge exists");
    let mac = l["address"].as_str().unwrap().to_string();
    assert!(is_kvm_mac(&mac), "bridge MAC {mac}");
    assert_eq!(l["mtu"], 1400, "{l:#}");
    let kind = &l["linkinfo"]["info_kind"];
    assert_eq!(kind, "bridge");
    let data = &l["linkinfo"]["info_data"];
    assert_eq!(data["stp_state"], 0, "{data:#}");
    assert_eq!(data["forward_delay"], 0, "{data:#}");
    assert_eq!(data["nf_call_iptables"], 0, "{data:#}");
    assert_eq!(data["nf_call_ip6tables"], 0, "{data:#}");
    assert_eq!(data["nf_call_arptables"], 0, "{data:#}");
    assert_eq!(info(&t, "props")["mac"].as_str(), Some(mac.as_str()));
    // The bridge carries the gateway address.
    assert!(
        t.host
            .ipv4_addrs("ndprops0")
            .contains(&Ipv4Addr::new(10, 55, 0, 1))
    );
    // The MTU holds when a port with a bigger MTU joins; DHCP announces it.
    let g = t.add_guest("ndprops0", None).expect("guest");
    g.dhcp_args(&["-O", "mtu"]).expect("dhcp");
    assert_eq!(g.dhcp_env().get("mtu").map(String::as_str), Some("1400"));
    assert_eq!(link_details(&t, "ndprops0").unwrap()["mtu"], 1400);
    step(t0, "props checked");

    // Same MAC after stop/start (and after a daemon restart in between).
    t.netd_ok(&["net", "stop", "props"]);
    assert!(!link_exists(&t, "ndprops0"));
    t.restart_daemon().expect("restart");
    t.netd_ok(&["net", "start", "props"]);
    let l2 = link_details(&t, "ndprops0").expect("bridge exists");
    assert_eq!(l2["address"].as_str(), Some(mac.as_str()), "MAC changed");
    assert_eq!(l2["mtu"], 1400);
    step(t0, "MAC stable");

    // STP on, with a forward delay (iproute2 shows centiseconds).
    define(&t, "stpnet", STP);
    t.netd_ok(&["net", "start", "stpnet"]);
    let s = link_details(&t, "ndstp0").expect("bridge exists");
    let data = &s["linkinfo"]["info_data"];
    assert_ne!(data["stp_state"], 0, "{data:#}");
    assert_eq!(data["forward_delay"], 300, "{data:#}");
    assert_eq!(data["nf_call_iptables"], 0, "{data:#}");
    let smac = s["address"].as_str().unwrap();
    assert!(is_kvm_mac(smac) && smac != mac, "{smac} vs {mac}");

    // No bridge name: netd0, remembered in the definition.
    define(&t, "noname", NONAME);
    t.netd_ok(&["net", "start", "noname"]);
    let l = link_details(&t, "netd0").expect("netd0 exists");
    assert_eq!(l["linkinfo"]["info_kind"], "bridge");
    assert!(is_kvm_mac(l["address"].as_str().unwrap()));
    assert_eq!(info(&t, "noname")["bridge"].as_str(), Some("netd0"));
    let stored = fs::read_to_string(t.config_dir().join("networks/noname.toml")).unwrap();
    assert!(stored.contains("netd0"), "bridge name not kept: {stored}");
    let nmac = l["address"].as_str().unwrap().to_string();
    t.netd_ok(&["net", "stop", "noname"]);
    assert!(!link_exists(&t, "netd0"));
    t.netd_ok(&["net", "start", "noname"]);
    let l = link_details(&t, "netd0").expect("netd0 again");
    assert_eq!(l["address"].as_str(), Some(nmac.as_str()));
    step(t0, "done");
}

// ---------------------------------------------------------------------------
// 5. Daemon restart: adoption and autostart.

const KEEP: &str = r#"
name = "keep"
bridge = "ndkeep0"
[ipv4]
address = "10.56.0.1/24"
dhcp = { start = "10.56.0.100", end = "10.56.0.199" }
"#;

const AUTO: &str = r#"
name = "auto"
bridge = "ndauto0"
autostart = true
[ipv4]
address = "10.56.1.1/24"
dhcp = { start = "10.56.1.100", end = "10.56.1.199" }
"#;

const MANUAL: &str = r#"
name = "manual"
bridge = "ndman0"
[ipv4]
address = "10.56.2.1/24"
"#;

fn listed(t: &Topology, all: bool, name: &str) -> Option<Value> {
    let v = if all {
        t.netd_json(&["net", "list", "--all"])
    } else {
        t.netd_json(&["net", "list"])
    };
    v.as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
}

/// "N packets transmitted, M received" from ping's summary.
fn ping_counts(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {out}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn daemon_restart_adopts_running_networks_and_autostarts() {
    require_netd!();
    let t0 = Instant::now();
    let mut t = topo("lifecycle_restart");
    define(&t, "keep", KEEP);
    t.netd_ok(&["net", "start", "keep"]);
    let before = info(&t, "keep");
    let old_pid = before["dnsmasq_pid"].as_u64().expect("pid") as u32;
    let ifindex = before["bridge_ifindex"].as_u64().expect("ifindex");
    let g = t.add_guest("ndkeep0", None).expect("guest");
    let ip = g.dhcp().expect("dhcp");
    g.ns.ping_ok("10.56.0.1");
    step(t0, "keep running, guest up");

    // Ping every 0.1s through the restart.
    let ns = g.ns.clone();
    let pinger = std::thread::spawn(move || {
        ns.exec_timeout(
            &[
                "ping",
                "-n",
                "-i",
                "0.1",
                "-c",
                "60",
                "-W",
                "1",
                "10.56.0.1",
            ],
            Duration::from_secs(30),
        )
    });
    std::thread::sleep(Duration::from_millis(1000));
    t.restart_daemon().expect("restart");
    step(t0, "daemon restarted");
    let o = pinger.join().unwrap();
    let (sent, got) = ping_counts(&o.stdout);
    step(t0, &format!("ping across restart: {got}/{sent}"));
    assert_eq!(sent, 60, "{o}");
    assert_eq!(got, sent, "pings lost across the daemon restart: {o}");

    let after = info(&t, "keep");
    assert_eq!(after["active"], true, "{after:#}");
    assert_eq!(
        after["bridge_ifindex"].as_u64(),
        Some(ifindex),
        "bridge was recreated"
    );
    let new_pid = after["dnsmasq_pid"].as_u64().expect("new pid") as u32;
    assert!(pid_alive(new_pid));
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(old_pid)),
        "the old dnsmasq {old_pid} still runs"
    );
    assert_eq!(
        pinned_links(&t, "ndkeep0"),
        vec!["ndkeep0:bridge_egress", "ndkeep0:bridge_ingress"]
    );
    // The adopted dnsmasq serves DHCP with the old lease.
    assert_eq!(g.dhcp_args(&["-r", &ip.to_string()]).expect("dhcp"), ip);
    g.ns.ping_ok("10.56.0.1");
    // And the adopted network stops cleanly.
    t.netd_ok(&["net", "stop", "keep"]);
    assert_stopped_clean(&mut t, "keep", "ndkeep0", new_pid);
    step(t0, "adoption checked");

    // Autostart: a stopped autostart network comes up with the daemon; others don't.
    define(&t, "auto", AUTO);
    define(&t, "manual", MANUAL);
    let a = listed(&t, true, "auto").expect("auto listed");
    assert_eq!(a["autostart"], true);
    assert_eq!(a["active"], false);
    t.netd_ok(&["net", "start", "auto"]);
    t.netd_ok(&["net", "stop", "auto"]);
    t.stop_daemon();
    assert!(!link_exists(&t, "ndauto0"));
    t.start_daemon().expect("daemon");
    step(t0, "daemon started again");
    let a = listed(&t, false, "auto").expect("auto came up with the daemon");
    assert_eq!(a["active"], true);
    assert_eq!(a["autostart"], true);
    assert!(link_exists(&t, "ndauto0"));
    assert!(dnsmasq_pid(&t, "auto").is_some_and(pid_alive));
    assert!(
        listed(&t, false, "manual").is_none(),
        "manual network started"
    );
    assert_eq!(listed(&t, true, "manual").unwrap()["autostart"], false);
    assert_eq!(listed(&t, true, "keep").unwrap()["active"], false);

    // --disable is reflected in the listing and survives a restart.
    t.netd_ok(&["net", "autostart", "auto", "--disable"]);
    assert_eq!(listed(&t, false, "auto").unwrap()["autostart"], false);
    assert_eq!(listed(&t, true, "auto").unwrap()["autostart"], false);
    assert_eq!(info(&t, "auto")["autostart"], false);
    t.netd_ok(&["net", "autostart", "manual"]);
    assert_eq!(listed(&t, true, "manual").unwrap()["autostart"], true);
    t.netd_ok(&["net", "stop", "auto"]);
    t.restart_daemon().expect("restart");
    assert_eq!(
        listed(&t, true, "auto").unwrap()["active"],
        false,
        "autostart disabled"
    );
    assert_eq!(
        listed(&t, true, "manual").unwrap()["active"],
        true,
        "autostart enabled"
    );
    netd_err(&t, &["net", "autostart", "nosuch"]);
    step(t0, "done");
}

// ---------------------------------------------------------------------------
// 6. Bad input: exit 1, one `error:` line, nothing changed.

const BASE: &str = r#"
name = "base"
bridge = "ndbase0"
[ipv4]
address = "10.60.0.1/24"
dhcp = { start = "10.60.0.100", end = "10.60.0.199" }
hosts = [{ mac = "52:54:00:60:00:10", ip = "10.60.0.10", name = "ten" }]
"#;

const PARKED: &str = r#"
name = "parked"
bridge = "ndpark0"
[ipv4]
address = "10.61.0.1/24"
"#;

const USEBR9: &str = r#"
name = "usebr9"
bridge = "br9"
[ipv4]
address = "10.62.0.1/24"
dhcp = { start = "10.62.0.100", end = "10.62.0.199" }
"#;

/// A valid definition named `name` with `extra` lines in [ipv4].
fn v4def(name: &str, address: &str, extra: &str) -> String {
    format!("name = {name:?}\n[ipv4]\naddress = {address:?}\n{extra}\n")
}

#[test]
fn bad_input_is_refused_without_side_effects() {
    require_netd!();
    let t0 = Instant::now();
    let t = topo("lifecycle_bad_input");
    define(&t, "base", BASE);
    t.netd_ok(&["net", "start", "base"]);
    define(&t, "parked", PARKED);
    define(&t, "usebr9", USEBR9);
    t.host
        .ip_ok(&["route", "add", "10.77.0.0/16", "dev", UPLINK])
        .unwrap();
    t.host
        .ip_ok(&["link", "add", "name", "br9", "type", "bridge"])
        .unwrap();
    let br9 = link_details(&t, "br9").expect("br9");
    // Let the bridges settle (link-local addresses, operstate) before comparing.
    std::thread::sleep(Duration::from_millis(500));
    step(t0, "setup done");

    let dhcp = |s: &str, e: &str| format!("dhcp = {{ start = {s:?}, end = {e:?} }}");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "toml syntax",
            "name = \"syn\"\n[ipv4\naddress = \"10.63.0.1/24\"\n".into(),
            "invalid definition",
        ),
        (
            "unquoted value",
            "name = syn\n".into(),
            "invalid definition",
        ),
        (
            "unknown key",
            "name = \"unk\"\ncolour = \"blue\"\n[ipv4]\naddress = \"10.63.0.1/24\"\n".into(),
            "unknown field",
        ),
        (
            "unknown key in ipv4",
            v4def("unk4", "10.63.0.1/24", "gateway = \"10.63.0.1\""),
            "unknown field",
        ),
        (
            "range outside subnet",
            v4def("rng", "10.63.0.1/24", &dhcp("10.63.0.100", "10.63.1.20")),
            "outside the subnet",
        ),
        (
            "range entirely outside subnet",
            v4def("rng2", "10.63.0.1/24", &dhcp("10.64.0.100", "10.64.0.200")),
            "outside the subnet",
        ),
        (
            "reversed range",
            v4def("rev", "10.63.0.1/24", &dhcp("10.63.0.200", "10.63.0.100")),
            "reversed",
        ),
        (
            "host outside subnet",
            v4def(
                "hout",
                "10.63.0.1/24",
                "hosts = [{ mac = \"52:54:00:63:00:01\", ip = \"10.99.0.5\" }]",
            ),
            "outside the subnet",
        ),
        (
            "same MAC twice",
            v4def(
                "dmac",
                "10.63.0.1/24",
                "hosts = [{ mac = \"52:54:00:63:00:01\", ip = \"10.63.0.5\" }, { mac = \"52:54:00:63:00:01\", ip = \"10.63.0.6\" }]",
            ),
            "MAC",
        ),
        (
            "same MAC twice, different case",
            v4def(
                "dmac2",
                "10.63.0.1/24",
                "hosts = [{ mac = \"52:54:00:63:00:AB\", ip = \"10.63.0.5\" }, { mac = \"52:54:00:63:00:ab\", ip = \"10.63.0.6\" }]",
            ),
            "MAC",
        ),
        (
            "same IP twice",
            v4def(
                "dip",
                "10.63.0.1/24",
                "hosts = [{ mac = \"52:54:00:63:00:01\", ip = \"10.63.0.5\" }, { mac = \"52:54:00:63:00:02\", ip = \"10.63.0.5\" }]",
            ),
            "IP",
        ),
        (
            "overlaps a running network",
            v4def("ovl", "10.60.0.129/25", ""),
            "overlaps network",
        ),
        (
            "overlaps a defined network",
            v4def("ovl2", "10.61.7.1/16", ""),
            "overlaps network",
        ),
        (
            "overlaps a host route",
            v4def("ovr", "10.77.1.1/24", ""),
            "overlaps the host route",
        ),
        (
            "bridge of another network",
            "name = \"twin\"\nbridge = \"ndbase0\"\n[ipv4]\naddress = \"10.63.0.1/24\"\n".into(),
            "already used",
        ),
        (
            "name with slash",
            v4def("a/b", "10.63.0.1/24", ""),
            "network name",
        ),
        ("name ..", v4def("..", "10.63.0.1/24", ""), "network name"),
        (
            "name with ..",
            v4def("../../etc/x", "10.63.0.1/24", ""),
            "network name",
        ),
        (
            "name with space",
            v4def("has space", "10.63.0.1/24", ""),
            "network name",
        ),
        (
            "name with tab",
            v4def("has\ttab", "10.63.0.1/24", ""),
            "network name",
        ),
        (
            "name of 16 bytes",
            v4def("sixteen-bytes-xx", "10.63.0.1/24", ""),
            "longer than 15",
        ),
        ("empty name", v4def("", "10.63.0.1/24", ""), "network name"),
        (
            "bridge name of 16 bytes",
            "name = \"lbr\"\nbridge = \"bridge-name-16by\"\n[ipv4]\naddress = \"10.63.0.1/24\"\n"
                .into(),
            "longer than 15",
        ),
    ];
    for (what, text, needle) in &cases {
        refused_def(&t, what, text, needle);
    }
    step(t0, "definitions refused");

    // A file that is not there.
    let missing = t.dir.join("defs/missing.toml");
    refused(
        &t,
        "missing file",
        &["net", "define", missing.to_str().unwrap()],
    );

    // A bridge netd did not create: start fails and br9 is left exactly as it was.
    let line = refused(&t, "foreign bridge", &["net", "start", "usebr9"]);
    assert!(line.contains("br9"), "{line}");
    let br9_after = link_details(&t, "br9").expect("br9 must still exist");
    assert_eq!(br9["ifindex"], br9_after["ifindex"]);
    assert_eq!(br9["address"], br9_after["address"]);
    assert!(
        t.host.ipv4_addrs("br9").is_empty(),
        "netd put an address on br9"
    );
    assert_eq!(pinned_links(&t, "br9"), Vec::<String>::new());
    assert_eq!(dnsmasq_files(&t, "usebr9"), Vec::<String>::new());

    // Lifecycle commands in the wrong state or for unknown networks.
    refused(&t, "start running", &["net", "start", "base"]);
    refused(&t, "stop stopped", &["net", "stop", "parked"]);
    refused(&t, "stop unknown", &["net", "stop", "nosuch"]);
    refused(&t, "start unknown", &["net", "start", "nosuch"]);
    refused(&t, "undefine unknown", &["net", "undefine", "nosuch"]);
    refused(&t, "info unknown", &["net", "info", "nosuch"]);
    refused(
        &t,
        "create existing",
        &["net", "create", &def_file(&t, "base2", BASE)],
    );
    for name in ["a/b", "..", "has space", "sixteen-bytes-xx", ""] {
        for args in [
            &["net", "start", name][..],
            &["net", "stop", name],
            &["net", "undefine", name],
            &["net", "info", name],
            &["net", "autostart", name],
            &["leases", name],
        ] {
            let line = refused(&t, "bad name", args);
            assert!(line.contains("network name"), "{args:?}: {line}");
        }
    }

    // Live host edits that would break the definition.
    let upd = |args: &[&str]| {
        let mut a = vec!["net", "update", "base"];
        a.extend_from_slice(args);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    for (what, args) in [
        (
            "host outside subnet",
            upd(&[
                "add-host",
                "--mac",
                "52:54:00:60:00:20",
                "--ip",
                "10.99.0.20",
            ]),
        ),
        (
            "host on the gateway",
            upd(&[
                "add-host",
                "--mac",
                "52:54:00:60:00:20",
                "--ip",
                "10.60.0.1",
            ]),
        ),
        (
            "duplicate MAC",
            upd(&[
                "add-host",
                "--mac",
                "52:54:00:60:00:10",
                "--ip",
                "10.60.0.20",
            ]),
        ),
        (
            "duplicate IP",
            upd(&[
                "add-host",
                "--mac",
                "52:54:00:60:00:20",
                "--ip",
                "10.60.0.10",
            ]),
        ),
        (
            "bad MAC",
            upd(&["add-host", "--mac", "52:54:00:60:00", "--ip", "10.60.0.20"]),
        ),
        (
            "bad host name",
            upd(&[
                "add-host",
                "--mac",
                "52:54:00:60:00:20",
                "--ip",
                "10.60.0.20",
                "--name",
                "bad name",
            ]),
        ),
        (
            "remove missing host",
            upd(&[
                "remove-host",
                "--mac",
                "52:54:00:60:00:20",
                "--ip",
                "10.60.0.20",
            ]),
        ),
        (
            "remove with the wrong IP",
            upd(&[
                "remove-host",
                "--mac",
                "52:54:00:60:00:10",
                "--ip",
                "10.60.0.11",
            ]),
        ),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&t, what, &a);
    }
    step(t0, "commands refused");

    // Usage errors exit 2.
    let o = t.netd(&["net", "frobnicate"]);
    assert_eq!(o.status, 2, "{o}");
    assert!(!o.stderr.is_empty(), "{o}");
    let o = t.netd(&["net", "start"]);
    assert_eq!(o.status, 2, "{o}");

    // After all that, the daemon still works.
    let l = t.netd_json(&["net", "list", "--all"]);
    let names: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["base", "parked", "usebr9"]);
    t.netd_ok(&["net", "start", "parked"]);
    t.netd_ok(&["net", "stop", "parked"]);
    step(t0, "done");
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    require_netd!();
    let o = run_command(
        {
            let mut c = std::process::Command::new(netd_bin());
            c.args(["net", "frobnicate"]);
            c
        },
        Duration::from_secs(10),
    );
    assert_eq!(o.status, 2, "{o}");
    assert!(o.stderr.contains("frobnicate"), "{o}");
}

// ---------------------------------------------------------------------------
// 6b. Half-way failure: dnsmasq does not start, everything is rolled back.

const HALF: &str = r#"
name = "half"
[ipv4]
address = "10.65.0.1/24"
dhcp = { start = "10.65.0.100", end = "10.65.0.199" }
"#;

const HALF_NAMED: &str = r#"
name = "halfnamed"
bridge = "ndhalf1"
[ipv4]
address = "10.65.1.1/24"
dhcp = { start = "10.65.1.100", end = "10.65.1.199" }
"#;

const HALF_T: &str = r#"
name = "halft"
bridge = "ndhalft"
[ipv4]
address = "10.65.2.1/24"
dhcp = { start = "10.65.2.100", end = "10.65.2.199" }
"#;

fn half_way(t: &mut Topology, dnsmasq: &str) {
    let t0 = Instant::now();
    t.start_daemon_env(&[], &[("NETD_DNSMASQ", dnsmasq)])
        .expect("daemon");
    define(t, "half", HALF);
    define(t, "halfnamed", HALF_NAMED);
    let p = def_file(t, "halft", HALF_T);
    std::thread::sleep(Duration::from_millis(200));
    let links_before = fs::read_dir(t.bpffs().join("links")).unwrap().count();

    refused(
        t,
        "dnsmasq fails (chosen bridge name)",
        &["net", "start", "half"],
    );
    refused(t, "dnsmasq fails", &["net", "start", "halfnamed"]);
    refused(t, "dnsmasq fails (transient)", &["net", "create", &p]);
    step(t0, &format!("{dnsmasq}: starts refused"));
    for b in ["netd0", "ndhalf1", "ndhalft"] {
        assert!(!link_exists(t, b), "bridge {b} left behind");
        assert_eq!(pinned_links(t, b), Vec::<String>::new());
    }
    for n in ["half", "halfnamed", "halft"] {
        assert_eq!(dnsmasq_files(t, n), Vec::<String>::new());
    }
    assert_eq!(
        fs::read_dir(t.bpffs().join("links")).unwrap().count(),
        links_before,
        "uplink links left"
    );
    assert_eq!(t.host.pids(), vec![t.daemon_pid().unwrap() as i32]);
    let l = t.netd_json(&["net", "list", "--all"]);
    assert!(
        l.as_array().unwrap().iter().all(|n| n["active"] == false),
        "{l:#}"
    );
    assert!(
        !l.as_array().unwrap().iter().any(|n| n["name"] == "halft"),
        "{l:#}"
    );
    assert!(t.daemon_running(), "daemon died");
}

#[test]
fn failed_start_rolls_back_when_dnsmasq_exits() {
    require_netd!();
    let mut t = Topology::new("lifecycle_half_false").expect("topology");
    half_way(&mut t, "/bin/false");
    // With the real dnsmasq again, the same networks start (nothing left in the way).
    t.stop_daemon();
    t.start_daemon_env(&[], &[]).expect("daemon");
    t.netd_ok(&["net", "start", "half"]);
    t.netd_ok(&["net", "start", "halfnamed"]);
    assert!(link_exists(&t, "netd0") && link_exists(&t, "ndhalf1"));
}

#[test]
fn failed_start_rolls_back_when_dnsmasq_is_missing() {
    require_netd!();
    let mut t = Topology::new("lifecycle_half_missing").expect("topology");
    half_way(&mut t, "/nonexistent/dnsmasq");
}

// ---------------------------------------------------------------------------
// 7. The firewall is never touched.

const FW: &str = r#"
name = "fw"
bridge = "ndfw0"
[ipv4]
address = "10.66.0.1/24"
dhcp = { start = "10.66.0.100", end = "10.66.0.199" }
"#;

#[test]
fn firewall_is_identical_before_during_and_after() {
    require_netd!();
    let t0 = Instant::now();
    let mut t = Topology::new("lifecycle_firewall").expect("topology");
    // The owner's own rules, including a Docker-style FORWARD DROP.
    t.host.sh_ok(
        "iptables -P FORWARD DROP && \
         iptables -A INPUT -s 192.0.2.0/24 -j DROP && \
         iptables -t nat -A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE && \
         ip6tables -A INPUT -s 2001:db8:dead::/48 -j DROP && \
         nft add table inet owner && \
         nft add chain inet owner fwdchain '{ type filter hook forward priority 10; policy accept; }' && \
         nft add rule inet owner fwdchain counter",
    );
    let before = t.firewall_snapshot();
    assert!(
        before.contains("FORWARD DROP") && before.contains("table inet owner"),
        "{before}"
    );
    t.start_daemon().expect("daemon");
    define(&t, "fw", FW);
    t.netd_ok(&["net", "start", "fw"]);
    let g = t.add_guest("ndfw0", None).expect("guest");
    g.dhcp().expect("dhcp");
    g.ns.ping_ok("10.66.0.1");
    let during = t.firewall_snapshot();
    assert_eq!(before, during, "firewall changed while the network runs");
    step(t0, "running snapshot equal");
    t.restart_daemon().expect("restart");
    assert_eq!(before, t.firewall_snapshot(), "changed by a daemon restart");
    t.netd_ok(&["net", "stop", "fw"]);
    let after = t.firewall_snapshot();
    assert_eq!(before, after, "firewall changed by stop");
    t.netd_ok(&["net", "undefine", "fw"]);
    t.stop_daemon();
    assert_eq!(before, t.firewall_snapshot(), "changed by daemon exit");
    step(t0, "done");
}
