//! The data-path measures. Each returns one sample; the caller repeats.

use super::bed::{Bed, CONN_FWD, IPERF_FWD};
use anyhow::{Context, Result, bail};
use netd_tests::{HOST_IP, Ns, UPSTREAM_IP};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Port of the servers in upstream (no forward involved).
const UP_IPERF: u16 = 5301;
const UP_CONN: u16 = 7000;
const UP_RR: u16 = 7001;
const UP_UDP: u16 = 9000;

fn wait_listening(ns: &Ns, port: u16) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(5);
    let filter = format!("sport = :{port}");
    while Instant::now() < end {
        let o = ns.exec(&["ss", "-Hltn", &filter]);
        if o.success() && !o.stdout.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    bail!("nothing listens on port {port} in {} after 5s", ns.name)
}

/// iperf3 from `client` to `server_ns` at `addr:port`; received bit/s.
fn iperf(
    server_ns: &Ns,
    listen: u16,
    client: &Ns,
    addr: &str,
    port: u16,
    secs: u32,
) -> Result<f64> {
    let lp = listen.to_string();
    let mut srv = server_ns.spawn(&["iperf3", "-s", "-1", "-p", &lp]);
    let r = (|| {
        wait_listening(server_ns, listen)?;
        let p = port.to_string();
        let t = secs.to_string();
        let o = client.exec_timeout(
            &[
                "iperf3",
                "-c",
                addr,
                "-p",
                &p,
                "-t",
                &t,
                "-J",
                "--connect-timeout",
                "3000",
            ],
            Duration::from_secs(u64::from(secs) + 30),
        );
        let v: Value =
            serde_json::from_str(&o.stdout).with_context(|| format!("iperf3 output: {o}"))?;
        if let Some(e) = v["error"].as_str() {
            bail!("iperf3: {e}");
        }
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .with_context(|| format!("iperf3 result: {o}"))
    })();
    let _ = srv.kill();
    let _ = srv.wait();
    r
}

/// TCP bulk guest -> upstream through NAT, Gbit/s.
pub fn tcp_out(b: &Bed, secs: u32) -> Result<f64> {
    Ok(iperf(
        &b.t.upstream,
        UP_IPERF,
        &b.guest.ns,
        &UPSTREAM_IP.to_string(),
        UP_IPERF,
        secs,
    )? / 1e9)
}

/// TCP bulk upstream -> guest through the 5201 forward, Gbit/s.
pub fn tcp_in(b: &Bed, secs: u32) -> Result<f64> {
    Ok(iperf(
        &b.guest.ns,
        IPERF_FWD,
        &b.t.upstream,
        &HOST_IP.to_string(),
        IPERF_FWD,
        secs,
    )? / 1e9)
}

/// Machine-wide CPU time from /proc/stat: (system, irq + softirq) seconds.
/// /proc/stat is not namespaced: whatever else runs is counted too.
pub fn cpu_times() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0) / hz;
    // user nice system idle iowait irq softirq
    (get(2), get(5) + get(6))
}

pub struct UdpSample {
    /// Received packets per second.
    pub pps: f64,
    pub sent: u64,
    pub received: u64,
    /// Machine-wide system and irq+softirq seconds per million received packets.
    pub sys_per_mpkt: f64,
    pub softirq_per_mpkt: f64,
}

/// 64-byte UDP datagrams from `from` to `addr:port`, counted by a receiver
/// on `recv_port` in `to`.
pub fn udp(
    b: &Bed,
    from: &Ns,
    to: &Ns,
    addr: &str,
    port: u16,
    recv_port: u16,
    secs: f64,
) -> Result<UdpSample> {
    let rp = recv_port.to_string();
    let max = format!("{}", secs + 8.0);
    let recv = b.spawn_helper(to, &["udp-recv", "--port", &rp, "--secs", &max])?;
    let dst = format!("{addr}:{port}");
    let s = format!("{secs}");
    let (sys0, soft0) = cpu_times();
    let sent = b.helper(
        from,
        &["udp-send", "--dst", &dst, "--secs", &s, "--size", "64"],
        Duration::from_secs_f64(secs + 20.0),
    )?;
    let (sys1, soft1) = cpu_times();
    let got = recv.result(Duration::from_secs(12))?;
    let received = got["received"].as_u64().unwrap_or(0);
    if received < 50 {
        bail!(
            "udp {dst}: only {received} datagrams arrived (sent {})",
            sent["sent"]
        );
    }
    let m = received as f64 / 1e6;
    Ok(UdpSample {
        pps: got["pps"].as_f64().unwrap_or(0.0),
        sent: sent["sent"].as_u64().unwrap_or(0),
        received,
        sys_per_mpkt: (sys1 - sys0) / m,
        softirq_per_mpkt: (soft1 - soft0) / m,
    })
}

/// guest -> upstream through NAT.
pub fn udp_out(b: &Bed, secs: f64) -> Result<UdpSample> {
    udp(
        b,
        &b.guest.ns,
        &b.t.upstream,
        &UPSTREAM_IP.to_string(),
        UP_UDP,
        UP_UDP,
        secs,
    )
}

/// upstream -> host:port -> guest:port through a UDP forward.
pub fn udp_fwd(b: &Bed, port: u16, secs: f64) -> Result<UdpSample> {
    udp(
        b,
        &b.t.upstream,
        &b.guest.ns,
        &HOST_IP.to_string(),
        port,
        port,
        secs,
    )
}

pub struct ConnSample {
    pub rate: f64,
    pub ok: u64,
    pub fail: u64,
}

fn conn(
    b: &Bed,
    server: &Ns,
    listen: u16,
    client: &Ns,
    dst: String,
    secs: f64,
) -> Result<ConnSample> {
    let lp = listen.to_string();
    let max = format!("{}", secs + 15.0);
    let srv = b.spawn_helper(
        server,
        &[
            "server",
            "--port",
            &lp,
            "--mode",
            "close",
            "--threads",
            "2",
            "--secs",
            &max,
        ],
    )?;
    let s = format!("{secs}");
    let v = b.helper(
        client,
        &["conn", "--dst", &dst, "--secs", &s, "--threads", "2"],
        Duration::from_secs_f64(secs + 20.0),
    );
    drop(srv);
    let v = v?;
    let ok = v["ok"].as_u64().unwrap_or(0);
    if ok == 0 {
        bail!("no connection to {dst} succeeded ({} failed)", v["fail"]);
    }
    Ok(ConnSample {
        rate: v["rate"].as_f64().unwrap_or(0.0),
        ok,
        fail: v["fail"].as_u64().unwrap_or(0),
    })
}

/// Short TCP connections guest -> upstream through NAT, per second.
pub fn conn_nat(b: &Bed, secs: f64) -> Result<ConnSample> {
    conn(
        b,
        &b.t.upstream,
        UP_CONN,
        &b.guest.ns,
        format!("{UPSTREAM_IP}:{UP_CONN}"),
        secs,
    )
}

/// Short TCP connections upstream -> host:port -> guest:port.
pub fn conn_via(b: &Bed, port: u16, secs: f64) -> Result<ConnSample> {
    conn(
        b,
        &b.guest.ns,
        port,
        &b.t.upstream,
        format!("{HOST_IP}:{port}"),
        secs,
    )
}

/// Short TCP connections upstream -> guest through the 6000 forward.
pub fn conn_fwd(b: &Bed, secs: f64) -> Result<ConnSample> {
    conn(
        b,
        &b.guest.ns,
        CONN_FWD,
        &b.t.upstream,
        format!("{HOST_IP}:{CONN_FWD}"),
        secs,
    )
}

/// TCP request-response guest -> upstream through NAT: (p50, p99) in µs.
pub fn latency(b: &Bed, secs: f64) -> Result<(f64, f64)> {
    let lp = UP_RR.to_string();
    let max = format!("{}", secs + 15.0);
    let srv = b.spawn_helper(
        &b.t.upstream,
        &["server", "--port", &lp, "--mode", "echo", "--secs", &max],
    )?;
    let dst = format!("{UPSTREAM_IP}:{UP_RR}");
    let s = format!("{secs}");
    let v = b.helper(
        &b.guest.ns,
        &["rr", "--dst", &dst, "--secs", &s],
        Duration::from_secs_f64(secs + 20.0),
    );
    drop(srv);
    let v = v?;
    Ok((
        v["p50_us"].as_f64().unwrap_or(0.0),
        v["p99_us"].as_f64().unwrap_or(0.0),
    ))
}

/// Sanity check before measuring: the guest reaches upstream through NAT
/// (upstream sees the host's address) and upstream reaches the guest
/// through the conn forward.
pub fn check(b: &Bed) -> Result<()> {
    conn_nat(b, 0.3).context("guest -> upstream through NAT")?;
    conn_fwd(b, 0.3).context("upstream -> guest through a forward")?;
    Ok(())
}
