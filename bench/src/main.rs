//! `netd-bench`, run by `cargo xtask bench [--quick]`: netd side by side with libvirt's iptables
//! rules and an equivalent nftables ruleset, in one run, on one machine.
//!
//! Three beds (see [`bed`]) are built at the start and live for the whole
//! run, each in namespaces of its own; every measure is taken on the three
//! in turn, run after run, so that the noise of a shared machine spreads
//! over all of them alike. Results go to target/bench/: bench.md (the
//! table and the machine), bench.json (every sample), bench.svg (the chart).
//!
//! `--quick` takes one short sample of everything (about a minute): CI
//! runs it as a smoke test that the benchmark works, and asserts no figure.

mod bed;
pub mod helper;
mod measure;
mod report;
mod rules;
mod testrun;

use anyhow::{Context, Result, bail};
use bed::{Bed, CP_BASE, Kind, SCALE_BASE};
use report::{Better, Results};
use rules::{Fwd, Proto};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `netd-bench run [OPTIONS]` measures; `netd-bench helper CMD …` is the
/// traffic tool the benchmark starts inside its namespaces (this same
/// binary, so every bed runs the same code).
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("helper") => helper::run(&args[1..]),
        _ => {
            eprintln!("usage: netd-bench run [--quick] [OPTIONS] | helper CMD [ARGS]");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root: where target/bench goes.
fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench lives in the workspace")
        .to_path_buf()
}

/// The netd binary `cargo xtask bench` built for this run (`NETD_BIN`).
fn netd_bin() -> Result<PathBuf> {
    let p = netd_tests::netd_bin_path();
    if !p.is_file() {
        bail!(
            "{} not found; run the benchmark through `cargo xtask bench`",
            p.display()
        );
    }
    Ok(p)
}

struct Opts {
    quick: bool,
    runs: usize,
    tcp_secs: u32,
    udp_secs: f64,
    conn_secs: f64,
    rr_secs: f64,
    scale_secs: f64,
    levels: Vec<usize>,
    /// Forwards installed by the control-plane measure.
    cp_forwards: usize,
    /// netd API, one request per forward: how many, and the time allowed.
    api_forwards: usize,
    api_cap: Duration,
    testrun_iters: u32,
    testrun_repeat: u32,
    out: PathBuf,
    /// A netd binary to use as it is (default: build one).
    netd: Option<PathBuf>,
    /// Measure groups to run (empty: all) and dataplanes to build.
    only: Vec<String>,
    kinds: Vec<Kind>,
    /// Re-render the outputs from an earlier bench.json instead of measuring.
    from: Option<PathBuf>,
}

const GROUPS: [&str; 7] = ["tcp", "udp", "conn", "rr", "scaling", "testrun", "control"];

impl Opts {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }

    fn parse(args: &[String]) -> Result<Opts> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = if quick {
            Opts {
                quick,
                runs: 1,
                tcp_secs: 1,
                udp_secs: 1.0,
                conn_secs: 1.0,
                rr_secs: 1.0,
                scale_secs: 1.0,
                levels: vec![1, 1_000, 10_000],
                cp_forwards: 10_000,
                api_forwards: 1_000,
                api_cap: Duration::from_secs(20),
                testrun_iters: 1_000,
                testrun_repeat: 20_000,
                out: workspace_root().join("target/bench"),
                netd: None,
                only: Vec::new(),
                kinds: Kind::ALL.to_vec(),
                from: None,
            }
        } else {
            Opts {
                quick,
                runs: 3,
                tcp_secs: 5,
                udp_secs: 3.0,
                conn_secs: 3.0,
                rr_secs: 3.0,
                scale_secs: 2.0,
                levels: vec![1, 1_000, 10_000],
                cp_forwards: 10_000,
                api_forwards: 10_000,
                api_cap: Duration::from_secs(240),
                testrun_iters: 5_000,
                testrun_repeat: 200_000,
                out: workspace_root().join("target/bench"),
                netd: None,
                only: Vec::new(),
                kinds: Kind::ALL.to_vec(),
                from: None,
            }
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => {}
                "--runs" => o.runs = it.next().context("--runs N")?.parse()?,
                "--out" => o.out = PathBuf::from(it.next().context("--out DIR")?),
                "--from" => o.from = Some(PathBuf::from(it.next().context("--from bench.json")?)),
                "--netd" => o.netd = Some(PathBuf::from(it.next().context("--netd PATH")?)),
                "--only" => {
                    o.only = it
                        .next()
                        .context("--only GROUP,...")?
                        .split(',')
                        .map(str::to_string)
                        .collect();
                    if let Some(g) = o.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                        bail!("--only: unknown group {g:?} (groups: {})", GROUPS.join(","));
                    }
                }
                "--dataplanes" => {
                    o.kinds = it
                        .next()
                        .context("--dataplanes NAME,...")?
                        .split(',')
                        .map(|n| {
                            Kind::ALL
                                .into_iter()
                                .find(|k| k.name() == n)
                                .with_context(|| format!("no dataplane {n:?}"))
                        })
                        .collect::<Result<_>>()?;
                }
                _ => bail!(
                    "usage: cargo xtask bench [--quick] [--runs N] [--out DIR] [--netd PATH] [--only {}] [--dataplanes libvirt,nftables,netd]",
                    GROUPS.join(",")
                ),
            }
        }
        if o.runs == 0 {
            bail!("--runs must be at least 1");
        }
        Ok(o)
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let mut o = Opts::parse(args)?;
    if let Some(p) = o.from.clone() {
        return rerender(&mut o, &p);
    }
    if !netd_tests::is_root() {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    // The daemon's speed matters to the control-plane figures: xtask builds
    // netd in release for the real run, in debug (the tests' build) for
    // --quick, and names it in NETD_BIN.
    let netd_bin = if let Some(p) = &o.netd {
        std::fs::canonicalize(p).with_context(|| format!("--netd {}", p.display()))?
    } else {
        netd_bin()?
    };
    let helper = std::env::current_exe()?;
    let started = Instant::now();
    let mut machine = machine();
    machine["netd_build"] = match &o.netd {
        Some(p) => format!("given: {}", p.display()),
        None if netd_bin.components().any(|c| c.as_os_str() == "release") => "release".into(),
        None => "debug".into(),
    }
    .into();
    eprintln!("bench: {}", machine["summary"].as_str().unwrap_or(""));

    let mut r = Results::default();
    declare(&mut r, &o);
    {
        let mut beds = Vec::new();
        for &k in &o.kinds {
            eprintln!("bench: building the {} bed", k.name());
            beds.push(
                Bed::new(k, &netd_bin, &helper)
                    .with_context(|| format!("building the {} bed", k.name()))?,
            );
        }
        for b in &beds {
            measure::check(b).with_context(|| format!("{}: sanity check", b.kind.name()))?;
        }
        datapath(&mut r, &o, &mut beds);
        if o.wants("scaling") {
            scaling(&mut r, &o, &mut beds);
        }
        if o.wants("testrun") {
            test_run(&mut r, &o, &mut beds);
        }
        if o.wants("control") {
            control_plane(&mut r, &o, &mut beds);
        }
        // The beds (namespaces, daemons, rules) go here, whatever happened.
    }
    failure_notes(&mut r);
    machine["load_after"] = loadavg().into();
    machine["elapsed_secs"] = started.elapsed().as_secs_f64().into();
    write_outputs(&r, &o, &machine)?;
    if !r.errors.is_empty() {
        bail!(
            "{} measure(s) failed: {}",
            r.errors.len(),
            r.errors.join("; ")
        );
    }
    Ok(())
}

fn declare(r: &mut Results, o: &Opts) {
    use Better::{Higher, Lower};
    r.def("tcp_out", "TCP bulk guest→upstream (NAT)", "Gbit/s", Higher);
    r.def(
        "tcp_in",
        "TCP bulk upstream→guest (forward)",
        "Gbit/s",
        Higher,
    );
    r.def(
        "udp_out",
        "UDP 64 B guest→upstream (NAT), received",
        "pkt/s",
        Higher,
    );
    r.def(
        "conn_nat",
        "New TCP connections guest→upstream (NAT)",
        "conn/s",
        Higher,
    );
    r.def(
        "conn_fwd",
        "New TCP connections upstream→guest (forward)",
        "conn/s",
        Higher,
    );
    r.def(
        "rr_p50",
        "TCP request-response 64 B (NAT), p50",
        "µs",
        Lower,
    );
    r.def(
        "rr_p99",
        "TCP request-response 64 B (NAT), p99",
        "µs",
        Lower,
    );
    r.def(
        "cpu_sys",
        "CPU system time (UDP NAT run)",
        "s per million packets",
        Lower,
    );
    r.def(
        "cpu_softirq",
        "CPU irq+softirq time (UDP NAT run)",
        "s per million packets",
        Lower,
    );
    for &n in &o.levels {
        r.def(
            &format!("fwd_udp_{n}"),
            &format!("UDP 64 B through the last of {n} forwards"),
            "pkt/s",
            Higher,
        );
    }
    r.def(
        "fwd_udp_flat",
        "UDP through the last forward: rate at 10,000 / at 1",
        "ratio",
        Higher,
    );
    for &n in &o.levels {
        r.def(
            &format!("fwd_conn_{n}"),
            &format!("New TCP connections through the last of {n} forwards"),
            "conn/s",
            Higher,
        );
    }
    r.def(
        "fwd_conn_flat",
        "Connections through the last forward: rate at 10,000 / at 1",
        "ratio",
        Higher,
    );
    for &n in &o.levels {
        r.def(
            &format!("tr_new_{n}"),
            &format!("test_run uplink ingress, new flow, {n} forwards"),
            "ns",
            Lower,
        );
    }
    for &n in &o.levels {
        r.def(
            &format!("tr_est_{n}"),
            &format!("test_run uplink ingress, established flow, {n} forwards"),
            "ns",
            Lower,
        );
    }
    r.def(
        "install",
        &format!("Install {} forwards", o.cp_forwards),
        "s",
        Lower,
    );
    r.def(
        "install_each",
        &format!("netd: {} forwards, one API request each", o.cp_forwards),
        "s",
        Lower,
    );
    r.def(
        "install_bulk",
        &format!(
            "netd: define + start a network with {} forwards",
            o.cp_forwards
        ),
        "s",
        Lower,
    );
    r.def(
        "change_one",
        &format!("Change one forward with {} installed", o.cp_forwards),
        "ms",
        Lower,
    );
    r.def(
        "rss",
        "netd daemon RSS (10,000 forwards defined)",
        "MiB",
        Lower,
    );
    r.def(
        "bpf_mem",
        "netd BPF maps, kernel memory (memlock)",
        "MiB",
        Lower,
    );
    r.note(
        "cpu_sys",
        "machine-wide /proc/stat deltas over the UDP NAT run divided by the packets received; they include the generator's and the receiver's system calls, and anything else the machine was running",
    );
    r.note(
        "udp_out",
        "one flow, sendmmsg in batches of 64; veth hands each packet on within the sender's own softirq, so the sending CPU carries it all the way to upstream's socket and the rate is the inverse of the whole path's per-packet cost (guest stack, bridge, host, router namespace, upstream); datagrams sent and received are in bench.json",
    );
    r.note(
        "fwd_udp_1",
        "a one-way flow from upstream: conntrack never sees a reply, so for the filter rules every packet is NEW",
    );
    r.note(
        "install",
        "libvirt: iptables-restore of the whole rule set (a DNAT and a FORWARD rule per forward); nftables: nft -f adding the elements to the map; netd: one HTTP API request carrying all of them (all or none)",
    );
    r.note(
        "change_one",
        "libvirt: iptables -R of the DNAT and of the FORWARD rule; nftables: nft -f deleting and adding the element; netd: API DELETE + POST",
    );
}

/// Runs `f` on every bed, `runs` times, beds interleaved. For netd, the
/// datapath's counters by reason over each run go to the details.
fn each<F>(r: &mut Results, o: &Opts, beds: &mut [Bed], what: &str, mut f: F)
where
    F: FnMut(&mut Results, &mut Bed) -> Result<String>,
{
    for run in 0..o.runs {
        for b in beds.iter_mut() {
            let before = b.netd_reasons();
            match f(r, b) {
                Ok(s) => eprintln!("bench: {what} [{}] run {}: {s}", b.kind.name(), run + 1),
                Err(e) => r.error(format!("{what} [{}]: {e:#}", b.kind.name())),
            }
            if let (Some(a), Some(z)) = (before, b.netd_reasons()) {
                let delta: std::collections::BTreeMap<&str, u64> = z
                    .iter()
                    .map(|(k, v)| (*k, v - a.get(k).copied().unwrap_or(0)))
                    .filter(|(_, v)| *v > 0)
                    .collect();
                r.detail(
                    "netd_reasons",
                    b.kind,
                    json!({ "measure": what, "run": run + 1, "packets": delta }),
                );
            }
        }
    }
}

fn datapath(r: &mut Results, o: &Opts, beds: &mut [Bed]) {
    if o.wants("tcp") {
        each(r, o, beds, "TCP bulk out", |r, b| {
            let g = measure::tcp_out(b, o.tcp_secs)?;
            r.push("tcp_out", b.kind, g);
            Ok(format!("{g:.2} Gbit/s"))
        });
        each(r, o, beds, "TCP bulk in via forward", |r, b| {
            let g = measure::tcp_in(b, o.tcp_secs)?;
            r.push("tcp_in", b.kind, g);
            Ok(format!("{g:.2} Gbit/s"))
        });
    }
    if o.wants("udp") {
        each(r, o, beds, "UDP 64 B out", |r, b| {
            let s = measure::udp_out(b, o.udp_secs)?;
            r.push("udp_out", b.kind, s.pps);
            r.push("cpu_sys", b.kind, s.sys_per_mpkt);
            r.push("cpu_softirq", b.kind, s.softirq_per_mpkt);
            r.detail("udp_out", b.kind, udp_detail(&s));
            Ok(format!(
                "{:.0} pps ({} of {} arrived)",
                s.pps, s.received, s.sent
            ))
        });
    }
    if o.wants("conn") {
        each(r, o, beds, "connections via NAT", |r, b| {
            let s = measure::conn_nat(b, o.conn_secs)?;
            r.push("conn_nat", b.kind, s.rate);
            r.detail("conn_nat", b.kind, json!({ "ok": s.ok, "fail": s.fail }));
            Ok(format!("{:.0}/s ({} failed)", s.rate, s.fail))
        });
        each(r, o, beds, "connections via forward", |r, b| {
            let s = measure::conn_fwd(b, o.conn_secs)?;
            r.push("conn_fwd", b.kind, s.rate);
            r.detail("conn_fwd", b.kind, json!({ "ok": s.ok, "fail": s.fail }));
            Ok(format!("{:.0}/s ({} failed)", s.rate, s.fail))
        });
    }
    if o.wants("rr") {
        each(r, o, beds, "TCP request-response", |r, b| {
            let (p50, p99) = measure::latency(b, o.rr_secs)?;
            r.push("rr_p50", b.kind, p50);
            r.push("rr_p99", b.kind, p99);
            Ok(format!("p50 {p50:.1} µs, p99 {p99:.1} µs"))
        });
    }
}

/// Connection tests count failed connections (each costs its client thread
/// a 1 s connect or read timeout): say so under the table.
fn failure_notes(r: &mut Results) {
    let ids: Vec<String> = r
        .metrics
        .iter()
        .map(|m| m.id.clone())
        .filter(|id| id.contains("conn"))
        .collect();
    for id in ids {
        let Some(rows) = r.details.get(&id) else {
            continue;
        };
        let mut per: Vec<String> = Vec::new();
        for k in Kind::ALL {
            let (ok, fail) =
                rows.iter()
                    .filter(|v| v["dataplane"] == k.name())
                    .fold((0, 0), |(o, f), v| {
                        (
                            o + v["ok"].as_u64().unwrap_or(0),
                            f + v["fail"].as_u64().unwrap_or(0),
                        )
                    });
            if fail > 0 {
                per.push(format!("{} {fail} of {}", k.name(), ok + fail));
            }
        }
        if !per.is_empty() {
            let old = r
                .metrics
                .iter()
                .find(|m| m.id == id)
                .and_then(|m| m.note.clone());
            let add = format!(
                "failed connections (each stalls its client thread for the 1 s timeout): {}",
                per.join(", ")
            );
            r.note(&id, &old.map(|o| format!("{o}; {add}")).unwrap_or(add));
        }
    }
}

fn udp_detail(s: &measure::UdpSample) -> serde_json::Value {
    json!({ "sent": s.sent, "received": s.received, "pps": s.pps,
            "sys_s_per_mpkt": s.sys_per_mpkt, "softirq_s_per_mpkt": s.softirq_per_mpkt })
}

/// The forward path with 1, 1,000 and 10,000 forwards: UDP through the
/// last one (a one-way flow: every packet is in conntrack state NEW for
/// the filter rules) and new TCP connections through the last one.
fn scaling(r: &mut Results, o: &Opts, beds: &mut [Bed]) {
    // Levels are interleaved too (each run walks 1, 1,000, 10,000), so a
    // change in the machine's load does not masquerade as a trend.
    for run in 0..o.runs {
        for &n in &o.levels {
            let mut ready = vec![true; beds.len()];
            for (i, b) in beds.iter_mut().enumerate() {
                let t = Instant::now();
                match b.set_scale(n) {
                    Ok(()) => eprintln!(
                        "bench: {n} forwards installed [{}] in {:.2}s",
                        b.kind.name(),
                        t.elapsed().as_secs_f64()
                    ),
                    Err(e) => {
                        r.error(format!(
                            "installing {n} forwards [{}]: {e:#}",
                            b.kind.name()
                        ));
                        ready[i] = false;
                    }
                }
            }
            let port = SCALE_BASE + n as u16 - 1;
            let (udp_id, conn_id) = (format!("fwd_udp_{n}"), format!("fwd_conn_{n}"));
            for (i, b) in beds.iter_mut().enumerate() {
                if !ready[i] {
                    continue;
                }
                match measure::udp_fwd(b, port, o.scale_secs) {
                    Ok(s) => {
                        r.push(&udp_id, b.kind, s.pps);
                        r.detail(&udp_id, b.kind, udp_detail(&s));
                        eprintln!(
                            "bench: UDP via the last of {n} forwards [{}] run {}: {:.0} pps",
                            b.kind.name(),
                            run + 1,
                            s.pps
                        );
                    }
                    Err(e) => r.error(format!(
                        "UDP through the last of {n} forwards [{}]: {e:#}",
                        b.kind.name()
                    )),
                }
                match measure::conn_via(b, port, o.scale_secs) {
                    Ok(s) => {
                        r.push(&conn_id, b.kind, s.rate);
                        r.detail(&conn_id, b.kind, json!({ "ok": s.ok, "fail": s.fail }));
                        eprintln!(
                            "bench: connections via the last of {n} forwards [{}] run {}: {:.0}/s ({} failed)",
                            b.kind.name(),
                            run + 1,
                            s.rate,
                            s.fail
                        );
                    }
                    Err(e) => r.error(format!(
                        "connections through the last of {n} forwards [{}]: {e:#}",
                        b.kind.name()
                    )),
                }
            }
        }
    }
    let (first, last) = (o.levels[0], *o.levels.last().unwrap_or(&1));
    for what in ["udp", "conn"] {
        for k in Kind::ALL {
            let a = r.get(&format!("fwd_{what}_{first}"), k);
            let z = r.get(&format!("fwd_{what}_{last}"), k);
            if let (Some(a), Some(z)) = (a, z) {
                r.push(&format!("fwd_{what}_flat"), k, z.median / a.median);
            }
        }
    }
}

fn test_run(r: &mut Results, o: &Opts, beds: &mut [Bed]) {
    let Some(b) = beds.iter().find(|b| b.kind == Kind::Netd) else {
        return;
    };
    match testrun::measure(b, &o.levels, o.runs, o.testrun_iters, o.testrun_repeat) {
        Ok(samples) => {
            for s in samples {
                r.push(&format!("tr_new_{}", s.forwards), Kind::Netd, s.new_flow_ns);
                r.push(
                    &format!("tr_est_{}", s.forwards),
                    Kind::Netd,
                    s.established_ns,
                );
                eprintln!(
                    "bench: test_run {} forwards: new flow {:.0} ns, established {:.0} ns",
                    s.forwards, s.new_flow_ns, s.established_ns
                );
                if s.not_redirected > 0 {
                    r.error(format!(
                        "test_run: {} of the new flows were not redirected",
                        s.not_redirected
                    ));
                }
                r.detail(
                    "test_run",
                    Kind::Netd,
                    serde_json::to_value(&s).unwrap_or_default(),
                );
            }
        }
        Err(e) => r.error(format!("test_run: {e:#}")),
    }
}

fn control_plane(r: &mut Results, o: &Opts, beds: &mut [Bed]) {
    for b in beds.iter_mut() {
        let k = b.kind;
        let res = match k {
            Kind::Libvirt => cp_iptables(r, o, b),
            Kind::Nftables => cp_nft(r, o, b),
            Kind::Netd => cp_netd(r, o, b),
        };
        if let Err(e) = res {
            r.error(format!("control plane [{}]: {e:#}", k.name()));
        }
    }
}

fn cp_iptables(r: &mut Results, o: &Opts, b: &mut Bed) -> Result<()> {
    let mut all = bed::base_forwards();
    let nbase = all.len();
    all.extend(bed::scale_forwards(o.cp_forwards, SCALE_BASE));
    let full =
        b.t.write_file("cp-full.rules", &rules::iptables(netd_tests::HOST_IP, &all));
    let full = full.to_string_lossy().into_owned();
    for run in 0..o.runs {
        b.set_scale(0)?;
        let s = b.timed(&["iptables-restore", &full])?;
        b.scale = o.cp_forwards;
        r.push("install", b.kind, s);
        eprintln!(
            "bench: install {} [libvirt] run {}: {s:.3}s",
            o.cp_forwards,
            run + 1
        );
    }
    let last = nbase + o.cp_forwards - 1;
    for run in 0..o.runs {
        let old = all[last];
        let new = Fwd::new(Proto::Udp, old.port, 40000 + run as u16);
        let s = b.timed(&[
            "sh",
            "-c",
            &rules::iptables_change(netd_tests::HOST_IP, last, &new),
        ])?;
        r.push("change_one", b.kind, s * 1e3);
        eprintln!(
            "bench: change one [libvirt] run {}: {:.1} ms",
            run + 1,
            s * 1e3
        );
    }
    b.set_scale(0)
}

fn cp_nft(r: &mut Results, o: &Opts, b: &mut Bed) -> Result<()> {
    let fwds = bed::scale_forwards(o.cp_forwards, SCALE_BASE);
    let add =
        b.t.write_file("cp-add.nft", &rules::nft_add(&fwds))
            .to_string_lossy()
            .into_owned();
    for run in 0..o.runs {
        b.set_scale(0)?;
        let s = b.timed(&["nft", "-f", &add])?;
        b.scale = o.cp_forwards;
        r.push("install", b.kind, s);
        eprintln!(
            "bench: install {} [nftables] run {}: {s:.3}s",
            o.cp_forwards,
            run + 1
        );
    }
    let mut cur = *fwds.last().context("no forwards")?;
    for run in 0..o.runs {
        let new = Fwd::new(Proto::Udp, cur.port, 40000 + run as u16);
        let f =
            b.t.write_file("cp-change.nft", &rules::nft_change(&cur, &new))
                .to_string_lossy()
                .into_owned();
        let s = b.timed(&["nft", "-f", &f])?;
        cur = new;
        r.push("change_one", b.kind, s * 1e3);
        eprintln!(
            "bench: change one [nftables] run {}: {:.1} ms",
            run + 1,
            s * 1e3
        );
    }
    b.set_scale(0)
}

/// netd's control plane works on a second network (virbr1,
/// 192.168.123.0/24, forwards on ports 30000+), so the bench network and
/// its guest stay as they are.
fn cp_netd(r: &mut Results, o: &Opts, b: &mut Bed) -> Result<()> {
    b.set_scale(0)?;
    let pid = b.t.daemon_pid();
    let guest = std::net::Ipv4Addr::new(192, 168, 123, 10);
    let fwds = bed::scale_forwards(o.cp_forwards, CP_BASE);
    let c = b.client();
    let define = |name: &str, fwds: &[Fwd]| -> Result<()> {
        let text = rules::netd_definition(name, "virbr1", "192.168.123.1/24", fwds, guest);
        c.post::<_, serde_json::Value>(
            "/v1/networks",
            &json!({ "text": text, "xml": false, "transient": false }),
        )?;
        c.post_empty::<serde_json::Value>(&format!("/v1/networks/{name}/start"))?;
        Ok(())
    };
    let remove = |name: &str| -> Result<()> {
        c.post_empty::<serde_json::Value>(&format!("/v1/networks/{name}/stop"))?;
        c.delete::<serde_json::Value>(&format!("/v1/networks/{name}"))?;
        Ok(())
    };
    let to = |f: &Fwd| format!("{guest}:{}", f.to_port);
    let want = |what: &str| -> Result<()> {
        let n = forwards_in_map(b)?;
        if n < o.cp_forwards {
            bail!("{what} left {n} of {} forwards in the map", o.cp_forwards);
        }
        Ok(())
    };
    // Bulk: the whole definition in one request, then start.
    for run in 0..o.runs {
        let t = Instant::now();
        define("cpbulk", &fwds)?;
        let s = t.elapsed().as_secs_f64();
        let ok = want("define + start");
        remove("cpbulk")?;
        ok?;
        r.push("install_bulk", b.kind, s);
        eprintln!(
            "bench: define+start with {} forwards [netd] run {}: {s:.3}s",
            o.cp_forwards,
            run + 1
        );
    }
    // The live path: one batch request (all or none) to a running network,
    // like iptables-restore and nft -f. Then change one of them.
    let batch: Vec<serde_json::Value> = fwds
        .iter()
        .map(
            |f| json!({ "proto": "udp", "port": f.port.to_string(), "to": to(f), "address": null }),
        )
        .collect();
    let body = json!({ "forwards": batch });
    for run in 0..o.runs {
        define("cp", &[])?;
        let t = Instant::now();
        let res = c.post::<_, serde_json::Value>("/v1/networks/cp/forwards", &body);
        let s = t.elapsed().as_secs_f64();
        let res = res.context("batch add").and_then(|_| want("the batch"));
        if res.is_ok() {
            r.push("install", b.kind, s);
            eprintln!(
                "bench: install {} [netd API batch] run {}: {s:.3}s",
                o.cp_forwards,
                run + 1
            );
        }
        if res.is_ok() && run + 1 == o.runs {
            memory(r, pid, &b.t.bpffs().join("maps"));
            let mut cur = *fwds.last().context("no forwards")?;
            for run in 0..o.runs {
                let new = Fwd::new(Proto::Udp, cur.port, 40000 + run as u16);
                let t = Instant::now();
                b.api_delete("cp", "udp", &cur.port.to_string())?;
                b.api_add("cp", "udp", &new.port.to_string(), &to(&new))?;
                let s = t.elapsed().as_secs_f64();
                cur = new;
                r.push("change_one", b.kind, s * 1e3);
                eprintln!(
                    "bench: change one [netd] run {}: {:.1} ms",
                    run + 1,
                    s * 1e3
                );
            }
        }
        remove("cp")?;
        res?;
    }
    // One API request per forward, as `netd forward add` in a loop does.
    // Once, and capped: it is the slow way.
    define("cp", &[])?;
    let t = Instant::now();
    let mut done = 0;
    let mut lap = Instant::now();
    for f in fwds.iter().take(o.api_forwards) {
        b.api_add("cp", "udp", &f.port.to_string(), &to(f))?;
        done += 1;
        if t.elapsed() > o.api_cap {
            break;
        }
        if lap.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "bench: netd API: {done} forwards after {:.0}s",
                t.elapsed().as_secs_f64()
            );
            lap = Instant::now();
        }
    }
    let s = t.elapsed().as_secs_f64();
    remove("cp")?;
    r.detail(
        "install_each",
        b.kind,
        json!({ "requests": done, "secs": s, "per_request_ms": s * 1e3 / done.max(1) as f64 }),
    );
    r.push(
        "install_each",
        b.kind,
        s * o.cp_forwards as f64 / done.max(1) as f64,
    );
    if done < o.cp_forwards {
        r.note(
            "install_each",
            &format!(
                "{done} requests took {s:.1}s (the run allows {}s); the figure is that pace over {} forwards",
                o.api_cap.as_secs(),
                o.cp_forwards
            ),
        );
    }
    eprintln!("bench: netd API, one request per forward: {done} in {s:.2}s");
    Ok(())
}

fn forwards_in_map(b: &Bed) -> Result<usize> {
    let dir = b.t.bpffs().join("maps");
    Ok(netd::dataplane::maps::list_forwards(&dir)?.len())
}

/// The daemon's RSS and the kernel memory of the BPF maps it holds open
/// (`memlock:` of each distinct map in /proc/PID/fdinfo). Maps are named
/// by matching their key size, value size and capacity with the pinned
/// maps' descriptions.
fn memory(r: &mut Results, pid: Option<u32>, maps_dir: &std::path::Path) {
    let Some(pid) = pid else {
        r.error("memory: the netd daemon is not running".into());
        return;
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    r.push("rss", Kind::Netd, rss_kb / 1024.0);
    let described = netd::dataplane::maps::describe(maps_dir).unwrap_or_default();
    let name_of = |k: u64, v: u64, m: u64| -> String {
        let names: Vec<&str> = described
            .iter()
            .filter(|d| {
                (
                    u64::from(d.key_size),
                    u64::from(d.value_size),
                    u64::from(d.max_entries),
                ) == (k, v, m)
            })
            .map(|d| d.name.as_str())
            .collect();
        if names.is_empty() {
            format!("other (key {k} B, value {v} B, {m} entries)")
        } else {
            names.join("|")
        }
    };
    // map id -> (name, memlock bytes)
    let mut maps = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            let is_map = std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-map");
            if !is_map {
                continue;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let name = name_of(
                field("key_size:"),
                field("value_size:"),
                field("max_entries:"),
            );
            maps.insert(field("map_id:"), (name, field("memlock:")));
        }
    }
    let total: u64 = maps.values().map(|(_, m)| m).sum();
    let by_name: std::collections::BTreeMap<String, u64> =
        maps.values().fold(Default::default(), |mut acc, (n, m)| {
            *acc.entry(n.clone()).or_default() += m;
            acc
        });
    r.push("bpf_mem", Kind::Netd, total as f64 / (1024.0 * 1024.0));
    r.detail(
        "bpf_mem",
        Kind::Netd,
        json!({ "maps": maps.len(), "memlock_bytes": total, "rss_kib": rss_kb, "memlock_by_map": by_name }),
    );
    eprintln!(
        "bench: netd RSS {:.1} MiB, {} BPF maps {:.1} MiB",
        rss_kb / 1024.0,
        maps.len(),
        total as f64 / 1048576.0
    );
    for (n, m) in &by_name {
        eprintln!("bench:   {n}: {:.1} MiB", *m as f64 / 1048576.0);
    }
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|v| v.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let commit = first_line(
        "git",
        &[
            "-C",
            &workspace_root().to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !first_line(
        "git",
        &[
            "-C",
            &workspace_root().to_string_lossy(),
            "status",
            "--porcelain",
        ],
    )
    .is_empty();
    let summary = format!(
        "{nproc} × {model}, {} GiB, Linux {kernel}",
        mem_kb / (1024 * 1024)
    );
    json!({
        "date": report::today(),
        "summary": summary,
        "nproc": nproc,
        "cpu": model,
        "kernel": kernel,
        "mem_gib": mem_kb as f64 / (1024.0 * 1024.0),
        "iptables": first_line("iptables", &["-V"]),
        "nft": first_line("nft", &["-v"]),
        "iperf3": first_line("iperf3", &["-v"]),
        "netd_commit": format!("{commit}{}", if dirty { " (with uncommitted changes)" } else { "" }),
        "load_before": loadavg(),
    })
}

/// Writes bench.md and bench.svg again from an earlier bench.json.
fn rerender(o: &mut Opts, path: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let r: Results = serde_json::from_value(v["results"].clone())?;
    o.quick = v["mode"] == "quick";
    o.runs = v["runs"].as_u64().unwrap_or(1) as usize;
    o.levels = serde_json::from_value(v["levels"].clone())?;
    write_outputs(&r, o, &v["machine"])
}

fn write_outputs(r: &Results, o: &Opts, machine: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(&o.out)?;
    let mode = if o.quick {
        "quick (1 short run each; figures are a smoke test only)"
    } else {
        "full"
    };
    let m = |k: &str| machine[k].as_str().unwrap_or("").to_string();
    let mut md = String::new();
    md.push_str("# netd benchmark\n\n");
    md.push_str(&format!(
        "- date: {}\n- machine: {}\n- {}; {}; {}\n- netd {} ({} build), mode: {mode}, runs per measure: {}\n- load average before/after: {} / {}\n- command: `cargo xtask bench{}`\n\n",
        m("date"),
        m("summary"),
        m("iptables"),
        m("nft"),
        m("iperf3"),
        m("netd_commit"),
        m("netd_build"),
        o.runs,
        m("load_before"),
        m("load_after"),
        if o.quick { " --quick" } else { "" },
    ));
    md.push_str("Cells: median (min–max) of the runs. Ratios: netd's median over the baseline's; whether more is better is in the second column.\n\n");
    md.push_str(&report::table(r));
    if !r.errors.is_empty() {
        md.push_str("\nFailed measures:\n");
        for e in &r.errors {
            md.push_str(&format!("- {e}\n"));
        }
    }
    std::fs::write(o.out.join("bench.md"), &md)?;
    let json = json!({
        "machine": machine,
        "mode": if o.quick { "quick" } else { "full" },
        "runs": o.runs,
        "durations_secs": { "tcp": o.tcp_secs, "udp": o.udp_secs, "conn": o.conn_secs, "rr": o.rr_secs, "scaling_udp": o.scale_secs },
        "levels": o.levels,
        "results": r,
    });
    std::fs::write(
        o.out.join("bench.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let title = format!(
        "netd vs libvirt (iptables) vs nftables — {} — {}",
        m("date"),
        m("summary")
    );
    std::fs::write(o.out.join("bench.svg"), report::svg(r, &o.levels, &title)?)?;
    println!("{md}");
    println!(
        "bench: wrote {}/bench.md, bench.json, bench.svg",
        o.out.display()
    );
    Ok(())
}
