//! End to end, with the real daemon: nothing let in. Hostile definitions,
//! host entries and API bodies are refused before any file is written or any
//! interface made (and a conf-script planted through them never runs);
//! oversized and deeply nested files are refused with one line and the
//! daemon stays up; a forward batch that does not fit the map is refused
//! whole; state files are private; the socket group works and a refused
//! client is told why.

use netd_tests::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One `POST`/`DELETE` straight to the socket, as any HTTP client could
/// send it. Returns (status, body).
fn raw_request(sock: &Path, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: netd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // A body past the limit may be cut off by the server's early answer.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // axum answers small bodies with content-length; nothing is chunked here.
    (status, body.to_string())
}

/// A refused CLI call: exit 1, one stderr line starting `error: `.
#[track_caller]
fn refused(o: &Output, what: &str) -> String {
    assert_eq!(o.status, 1, "{what}: expected a refusal, got {o}");
    let line = o.stderr.trim_end();
    assert!(
        line.starts_with("error: ") && !line.contains('\n'),
        "{what}: not one `error:` line: {:?}",
        o.stderr
    );
    line.to_string()
}

/// A refused API call: 4xx and a one-line JSON `{"error": ...}`.
#[track_caller]
fn refused_json(status: u16, body: &str, what: &str) -> String {
    assert!(
        (400..500).contains(&status),
        "{what}: status {status}: {body}"
    );
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body:?}"));
    let e = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error: {body}"));
    assert!(!e.contains(['\n', '\r']), "{what}: not one line: {e:?}");
    e.to_string()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn links(t: &Topology) -> String {
    t.host.ip_ok(&["-o", "link", "show"]).unwrap()
}

/// A definition with `value` (a TOML string body, already escaped) in one
/// field. Fields: (label in the error, where it goes).
fn injected(field: &str, value: &str) -> String {
    let v = |f: &str, dflt: &str| -> String {
        if f == field {
            value.to_string()
        } else {
            dflt.to_string()
        }
    };
    format!(
        r#"name = "{}"
mode = "nat"
bridge = "{}"
uplink = "{}"
[ipv4]
address = "192.168.77.1/24"
dhcp = {{ start = "192.168.77.10", end = "192.168.77.20", lease = "{}" }}
hosts = [{{ mac = "{}", ip = "192.168.77.5", name = "{}" }}]
[ipv6]
address = "fd00:77::1/64"
dhcp = {{ start = "fd00:77::10", end = "fd00:77::ff", lease = "{}" }}
hosts = [{{ duid = "{}", ip = "fd00:77::5", name = "{}" }}]
[dns]
domain = "{}"
hosts = [{{ ip = "192.168.77.6", names = ["{}"] }}]
"#,
        v("name", "inject"),
        v("bridge", "ndinj0"),
        v("uplink", UPLINK),
        v("ipv4.dhcp.lease", "1h"),
        v("ipv4.hosts[0].mac", "52:54:00:00:77:05"),
        v("ipv4.hosts[0].name", "web"),
        v("ipv6.dhcp.lease", "1h"),
        v("ipv6.hosts[0].duid", "00:01:00:01:aa:bb"),
        v("ipv6.hosts[0].name", "six"),
        v("dns.domain", "inject.netd"),
        v("dns.hosts[0].names[0]", "db"),
    )
}

const FIELDS: &[&str] = &[
    "name",
    "bridge",
    "uplink",
    "ipv4.dhcp.lease",
    "ipv4.hosts[0].mac",
    "ipv4.hosts[0].name",
    "ipv6.dhcp.lease",
    "ipv6.hosts[0].duid",
    "ipv6.hosts[0].name",
    "dns.domain",
    "dns.hosts[0].names[0]",
];

#[test]
fn injection_is_refused_and_no_script_runs() {
    require_netd!();
    let mut t = Topology::new("val_inject").expect("topology");
    t.start_daemon().expect("daemon");
    let marker = t.dir.join("defs").join("script-ran");
    let script = t.write_file("x.sh", &format!("#!/bin/sh\ntouch {}\n", marker.display()));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let payload = format!("a/#\\nconf-script={}\\n#", script.display());
    let links_before = links(&t);
    let mut runs = 0;

    // The valid definition is valid: the refusals below are the field's.
    config_sanity(&injected("", ""));

    for field in FIELDS {
        let def = t.write_file(&format!("inj-{runs}.toml"), &injected(field, &payload));
        for verb in ["define", "create"] {
            let o = t.netd(&["net", verb, def.to_str().unwrap()]);
            let line = refused(&o, &format!("{verb} with {field}"));
            assert!(
                line.starts_with(&format!("error: {field}: ")),
                "{verb} {field}: the error does not name the field: {line}"
            );
            runs += 1;
        }
    }

    // The same through libvirt XML: <domain name>, <host name>, <host mac>, <host id>.
    let xml = |domain: &str, hname: &str, hmac: &str, duid: &str| {
        format!(
            "<network><name>injx</name><forward mode='nat'/><domain name='{domain}'/>\
             <ip address='192.168.78.1' prefix='24'><dhcp><range start='192.168.78.10' end='192.168.78.20'/>\
             <host mac='{hmac}' name='{hname}' ip='192.168.78.5'/></dhcp></ip>\
             <ip family='ipv6' address='fd00:78::1' prefix='64'><dhcp><host id='{duid}' name='six' ip='fd00:78::5'/></dhcp></ip>\
             </network>"
        )
    };
    let xpay = format!("a/#&#10;conf-script={}&#10;#", script.display());
    let (d, n, m, u) = ("injx.netd", "web", "52:54:00:00:78:05", "0:1:0:1:aa:bb");
    for (label, text) in [
        ("<domain name>", xml(&xpay, n, m, u)),
        ("<host name>", xml(d, &xpay, m, u)),
        ("<host mac>", xml(d, n, &xpay, u)),
        ("<host id>", xml(d, n, m, &xpay)),
    ] {
        let def = t.write_file(&format!("inj-{runs}.xml"), &text);
        for verb in ["define", "create"] {
            let line = refused(&t.netd(&["net", verb, def.to_str().unwrap()]), label);
            assert!(
                line.starts_with(&format!("error: {label}: ")),
                "{label}: {line}"
            );
            runs += 1;
        }
    }

    // Raw API bodies: the definition text itself, and unknown fields.
    let sock = t.socket();
    for (field, text) in [
        ("dns.domain", injected("dns.domain", &payload)),
        (
            "ipv4.hosts[0].name",
            injected("ipv4.hosts[0].name", &payload),
        ),
    ] {
        let body = serde_json::json!({"text": text, "xml": false, "transient": true}).to_string();
        let (st, b) = raw_request(&sock, "POST", "/v1/networks", body.as_bytes());
        let e = refused_json(st, &b, field);
        assert!(e.starts_with(&format!("{field}: ")), "{e}");
        runs += 1;
    }
    let body = serde_json::json!({"text": injected("", ""), "xml": false, "transient": true, "conf_script": "/x"}).to_string();
    let (st, b) = raw_request(&sock, "POST", "/v1/networks", body.as_bytes());
    assert!(refused_json(st, &b, "unknown field").contains("unknown field"));
    runs += 1;

    // Nothing was written, made or run.
    let written = files_under(&t.config_dir());
    assert!(written.is_empty(), "definitions written: {written:?}");
    let dnsmasq = files_under(&t.run_dir().join("dnsmasq"));
    assert!(dnsmasq.is_empty(), "dnsmasq files written: {dnsmasq:?}");
    assert_eq!(links(&t), links_before, "an interface appeared");

    // A running network with dnsmasq: hostile live host entries, by the
    // CLI and by raw bodies, are refused and its host file stays as it was.
    let def = t.write_file("ok.toml", &injected("", ""));
    t.netd_ok(&["net", "create", def.to_str().unwrap()]);
    let hosts = t.run_dir().join("dnsmasq").join("inject.hostsfile");
    let hosts_before = std::fs::read_to_string(&hosts).expect("hostsfile");
    let conf_before = std::fs::read_to_string(t.run_dir().join("dnsmasq/inject.conf")).unwrap();
    let bad_name = format!("web\nconf-script={}", script.display());
    for (args, label) in [
        (
            vec![
                "--mac",
                "52:54:00:00:77:09",
                "--ip",
                "192.168.77.9",
                "--name",
                bad_name.as_str(),
            ],
            "--name",
        ),
        (
            vec![
                "--mac",
                "52:54:00:00:77:09\nconf-script=/x",
                "--ip",
                "192.168.77.9",
            ],
            "--mac",
        ),
        (
            vec![
                "--mac",
                "52:54:00:00:77:09",
                "--ip",
                "192.168.77.9",
                "--name=-web",
            ],
            "--name",
        ),
    ] {
        let mut a = vec!["net", "update", "inject", "add-host"];
        a.extend(args);
        let line = refused(&t.netd(&a), label);
        assert!(line.starts_with(&format!("error: {label}: ")), "{line}");
        runs += 1;
    }
    for (field, body) in [
        (
            "name",
            serde_json::json!({"add": true, "mac": "52:54:00:00:77:09", "ip": "192.168.77.9", "name": bad_name}),
        ),
        (
            "mac",
            serde_json::json!({"add": true, "mac": "52:54:00:00:77:09\nconf-script=/x", "ip": "192.168.77.9"}),
        ),
        (
            "name",
            serde_json::json!({"add": true, "mac": "52:54:00:00:77:09", "ip": "192.168.77.9", "name": "a#b"}),
        ),
        (
            "dhcp_script",
            serde_json::json!({"add": true, "mac": "52:54:00:00:77:09", "ip": "192.168.77.9", "dhcp_script": "/x"}),
        ),
    ] {
        let (st, b) = raw_request(
            &sock,
            "POST",
            "/v1/networks/inject/hosts",
            body.to_string().as_bytes(),
        );
        let e = refused_json(st, &b, field);
        assert!(
            e.starts_with(&format!("{field}: ")) || e.contains(&format!("unknown field `{field}`")),
            "{e}"
        );
        runs += 1;
    }
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), hosts_before);
    assert_eq!(
        std::fs::read_to_string(t.run_dir().join("dnsmasq/inject.conf")).unwrap(),
        conf_before
    );
    // dnsmasq ran its config at start and after every reload; give a
    // planted script every chance to show up.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "the planted conf-script ran");
    assert!(t.daemon_running());
    t.netd_ok(&["net", "stop", "inject"]);
    eprintln!("injection: {runs} hostile inputs refused, marker never ran");
}

/// The template parses in-process too (so a refusal above is never the
/// template's own fault).
fn config_sanity(text: &str) {
    netd::config::parse(text, false).expect("the template definition is valid");
}

#[test]
fn huge_and_deep_definitions_are_refused_and_the_daemon_stays_up() {
    require_netd!();
    let mut t = Topology::new("val_huge").expect("topology");
    t.start_daemon().expect("daemon");
    let defs = t.dir.join("defs");
    std::fs::create_dir_all(&defs).unwrap();

    // 10,000 nested elements inside <network>: the daemon's old stack overflow.
    let deep = format!(
        "<network><name>deep</name>{}{}</network>",
        "<a>".repeat(10_000),
        "</a>".repeat(10_000)
    );
    let p = defs.join("deep.xml");
    std::fs::write(&p, &deep).unwrap();
    let line = refused(&t.netd(&["net", "define", p.to_str().unwrap()]), "deep XML");
    assert!(line.contains("nested deeper than"), "{line}");
    // Straight to the API too, bypassing the CLI.
    let body = serde_json::json!({"text": deep, "xml": true, "transient": false}).to_string();
    let (st, b) = raw_request(&t.socket(), "POST", "/v1/networks", body.as_bytes());
    assert!(refused_json(st, &b, "deep XML body").contains("nested deeper than"));

    // 100 MB, made here and removed after: the CLI reads at most 1 MiB + 1.
    let big = defs.join("big.xml");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        f.write_all(b"<network><name>big</name>\n").unwrap();
        let chunk =
            b"<!-- padding padding padding padding padding padding padding -->\n".repeat(16 * 1024);
        let mut n = 0;
        while n < 100 * 1024 * 1024 {
            f.write_all(&chunk).unwrap();
            n += chunk.len();
        }
        f.write_all(b"</network>\n").unwrap();
    }
    let t0 = std::time::Instant::now();
    let line = refused(&t.netd(&["net", "define", big.to_str().unwrap()]), "100 MB");
    assert!(line.contains("larger than"), "{line}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    std::fs::remove_file(&big).unwrap();

    // Bodies: past the 1 MiB definition limit but under the body limit,
    // and past the body limit (413).
    let text = format!("name = \"x\"\n{}", "# pad\n".repeat(200_000));
    let body = serde_json::json!({"text": text, "xml": false, "transient": false}).to_string();
    let (st, b) = raw_request(&t.socket(), "POST", "/v1/networks", body.as_bytes());
    assert!(refused_json(st, &b, "1.2 MB text").contains("larger than"));
    let body = vec![b' '; 3 << 20];
    let (st, b) = raw_request(&t.socket(), "POST", "/v1/networks", &body);
    assert_eq!(st, 413, "{b}");
    refused_json(st, &b, "3 MiB body");
    // The forwards endpoint decodes its (batch) body itself: same answer.
    let (st, b) = raw_request(&t.socket(), "POST", "/v1/networks/x/forwards", &body);
    assert_eq!(st, 413, "{b}");
    refused_json(st, &b, "3 MiB forwards body");
    // A 100,000-deep TOML array and JSON nesting.
    let toml_deep = format!(
        "name = \"x\"\na = {}{}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let p = defs.join("deep.toml");
    std::fs::write(&p, &toml_deep).unwrap();
    refused(
        &t.netd(&["net", "define", p.to_str().unwrap()]),
        "deep TOML",
    );
    let json_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (st, b) = raw_request(&t.socket(), "POST", "/v1/networks", json_deep.as_bytes());
    refused_json(st, &b, "deep JSON");

    // Query strings and unknown endpoints answer in one-line JSON too.
    for (method, path) in [
        ("GET", "/v1/networks?all=maybe"),
        ("GET", "/v1/networks?colour=1"),
        ("GET", "/v1/networks/x/dump?xml=1&inactive=2"),
        ("GET", "/v1/no-such-thing"),
        ("GET", "/v1/networks/%ff%fe/dump"),
    ] {
        let (st, b) = raw_request(&t.socket(), method, path, b"");
        refused_json(st, &b, path);
    }

    assert!(t.daemon_running(), "the daemon died");
    t.netd_ok(&["net", "list", "--all"]);
    assert!(files_under(&t.config_dir()).is_empty());
}

#[test]
fn bad_bridge_names_create_nothing() {
    require_netd!();
    let mut t = Topology::new("val_bridge").expect("topology");
    t.start_daemon().expect("daemon");
    let before = links(&t);
    let mut n = 0;
    for bad in [
        "a\\u0000b",
        "a/b",
        "a\\nb",
        "-a",
        "--help",
        "a b",
        "a:b",
        "sixteen-bytes-xx",
        "a\\tb",
        ".",
        "..",
        "a#b",
        "a\\\\b",
        "",
    ] {
        let def = t.write_file(
            &format!("br{n}.toml"),
            &format!(
                "name = \"br{n}\"\nmode = \"isolated\"\nbridge = \"{bad}\"\n[ipv4]\naddress = \"10.{n}.0.1/24\"\n"
            ),
        );
        for verb in ["define", "create"] {
            let line = refused(&t.netd(&["net", verb, def.to_str().unwrap()]), bad);
            assert!(line.starts_with("error: bridge: "), "{bad}: {line}");
        }
        n += 1;
    }
    assert_eq!(links(&t), before, "an interface was created");
    assert!(files_under(&t.config_dir()).is_empty());
    assert!(t.daemon_running());
    eprintln!("bridge names: {n} bad names x 2 verbs refused; links unchanged");
}

const FWD_NET: &str = r#"
name = "fwd"
mode = "nat"
bridge = "ndfwd0"
[ipv4]
address = "192.168.88.1/24"
"#;

fn snapshot(t: &Topology) -> (String, String, String) {
    (
        t.netd_ok(&["net", "dump", "fwd"]),
        t.netd_ok(&["forward", "list", "fwd", "-o", "json"]),
        {
            let o = t.netd_bpf(&["forwards", "list", "-o", "json"]);
            assert!(o.success(), "{o}");
            o.stdout
        },
    )
}

#[test]
fn forward_map_overflow_is_refused_whole_and_impossible_forwards_too() {
    require_netd!();
    let mut t = Topology::new("val_fwdmax").expect("topology");
    t.start_daemon_with(&["--forwards-max", "64"])
        .expect("daemon");
    let def = t.write_file("fwd.toml", FWD_NET);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "fwd"]);
    // 60 of 64: one forward of 60 ports on the uplink's address.
    t.netd_ok(&[
        "forward",
        "add",
        "fwd",
        "--proto",
        "tcp",
        "--port",
        "1000-1059",
        "--to",
        "192.168.88.10:1000-1059",
    ]);
    let before = snapshot(&t);
    let entries: serde_json::Value = serde_json::from_str(&before.2).unwrap();
    assert_eq!(
        entries.as_array().map(|a| a.len()),
        Some(60),
        "{}",
        before.2
    );

    // A batch that needs 12 more: refused whole.
    let batch = t.write_file(
        "batch.toml",
        "[[forwards]]\nproto = \"udp\"\nport = \"2000-2001\"\nto = \"192.168.88.11\"\n\
         [[forwards]]\nproto = \"udp\"\nport = \"3000-3009\"\nto = \"192.168.88.12\"\n",
    );
    let line = refused(
        &t.netd(&["forward", "import", "fwd", batch.to_str().unwrap()]),
        "batch",
    );
    assert_eq!(
        line,
        "error: forward map full: 60 of 64 entries in use, 12 more needed; nothing was added (raise netd daemon --forwards-max)"
    );
    assert_eq!(snapshot(&t), before, "the batch left something behind");
    // One forward of 5 ports when 4 are free.
    let line = refused(
        &t.netd(&[
            "forward",
            "add",
            "fwd",
            "--proto",
            "udp",
            "--port",
            "4000-4004",
            "--to",
            "192.168.88.13",
        ]),
        "5 ports",
    );
    assert!(
        line.contains("60 of 64 entries in use, 5 more needed"),
        "{line}"
    );
    assert_eq!(snapshot(&t), before);

    // Requests that can never work.
    let mut n = 0;
    for (args, field) in [
        (vec!["--port", "80", "--to", "192.168.88.0"], "forward to"),
        (vec!["--port", "80", "--to", "192.168.88.255"], "forward to"),
        (vec!["--port", "80", "--to", "192.168.88.1"], "forward to"),
        (vec!["--port", "80", "--to", "10.9.9.9"], "forward to"),
        (
            vec![
                "--port",
                "80",
                "--to",
                "192.168.88.10",
                "--address",
                "0.0.0.0",
            ],
            "forward address",
        ),
        (
            vec![
                "--port",
                "80",
                "--to",
                "192.168.88.10",
                "--address",
                "255.255.255.255",
            ],
            "forward address",
        ),
        (
            vec![
                "--port",
                "80",
                "--to",
                "192.168.88.10",
                "--address",
                "192.168.88.1",
            ],
            "forward address",
        ),
        (
            vec![
                "--port",
                "80",
                "--to",
                "192.168.88.10",
                "--address",
                "127.0.0.1",
            ],
            "forward address",
        ),
        (
            vec![
                "--port",
                "80",
                "--to",
                "192.168.88.10",
                "--address",
                "224.0.0.1",
            ],
            "forward address",
        ),
        (vec!["--port", " 81", "--to", "192.168.88.10"], "--port"),
        (vec!["--port", "+81", "--to", "192.168.88.10"], "--port"),
        (vec!["--port", "81", "--to", "192.168.88.10: 81"], "--to"),
    ] {
        let mut a = vec!["forward", "add", "fwd", "--proto", "tcp"];
        a.extend(args);
        let line = refused(&t.netd(&a), field);
        assert!(line.starts_with(&format!("error: {field}: ")), "{line}");
        n += 1;
    }
    // The same through raw bodies: one line, the field named.
    for (body, field) in [
        (
            r#"{"proto":"tcp","port":" 81","to":"192.168.88.10"}"#,
            "port",
        ),
        (
            r#"{"proto":"gre","port":"81","to":"192.168.88.10"}"#,
            "proto",
        ),
        (
            r#"{"proto":"tcp","port":"81","to":"192.168.88.10","adress":"198.51.100.2"}"#,
            "adress",
        ),
        (
            r#"{"forwards":[{"proto":"tcp","port":"81","to":"192.168.88.10"},{"proto":"tcp","port":"82","to":"192.168.88.10:"}]}"#,
            "forwards[1].to",
        ),
    ] {
        let (st, b) = raw_request(
            &t.socket(),
            "POST",
            "/v1/networks/fwd/forwards",
            body.as_bytes(),
        );
        let e = refused_json(st, &b, body);
        assert!(
            e.starts_with(&format!("{field}: ")) || e.contains(&format!("`{field}`")),
            "{e}"
        );
        n += 1;
    }
    assert_eq!(snapshot(&t), before, "a refused forward changed something");
    // Nothing refused was kept anywhere: a restart re-applies the same.
    t.restart_daemon().expect("restart");
    assert_eq!(snapshot(&t), before, "after a restart");
    assert!(t.daemon_running());
    eprintln!(
        "forwards: 2 overflows and {n} impossible forwards refused; definition and map unchanged"
    );
}

#[test]
fn gre_in_bpf_filters_is_a_usage_error() {
    require_netd!();
    for args in [
        vec!["bpf", "forwards", "list", "--proto", "gre"],
        vec!["bpf", "ct", "list", "--proto", "gre"],
        vec!["bpf", "nat", "list", "--proto", "gre"],
    ] {
        let o = std::process::Command::new(netd_bin())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("gre"), "{o:?}");
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn state_files_are_private() {
    require_netd!();
    let mut t = Topology::new("val_modes").expect("topology");
    // Open the test's own folder to others, so only netd's modes stand
    // between uid 65534 and the files below.
    let m = mode_of(&t.dir);
    std::fs::set_permissions(&t.dir, std::fs::Permissions::from_mode(m | 0o005)).unwrap();
    t.start_daemon().expect("daemon");
    let def = t.write_file("m.toml", &injected("", ""));
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "inject"]);
    t.netd_ok(&[
        "forward",
        "add",
        "inject",
        "--proto",
        "tcp",
        "--port",
        "8080",
        "--to",
        "192.168.77.5",
    ]);
    let (c, s, r) = (t.config_dir(), t.state_dir(), t.run_dir());
    let want = [
        (c.join("networks"), 0o700),
        (c.join("networks/inject.toml"), 0o600),
        (s.clone(), 0o700),
        (s.join("macs"), 0o700),
        (s.join("macs/inject"), 0o600),
        (s.join("running.json"), 0o600),
        // dnsmasq, after dropping root, passes through to its host files.
        (r.clone(), 0o711),
    ];
    for (p, m) in &want {
        assert_eq!(mode_of(p), *m, "{}: {:o}", p.display(), mode_of(p));
    }
    // Every file netd writes under config and state is 0600. (dnsmasq
    // writes the lease file itself; the 0700 state dir above keeps it.)
    for f in files_under(&c).into_iter().chain(files_under(&s)) {
        if f.starts_with(s.join("leases")) {
            continue;
        }
        assert_eq!(
            mode_of(&f) & 0o077,
            0,
            "{} is readable by others ({:o})",
            f.display(),
            mode_of(&f)
        );
    }
    // The network works with these modes: dnsmasq answers DHCP, and a
    // live host entry (SIGHUP, reread as dnsmasq's own user) still works.
    let g = t.add_guest("ndinj0", Some("52:54:00:00:77:05")).unwrap();
    assert_eq!(
        g.dhcp()
            .expect("a lease with private state dirs")
            .to_string(),
        "192.168.77.5"
    );
    t.netd_ok(&[
        "net",
        "update",
        "inject",
        "add-host",
        "--mac",
        "52:54:00:00:77:07",
        "--ip",
        "192.168.77.7",
        "--name",
        "seven",
    ]);
    let g2 = t.add_guest("ndinj0", Some("52:54:00:00:77:07")).unwrap();
    assert_eq!(
        g2.dhcp()
            .expect("a lease after a live add-host")
            .to_string(),
        "192.168.77.7"
    );
    // Nobody but root reads the leases (MACs, host names) or definitions.
    for f in [
        s.join("leases/inject.leases"),
        c.join("networks/inject.toml"),
        s.join("running.json"),
    ] {
        assert!(f.exists(), "{}", f.display());
        let o = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(!o.status.success(), "uid 65534 read {}", f.display());
    }
    t.netd_ok(&["net", "stop", "inject"]);
    eprintln!("modes: {} paths checked", want.len());
}

/// `netd` as uid 65534 with the given primary group, no supplementary ones.
fn as_nobody(bin: &Path, sock: &Path, gid: u32) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
        .arg(bin)
        .arg("--socket")
        .arg(sock)
        .args(["net", "list"])
        .output()
        .unwrap()
}

#[test]
fn socket_group_and_the_refusal_text() {
    require_netd!();
    let mut t = Topology::new("val_sock").expect("topology");
    // uid 65534 must reach the binary and the socket's folder.
    let bin = t.dir.join("netd-client");
    std::fs::copy(netd_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in t.dir.ancestors().take(3) {
        let m = mode_of(d);
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(m | 0o001)).unwrap();
    }
    t.start_daemon().expect("daemon");
    let sock = t.socket();
    assert_eq!(mode_of(&sock), 0o600);
    let o = as_nobody(&bin, &sock, 65534);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        format!(
            "error: permission denied on {} (root needed)",
            sock.display()
        )
    );

    t.stop_daemon();
    t.start_daemon_with(&["--socket-group", "nogroup"])
        .expect("daemon");
    assert_eq!(mode_of(&sock), 0o660);
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&sock).unwrap().gid(), 65534);
    }
    // A member of the group gets in...
    let o = as_nobody(&bin, &sock, 65534);
    assert!(o.status.success(), "{o:?}");
    // ...anyone else is told what is needed.
    let o = as_nobody(&bin, &sock, 1);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        format!(
            "error: permission denied on {} (root or group nogroup needed)",
            sock.display()
        )
    );
    // An unknown group stops the daemon at start, with a line.
    t.stop_daemon();
    let e = t
        .start_daemon_with(&["--socket-group", "no-such-group-x"])
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("no group named \"no-such-group-x\""),
        "{e:#}"
    );
}
