//! Every string field of a definition (TOML and libvirt XML) and of every
//! API body gets a newline, a NUL, '#' and '\' (and CR, a space, '/'): each
//! is refused with one line that names the field. No root needed: these go
//! through the same parse and decode functions the daemon and CLI use.

use netd::api::server::{decode, decode_forward_add};
use netd::api::wire::{AutostartRequest, DefineRequest, ForwardRequest, HostRequest};
use netd::config;

/// The characters the issue names, plus CR, space and '/'.
const HOSTILE: [char; 7] = ['\n', '\0', '#', '\\', '\r', ' ', '/'];

/// A definition that uses every field, each value a distinct token so one
/// can be replaced at a time. (field path in the error, token)
const FIELDS: &[(&str, &str)] = &[
    ("name", "hostile"),
    ("mode", "nat"),
    ("bridge", "virbr9"),
    ("uplink", "uplink0"),
    ("mac", "52:54:00:00:00:09"),
    ("nat.ports", "1024-65535"),
    ("nat.address", "198.51.100.9"),
    ("ipv4.address", "192.168.99.1/24"),
    ("ipv4.dhcp.start", "192.168.99.10"),
    ("ipv4.dhcp.end", "192.168.99.200"),
    ("ipv4.dhcp.lease", "1h"),
    ("ipv4.hosts[0].mac", "52:54:00:00:00:10"),
    ("ipv4.hosts[0].ip", "192.168.99.222"),
    ("ipv4.hosts[0].name", "web"),
    ("ipv6.address", "fd00:99::1/64"),
    ("ipv6.dhcp.start", "fd00:99::10"),
    ("ipv6.dhcp.end", "fd00:99::ff"),
    ("ipv6.dhcp.lease", "2h"),
    ("ipv6.hosts[0].duid", "00:01:00:01:2a:3b:4c:5d"),
    ("ipv6.hosts[0].ip", "fd00:99::22"),
    ("ipv6.hosts[0].name", "six"),
    ("dns.domain", "hostile.netd"),
    ("dns.hosts[0].ip", "192.168.99.5"),
    ("dns.hosts[0].names[0]", "db"),
    ("dns.hosts[0].names[1]", "db.lan"),
    ("forwards[0].proto", "tcp"),
    ("forwards[0].port", "8080"),
    ("forwards[0].to", "192.168.99.222:80"),
    ("forwards[0].address", "198.51.100.2"),
];

fn definition(field: usize, value: &str) -> String {
    let v = |i: usize| -> String {
        let raw = if i == field { value } else { FIELDS[i].1 };
        toml_string(raw)
    };
    format!(
        r#"name = {}
mode = {}
bridge = {}
uplink = {}
mac = {}
[nat]
ports = {}
address = {}
[ipv4]
address = {}
dhcp = {{ start = {}, end = {}, lease = {} }}
hosts = [{{ mac = {}, ip = {}, name = {} }}]
[ipv6]
address = {}
dhcp = {{ start = {}, end = {}, lease = {} }}
hosts = [{{ duid = {}, ip = {}, name = {} }}]
[dns]
domain = {}
hosts = [{{ ip = {}, names = [{}, {}] }}]
[[forwards]]
proto = {}
port = {}
to = {}
address = {}
"#,
        v(0),
        v(1),
        v(2),
        v(3),
        v(4),
        v(5),
        v(6),
        v(7),
        v(8),
        v(9),
        v(10),
        v(11),
        v(12),
        v(13),
        v(14),
        v(15),
        v(16),
        v(17),
        v(18),
        v(19),
        v(20),
        v(21),
        v(22),
        v(23),
        v(24),
        v(25),
        v(26),
        v(27),
        v(28)
    )
}

/// A TOML basic string holding exactly `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value with a hostile character in the middle and at the end.
fn spoiled(v: &str, c: char) -> [String; 2] {
    let mid = v.len() / 2;
    [format!("{}{c}{}", &v[..mid], &v[mid..]), format!("{v}{c}")]
}

#[test]
fn the_template_definition_is_valid() {
    let net = config::parse(&definition(usize::MAX, ""), false).expect("template");
    assert_eq!(net.forwards.len(), 1);
    let net = config::parse(&config::xml::to_libvirt(&net), true).expect("exported XML");
    assert_eq!(net.name, "hostile");
}

#[test]
fn every_toml_field_refuses_hostile_characters() {
    let mut refused = 0;
    for (i, (path, token)) in FIELDS.iter().enumerate() {
        for c in HOSTILE {
            for bad in spoiled(token, c) {
                let text = definition(i, &bad);
                let e = match config::parse(&text, false) {
                    Ok(_) => panic!("{path} = {bad:?} was accepted"),
                    Err(e) => format!("{e:#}"),
                };
                assert!(
                    !e.contains(['\n', '\r', '\0']),
                    "{path} {bad:?}: not one line: {e:?}"
                );
                assert!(
                    e.starts_with(&format!("{path}:")),
                    "{path} = {bad:?}: the error does not name the field: {e}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(refused, FIELDS.len() * HOSTILE.len() * 2);
    eprintln!("toml: {refused} hostile values refused, each naming its field");
}

/// libvirt XML attributes (and the <name> text): (element, attribute, XML).
fn xml_cases() -> Vec<(&'static str, String)> {
    let base = |name: &str,
                bridge: &str,
                dev: &str,
                mode: &str,
                mac: &str,
                mtu: &str,
                domain: &str,
                ip: &str,
                prefix: &str,
                start: &str,
                end: &str,
                hmac: &str,
                hname: &str,
                hip: &str,
                expiry: &str,
                nataddr: &str,
                natport: &str,
                v6: &str,
                duid: &str,
                h6name: &str,
                stp: &str,
                delay: &str| {
        format!(
            r#"<network>
  <name>{name}</name>
  <forward mode='{mode}' dev='{dev}'>
    <nat><address start='{nataddr}' end='{nataddr}'/><port start='{natport}' end='65535'/></nat>
  </forward>
  <bridge name='{bridge}' stp='{stp}' delay='{delay}'/>
  <mac address='{mac}'/>
  <mtu size='{mtu}'/>
  <domain name='{domain}'/>
  <ip address='{ip}' prefix='{prefix}'>
    <dhcp>
      <range start='{start}' end='{end}'><lease expiry='{expiry}' unit='minutes'/></range>
      <host mac='{hmac}' name='{hname}' ip='{hip}'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='{v6}' prefix='64'>
    <dhcp><host id='{duid}' name='{h6name}' ip='fd00:99::22'/></dhcp>
  </ip>
</network>"#
        )
    };
    let good: [&str; 22] = [
        "hostile",
        "virbr9",
        "uplink0",
        "nat",
        "52:54:00:00:00:09",
        "1500",
        "hostile.netd",
        "192.168.99.1",
        "24",
        "192.168.99.10",
        "192.168.99.200",
        "52:54:00:00:00:10",
        "web",
        "192.168.99.222",
        "60",
        "198.51.100.9",
        "1024",
        "fd00:99::1",
        "0:1:0:1:2a:3b:4c:5d",
        "six",
        "on",
        "0",
    ];
    let labels = [
        "<name>",
        "<bridge name>",
        "<forward dev>",
        "<forward mode>",
        "<mac address>",
        "<mtu size>",
        "<domain name>",
        "<ip address>",
        "<ip prefix>",
        "<range start>",
        "<range end>",
        "<host mac>",
        "<host name>",
        "<host ip>",
        "<lease expiry>",
        "<address start>",
        "<port start>",
        "<ip address>",
        "<host id>",
        "<host name>",
        "<bridge stp>",
        "<bridge delay>",
    ];
    let build = |vals: &[String]| {
        base(
            &vals[0], &vals[1], &vals[2], &vals[3], &vals[4], &vals[5], &vals[6], &vals[7],
            &vals[8], &vals[9], &vals[10], &vals[11], &vals[12], &vals[13], &vals[14], &vals[15],
            &vals[16], &vals[17], &vals[18], &vals[19], &vals[20], &vals[21],
        )
    };
    let good_vals: Vec<String> = good.iter().map(|s| s.to_string()).collect();
    let mut out = vec![("valid", build(&good_vals))];
    for i in 0..good.len() {
        for c in HOSTILE {
            // XML has no NUL, even as &#0;: that is refused as invalid XML.
            let enc = match c {
                '\n' => "&#10;".to_string(),
                '\r' => "&#13;".to_string(),
                '\0' => "&#0;".to_string(),
                c => c.to_string(),
            };
            for pos in [0, 1] {
                let mut vals = good_vals.clone();
                let v = &good[i];
                vals[i] = if pos == 0 {
                    format!("{}{enc}{}", &v[..v.len() / 2], &v[v.len() / 2..])
                } else {
                    format!("{v}{enc}")
                };
                // The <name> text is trimmed, as libvirt does: a trailing
                // newline or space there is layout, not part of the name.
                if i == 0 && pos == 1 && matches!(c, '\n' | '\r' | ' ') {
                    continue;
                }
                out.push((labels[i], build(&vals)));
            }
        }
    }
    out
}

#[test]
fn every_xml_attribute_refuses_hostile_characters() {
    let cases = xml_cases();
    config::parse(&cases[0].1, true).expect("the valid XML");
    let mut refused = 0;
    for (label, text) in &cases[1..] {
        let e = match config::parse(text, true) {
            Ok(n) => panic!("{label} accepted: {n:?}\n{text}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            !e.contains(['\n', '\r', '\0']),
            "{label}: not one line: {e:?}"
        );
        // &#0; is not XML at all: the parser's own one-line refusal.
        let named = e.starts_with(label) || (text.contains("&#0;") && e.starts_with("invalid XML"));
        assert!(named, "{label}: the error does not name it: {e}");
        refused += 1;
    }
    eprintln!("xml: {refused} hostile attribute values refused, each naming its element");
}

/// API bodies: each string field spoiled; the refusal names its path.
#[test]
fn every_api_body_field_refuses_hostile_characters() {
    let host = serde_json::json!({"add": true, "mac": "52:54:00:00:00:10", "ip": "192.168.99.9", "name": "web"});
    let fwd = serde_json::json!({"proto": "tcp", "port": "8080", "to": "192.168.99.9:80", "address": "198.51.100.2"});
    decode::<HostRequest>(host.to_string().as_bytes()).unwrap();
    decode::<ForwardRequest>(fwd.to_string().as_bytes()).unwrap();
    decode_forward_add(fwd.to_string().as_bytes()).unwrap();
    let mut refused = 0;
    let mut check = |what: &str, path: &str, r: Result<(), String>| {
        let e = r.expect_err(&format!("{what} {path} accepted"));
        assert!(
            !e.contains(['\n', '\r', '\0']),
            "{what} {path}: not one line: {e:?}"
        );
        assert!(
            e.starts_with(&format!("{path}:")),
            "{what}: does not name {path}: {e}"
        );
        refused += 1;
    };
    for c in HOSTILE {
        for field in ["mac", "ip", "name"] {
            for bad in spoiled(host[field].as_str().unwrap(), c) {
                let mut b = host.clone();
                b[field] = bad.into();
                let r = decode::<HostRequest>(b.to_string().as_bytes()).map(|_| ());
                check("host", field, r);
            }
        }
        for field in ["proto", "port", "to", "address"] {
            for bad in spoiled(fwd[field].as_str().unwrap(), c) {
                let mut b = fwd.clone();
                b[field] = bad.clone().into();
                let one = b.to_string();
                check(
                    "forward",
                    field,
                    decode::<ForwardRequest>(one.as_bytes()).map(|_| ()),
                );
                check(
                    "forward add",
                    field,
                    decode_forward_add(one.as_bytes()).map(|_| ()),
                );
                let batch = serde_json::json!({"forwards": [fwd.clone(), b]}).to_string();
                check(
                    "batch",
                    &format!("forwards[1].{field}"),
                    decode_forward_add(batch.as_bytes()).map(|_| ()),
                );
            }
        }
    }
    // Unknown fields, in every body.
    for (what, body) in [
        (
            "host",
            r#"{"add":true,"mac":"52:54:00:00:00:10","ip":"192.168.99.9","colour":1}"#,
        ),
        (
            "forward",
            r#"{"proto":"tcp","port":"80","to":"192.168.99.9","extra":"x"}"#,
        ),
        (
            "define",
            r#"{"text":"","xml":false,"transient":false,"force":true}"#,
        ),
        ("autostart", r#"{"enable":true,"now":true}"#),
        ("batch", r#"{"forwards":[],"atomic":false}"#),
    ] {
        let e = match what {
            "host" => decode::<HostRequest>(body.as_bytes()).map(|_| ()),
            "forward" => decode::<ForwardRequest>(body.as_bytes()).map(|_| ()),
            "define" => decode::<DefineRequest>(body.as_bytes()).map(|_| ()),
            "autostart" => decode::<AutostartRequest>(body.as_bytes()).map(|_| ()),
            _ => decode_forward_add(body.as_bytes()).map(|_| ()),
        }
        .expect_err(what);
        assert!(
            e.contains("unknown field") && !e.contains('\n'),
            "{what}: {e}"
        );
        refused += 1;
    }
    eprintln!("api: {refused} hostile bodies refused, each naming its field");
}

/// The last line of defence: should a value with a line break ever reach
/// dnsmasq's files (here through the daemon's own --run-dir/--state-dir,
/// which no type checks), the writer refuses that file: no config is written.
#[test]
fn the_dnsmasq_writer_refuses_a_line_break_in_any_value() {
    let net = config::parse(&definition(usize::MAX, ""), false).unwrap();
    let base = std::env::temp_dir().join(format!("netd-writer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    for evil in ["run\nconf-script=/tmp/x", "run\rx", "run\0x"] {
        let run = base.join(evil.replace('\0', "NUL"));
        let run = if evil.contains('\0') {
            base.join("plain")
        } else {
            run
        };
        let mut paths = netd::dhcp::paths(&run, &base.join("state"), "hostile");
        if evil.contains('\0') {
            // A NUL cannot be in a path; put it where a path would go.
            paths.leasefile = std::path::PathBuf::from(format!("/x{evil}"));
        }
        let e = netd::dhcp::write_files(&net, "virbr9", &paths).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("refusing to write") && !e.contains(['\r', '\0']),
            "{e:?}"
        );
        assert!(!paths.conf.exists(), "{} was written", paths.conf.display());
    }
    // The same network with sane paths is written.
    let paths = netd::dhcp::paths(&base.join("ok"), &base.join("state"), "hostile");
    netd::dhcp::write_files(&net, "virbr9", &paths).unwrap();
    let conf = std::fs::read_to_string(&paths.conf).unwrap();
    assert!(conf.lines().any(|l| l == "domain=hostile.netd"), "{conf}");
    std::fs::remove_dir_all(&base).unwrap();
}
