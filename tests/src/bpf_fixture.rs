//! The fixture of the BPF_PROG_TEST_RUN tests (`tests/bpf_*.rs`): one
//! dataplane per test binary, with its maps pinned on a private bpffs mount,
//! and one private network namespace holding the interfaces the programs
//! look up (`__sk_buff.ifindex` and `bpf_fib_lookup` resolve in the calling
//! thread's namespace, so every test thread `setns`es into it first; the
//! machine's own namespace is never touched). [`env`] hands the fixture to
//! one test at a time; the namespace and the mount go at exit.
//!
//! ```text
//!  netns ndbpf<pid>
//!   br0 192.168.122.1/24 (port gp, peer gq)    NAT, ports 1024-65535
//!   br1 192.168.123.1/24 (port hp, peer hq)    NAT, ports 2000-2000
//!   up0 198.51.100.2/24 (peer up1), default via 198.51.100.1
//!   permanent neighbours: 192.168.122.10-40 and 192.168.123.10-40 (see
//!   [`gmac`], [`hmac`]), the router 198.51.100.1 ([`ROUTER_MAC`])
//! ```
//!
//! [`env_modes`] adds, once per test binary, a network of every other mode
//! and IPv6 (see [`Modes`]):
//!
//! ```text
//!   br0 also 2001:db8:122::1/64                 (NAT without NAT66: IPv6 routed)
//!   br2 192.168.124.1/24 2001:db8:124::1/64     ROUTE    (port p2, peer q2)
//!   br3 192.168.125.1/24 2001:db8:125::1/64     ISOLATED (port p3, peer q3)
//!   br4 192.168.126.1/24 fd00:126::1/64         NAT + NAT66, ports 1024-65535
//!   up0 also 2001:db8:100::2/64 (the NAT66 address), default via 2001:db8:100::1
//!   permanent neighbours: guests .10-40 / ::10-40 of each (see [`gmac`],
//!   [`rmac`], [`imac`], [`mmac`]), the router 2001:db8:100::1 ([`ROUTER_MAC`]);
//!   net.ipv6.conf.all.forwarding=1
//! ```

use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use crate::packet::*;
use anyhow::{Context, Result, bail};
use netd::dataplane::{Dataplane, Hook, maps};
use netd_common::{CtEntry, CtKey, NetConfig, mode, net_flags};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const GW0: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 1);
pub const GW1: Ipv4Addr = Ipv4Addr::new(192, 168, 123, 1);
pub const NAT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

pub const BR0_MAC: Mac = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x01];
pub const BR1_MAC: Mac = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x02];
pub const UP0_MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
pub const ROUTER_MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// Guest `n` of br0 (192.168.122.n) and its MAC.
pub fn g(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 122, n)
}
pub fn gmac(n: u8) -> Mac {
    [0x52, 0x54, 0x00, 0x00, 0x00, n]
}
/// Guest `n` of br1 (192.168.123.n) and its MAC.
pub fn h(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 123, n)
}
pub fn hmac(n: u8) -> Mac {
    [0x52, 0x54, 0x00, 0x00, 0x01, n]
}
pub const GUESTS: std::ops::RangeInclusive<u8> = 10..=40;

// The networks of [`env_modes`].
pub const GW2: Ipv4Addr = Ipv4Addr::new(192, 168, 124, 1);
pub const GW3: Ipv4Addr = Ipv4Addr::new(192, 168, 125, 1);
pub const GW4: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 1);
pub const BR2_MAC: Mac = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x03];
pub const BR3_MAC: Mac = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x04];
pub const BR4_MAC: Mac = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x05];
pub const GW0_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x122, 0, 0, 0, 0, 1);
pub const GW2_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x124, 0, 0, 0, 0, 1);
pub const GW3_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x125, 0, 0, 0, 0, 1);
pub const GW4_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x126, 0, 0, 0, 0, 0, 1);
/// up0's IPv6 address: NAT66 masquerades to it.
pub const NAT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x10);

fn v6(prefix: [u16; 3], n: u8) -> Ipv6Addr {
    Ipv6Addr::new(prefix[0], prefix[1], prefix[2], 0, 0, 0, 0, u16::from(n))
}
/// Guest `n` of br0 over IPv6 (2001:db8:122::n, MAC [`gmac`]).
pub fn g6(n: u8) -> Ipv6Addr {
    v6([0x2001, 0xdb8, 0x122], n)
}
/// Guest `n` of br2, the routed network: 192.168.124.n, 2001:db8:124::n.
pub fn r4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 124, n)
}
pub fn r6(n: u8) -> Ipv6Addr {
    v6([0x2001, 0xdb8, 0x124], n)
}
pub fn rmac(n: u8) -> Mac {
    [0x52, 0x54, 0x00, 0x00, 0x02, n]
}
/// Guest `n` of br3, the isolated network: 192.168.125.n, 2001:db8:125::n.
pub fn i4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 125, n)
}
pub fn i6(n: u8) -> Ipv6Addr {
    v6([0x2001, 0xdb8, 0x125], n)
}
pub fn imac(n: u8) -> Mac {
    [0x52, 0x54, 0x00, 0x00, 0x03, n]
}
/// Guest `n` of br4, the NAT66 network: 192.168.126.n, fd00:126::n.
pub fn m4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 126, n)
}
pub fn m6(n: u8) -> Ipv6Addr {
    v6([0xfd00, 0x126, 0], n)
}
pub fn mmac(n: u8) -> Mac {
    [0x52, 0x54, 0x00, 0x00, 0x04, n]
}

pub fn be(a: Ipv4Addr) -> u32 {
    u32::from(a).to_be()
}

pub fn ct_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: be(src),
        daddr: be(dst),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

// ---------------------------------------------------------------------------
// The fixture: namespace, bpffs mount, dataplane.

/// What has to go at exit: the namespace and the bpffs mount.
struct Cleanup {
    ns: String,
    mnt: PathBuf,
    mounted: bool,
}

impl Cleanup {
    fn run(&mut self) {
        if !self.ns.is_empty() {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
            self.ns.clear();
        }
        if self.mounted {
            umount(&self.mnt);
            self.mounted = false;
        }
        let _ = std::fs::remove_dir(&self.mnt);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

fn umount(p: &Path) {
    if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid C string; MNT_DETACH never blocks.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Statics are never dropped, so the fixture's cleanup runs from atexit
/// (libtest exits through exit(3) whether tests passed or not).
static CLEANUP: Mutex<Option<Cleanup>> = Mutex::new(None);

extern "C" fn cleanup_at_exit() {
    let mut g = CLEANUP.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(mut c) = g.take() {
        c.run();
    }
}

/// The loaded dataplane, its pinned maps, and the test namespace with the
/// ifindexes of its two bridges and its uplink.
pub struct Env {
    pub dp: Dataplane,
    pub maps: PathBuf,
    pub ns: String,
    pub br0: u32,
    pub br1: u32,
    pub up0: u32,
    /// Set up by [`env_modes`], once.
    modes: Option<Result<Modes, String>>,
}

/// The ifindexes of the networks [`env_modes`] adds.
#[derive(Clone, Copy, Debug)]
pub struct Modes {
    /// Routed (mode ROUTE).
    pub br2: u32,
    /// Isolated.
    pub br3: u32,
    /// NAT with NAT66.
    pub br4: u32,
}

static ENV: OnceLock<Result<Mutex<Env>, String>> = OnceLock::new();

thread_local! {
    static IN_NS: Cell<bool> = const { Cell::new(false) };
}

fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let o = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .context("running ip")?;
    if !o.status.success() {
        bail!(
            "ip -n {ns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Removes what an earlier, killed run of this binary left behind.
fn reap_stale() {
    let alive = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ndbpf") && !alive(&name, "ndbpf") {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ndbpf-") && !alive(&name, "ndbpf-") {
                umount(&e.path());
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

impl Env {
    pub fn new() -> Result<Env> {
        reap_stale();
        let pid = std::process::id();
        let mut cleanup = Cleanup {
            ns: String::new(),
            mnt: std::env::temp_dir().join(format!("ndbpf-{pid}")),
            mounted: false,
        };
        // SAFETY: registers a plain extern "C" function.
        unsafe { libc::atexit(cleanup_at_exit) };

        let ns = format!("ndbpf{pid}");
        let st = Command::new("ip").args(["netns", "add", &ns]).status()?;
        if !st.success() {
            bail!("ip netns add {ns} failed");
        }
        cleanup.ns = ns.clone();
        let guest_neighbours = GUESTS.map(|n| {
            format!(
                "neigh add {} lladdr {} dev br0 nud permanent",
                g(n),
                fmt_mac(gmac(n))
            )
        });
        let br1_neighbours = GUESTS.map(|n| {
            format!(
                "neigh add {} lladdr {} dev br1 nud permanent",
                h(n),
                fmt_mac(hmac(n))
            )
        });
        let script: Vec<String> = [
            "link set lo up",
            "link add br0 address 52:54:00:aa:00:01 type bridge",
            "addr add 192.168.122.1/24 dev br0",
            "link add name gp type veth peer name gq",
            "link set gp master br0",
            "link set gp up",
            "link set gq up",
            "link set br0 up",
            "link add br1 address 52:54:00:aa:00:02 type bridge",
            "addr add 192.168.123.1/24 dev br1",
            "link add name hp type veth peer name hq",
            "link set hp master br1",
            "link set hp up",
            "link set hq up",
            "link set br1 up",
            "link add name up0 address 02:00:00:00:00:02 type veth peer name up1",
            "addr add 198.51.100.2/24 dev up0",
            "link set up0 up",
            "link set up1 up",
            "route add default via 198.51.100.1",
            "neigh add 198.51.100.1 lladdr 02:00:00:00:00:01 dev up0 nud permanent",
        ]
        .into_iter()
        .map(String::from)
        .chain(guest_neighbours)
        .chain(br1_neighbours)
        .collect();
        let batch = cleanup.mnt.with_extension("ip");
        std::fs::write(&batch, script.join("\n") + "\n")?;
        let r = ip(&ns, &["-batch", batch.to_str().unwrap()]);
        let _ = std::fs::remove_file(&batch);
        r?;
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()?;
        if !o.status.success() {
            bail!("sysctl in {ns}: {}", String::from_utf8_lossy(&o.stderr));
        }

        let links: serde_json::Value = serde_json::from_str(&ip(&ns, &["-j", "link", "show"])?)?;
        let ifindex = |name: &str| -> Result<u32> {
            links
                .as_array()
                .and_then(|a| a.iter().find(|l| l["ifname"] == name))
                .and_then(|l| l["ifindex"].as_u64())
                .map(|i| i as u32)
                .with_context(|| format!("no {name} in {ns}"))
        };
        let (br0, br1, up0) = (ifindex("br0")?, ifindex("br1")?, ifindex("up0")?);

        std::fs::create_dir_all(&cleanup.mnt)?;
        let c = std::ffi::CString::new(cleanup.mnt.as_os_str().as_encoded_bytes())?;
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
                cleanup.mnt.display(),
                std::io::Error::last_os_error()
            );
        }
        cleanup.mounted = true;
        let dp = Dataplane::load(&cleanup.mnt, false)?;
        let maps = dp.maps_dir();
        let net = |subnet: Ipv4Addr, gw: Ipv4Addr, port_min, port_max| NetConfig {
            subnet: be(subnet),
            mask: be(Ipv4Addr::new(255, 255, 255, 0)),
            gateway: be(gw),
            nat_addr: 0,
            port_min,
            port_max,
            uplink_ifindex: 0,
            mode: mode::NAT,
            ..Default::default()
        };
        let sn0 = Ipv4Addr::new(192, 168, 122, 0);
        let sn1 = Ipv4Addr::new(192, 168, 123, 0);
        maps::add_network(&maps, br0, &net(sn0, GW0, 1024, 65535), Some((sn0, 24)))?;
        maps::add_network(&maps, br1, &net(sn1, GW1, 2000, 2000), Some((sn1, 24)))?;
        maps::set_uplink(&maps, up0, Some(NAT), None)?;

        *CLEANUP.lock().unwrap_or_else(PoisonError::into_inner) = Some(cleanup);
        Ok(Env {
            dp,
            maps,
            ns,
            br0,
            br1,
            up0,
            modes: None,
        })
    }

    /// The networks of [`env_modes`]. Panics when it was not called.
    pub fn modes(&self) -> Modes {
        match &self.modes {
            Some(Ok(m)) => *m,
            Some(Err(e)) => panic!("modes environment: {e}"),
            None => panic!("modes environment not set up: use env_modes()"),
        }
    }

    /// Adds the bridges, addresses, routes and networks of [`env_modes`].
    fn setup_modes(&self) -> Result<Modes> {
        let ns = &self.ns;
        let mut script: Vec<String> = Vec::new();
        for (br, mac, port, v4, v6) in [
            ("br2", BR2_MAC, "2", GW2, GW2_6),
            ("br3", BR3_MAC, "3", GW3, GW3_6),
            ("br4", BR4_MAC, "4", GW4, GW4_6),
        ] {
            script.extend([
                format!("link add {br} address {} type bridge", fmt_mac(mac)),
                format!("addr add {v4}/24 dev {br}"),
                format!("link add name p{port} type veth peer name q{port}"),
                format!("link set p{port} master {br}"),
                format!("link set p{port} up"),
                format!("link set q{port} up"),
                format!("link set {br} up"),
                format!("addr add {v6}/64 dev {br} nodad"),
            ]);
        }
        script.extend([
            format!("addr add {GW0_6}/64 dev br0 nodad"),
            format!("addr add {NAT6}/64 dev up0 nodad"),
            format!(
                "neigh add {ROUTER6} lladdr {} dev up0 nud permanent",
                fmt_mac(ROUTER_MAC)
            ),
            format!("route add default via {ROUTER6} dev up0"),
        ]);
        for n in GUESTS {
            for (addr, mac, br) in [
                (g6(n).to_string(), gmac(n), "br0"),
                (r4(n).to_string(), rmac(n), "br2"),
                (r6(n).to_string(), rmac(n), "br2"),
                (i4(n).to_string(), imac(n), "br3"),
                (i6(n).to_string(), imac(n), "br3"),
                (m4(n).to_string(), mmac(n), "br4"),
                (m6(n).to_string(), mmac(n), "br4"),
            ] {
                script.push(format!(
                    "neigh add {addr} lladdr {} dev {br} nud permanent",
                    fmt_mac(mac)
                ));
            }
        }
        let batch = std::env::temp_dir().join(format!("ndbpf-{}-modes.ip", std::process::id()));
        std::fs::write(&batch, script.join("\n") + "\n")?;
        let r = ip(ns, &["-batch", batch.to_str().unwrap()]);
        let _ = std::fs::remove_file(&batch);
        r?;
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.forwarding=1",
            ])
            .output()?;
        if !o.status.success() {
            bail!("sysctl in {ns}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let m = Modes {
            br2: ifindex(ns, "br2")?,
            br3: ifindex(ns, "br3")?,
            br4: ifindex(ns, "br4")?,
        };

        let maps = &self.maps;
        let net = |gw: Ipv4Addr, mode, flags| {
            let subnet = Ipv4Addr::from(u32::from(gw) & 0xffff_ff00);
            NetConfig {
                subnet: be(subnet),
                mask: be(Ipv4Addr::new(255, 255, 255, 0)),
                gateway: be(gw),
                nat_addr: 0,
                port_min: 1024,
                port_max: 65535,
                uplink_ifindex: 0,
                mode,
                flags,
                ..Default::default()
            }
        };
        for (br, gw, gw6, mode, flags) in [
            (m.br2, GW2, GW2_6, mode::ROUTE, 0),
            (m.br3, GW3, GW3_6, mode::ISOLATED, 0),
            (m.br4, GW4, GW4_6, mode::NAT, net_flags::NAT66),
        ] {
            let cfg = net(gw, mode, flags);
            let sn = Ipv4Addr::from(u32::from_be(cfg.subnet));
            maps::add_network(maps, br, &cfg, Some((sn, 24)))?;
            maps::add_subnet6(maps, br, (gw6, 64))?;
            maps::set_gateway6(maps, br, gw6)?;
        }
        maps::add_subnet6(maps, self.br0, (GW0_6, 64))?;
        maps::set_gateway6(maps, self.br0, GW0_6)?;
        maps::set_uplink(maps, self.up0, Some(NAT), Some(NAT6))?;
        Ok(m)
    }

    /// Moves the calling thread into the test namespace (once per thread).
    pub fn enter(&self) {
        if IN_NS.get() {
            return;
        }
        let f = std::fs::File::open(format!("/run/netns/{}", self.ns)).expect("open netns");
        // SAFETY: a namespace fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        IN_NS.set(true);
    }

    pub fn run(&self, hook: Hook, ifindex: u32, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.dp
            .test_run(hook, ifindex, pkt)
            .expect("BPF_PROG_TEST_RUN")
    }

    pub fn in_br0(&self, p: &Packet) -> (u32, Vec<u8>) {
        self.run(Hook::BridgeIngress, self.br0, &p.frame())
    }

    pub fn in_up0(&self, p: &Packet) -> (u32, Vec<u8>) {
        self.run(Hook::UplinkIngress, self.up0, &p.frame())
    }

    /// Packets counted under a reason, all CPUs.
    pub fn stat(&self, name: &str) -> u64 {
        maps::reason_stats(&self.maps)
            .expect("reason stats")
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no reason {name}"))
            .1
            .packets
    }

    pub fn ct(&self, key: &CtKey) -> Option<CtEntry> {
        maps::ct_entries(&self.maps)
            .expect("conntrack")
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, e)| e)
    }

    /// Runs `p` from guest `n` of br0 and checks it leaves masqueraded from
    /// NAT:`nat_port` towards the router, TTL one lower. Returns the packet
    /// as it left.
    #[track_caller]
    pub fn snat_ok(&self, what: &str, p: &Packet, nat_port: u16) -> Packet {
        let (rc, out) = self.in_br0(p);
        assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
        let want = snat_of(p, nat_port);
        assert_frame(what, &out, &want.frame());
        want
    }

    /// Runs `p` in at up0 and checks it is translated back to `guest`:`port`
    /// on br0 (guest `mac`) and redirected. Returns the translated packet.
    #[track_caller]
    pub fn rnat_ok(
        &self,
        what: &str,
        p: &Packet,
        guest: Ipv4Addr,
        port: u16,
        mac: Mac,
        bridge_mac: Mac,
    ) -> Packet {
        let (rc, out) = self.in_up0(p);
        assert_eq!(rc, TC_ACT_REDIRECT, "{what}: verdict\n{}", hexdump(&out));
        let mut want = p.clone().macs(mac, bridge_mac);
        want.dst = guest;
        want.ttl -= 1;
        match want.l4 {
            L4::Icmp { .. } => want.set_echo_id(port),
            _ => want.set_dport(port),
        }
        assert_frame(what, &out, &want.frame());
        want
    }

    /// Sets the `net_flags` of the network on `bridge`, returning the old
    /// ones (the network's other fields stay).
    pub fn set_net_flags(&self, bridge: u32, flags: u8) -> u8 {
        let (_, mut cfg) = maps::list_networks(&self.maps)
            .expect("networks")
            .into_iter()
            .find(|(b, _)| *b == bridge)
            .expect("no such network");
        let old = cfg.flags;
        cfg.flags = flags;
        maps::add_network(&self.maps, bridge, &cfg, None).expect("updating a network");
        old
    }

    /// Runs `p` through `hook` and checks it is dropped unchanged, counted
    /// under `reason`.
    #[track_caller]
    pub fn dropped(&self, what: &str, hook: Hook, ifindex: u32, frame: &[u8], reason: &str) {
        let before = self.stat(reason);
        let (rc, out) = self.run(hook, ifindex, frame);
        assert_eq!(rc, TC_ACT_SHOT, "{what}: verdict\n{}", hexdump(&out));
        assert_eq!(
            self.stat(reason) - before,
            1,
            "{what}: {reason} not counted once"
        );
        assert_eq!(out, frame, "{what}: a dropped packet was changed");
    }
}

/// The packet `p` from a guest as it should leave: source NAT:`nat_port`
/// (the echo id for ICMP), TTL one lower, towards the router's MAC.
pub fn snat_of(p: &Packet, nat_port: u16) -> Packet {
    let mut w = p.clone().macs(ROUTER_MAC, UP0_MAC);
    w.src = NAT;
    w.ttl -= 1;
    match w.l4 {
        L4::Icmp { .. } => w.set_echo_id(nat_port),
        L4::Raw(_) => {}
        _ => w.set_sport(nat_port),
    }
    w
}

pub fn fmt_mac(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The shared environment, locked for the calling test, with the thread in
/// the test namespace. None (test skipped) when not root.
pub fn env() -> MutexGuard<'static, Env> {
    let e = ENV.get_or_init(|| Env::new().map(Mutex::new).map_err(|e| format!("{e:#}")));
    let e = match e {
        Ok(e) => e,
        Err(msg) => panic!("test environment: {msg}"),
    };
    let g = e.lock().unwrap_or_else(PoisonError::into_inner);
    g.enter();
    g
}

/// The shared environment with the networks of every mode and IPv6 (see
/// [`Modes`]) set up, locked for the calling test, with the thread in the
/// test namespace.
pub fn env_modes() -> MutexGuard<'static, Env> {
    let mut g = env();
    if g.modes.is_none() {
        let m = g.setup_modes().map_err(|e| format!("{e:#}"));
        g.modes = Some(m);
    }
    g.modes();
    g
}

/// The ifindex of `name` in `ns`.
fn ifindex(ns: &str, name: &str) -> Result<u32> {
    let links: serde_json::Value =
        serde_json::from_str(&ip(ns, &["-j", "link", "show", "dev", name])?)?;
    links
        .as_array()
        .and_then(|a| a.first())
        .and_then(|l| l["ifindex"].as_u64())
        .map(|i| i as u32)
        .with_context(|| format!("no {name} in {ns}"))
}

pub fn from_guest(n: u8, mut p: Packet) -> Packet {
    p.src = g(n);
    p.macs(BR0_MAC, gmac(n))
}

pub fn from_router(p: Packet) -> Packet {
    p.macs(UP0_MAC, ROUTER_MAC)
}
