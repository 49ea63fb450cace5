//! `cargo xtask demo` runs this (after setup and `cargo build -p netd`):
//! the whole product in a sandbox of network namespaces, torn down at the
//! end whatever happens. It drives the netd binary named by `NETD_BIN`.
//!
//! guests --- virbr0 [host: netd daemon] uplink0 --- router --- upstream

use anyhow::{Context, Result, bail};
use netd_tests::{HOST_IP, Topology, UPSTREAM_IP};
use std::time::Duration;

const DEFAULT_NET: &str = r#"# libvirt's default network, as netd writes it
name = "default"
mode = "nat"
bridge = "virbr0"
autostart = true
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.2", end = "192.168.122.254", lease = "1h" }
[dns]
domain = "default.netd"
"#;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    if !netd_tests::is_root() {
        bail!("the demo needs root: it creates network namespaces");
    }
    let mut t = Topology::new("demo")?;
    t.set_netd_bin(netd_tests::netd_bin_path());
    let r = scenario(&mut t);
    if r.is_err() {
        eprintln!("--- daemon log ---\n{}", t.daemon_log());
    }
    drop(t);
    println!("\nsandbox removed: namespaces, bpffs and state are gone.");
    r
}

fn step(title: &str) {
    println!("\n=== {title}");
}

fn show(t: &Topology, args: &[&str]) -> Result<()> {
    println!("$ netd {}", args.join(" "));
    let out = t.netd(args);
    print!("{}", out.stdout);
    if !out.success() {
        bail!("netd {} failed: {}", args.join(" "), out.stderr.trim());
    }
    Ok(())
}

fn show_bpf(t: &Topology, args: &[&str]) -> Result<()> {
    let state = t.state_dir().display().to_string();
    println!(
        "$ netd bpf {} --bpffs {} --state-dir {state}",
        args.join(" "),
        t.bpffs().display()
    );
    let mut a = args.to_vec();
    a.extend(["--state-dir", &state]);
    let out = t.netd_bpf(&a);
    print!("{}", out.stdout);
    if !out.success() {
        bail!("netd bpf {} failed: {}", args.join(" "), out.stderr.trim());
    }
    Ok(())
}

fn scenario(t: &mut Topology) -> Result<()> {
    step("start the daemon in the sandbox's host namespace");
    t.start_daemon()?;
    println!("daemon up; socket {}", t.socket().display());

    step("define and start libvirt's default network");
    let def = t.write_file("default.toml", DEFAULT_NET);
    print!("{DEFAULT_NET}");
    show(t, &["net", "define", &def.display().to_string()])?;
    show(t, &["net", "start", "default"])?;

    step("two guests ask the network's dnsmasq for a lease");
    let a = t.add_guest("virbr0", None)?;
    let b = t.add_guest("virbr0", None)?;
    let ip_a = a.dhcp_with_hostname("alpha").context("guest alpha DHCP")?;
    let ip_b = b.dhcp_with_hostname("beta").context("guest beta DHCP")?;
    println!("alpha got {ip_a}, beta got {ip_b}");

    step("a guest fetches a page from a web server upstream, through the eBPF NAT");
    let log = t.dir.join("http.log");
    let mut server = t.upstream.spawn_logged(
        &[
            "python3",
            "-m",
            "http.server",
            "8000",
            "--bind",
            &UPSTREAM_IP.to_string(),
        ],
        &log,
    );
    std::thread::sleep(Duration::from_millis(700));
    let fetch = a.exec(&[
        "python3",
        "-c",
        &format!("import urllib.request; print(urllib.request.urlopen('http://{UPSTREAM_IP}:8000/', timeout=5).status)"),
    ]);
    let _ = server.kill();
    let _ = server.wait();
    if fetch.stdout.trim() != "200" {
        bail!("the fetch failed: {fetch}");
    }
    println!("alpha fetched http://{UPSTREAM_IP}:8000/ -> HTTP 200");
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    let line = seen.lines().find(|l| l.contains("GET /")).unwrap_or("");
    println!("the upstream server logged: {line}");
    println!("(it sees the host's uplink address, never the guest's {ip_a})");

    step("port forward: upstream reaches alpha's web server on the host's address");
    show(
        t,
        &[
            "forward",
            "add",
            "default",
            "--proto",
            "tcp",
            "--port",
            "8080",
            "--to",
            &format!("{ip_a}:80"),
        ],
    )?;
    let log = t.dir.join("guest-http.log");
    let mut web =
        a.ns.spawn_logged(&["python3", "-m", "http.server", "80"], &log);
    std::thread::sleep(Duration::from_millis(700));
    let url = format!("http://{HOST_IP}:8080/");
    let fetch = t.upstream.exec(&[
        "python3",
        "-c",
        &format!("import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).status)"),
    ]);
    let _ = web.kill();
    let _ = web.wait();
    if fetch.stdout.trim() != "200" {
        bail!("the forwarded fetch failed: {fetch}");
    }
    println!("upstream fetched {url} -> HTTP 200, served by alpha ({ip_a}:80)");
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    println!(
        "alpha's server logged: {}",
        seen.lines().find(|l| l.contains("GET /")).unwrap_or("")
    );
    show(t, &["forward", "list"])?;
    show_bpf(t, &["forwards", "list"])?;

    step("what netd shows");
    show(t, &["net", "list"])?;
    println!();
    show(t, &["net", "info", "default"])?;
    println!();
    show(t, &["leases", "default"])?;
    println!();
    show_bpf(t, &["stats"])?;
    println!();
    show_bpf(t, &["ct", "list"])?;
    println!();
    show_bpf(t, &["nat", "list"])?;
    println!();
    show_bpf(t, &["maps"])?;

    step("status with doctor checks, and a few Prometheus metrics");
    show(t, &["status"])?;
    println!();
    println!(
        "$ netd metrics | grep -E '^netd_(network_packets|nat_translations|drops|dhcp_leases|forward)'"
    );
    let metrics = t.netd(&["metrics"]);
    if !metrics.success() {
        bail!("netd metrics failed: {}", metrics.stderr.trim());
    }
    let wanted = [
        "netd_network_packets",
        "netd_nat_translations",
        "netd_drops",
        "netd_dhcp_leases",
        "netd_forward",
    ];
    for l in metrics
        .stdout
        .lines()
        .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
    {
        println!("{l}");
    }
    Ok(())
}
