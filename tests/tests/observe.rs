//! End to end: inspecting and observing the dataplane. The `netd bpf`
//! listings and their filters, `ct flush`, the counters, `netd status` and
//! its doctor checks, and the Prometheus metrics.
//! Topology: guest -> host (netd) -> router -> upstream.

use netd_tests::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

const NAT_NET: &str = r#"
name = "default"
mode = "nat"
bridge = "virbr0"
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.2", end = "192.168.122.254" }
"#;

const METRICS_ADDR: &str = "127.0.0.1:9464";

fn nat_topology(name: &str, daemon_args: &[&str]) -> Topology {
    let mut t = Topology::new(name).expect("topology");
    t.start_daemon_with(daemon_args).expect("daemon");
    let def = t.write_file("default.toml", NAT_NET);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    t
}

/// `netd bpf ARGS -o json --state-dir <state>`, parsed; panics on failure.
#[track_caller]
fn bpf_json(t: &Topology, args: &[&str]) -> Value {
    let state = t.state_dir();
    let mut a = args.to_vec();
    a.extend(["-o", "json", "--state-dir", state.to_str().unwrap()]);
    let o = t.netd_bpf(&a);
    assert!(o.success(), "netd bpf {}: {o}", a.join(" "));
    serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("netd bpf {}: bad JSON ({e}): {}", a.join(" "), o.stdout))
}

fn rows(v: &Value) -> &Vec<Value> {
    v.as_array().expect("a JSON array")
}

fn host_of(endpoint: &Value) -> &str {
    endpoint.as_str().unwrap().rsplit_once(':').unwrap().0
}

fn reason(stats: &Value, name: &str) -> u64 {
    rows(&stats["reasons"])
        .iter()
        .find(|r| r["reason"] == name)
        .unwrap()["packets"]
        .as_u64()
        .unwrap()
}

fn from_guests(stats: &Value, bridge: &str) -> u64 {
    rows(&stats["networks"])
        .iter()
        .find(|r| r["bridge"] == bridge)
        .unwrap()["from_guests_packets"]
        .as_u64()
        .unwrap()
}

/// Traffic of every kind from a guest: a UDP flow from a fixed port, an
/// ICMP echo and a TCP connection (last: closed connections leave
/// conntrack ten seconds after their FIN).
fn traffic(g: &Guest, udp_sport: u16) {
    assert_eq!(
        udp_request_from(&g.ns, UPSTREAM_IP, 5353, "u", Some(udp_sport)).unwrap(),
        "u"
    );
    assert!(g.ns.ping(UPSTREAM_IP, 3), "guest ping to upstream");
    assert_eq!(tcp_request(&g.ns, UPSTREAM_IP, 8080, "t").unwrap(), "t");
}

#[test]
fn ct_list_shows_the_flow_and_filters_narrow_it() {
    require_netd!();
    let mut t = nat_topology("observe_ct", &[]);
    let g = t.add_guest("virbr0", None).unwrap();
    let ip = g.dhcp().expect("lease");
    let _tcp = tcp_echo_server(&t.upstream, 8080);
    let _udp = udp_echo_server(&t.upstream, 5353);
    traffic(&g, 40001);

    let all = bpf_json(&t, &["ct", "list"]);
    let all = rows(&all);
    let protos: std::collections::BTreeSet<&str> =
        all.iter().map(|r| r["proto"].as_str().unwrap()).collect();
    assert!(
        protos.contains("tcp") && protos.contains("udp") && protos.contains("icmp"),
        "{all:#?}"
    );

    // The UDP flow: original tuple from the guest, translated one from the
    // host's uplink address, everything in host order.
    let flow = all
        .iter()
        .find(|r| r["proto"] == "udp" && r["src"] == format!("{ip}:40001"))
        .unwrap_or_else(|| panic!("no udp flow from {ip}:40001 in {all:#?}"));
    assert_eq!(flow["dst"], format!("{UPSTREAM_IP}:5353"));
    assert_eq!(host_of(&flow["xlate_src"]), HOST_IP.to_string(), "{flow}");
    let xport: u16 = flow["xlate_src"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert!(xport >= 1024, "{flow}");
    assert_eq!(flow["xlate_dst"], format!("{UPSTREAM_IP}:5353"));
    assert_eq!(flow["nat"], "snat");
    assert_eq!(flow["network"], "default");
    assert_eq!(flow["bridge"], "virbr0");
    assert!(
        flow["packets"].as_u64().unwrap() >= 1 && flow["reply_packets"].as_u64().unwrap() >= 1,
        "{flow}"
    );
    // Seconds, not nanoseconds: UDP lives 60s from the last packet.
    assert!(flow["age_secs"].as_u64().unwrap() < 60, "{flow}");
    let expires = flow["expires_in_secs"].as_u64().unwrap();
    assert!((1..=60).contains(&expires), "{flow}");

    // Each filter narrows to what it names. Rows are compared by tuple:
    // their ages tick between two listings.
    let tuple = |r: &Value| format!("{} {} {}", r["proto"], r["src"], r["dst"]);
    type Keep = Box<dyn Fn(&Value) -> bool>;
    let filters: Vec<(Vec<&str>, Keep)> = vec![
        (vec!["--proto", "udp"], Box::new(|r| r["proto"] == "udp")),
        (vec!["--proto", "tcp"], Box::new(|r| r["proto"] == "tcp")),
        (
            vec!["--port", "5353"],
            Box::new(|r| r["dst"] == format!("{UPSTREAM_IP}:5353")),
        ),
        (
            vec!["--port", "8080"],
            Box::new(|r| r["dst"] == format!("{UPSTREAM_IP}:8080")),
        ),
    ];
    for (args, keep) in filters {
        let mut a = vec!["ct", "list"];
        a.extend(args.iter().copied());
        let got = bpf_json(&t, &a);
        let got: Vec<String> = rows(&got).iter().map(tuple).collect();
        let want: Vec<String> = all.iter().filter(|r| keep(r)).map(tuple).collect();
        assert!(!want.is_empty(), "{args:?}: nothing to find in {all:#?}");
        assert_eq!(got, want, "{args:?}");
    }
    let ip_s = ip.to_string();
    let up_s = UPSTREAM_IP.to_string();
    let by_src = bpf_json(&t, &["ct", "list", "--src", &ip_s]);
    assert_eq!(rows(&by_src).len(), all.len(), "every flow is the guest's");
    assert!(rows(&bpf_json(&t, &["ct", "list", "--src", "192.168.122.250"])).is_empty());
    let by_dst = bpf_json(&t, &["ct", "list", "--dst", &up_s, "--proto", "udp"]);
    assert!(
        rows(&by_dst)
            .iter()
            .all(|r| host_of(&r["dst"]) == up_s && r["proto"] == "udp"),
        "{by_dst:#?}"
    );
    assert!(!rows(&by_dst).is_empty());
    assert!(rows(&bpf_json(&t, &["ct", "list", "--dst", "192.0.2.1"])).is_empty());
    // --network takes the network's name or its bridge.
    assert_eq!(
        rows(&bpf_json(&t, &["ct", "list", "--network", "default"])).len(),
        all.len()
    );
    assert_eq!(
        rows(&bpf_json(&t, &["ct", "list", "--network", "virbr0"])).len(),
        all.len()
    );
    let nope = t.netd_bpf(&["ct", "list", "--network", "nosuchnet"]);
    assert_eq!(nope.status, 1, "{nope}");
    assert!(nope.stderr.starts_with("error:"), "{nope}");

    // The NAT view of the same flow.
    let nat = bpf_json(&t, &["nat", "list", "--proto", "udp", "--port", "5353"]);
    let nat = rows(&nat);
    assert_eq!(nat.len(), 1, "{nat:#?}");
    assert_eq!(nat[0]["kind"], "snat");
    assert_eq!(nat[0]["inside"], format!("{ip}:40001"));
    assert_eq!(nat[0]["outside"], flow["xlate_src"]);
    assert_eq!(nat[0]["peer"], format!("{UPSTREAM_IP}:5353"));

    // The table for people: a header, and columns that line up.
    let table = t.netd_bpf(&["ct", "list", "--proto", "udp"]);
    assert!(table.success(), "{table}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("PROTO")
            && lines[0].contains("XLATE SRC")
            && lines[0].contains("EXPIRES"),
        "{table}"
    );
    let col = lines[0].find("DST").unwrap();
    let row = lines
        .iter()
        .find(|l| l.contains(&format!("{ip}:40001")))
        .expect("the flow's row");
    assert!(
        row[col..].starts_with(&format!("{UPSTREAM_IP}:5353")),
        "misaligned:\n{}",
        table.stdout
    );

    // Flush empties the map.
    let state = t.state_dir();
    let out = t.netd_bpf(&[
        "ct",
        "flush",
        "--network",
        "default",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(out.success() && out.stdout.starts_with("flushed "), "{out}");
    let n: usize = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 2 * all.len(), "{out}: {} connections", all.len());
    assert!(rows(&bpf_json(&t, &["ct", "list"])).is_empty());
    assert!(rows(&bpf_json(&t, &["nat", "list"])).is_empty());
    let maps = bpf_json(&t, &["maps"]);
    let ct = rows(&maps).iter().find(|m| m["name"] == "NETD_CT").unwrap();
    assert_eq!(ct["entries"], 0, "{ct}");
}

#[test]
fn stats_rise_with_traffic_and_count_spoofed_packets() {
    require_netd!();
    let mut t = nat_topology("observe_stats", &[]);
    let g = t.add_guest("virbr0", None).unwrap();
    g.dhcp().expect("lease");
    let _tcp = tcp_echo_server(&t.upstream, 8080);
    let _udp = udp_echo_server(&t.upstream, 5353);

    let before = bpf_json(&t, &["stats"]);
    traffic(&g, 40002);
    let after = bpf_json(&t, &["stats"]);
    assert!(
        from_guests(&after, "virbr0") > from_guests(&before, "virbr0"),
        "{before}\n{after}"
    );
    let net = rows(&after["networks"])
        .iter()
        .find(|r| r["bridge"] == "virbr0")
        .unwrap();
    assert_eq!(net["network"], "default");
    assert!(net["to_guests_packets"].as_u64().unwrap() > 0, "{net}");
    for r in ["snat", "reverse_nat", "ct_new", "redirect"] {
        assert!(
            reason(&after, r) > reason(&before, r),
            "{r}: {before}\n{after}"
        );
    }
    assert_eq!(reason(&after, "drop_spoofed"), 0, "{after}");

    // A source outside the network's subnet is dropped at the bridge.
    g.ns.exec_ok(&["ip", "addr", "add", "10.99.0.5/32", "dev", GUEST_IF]);
    let spoof = g.ns.exec(&[
        "ping",
        "-n",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        "10.99.0.5",
        &UPSTREAM_IP.to_string(),
    ]);
    assert!(!spoof.success(), "a spoofed ping got an answer: {spoof}");
    let spoofed = bpf_json(&t, &["stats"]);
    assert!(reason(&spoofed, "drop_spoofed") >= 3, "{spoofed}");
    let row = rows(&spoofed["reasons"])
        .iter()
        .find(|r| r["reason"] == "drop_spoofed")
        .unwrap();
    assert_eq!(row["drop"], true);

    // The table for people.
    let state = t.state_dir();
    let table = t.netd_bpf(&["stats", "--state-dir", state.to_str().unwrap()]);
    assert!(table.success(), "{table}");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("default") && l.contains("virbr0")),
        "{table}"
    );
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("drop_spoofed") && l.contains("drop")),
        "{table}"
    );
}

fn check<'a>(status: &'a Value, name: &str, about: &str) -> &'a Value {
    rows(&status["checks"])
        .iter()
        .find(|c| c["name"] == name && c["message"].as_str().unwrap().contains(about))
        .unwrap_or_else(|| panic!("no {name} check about {about}: {status:#}"))
}

#[test]
fn status_lists_programs_and_flags_an_input_rule_dropping_dhcp() {
    require_netd!();
    let t = nat_topology("observe_status", &[]);
    let s = t.netd_json(&["status"]);
    assert!(
        s["uptime_secs"].is_u64() && s["version"].is_string(),
        "{s:#}"
    );
    let net = rows(&s["networks"])
        .iter()
        .find(|n| n["name"] == "default")
        .unwrap();
    assert_eq!(net["active"], true);
    assert_eq!(net["dnsmasq_healthy"], true);
    assert_eq!(net["masquerade_address"], HOST_IP.to_string());

    // Every program netd attached, with its id and its place in the tcx chain.
    let progs = rows(&s["programs"]);
    for (hook, iface) in [
        ("bridge_ingress", "virbr0"),
        ("bridge_egress", "virbr0"),
        ("uplink_ingress", UPLINK),
        ("uplink_egress", UPLINK),
    ] {
        let p = progs
            .iter()
            .find(|p| p["hook"] == hook && p["interface"] == iface)
            .unwrap_or_else(|| panic!("{hook} on {iface} missing: {progs:#?}"));
        assert!(p["id"].as_u64().unwrap() > 0, "{p}");
        assert!(p["link_id"].as_u64().unwrap() > 0, "{p}");
        assert_eq!(p["tcx_index"], 1, "{p}");
        assert_eq!(p["tcx_count"], 1, "{p}");
        assert_eq!(p["position"], "tcx 1/1", "{p}");
    }
    if t.cgroup().is_some() {
        for hook in ["cgroup_connect4", "cgroup_sendmsg4", "cgroup_recvmsg4"] {
            let p = progs
                .iter()
                .find(|p| p["hook"] == hook)
                .unwrap_or_else(|| panic!("{hook} missing: {progs:#?}"));
            assert!(p["id"].as_u64().unwrap() > 0, "{p}");
        }
    }
    // Bridge ingress and uplink ingress are different programs.
    let id = |hook: &str| {
        progs.iter().find(|p| p["hook"] == hook).unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    assert_ne!(id("bridge_ingress"), id("uplink_ingress"));
    assert!(s["conntrack"]["max_entries"].as_u64().unwrap() > 0, "{s:#}");
    assert!(
        rows(&s["maps"]).iter().any(|m| m["name"] == "NETD_CT"),
        "{s:#}"
    );

    for c in rows(&s["checks"]) {
        assert!(
            ["OK", "WARN", "FAIL"].contains(&c["level"].as_str().unwrap()),
            "{c}"
        );
        assert!(
            c["message"].as_str().unwrap().ends_with('.'),
            "one sentence: {c}"
        );
    }
    assert_eq!(check(&s, "bpffs", "")["level"], "OK");
    assert_eq!(check(&s, "tcx", "")["level"], "OK");
    assert_eq!(check(&s, "host-input", "virbr0")["level"], "OK", "{s:#}");
    assert_eq!(check(&s, "dhcp-server", "")["level"], "OK", "{s:#}");
    assert_eq!(check(&s, "nat-ports", "default")["level"], "OK", "{s:#}");

    // The host's owner drops DHCP on the bridge.
    let rule = ["-i", "virbr0", "-p", "udp", "--dport", "67", "-j", "DROP"];
    let mut add = vec!["iptables", "-A", "INPUT"];
    add.extend(rule);
    t.host.exec_ok(&add);
    let s = t.netd_json(&["status"]);
    let c = check(&s, "host-input", "virbr0");
    assert_eq!(c["level"], "FAIL", "{c}");
    assert!(c["message"].as_str().unwrap().contains("DHCP"), "{c}");
    let text = t.netd_ok(&["status"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("host-input") && l.contains("virbr0")),
        "{text}"
    );

    let mut del = vec!["iptables", "-D", "INPUT"];
    del.extend(rule);
    t.host.exec_ok(&del);
    let s = t.netd_json(&["status"]);
    assert_eq!(check(&s, "host-input", "virbr0")["level"], "OK", "{s:#}");
    let text = t.netd_ok(&["status"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("OK") && l.contains("host-input")),
        "{text}"
    );
    // The daemon only read the firewall.
    assert!(
        !t.firewall_snapshot().contains("virbr0"),
        "{}",
        t.firewall_snapshot()
    );

    // A FORWARD drop policy is reported, as harmless to the fast path.
    t.host.exec_ok(&["iptables", "-P", "FORWARD", "DROP"]);
    let s = t.netd_json(&["status"]);
    let c = check(&s, "forward-policy", "slow path");
    assert_eq!(c["level"], "WARN", "{c}");
}

/// GET over the daemon's unix socket, by hand: (head, body).
fn http_get_unix(sock: &Path, path: &str) -> (String, String) {
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connecting to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: netd\r\n\r\n").unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("text format");
    // Nothing was skipped as unparsable, and every metric has HELP and a TYPE.
    let samples = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        s.samples.len(),
        samples,
        "some lines did not parse:\n{text}"
    );
    for smp in &s.samples {
        assert!(
            s.docs.contains_key(&smp.metric),
            "{} has no HELP",
            smp.metric
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {} ", smp.metric))),
            "{} has no TYPE",
            smp.metric
        );
        assert!(
            !matches!(smp.value, prometheus_parse::Value::Untyped(_)),
            "{} is untyped",
            smp.metric
        );
        if smp.metric.ends_with("_total") {
            assert!(
                matches!(smp.value, prometheus_parse::Value::Counter(_)),
                "{} is not a counter",
                smp.metric
            );
        }
    }
    s
}

fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn metrics_parse_and_rise_with_traffic() {
    require_netd!();
    let mut t = nat_topology("observe_metrics", &["--metrics-addr", METRICS_ADDR]);
    let g = t.add_guest("virbr0", None).unwrap();
    let ip = g.dhcp().expect("lease");
    let _tcp = tcp_echo_server(&t.upstream, 8080);
    let _udp = udp_echo_server(&t.upstream, 5353);

    let (head, body) = http_get_unix(&t.socket(), "/metrics");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let before = scrape(&body);
    let from = [("network", "default"), ("direction", "from_guests")];
    let to = [("network", "default"), ("direction", "to_guests")];
    assert_eq!(
        value(&before, "netd_dhcp_leases", &[("network", "default")]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(
            &before,
            "netd_dnsmasq_restarts_total",
            &[("network", "default")]
        ),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        value(&before, "netd_forwards", &[("network", "default")]),
        Some(0.0),
        "{body}"
    );
    assert!(
        value(&before, "netd_drops_total", &[("reason", "spoofed")]).is_some(),
        "{body}"
    );

    traffic(&g, 40003);
    // A port forward to a server on the guest, used once from upstream.
    t.netd_ok(&[
        "forward",
        "add",
        "default",
        "--proto",
        "tcp",
        "--port",
        "8081",
        "--to",
        &format!("{ip}:80"),
    ]);
    let _web = tcp_echo_server(&g.ns, 80);
    assert_eq!(
        tcp_request(&t.upstream, HOST_IP, 8081, "fwd").unwrap(),
        "fwd"
    );

    let text = t.netd_ok(&["metrics"]);
    let after = scrape(&text);
    for (metric, labels) in [
        ("netd_network_packets_total", &from[..]),
        ("netd_network_bytes_total", &from[..]),
        ("netd_network_packets_total", &to[..]),
        ("netd_nat_translations_total", &[][..]),
        ("netd_datapath_packets_total", &[("reason", "snat")][..]),
    ] {
        let (b, a) = (
            value(&before, metric, labels).unwrap(),
            value(&after, metric, labels).unwrap(),
        );
        assert!(a > b, "{metric}{labels:?}: {b} -> {a}\n{text}");
    }
    for proto in ["tcp", "udp", "icmp"] {
        let n = value(
            &after,
            "netd_conntrack_entries",
            &[("network", "default"), ("proto", proto)],
        );
        assert!(n.is_some_and(|n| n >= 2.0), "{proto}: {n:?}\n{text}");
    }
    assert_eq!(
        value(&after, "netd_forwards", &[("network", "default")]),
        Some(1.0),
        "{text}"
    );
    let hits = [
        ("network", "default"),
        ("proto", "tcp"),
        ("address", "198.51.100.2"),
        ("port", "8081"),
    ];
    assert_eq!(
        value(&after, "netd_forward_hits_total", &hits),
        Some(1.0),
        "{text}"
    );

    // The same metrics over TCP, for a Prometheus server.
    let url = format!("http://{METRICS_ADDR}/metrics");
    let fetch = t.host.exec(&[
        "python3",
        "-c",
        &format!("import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('{url}', timeout=5).read().decode())"),
    ]);
    assert!(fetch.success(), "{fetch}");
    let tcp = scrape(&fetch.stdout);
    assert!(
        value(&tcp, "netd_network_packets_total", &from).unwrap()
            >= value(&after, "netd_network_packets_total", &from).unwrap()
    );
    // Only /metrics there: the control API stays on the root-only socket.
    let api = t.host.exec(&[
        "python3",
        "-c",
        &format!("import urllib.request; urllib.request.urlopen('http://{METRICS_ADDR}/v1/status', timeout=5)"),
    ]);
    assert!(!api.success() && api.stderr.contains("404"), "{api}");
}

#[test]
fn map_commands_work_with_the_daemon_stopped() {
    require_netd!();
    let mut t = nat_topology("observe_offline", &[]);
    let g = t.add_guest("virbr0", None).unwrap();
    let ip = g.dhcp().expect("lease");
    let _udp = udp_echo_server(&t.upstream, 5353);
    t.netd_ok(&[
        "forward",
        "add",
        "default",
        "--proto",
        "tcp",
        "--port",
        "8082",
        "--to",
        &format!("{ip}:80"),
    ]);
    assert_eq!(
        udp_request_from(&g.ns, UPSTREAM_IP, 5353, "u", Some(40004)).unwrap(),
        "u"
    );
    t.stop_daemon();
    let down = t.netd(&["status"]);
    assert_eq!(down.status, 1, "{down}");

    let stats = bpf_json(&t, &["stats"]);
    assert!(from_guests(&stats, "virbr0") > 0, "{stats}");
    let ct = bpf_json(&t, &["ct", "list", "--proto", "udp", "--port", "5353"]);
    assert_eq!(rows(&ct).len(), 1, "{ct:#}");
    assert_eq!(rows(&ct)[0]["src"], format!("{ip}:40004"));
    let nat = bpf_json(&t, &["nat", "list"]);
    assert!(
        rows(&nat)
            .iter()
            .any(|r| r["inside"] == format!("{ip}:40004")),
        "{nat:#}"
    );
    let fwd = bpf_json(&t, &["forwards", "list"]);
    let fwd = rows(&fwd);
    assert_eq!(fwd.len(), 1, "{fwd:#?}");
    assert_eq!(fwd[0]["host"], format!("{HOST_IP}:8082"));
    assert_eq!(fwd[0]["guest"], format!("{ip}:80"));
    assert_eq!(fwd[0]["network"], "default");
    assert!(rows(&bpf_json(&t, &["forwards", "list", "--proto", "udp"])).is_empty());
    assert_eq!(
        rows(&bpf_json(
            &t,
            &["forwards", "list", "--port", "80", "--network", "default"]
        ))
        .len(),
        1
    );

    let maps = bpf_json(&t, &["maps"]);
    let maps = rows(&maps);
    let bpffs = t.bpffs();
    for name in [
        "NETD_NETWORKS",
        "NETD_CT",
        "NETD_FORWARDS",
        "NETD_STATS",
        "NETD_NET_STATS",
    ] {
        let m = maps
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {maps:#?}"));
        assert!(
            m["max_entries"].as_u64().unwrap() > 0 && m["key_size"].as_u64().unwrap() > 0,
            "{m}"
        );
        assert!(
            m["pin"]
                .as_str()
                .unwrap()
                .starts_with(bpffs.to_str().unwrap()),
            "{m}"
        );
        assert!(!m["kind"].as_str().unwrap().is_empty(), "{m}");
    }
    let ct_map = maps.iter().find(|m| m["name"] == "NETD_CT").unwrap();
    assert!(ct_map["entries"].as_u64().unwrap() >= 2, "{ct_map}");
    // And the tables for people.
    for args in [
        &["stats"][..],
        &["ct", "list"],
        &["nat", "list"],
        &["forwards", "list"],
        &["maps"],
    ] {
        let o = t.netd_bpf(args);
        assert!(
            o.success() && o.stdout.lines().count() >= 2,
            "netd bpf {}: {o}",
            args.join(" ")
        );
    }
}

/// A reader that goes away early (`netd status | head -1`) ends the client
/// quietly, as with any Unix tool: exit 141 (SIGPIPE), or its own code
/// (0, or 3 for a status with a FAIL) when it finished first; never a panic
/// about "failed printing to stdout". `true` reads nothing, so most runs
/// write into a closed pipe.
#[test]
fn a_closed_pipe_ends_the_client_quietly() {
    require_root!();
    let t = nat_topology("sigpipe", &[]);
    let bin = t.bin();
    let sock = t.socket();
    let bpffs = t.bpffs();
    let state = t.state_dir();
    let (bin, sock) = (bin.to_str().unwrap(), sock.to_str().unwrap());
    let commands = [
        format!("{bin} --socket {sock} status"),
        format!(
            "{bin} bpf ct list --bpffs {} --state-dir {}",
            bpffs.display(),
            state.display()
        ),
    ];
    for cmd in &commands {
        let script =
            format!("for i in $(seq 50); do {cmd} | true; echo \"rc=${{PIPESTATUS[0]}}\"; done");
        let o = t.host.exec(&["bash", "-c", &script]);
        let codes: Vec<&str> = o
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("rc="))
            .collect();
        assert_eq!(codes.len(), 50, "{cmd}: {o}");
        let bad: Vec<&&str> = codes
            .iter()
            .filter(|c| !["0", "3", "141"].contains(c))
            .collect();
        assert!(bad.is_empty(), "{cmd}: exit codes {bad:?}: {o}");
        assert!(
            !o.stderr.contains("panicked") && !o.stderr.contains("failed printing"),
            "{cmd}: {o}"
        );
    }
}
