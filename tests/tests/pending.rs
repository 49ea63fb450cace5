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
    assert!(
        t.netd_ok(&["net", "info", "default"])
            .contains("Pending changes:  no")
    );

    // A new range for the running network: persistent only.
    let def = t.write_file("default-new.toml", NEW_RANGE);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    assert_eq!(info(&t)["pending_changes"], true);
    assert_eq!(info(&t)["dhcp_range"], "192.168.122.2-192.168.122.99");
    assert!(
        t.netd_ok(&["net", "info", "default"])
            .contains("Pending changes:  yes")
    );
    assert!(
        persistent(&t).contains("192.168.122.200"),
        "{}",
        persistent(&t)
    );
    assert!(live(&t).contains("192.168.122.99"), "{}", live(&t));

    // A live edit changes both sides and keeps the pending range (issue #11's bug).
    t.netd_ok(&[
        "forward",
        "add",
        "default",
        "--proto",
        "tcp",
        "--port",
        "8080",
        "--to",
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
    assert!(
        !file.contains("8080") && file.contains("192.168.122.200"),
        "{file}"
    );

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
    assert!(
        file.contains("8080") && file.contains("192.168.122.200"),
        "{file}"
    );
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
            "forward",
            "add",
            "default",
            "--proto",
            "tcp",
            "--port",
            port,
            "--to",
            "192.168.122.50",
        ];
        a.extend(flag);
        t.netd_ok(&a);
    };
    fwd("9090", Some("--live"));
    fwd("9191", Some("--config"));
    fwd("9292", None);
    let (l, p) = (live(&t), persistent(&t));
    assert!(
        l.contains("9090") && !l.contains("9191") && l.contains("9292"),
        "{l}"
    );
    assert!(
        !p.contains("9090") && p.contains("9191") && p.contains("9292"),
        "{p}"
    );
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
    assert!(
        hosts.contains("192.168.122.31") && !hosts.contains("192.168.122.32"),
        "{hosts}"
    );
    let (l, p) = (live(&t), persistent(&t));
    assert!(
        l.contains("192.168.122.31") && !l.contains("192.168.122.32"),
        "{l}"
    );
    assert!(
        !p.contains("192.168.122.31") && p.contains("192.168.122.32"),
        "{p}"
    );

    // Remove from one side only.
    t.netd_ok(&[
        "forward", "remove", "default", "--proto", "tcp", "--port", "9292", "--live",
    ]);
    assert!(!live(&t).contains("9292") && persistent(&t).contains("9292"));
    assert_eq!(installed_ports(&t), vec!["9090"]);

    // Both flags: a usage error; nothing changes.
    let before = (live(&t), persistent(&t));
    let o = t.netd(&[
        "forward",
        "add",
        "default",
        "--proto",
        "tcp",
        "--port",
        "9393",
        "--to",
        "192.168.122.50",
        "--live",
        "--config",
    ]);
    assert_eq!(o.status, 2, "{o}");
    assert_eq!(before, (live(&t), persistent(&t)));

    // --live on a stopped network: one line, exit 1, nothing changes.
    t.netd_ok(&["net", "stop", "default"]);
    let before = persistent(&t);
    let o = t.netd(&[
        "forward",
        "add",
        "default",
        "--proto",
        "tcp",
        "--port",
        "9494",
        "--to",
        "192.168.122.50",
        "--live",
    ]);
    assert_eq!(o.status, 1, "{o}");
    assert_eq!(o.stderr.lines().count(), 1, "{o}");
    assert!(
        o.stderr.starts_with("error: ") && o.stderr.contains("not running"),
        "{o}"
    );
    assert_eq!(before, persistent(&t));
    // A plain edit of a stopped network changes its persistent definition.
    fwd("9595", None);
    assert!(persistent(&t).contains("9595"));

    // The next start uses the persistent side: --live edits are gone.
    t.netd_ok(&["net", "start", "default"]);
    let l = live(&t);
    for (port, want) in [
        ("9090", false),
        ("9191", true),
        ("9292", true),
        ("9595", true),
    ] {
        assert_eq!(l.contains(port), want, "{port}: {l}");
    }
    assert!(
        !l.contains("192.168.122.31") && l.contains("192.168.122.32"),
        "{l}"
    );
    assert_eq!(info(&t)["pending_changes"], false);
}

#[test]
fn a_torn_journal_record_is_skipped_at_start() {
    require_netd!();
    let mut t = started();
    t.netd_ok(&[
        "forward",
        "add",
        "default",
        "--proto",
        "udp",
        "--port",
        "5353",
        "--to",
        "192.168.122.50",
    ]);
    t.stop_daemon();
    // The daemon died half way through appending a second record (the live
    // journal was folded into the run records at the clean stop: a new one).
    let rec =
        r#"{"op":"add-forwards","forwards":[{"proto":"tcp","port":"7070","to":"192.168.122.50"}]}"#;
    for path in [journal(&t), t.state_dir().join("live/default.journal")] {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        f.write_all(&rec.as_bytes()[..40]).unwrap();
    }
    t.start_daemon().expect("daemon starts with a torn journal");
    let (l, p) = (live(&t), persistent(&t));
    assert!(l.contains("5353") && !l.contains("7070"), "{l}");
    assert!(p.contains("5353") && !p.contains("7070"), "{p}");
    let log = t.daemon_log();
    assert!(log.contains("skipping a torn last record"), "{log}");
    // The next edit cuts the torn tail off first, so it reads back whole.
    t.netd_ok(&[
        "forward",
        "add",
        "default",
        "--proto",
        "tcp",
        "--port",
        "7171",
        "--to",
        "192.168.122.50",
    ]);
    t.restart_daemon().expect("restart");
    let p = persistent(&t);
    assert!(p.contains("5353") && p.contains("7171"), "{p}");
    assert_eq!(installed_ports(&t).len(), 2);
}

/// What one `forward add` costs on disk and in time, with few and with
/// many forwards: one appended line each, the definition file and the run
/// records untouched.
#[test]
fn an_edit_costs_one_line_whatever_the_number_of_forwards() {
    require_netd!();
    let t = started();
    let add = |port: u32| {
        let p = port.to_string();
        let t0 = std::time::Instant::now();
        t.netd_ok(&[
            "forward",
            "add",
            "default",
            "--proto",
            "tcp",
            "--port",
            &p,
            "--to",
            "192.168.122.50",
        ]);
        t0.elapsed()
    };
    let mean = |v: &[std::time::Duration]| v.iter().sum::<std::time::Duration>() / v.len() as u32;
    let few: Vec<_> = (1000..1020).map(add).collect();

    let mut text = String::new();
    for port in 20000..25000 {
        text.push_str(&format!(
            "[[forwards]]\nproto = \"udp\"\nport = \"{port}\"\nto = \"192.168.122.60\"\n"
        ));
    }
    let f = t.write_file("many.toml", &text);
    let t0 = std::time::Instant::now();
    t.netd_ok(&["forward", "import", "default", f.to_str().unwrap()]);
    eprintln!(
        "MEASURE forward import of 5000: {} ms",
        t0.elapsed().as_millis()
    );
    let def = t.config_dir().join("networks/default.toml");
    let run = t.state_dir().join("running.json");
    let stamp = |p: &std::path::Path| {
        let m = std::fs::metadata(p).unwrap();
        (
            m.modified().unwrap(),
            std::os::unix::fs::MetadataExt::ino(&m),
        )
    };
    let (def0, run0) = (stamp(&def), stamp(&run));
    let jlen = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (j0, l0) = (
        jlen(&journal(&t)),
        jlen(&t.state_dir().join("live/default.journal")),
    );
    let many: Vec<_> = (2000..2020).map(add).collect();
    assert_eq!(stamp(&def), def0, "definition rewritten by a live edit");
    assert_eq!(stamp(&run), run0, "run records rewritten by a live edit");
    let grew = jlen(&journal(&t)) - j0;
    let grew_live = jlen(&t.state_dir().join("live/default.journal")) - l0;
    assert!(grew < 20 * 120 && grew_live == grew, "{grew} {grew_live}");
    eprintln!(
        "MEASURE forward add (CLI round trip): mean {} ms with 20-40 forwards, {} ms with 5020-5040; {} bytes per journal record",
        mean(&few).as_millis(),
        mean(&many).as_millis(),
        grew / 20
    );
    let t0 = std::time::Instant::now();
    assert_eq!(installed_ports(&t).len(), 5040);
    eprintln!(
        "MEASURE forward list of 5040: {} ms",
        t0.elapsed().as_millis()
    );
}

/// A raw request on the control socket: (status line, body).
fn api(t: &Topology, method: &str, path: &str, body: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(t.socket()).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: netd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.lines().next().unwrap_or_default().to_string();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[test]
fn edits_that_cannot_apply_change_nothing() {
    require_netd!();
    let t = started();
    let snapshot = |t: &Topology| (live(t), persistent(t), installed_ports(t));
    let before = snapshot(&t);

    // The API refuses both scopes at once with a JSON error.
    let (status, body) = api(
        &t,
        "POST",
        "/v1/networks/default/forwards?live=true&config=true",
        r#"{"proto":"tcp","port":"8081","to":"192.168.122.50"}"#,
    );
    assert!(status.contains(" 400 "), "{status} {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("exclude each other"),
        "{body}"
    );
    assert_eq!(snapshot(&t), before);

    // A host already on the persistent side: refused for both sides.
    t.netd_ok(&[
        "net",
        "update",
        "default",
        "add-host",
        "--mac",
        "52:54:00:bb:00:01",
        "--ip",
        "192.168.122.41",
        "--config",
    ]);
    let before = snapshot(&t);
    let o = t.netd(&[
        "net",
        "update",
        "default",
        "add-host",
        "--mac",
        "52:54:00:bb:00:01",
        "--ip",
        "192.168.122.41",
    ]);
    assert_eq!(o.status, 1, "{o}");
    assert!(o.stderr.contains("already exists"), "{o}");
    assert_eq!(snapshot(&t), before);
    // Removing what neither side has; a forward outside the subnet.
    let o = t.netd(&[
        "forward", "remove", "default", "--proto", "tcp", "--port", "1", "--live",
    ]);
    assert_eq!(o.status, 1, "{o}");
    let o = t.netd(&[
        "forward", "add", "default", "--proto", "tcp", "--port", "8082", "--to", "10.0.0.5",
    ]);
    assert_eq!(o.status, 1, "{o}");
    assert_eq!(snapshot(&t), before);

    // A transient network has no persistent side.
    let tr = t.write_file(
        "tr.toml",
        "name = \"tr\"\nmode = \"nat\"\nbridge = \"trbr\"\n[ipv4]\naddress = \"10.77.0.1/24\"\n",
    );
    t.netd_ok(&["net", "create", tr.to_str().unwrap()]);
    for args in [
        vec!["net", "dump", "tr", "--inactive"],
        vec![
            "forward",
            "add",
            "tr",
            "--proto",
            "tcp",
            "--port",
            "8083",
            "--to",
            "10.77.0.5",
            "--config",
        ],
    ] {
        let o = t.netd(&args);
        assert_eq!(o.status, 1, "{o}");
        assert!(
            o.stderr.starts_with("error: ") && o.stderr.contains("transient"),
            "{o}"
        );
    }
    // A plain edit changes its live definition only; nothing is pending.
    t.netd_ok(&[
        "forward",
        "add",
        "tr",
        "--proto",
        "tcp",
        "--port",
        "8083",
        "--to",
        "10.77.0.5",
    ]);
    assert!(t.netd_ok(&["net", "dump", "tr"]).contains("8083"));
    assert_eq!(
        t.netd_json(&["net", "info", "tr"])["pending_changes"],
        false
    );
    assert!(!t.config_dir().join("networks/tr.journal").exists());
}
