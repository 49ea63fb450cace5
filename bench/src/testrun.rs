//! netd's forward path measured inside the kernel with BPF_PROG_TEST_RUN:
//! the uplink ingress program run over a crafted UDP packet to the last
//! forward, with 1, 1,000 and 10,000 forwards in the map.
//!
//! A private copy of the dataplane is loaded on a bpffs of its own under the
//! bed's temp dir (never the daemon's maps), from a thread that has entered
//! the netd bed's host namespace, so the programs see its virbr0, uplink0
//! and routes. Two figures per level:
//! - new flow: each run a new source port, so the program misses conntrack,
//!   takes the tail call, looks the forward up and creates the connection
//!   (the kernel's time for one run, averaged over `iters` runs);
//! - established: one packet repeated, conntrack hit (kernel's mean).

use super::bed::{Bed, SCALE_BASE};
use super::rules;
use anyhow::{Context, Result, bail};
use netd::dataplane::maps::{self, ForwardEntry};
use netd::dataplane::{Dataplane, Hook};
use netd_common::{NetConfig, mode};
use netd_tests::packet::{Mac, Packet, mac};
use netd_tests::{HOST_IP, UPSTREAM_IP};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const TC_ACT_REDIRECT: u32 = 7;

#[derive(Clone, Debug, serde::Serialize)]
pub struct TrSample {
    pub forwards: usize,
    pub new_flow_ns: f64,
    pub established_ns: f64,
    /// Verdicts of the new-flow runs other than TC_ACT_REDIRECT.
    pub not_redirected: u64,
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn mount_bpffs(dir: &Path) -> Result<Mount> {
    std::fs::create_dir_all(dir)?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C strings; a fresh bpffs instance on our own directory.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mount -t bpf on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(Mount(dir.to_path_buf()))
}

fn link(ns: &str, dev: &str) -> Result<(u32, Mac)> {
    let o = std::process::Command::new("ip")
        .args(["-j", "-n", ns, "link", "show", "dev", dev])
        .output()?;
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).with_context(|| format!("ip link show {dev} in {ns}"))?;
    let l = &v[0];
    let idx = l["ifindex"]
        .as_u64()
        .with_context(|| format!("no ifindex for {dev}"))? as u32;
    Ok((
        idx,
        mac(l["address"].as_str().unwrap_or("00:00:00:00:00:00")),
    ))
}

fn be(a: Ipv4Addr) -> u32 {
    u32::from(a).to_be()
}

/// Runs every level `runs` times; `iters` new flows per sample.
pub fn measure(
    bed: &Bed,
    levels: &[usize],
    runs: usize,
    iters: u32,
    repeat: u32,
) -> Result<Vec<TrSample>> {
    let host = bed.host().name.clone();
    let router = bed.t.router.name.clone();
    let dir = bed.t.dir.join("bpffs-testrun");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<TrSample>> {
            let f = std::fs::File::open(format!("/run/netns/{host}"))?;
            // SAFETY: a namespace fd; only this thread changes namespace.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {host}: {}", std::io::Error::last_os_error());
            }
            let (br, _) = link(&host, rules::BRIDGE)?;
            let (up, up_mac) = link(&host, netd_tests::UPLINK)?;
            let (_, router_mac) = link(&router, netd_tests::ROUTER_HOST_IF)?;
            let _mnt = mount_bpffs(&dir)?;
            let dp = Dataplane::load(&dir, false)?;
            let m = dp.maps_dir();
            let cfg = NetConfig {
                subnet: be(Ipv4Addr::new(192, 168, 122, 0)),
                mask: be(Ipv4Addr::new(255, 255, 255, 0)),
                gateway: be(rules::GATEWAY),
                nat_addr: 0,
                port_min: 1024,
                port_max: 65535,
                uplink_ifindex: 0,
                mode: mode::NAT,
                ..Default::default()
            };
            maps::add_network(&m, br, &cfg, Some((Ipv4Addr::new(192, 168, 122, 0), 24)))?;
            maps::set_uplink(&m, up, Some(HOST_IP), None)?;
            let entry = |i: usize| ForwardEntry {
                proto: 17,
                host: (HOST_IP, SCALE_BASE + i as u16),
                guest: (rules::GUEST, SCALE_BASE + i as u16),
                bridge_ifindex: br,
            };
            let mut flows = Flows::default();
            let mut out = Vec::new();
            let mut installed = 0usize;
            for &n in levels {
                let have: Vec<ForwardEntry> = (0..installed).map(entry).collect();
                maps::remove_forwards(&m, &have)?;
                let want: Vec<ForwardEntry> = (0..n).map(entry).collect();
                maps::add_forwards(&m, &want)?;
                installed = n;
                let dport = SCALE_BASE + n as u16 - 1;
                for _ in 0..runs {
                    let mut total = 0u128;
                    let mut not_redirected = 0;
                    let mut first = None;
                    for _ in 0..iters {
                        let (src, sport) = flows.next();
                        let p = Packet::udp(src, sport, HOST_IP, dport, &[0u8; 64])
                            .macs(up_mac, router_mac);
                        let frame = p.frame();
                        let (rc, _, d) = dp.test_run_repeat(Hook::UplinkIngress, up, &frame, 1)?;
                        if rc != TC_ACT_REDIRECT {
                            not_redirected += 1;
                        }
                        total += d.as_nanos();
                        first.get_or_insert(frame);
                    }
                    let frame = first.context("no runs")?;
                    let (_, _, est) =
                        dp.test_run_repeat(Hook::UplinkIngress, up, &frame, repeat)?;
                    out.push(TrSample {
                        forwards: n,
                        new_flow_ns: total as f64 / f64::from(iters.max(1)),
                        established_ns: est.as_nanos() as f64,
                        not_redirected,
                    });
                }
            }
            drop(dp);
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the test_run thread panicked"))?
    })
}

/// Fresh (source address, source port) pairs from upstream's /24.
#[derive(Default)]
struct Flows(u32);

impl Flows {
    fn next(&mut self) -> (Ipv4Addr, u16) {
        let per = 65535 - 1024;
        let (hi, lo) = (self.0 / per, self.0 % per);
        self.0 += 1;
        let o = UPSTREAM_IP.octets();
        (
            Ipv4Addr::new(o[0], o[1], o[2], o[3].wrapping_add(hi as u8)),
            1024 + lo as u16,
        )
    }
}
