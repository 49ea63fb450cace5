//! End-to-end tests of SR-IOV VF pools (hostdev networks) with the real
//! daemon in a namespace. The kernel here has no SR-IOV, so each test builds
//! a fake sysfs tree with the real layout (PF netdev, `device` link,
//! `sriov_numvfs`, `sriov_totalvfs`, `virtfnN` links to PCI device folders
//! with `net/NAME`, `driver` and `physfn`) and points `--sysfs-root` at it.
//! The PF is a real veth called eth3 in the daemon's namespace (netd finds
//! its ifindex through rtnetlink); the VF messages, which a veth cannot take
//! (EOPNOTSUPP, see the netd unit test `vf_message_is_parsed_by_the_kernel`),
//! are recorded by the hidden `--vf-netlink-log` flag and checked here.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use netd_tests::*;
use serde_json::Value;

/// A fake sysfs tree under `root`.
struct FakeSysfs {
    root: PathBuf,
}

impl FakeSysfs {
    fn new(root: PathBuf) -> FakeSysfs {
        for d in [
            "class/net",
            "bus/pci/devices",
            "bus/pci/drivers/ixgbevf",
            "devices/pci0000:00",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        FakeSysfs { root }
    }

    fn dev(&self, addr: &str) -> PathBuf {
        self.root.join("devices/pci0000:00").join(addr)
    }

    /// A PF `name` at `addr` (e.g. 0000:02:00.0), `total` VFs possible, `num`
    /// enabled, `links` virtfn links made up front (the kernel makes them
    /// when VFs are enabled). VF i is at 0000:02:(0x10 + i/4).(i%4*2 + 1),
    /// the addresses of the seed's example, with netdev NAMEvI.
    fn pf(&self, name: &str, addr: &str, total: u32, num: u32, links: u32) -> Vec<String> {
        let d = self.dev(addr);
        fs::create_dir_all(d.join("net").join(name)).unwrap();
        fs::write(d.join("sriov_totalvfs"), format!("{total}\n")).unwrap();
        fs::write(d.join("sriov_numvfs"), format!("{num}\n")).unwrap();
        symlink(
            format!("../../devices/pci0000:00/{addr}/net/{name}"),
            self.root.join("class/net").join(name),
        )
        .unwrap();
        symlink(
            format!("../../../{addr}"),
            d.join("net").join(name).join("device"),
        )
        .unwrap();
        symlink(
            format!("../../../devices/pci0000:00/{addr}"),
            self.root.join("bus/pci/devices").join(addr),
        )
        .unwrap();
        (0..links)
            .map(|i| {
                let vf = format!("{}:{:02x}.{}", &addr[..7], 0x10 + i / 4, (i % 4) * 2 + 1);
                let vd = self.dev(&vf);
                fs::create_dir_all(vd.join("net").join(format!("{name}v{i}"))).unwrap();
                symlink("../../../bus/pci/drivers/ixgbevf", vd.join("driver")).unwrap();
                symlink(format!("../{addr}"), vd.join("physfn")).unwrap();
                symlink(format!("../{vf}"), d.join(format!("virtfn{i}"))).unwrap();
                symlink(
                    format!("../../../devices/pci0000:00/{vf}"),
                    self.root.join("bus/pci/devices").join(&vf),
                )
                .unwrap();
                vf
            })
            .collect()
    }

    fn numvfs(&self, addr: &str) -> String {
        fs::read_to_string(self.dev(addr).join("sriov_numvfs"))
            .unwrap()
            .trim()
            .to_string()
    }
}

/// One recorded VF message.
#[derive(Debug, Clone, PartialEq)]
struct VfMsg {
    pf_index: u32,
    vf: u32,
    mac: String,
    vlan: u16,
    bytes: Vec<u8>,
}

fn vf_log(path: &Path) -> Vec<VfMsg> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let field = |k: &str| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix(&format!("{k}=")))
                    .unwrap_or_else(|| panic!("no {k} in {l:?}"))
                    .to_string()
            };
            let hex = field("bytes");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            VfMsg {
                pf_index: field("pf_index").parse().unwrap(),
                vf: field("vf").parse().unwrap(),
                mac: field("mac"),
                vlan: field("vlan").parse().unwrap(),
                bytes,
            }
        })
        .collect()
}

/// Checks the recorded bytes say what the summary says: RTM_SETLINK on the
/// PF's ifindex, IFLA_VF_MAC and IFLA_VF_VLAN for the VF (the exact layout is
/// the netd unit test's business; this ties the daemon's log to it).
fn check_bytes(m: &VfMsg) {
    let b = &m.bytes;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    assert_eq!(b.len(), 96, "{m:?}");
    assert_eq!(u32_at(0), 96);
    assert_eq!(u16_at(4), 19, "RTM_SETLINK");
    assert_eq!(u32_at(20), m.pf_index, "ifi_index");
    assert_eq!((u16_at(32), u16_at(34)), (64, 22), "IFLA_VFINFO_LIST");
    assert_eq!((u16_at(40), u16_at(42)), (40, 1), "IFLA_VF_MAC");
    assert_eq!(u32_at(44), m.vf);
    let mac: Vec<String> = b[48..54].iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(mac.join(":"), m.mac);
    assert_eq!((u16_at(80), u16_at(82)), (16, 2), "IFLA_VF_VLAN");
    assert_eq!(u32_at(84), m.vf);
    assert_eq!(u32_at(88), u32::from(m.vlan));
}

struct Pool {
    t: Topology,
    sys: FakeSysfs,
    log: PathBuf,
}

/// A topology with a veth `eth3` (the PF netdev) in the host namespace, a
/// fake sysfs tree, and a daemon pointed at both.
fn pool(name: &str, build: impl FnOnce(&FakeSysfs)) -> Pool {
    let mut t = Topology::new(name).expect("topology");
    t.host
        .ip_ok(&[
            "link", "add", "eth3", "type", "veth", "peer", "name", "eth3p",
        ])
        .unwrap();
    let sys = FakeSysfs::new(t.dir.join("sysfs"));
    build(&sys);
    let log = t.dir.join("vf-netlink.log");
    let root = sys.root.to_string_lossy().into_owned();
    let logs = log.to_string_lossy().into_owned();
    t.start_daemon_with(&["--sysfs-root", &root, "--vf-netlink-log", &logs])
        .expect("daemon");
    Pool { t, sys, log }
}

fn ifindex(t: &Topology, dev: &str) -> u32 {
    let o = t
        .host
        .exec_ok(&["cat", &format!("/sys/class/net/{dev}/ifindex")]);
    o.trim().parse().unwrap()
}

/// Runs netd, expects exit 1 with one `error:` line containing `want`.
#[track_caller]
fn refused(t: &Topology, args: &[&str], want: &str) -> String {
    let o = t.netd(args);
    assert_eq!(o.status, 1, "`netd {}` should fail: {o}", args.join(" "));
    let e = o.stderr.trim_end();
    assert!(
        e.starts_with("error: ") && !e.contains('\n'),
        "one error line: {e:?}"
    );
    assert!(
        e.contains(want),
        "`netd {}`: {e:?} lacks {want:?}",
        args.join(" ")
    );
    e.to_string()
}

fn define(t: &Topology, file: &str, text: &str) {
    let p = t.write_file(file, text);
    t.netd_ok(&["net", "define", p.to_str().unwrap()]);
}

fn vfs(t: &Topology, net: &str) -> Vec<Value> {
    t.netd_json(&["vf", "list", net])
        .as_array()
        .unwrap()
        .clone()
}

fn acquire(t: &Topology, net: &str, owner: &str, extra: &[&str]) -> Value {
    let mut a = vec!["vf", "acquire", net, "--owner", owner];
    a.extend_from_slice(extra);
    t.netd_json(&a)
}

#[test]
fn vf_pool_lifecycle() {
    require_netd!();
    let p = pool("vf_pool_lifecycle", |s| {
        s.pf("eth3", "0000:02:00.0", 8, 0, 8);
    });
    let t = &p.t;
    let pf_index = ifindex(t, "eth3");
    define(
        t,
        "passthrough.toml",
        "name = \"passthrough\"\nmode = \"hostdev\"\npf = \"eth3\"\nvfs = 4\nvlan = 42\n",
    );
    // Defining writes nothing to the PF; starting enables the 4 VFs asked.
    assert_eq!(p.sys.numvfs("0000:02:00.0"), "0");
    t.netd_ok(&["net", "start", "passthrough"]);
    assert_eq!(p.sys.numvfs("0000:02:00.0"), "4");
    assert!(
        !t.host.ip(&["link", "show", "netd0"]).success(),
        "no bridge"
    );

    // Discovery: the first 4 virtfn links, with netdev and driver.
    let list = vfs(t, "passthrough");
    let pcis: Vec<&str> = list.iter().map(|v| v["pci"].as_str().unwrap()).collect();
    assert_eq!(
        pcis,
        [
            "0000:02:10.1",
            "0000:02:10.3",
            "0000:02:10.5",
            "0000:02:10.7"
        ]
    );
    assert_eq!(list[2]["netdev"], "eth3v2");
    assert_eq!(list[2]["driver"], "ixgbevf");
    assert_eq!(list[2]["vf"], 2);
    assert!(list.iter().all(|v| v["state"] == "free"));
    let info = t.netd_json(&["net", "info", "passthrough"]);
    assert_eq!(info["connections"], 0);
    assert_eq!(info["vf_pool"]["total"], 4);
    assert_eq!(info["vf_pool"]["free"], 4);
    assert!(info["bridge"].is_null() && info["dnsmasq_pid"].is_null() && info["mac"].is_null());
    assert!(
        !t.state_dir().join("macs/passthrough").exists(),
        "no bridge MAC made"
    );

    // Acquire: the libvirt address line, then the full record.
    let out = t.netd_ok(&["vf", "acquire", "passthrough", "--owner", "guest1"]);
    assert_eq!(
        out.trim(),
        "<address type='pci' domain='0x0000' bus='0x02' slot='0x10' function='0x1'/>"
    );
    let g1 = acquire(t, "passthrough", "guest1", &[]);
    assert_eq!(g1["pci"], "0000:02:10.1");
    assert_eq!(g1["owner"], "guest1");
    assert_eq!(g1["vlan"], 42, "the network's default VLAN");
    let g1_mac = g1["mac"].as_str().unwrap().to_string();
    assert!(g1_mac.starts_with("52:54:00:"), "{g1_mac}");
    let msgs = vf_log(&p.log);
    assert_eq!(msgs.len(), 1, "a repeated acquire sends nothing: {msgs:?}");
    assert_eq!(
        (msgs[0].pf_index, msgs[0].vf, msgs[0].vlan),
        (pf_index, 0, 42)
    );
    assert_eq!(msgs[0].mac, g1_mac);
    check_bytes(&msgs[0]);

    let g2 = acquire(
        t,
        "passthrough",
        "guest2",
        &["--mac", "52:54:00:00:00:02", "--vlan", "100"],
    );
    assert_eq!(
        (g2["pci"].as_str(), g2["vlan"].as_u64()),
        (Some("0000:02:10.3"), Some(100))
    );
    // The same request again: the same VF, nothing sent.
    let again = acquire(
        t,
        "passthrough",
        "guest2",
        &["--mac", "52:54:00:00:00:02", "--vlan", "100"],
    );
    assert_eq!(again, g2);
    acquire(t, "passthrough", "guest3", &[]);
    acquire(t, "passthrough", "guest4", &[]);
    assert_eq!(vf_log(&p.log).len(), 4);

    // Every refusal: one line, exit 1, nothing changed.
    let before = vfs(t, "passthrough");
    refused(
        t,
        &["vf", "acquire", "passthrough", "--owner", "guest5"],
        "pool passthrough is exhausted: all 4 VFs are held",
    );
    refused(
        t,
        &[
            "vf",
            "acquire",
            "passthrough",
            "--owner",
            "guest2",
            "--mac",
            "52:54:00:00:00:09",
        ],
        "owner guest2 already holds VF 0000:02:10.3 with MAC 52:54:00:00:00:02",
    );
    refused(
        t,
        &[
            "vf",
            "acquire",
            "passthrough",
            "--owner",
            "guest2",
            "--vlan",
            "7",
        ],
        "already holds VF 0000:02:10.3 with VLAN 100",
    );
    refused(
        t,
        &[
            "vf",
            "acquire",
            "passthrough",
            "--owner",
            "guest5",
            "--vlan",
            "0",
        ],
        "VLAN 0 is outside 1-4094",
    );
    refused(
        t,
        &[
            "vf",
            "acquire",
            "passthrough",
            "--owner",
            "guest5",
            "--vlan",
            "4095",
        ],
        "VLAN 4095 is outside 1-4094",
    );
    refused(
        t,
        &[
            "vf",
            "acquire",
            "passthrough",
            "--owner",
            "guest5",
            "--mac",
            "52:54:00:zz:00:01",
        ],
        "invalid MAC address",
    );
    refused(
        t,
        &[
            "vf",
            "acquire",
            "passthrough",
            "--owner",
            "guest5",
            "--mac",
            "01:00:5e:00:00:01",
        ],
        "multicast",
    );
    refused(
        t,
        &["vf", "acquire", "passthrough", "--owner", "has space"],
        "must not contain whitespace",
    );
    refused(
        t,
        &["vf", "release", "passthrough", "--owner", "nobody"],
        "owner nobody holds no VF in pool passthrough",
    );
    refused(t, &["vf", "list", "nosuch"], "is not defined");
    refused(t, &["net", "stop", "passthrough"], "has 4 VFs held");
    let long = "x".repeat(129);
    refused(
        t,
        &["vf", "acquire", "passthrough", "--owner", &long],
        "at most 128",
    );
    // The API answers bad bodies with a JSON error too, and changes nothing.
    for (body, want) in [
        (r#"{"owner":"guest9","colour":1}"#, "unknown field `colour`"),
        (r#"{"owner":"guest9","vlan":"10"}"#, "invalid type"),
        (
            r#"{"owner":"guest9","vlan":5000}"#,
            "VLAN 5000 is outside 1-4094",
        ),
        (r#"{"owner":"bad\u0007id"}"#, "control characters"),
        (
            r#"{"owner":"guest9","mac":"ff:ff:ff:ff:ff:ff"}"#,
            "multicast",
        ),
    ] {
        let sock = t.socket();
        let o = t.host.exec(&[
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            sock.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "http://netd/v1/networks/passthrough/vfs/acquire",
        ]);
        let (json, code) = o.stdout.trim().rsplit_once('\n').expect("curl output");
        assert_eq!(code, "400", "{body}: {o}");
        let v: Value =
            serde_json::from_str(json).unwrap_or_else(|_| panic!("{body}: not JSON: {json}"));
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(want) && !e.contains('\n'), "{body}: {e}");
    }
    assert_eq!(vfs(t, "passthrough"), before);
    assert_eq!(vf_log(&p.log).len(), 4);

    // Release: the VF is free and cleared; a MAC in use elsewhere is refused.
    t.netd_ok(&["vf", "release", "passthrough", "--owner", "guest1"]);
    let msgs = vf_log(&p.log);
    let clear = msgs.last().unwrap();
    assert_eq!(
        (clear.vf, clear.mac.as_str(), clear.vlan),
        (0, "00:00:00:00:00:00", 0)
    );
    check_bytes(clear);
    refused(
        t,
        &[
            "vf",
            "acquire",
            "passthrough",
            "--owner",
            "guest5",
            "--mac",
            "52:54:00:00:00:02",
        ],
        "MAC 52:54:00:00:00:02 is already used in pool passthrough by VF 0000:02:10.3",
    );
    let list = vfs(t, "passthrough");
    assert_eq!(list[0]["state"], "free");
    assert!(list[0]["owner"].is_null());
    let info = t.netd_json(&["net", "info", "passthrough"]);
    assert_eq!(
        (
            info["connections"].as_u64(),
            info["vf_pool"]["free"].as_u64()
        ),
        (Some(3), Some(1))
    );

    // Sticky: guest2 gets 10.3 back though 10.1 is free and comes first.
    t.netd_ok(&["vf", "release", "passthrough", "--owner", "guest2"]);
    let g2b = acquire(t, "passthrough", "guest2", &[]);
    assert_eq!(g2b["pci"], "0000:02:10.3");
    assert_ne!(
        g2b["mac"], "52:54:00:00:00:02",
        "a new request, a derived MAC"
    );

    // Persistence: a restarted daemon shows the same pool, and guest1 gets its VF back with the same MAC.
    let state = t.state_dir().join("vf/passthrough.json");
    let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = vfs(t, "passthrough");
    let mut t2 = p.t;
    t2.restart_daemon().unwrap();
    let t = &t2;
    assert_eq!(vfs(t, "passthrough"), before);
    let g1b = acquire(t, "passthrough", "guest1", &[]);
    assert_eq!(g1b["pci"], "0000:02:10.1");
    assert_eq!(
        g1b["mac"].as_str().unwrap(),
        g1_mac,
        "the derived MAC is stable"
    );

    // Status, metrics, XML export.
    let status = t.netd_ok(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("WARN") && l.contains("passthrough: all 4 VFs are held")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["passthrough", "eth3", "4", "0", "4", "0", "-"]),
        "{status}"
    );
    let metrics = t.netd_ok(&["metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l == "netd_vf_pool_size{network=\"passthrough\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "netd_vf_pool_free{network=\"passthrough\"} 0")
    );
    let xml = t.netd_ok(&["net", "dump", "passthrough", "--xml"]);
    assert!(
        xml.contains("<forward mode='hostdev' managed='yes'>") && xml.contains("<pf dev='eth3'/>"),
        "{xml}"
    );

    // Stop --force releases and clears all of them.
    let n = vf_log(&p.log).len();
    let out = t.netd_ok(&["net", "stop", "passthrough", "--force"]);
    assert_eq!(out.trim(), "network passthrough stopped; released 4 VFs");
    let msgs = vf_log(&p.log);
    assert_eq!(msgs.len(), n + 4);
    assert!(
        msgs[n..]
            .iter()
            .all(|m| m.mac == "00:00:00:00:00:00" && m.vlan == 0)
    );
    refused(
        t,
        &["vf", "acquire", "passthrough", "--owner", "guest1"],
        "is not running",
    );
    assert_eq!(p.sys.numvfs("0000:02:00.0"), "4", "VFs stay enabled");
    assert!(t.daemon_log().lines().all(|l| !l.contains("panicked")));
}

/// 50 acquires at once over 8 VFs: exactly 8 succeed, each with its own VF.
#[test]
fn vf_concurrent_acquires() {
    require_netd!();
    let p = pool("vf_concurrent_acquires", |s| {
        s.pf("eth3", "0000:02:00.0", 8, 8, 8);
    });
    // The address-list form, from libvirt XML.
    let addrs: String = (0..8)
        .map(|i| {
            format!(
                "<address type='pci' domain='0x0000' bus='0x02' slot='0x{:02x}' function='0x{}'/>",
                0x10 + i / 4,
                (i % 4) * 2 + 1
            )
        })
        .collect();
    let xml = format!(
        "<network><name>pool</name><forward mode='hostdev' managed='yes'>{addrs}</forward></network>"
    );
    define(&p.t, "pool.xml", &xml);
    p.t.netd_ok(&["net", "start", "pool"]);
    assert_eq!(vfs(&p.t, "pool").len(), 8);

    let t = &p.t;
    let results: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..50)
            .map(|i| {
                s.spawn(move || {
                    let owner = format!("vm-{i:02}");
                    t.netd(&["vf", "acquire", "pool", "--owner", &owner, "-o", "json"])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<Value> = results
        .iter()
        .filter(|o| o.success())
        .map(|o| serde_json::from_str(&o.stdout).unwrap())
        .collect();
    let failed: Vec<&Output> = results.iter().filter(|o| !o.success()).collect();
    eprintln!(
        "50 concurrent acquires: {} succeeded, {} refused",
        ok.len(),
        failed.len()
    );
    assert_eq!(ok.len(), 8);
    let distinct: BTreeSet<&str> = ok.iter().map(|v| v["pci"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 8, "{ok:?}");
    let macs: BTreeSet<&str> = ok.iter().map(|v| v["mac"].as_str().unwrap()).collect();
    assert_eq!(macs.len(), 8);
    for o in &failed {
        assert_eq!(o.status, 1);
        assert_eq!(
            o.stderr.trim(),
            "error: pool pool is exhausted: all 8 VFs are held"
        );
    }
    let msgs = vf_log(&p.log);
    assert_eq!(msgs.len(), 8);
    let vfs_sent: BTreeSet<u32> = msgs.iter().map(|m| m.vf).collect();
    assert_eq!(vfs_sent, (0..8).collect());
    msgs.iter().for_each(check_bytes);
    // The list agrees with what the acquirers were told.
    let list = vfs(t, "pool");
    for v in &ok {
        let row = list.iter().find(|r| r["pci"] == v["pci"]).unwrap();
        assert_eq!(row["owner"], v["owner"]);
        assert_eq!(row["state"], "held");
    }

    // 10 concurrent retries by a holder: its VF every time, nothing sent.
    let holder = ok[0]["owner"].as_str().unwrap().to_string();
    let again: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..10)
            .map(|_| {
                let h = holder.clone();
                s.spawn(move || t.netd(&["vf", "acquire", "pool", "--owner", &h, "-o", "json"]))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &again {
        let v: Value = serde_json::from_str(&o.stdout).unwrap_or_else(|_| panic!("{o}"));
        assert_eq!(v["pci"], ok[0]["pci"]);
    }
    assert_eq!(vf_log(&p.log).len(), 8);
}

/// Start refusals, and a PF that disappears while VFs are held.
#[test]
fn vf_pool_errors() {
    require_netd!();
    let p = pool("vf_pool_errors", |s| {
        s.pf("eth3", "0000:02:00.0", 8, 0, 8);
        // A PF without SR-IOV: no sriov_totalvfs.
        s.pf("eth5", "0000:05:00.0", 4, 0, 0);
        fs::remove_file(s.dev("0000:05:00.0").join("sriov_totalvfs")).unwrap();
    });
    let t = &p.t;
    let def = |name: &str, body: &str| {
        define(
            t,
            &format!("{name}.toml"),
            &format!("name = \"{name}\"\nmode = \"hostdev\"\n{body}"),
        );
    };
    def("nopf", "pf = \"eth9\"\n");
    refused(t, &["net", "start", "nopf"], "PF eth9 does not exist");
    def("nosriov", "pf = \"eth5\"\n");
    refused(
        t,
        &["net", "start", "nosriov"],
        "PF eth5 has no SR-IOV capability",
    );
    def("toomany", "pf = \"eth3\"\nvfs = 9\n");
    refused(
        t,
        &["net", "start", "toomany"],
        "vfs = 9 is more than PF eth3's sriov_totalvfs (8)",
    );
    t.netd_ok(&["net", "undefine", "toomany"]);
    def("novfs", "pf = \"eth3\"\n");
    refused(
        t,
        &["net", "start", "novfs"],
        "PF eth3 has no VFs enabled (sriov_numvfs is 0)",
    );
    t.netd_ok(&["net", "undefine", "novfs"]);
    assert_eq!(
        p.sys.numvfs("0000:02:00.0"),
        "0",
        "refused starts write nothing"
    );
    def("gone", "vfs_pci = [\"0000:09:00.1\"]\n");
    refused(
        t,
        &["net", "start", "gone"],
        "pool gone has no usable VF (0000:09:00.1: not in sysfs)",
    );
    // Bad definitions are refused at define time.
    for (body, want) in [
        (
            "pf = \"eth3\"\nvlan = 4095\n",
            "vlan 4095 is outside 1-4094",
        ),
        ("pf = \"eth3\"\nvfs_pci = [\"0000:02:10.1\"]\n", "not both"),
        (
            "vfs_pci = [\"0000:02:10.9\"]\n",
            "PCI function 9 is above 7",
        ),
        (
            "pf = \"eth3\"\nbridge = \"br0\"\n",
            "`bridge` does not apply",
        ),
    ] {
        let f = t.write_file(
            "bad.toml",
            &format!("name = \"bad\"\nmode = \"hostdev\"\n{body}"),
        );
        refused(t, &["net", "define", f.to_str().unwrap()], want);
    }
    let before = t.netd_json(&["net", "list", "--all"]);
    assert!(
        before
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["name"] != "bad")
    );

    // VFs enabled by the start whose drivers never register a netdev: the
    // start waits 5 s, fails, and puts sriov_numvfs back to 0.
    t.host
        .ip_ok(&[
            "link", "add", "eth6", "type", "veth", "peer", "name", "eth6p",
        ])
        .unwrap();
    for vf in p.sys.pf("eth6", "0000:06:00.0", 4, 0, 2) {
        fs::remove_dir_all(p.sys.dev(&vf).join("net")).unwrap();
    }
    def("slow", "pf = \"eth6\"\nvfs = 2\n");
    let t0 = std::time::Instant::now();
    refused(
        t,
        &["net", "start", "slow"],
        "pool slow has no usable VF (0000:06:10.1: no netdev, 0000:06:10.3: no netdev)",
    );
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(5),
        "waited for drivers"
    );
    assert_eq!(p.sys.numvfs("0000:06:00.0"), "0", "rolled back");
    assert!(
        !t.netd_json(&["net", "info", "slow"])["active"]
            .as_bool()
            .unwrap()
    );
    // VF commands on a network that is not a pool.
    define(
        t,
        "lan.toml",
        "name = \"lan\"\nmode = \"isolated\"\n[ipv4]\naddress = \"10.77.0.1/24\"\n",
    );
    refused(
        t,
        &["vf", "list", "lan"],
        "network \"lan\" is an isolated network, not a hostdev VF pool",
    );
    refused(
        t,
        &["vf", "release", "lan", "--owner", "a"],
        "not a hostdev VF pool",
    );
    refused(t, &["vf", "list", "a/b"], "must not contain '/'");
    // A pool started; one VF held; then the PF disappears.
    def("passthrough", "pf = \"eth3\"\nvfs = 2\n");
    refused(
        t,
        &["vf", "acquire", "passthrough", "--owner", "a"],
        "network \"passthrough\" is not running",
    );
    t.netd_ok(&["net", "start", "passthrough"]);
    // A second pool on the same PF is refused.
    let f = t.write_file(
        "second.toml",
        "name = \"second\"\nmode = \"hostdev\"\npf = \"eth3\"\n",
    );
    refused(
        t,
        &["net", "define", f.to_str().unwrap()],
        "PF eth3 is already the pool of network \"passthrough\"",
    );
    let held = acquire(t, "passthrough", "a", &[]);
    fs::remove_file(p.sys.root.join("class/net/eth3")).unwrap();
    t.host.ip_ok(&["link", "del", "eth3"]).unwrap();
    let list = vfs(t, "passthrough");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["pci"], held["pci"]);
    assert_eq!(list[0]["state"], "held");
    assert_eq!(list[0]["problem"], "PF eth3 does not exist");
    let table = t.netd_ok(&["vf", "list", "passthrough"]);
    assert!(table.contains("PF eth3 does not exist"), "{table}");
    refused(
        t,
        &["vf", "acquire", "passthrough", "--owner", "b"],
        "pool passthrough: PF eth3 does not exist",
    );
    let info = t.netd_json(&["net", "info", "passthrough"]);
    assert_eq!(info["vf_pool"]["problem"], "PF eth3 does not exist");
    assert_eq!(info["connections"], 1);
    // A corrupt pool file is an error, never an empty pool.
    let file = t.state_dir().join("vf/passthrough.json");
    let good = fs::read(&file).unwrap();
    fs::write(&file, b"{\"held\": 3").unwrap();
    refused(
        t,
        &["vf", "list", "passthrough"],
        "is corrupt; fix or remove it",
    );
    refused(
        t,
        &["vf", "acquire", "passthrough", "--owner", "b"],
        "is corrupt",
    );
    refused(t, &["net", "stop", "passthrough"], "is corrupt");
    fs::write(&file, good).unwrap();
    // status says so.
    let o = t.netd(&["status"]);
    assert!(
        o.stdout.lines().any(|l| l.starts_with("FAIL")
            && l.contains("vf-pool")
            && l.contains("passthrough: PF eth3 does not exist")),
        "{o}"
    );
    // Release still works (nothing to clear), and the daemon is fine.
    let n = vf_log(&p.log).len();
    t.netd_ok(&["vf", "release", "passthrough", "--owner", "a"]);
    assert_eq!(vf_log(&p.log).len(), n, "no PF: nothing sent");
    assert!(vfs(t, "passthrough").is_empty());
    let status = t.netd_ok(&["status"]);
    assert!(
        status.contains("passthrough: PF eth3 does not exist"),
        "{status}"
    );
    t.netd_ok(&["net", "stop", "passthrough"]);
    assert!(t.daemon_log().lines().all(|l| !l.contains("panicked")));
}

/// Without the test log the daemon sends the VF message to the PF for real.
/// A veth has no VFs, so the kernel parses the message and answers
/// EOPNOTSUPP: the acquire fails in one line and nothing is recorded.
#[test]
fn vf_real_send_path() {
    require_netd!();
    let mut t = Topology::new("vf_real_send_path").expect("topology");
    t.host
        .ip_ok(&[
            "link", "add", "eth3", "type", "veth", "peer", "name", "eth3p",
        ])
        .unwrap();
    let sys = FakeSysfs::new(t.dir.join("sysfs"));
    sys.pf("eth3", "0000:02:00.0", 4, 2, 2);
    let root = sys.root.to_string_lossy().into_owned();
    t.start_daemon_with(&["--sysfs-root", &root])
        .expect("daemon");
    define(
        &t,
        "p.toml",
        "name = \"p\"\nmode = \"hostdev\"\npf = \"eth3\"\n",
    );
    t.netd_ok(&["net", "start", "p"]);
    let before = vfs(&t, "p");
    refused(
        &t,
        &["vf", "acquire", "p", "--owner", "guest1", "--vlan", "5"],
        "setting VF 0 of eth3",
    );
    let e = refused(&t, &["vf", "acquire", "p", "--owner", "guest1"], "VLAN 0");
    assert!(e.ends_with("Operation not supported (os error 95)"), "{e}");
    assert_eq!(vfs(&t, "p"), before, "nothing held");
    assert!(
        !t.state_dir().join("vf/p.json").exists(),
        "nothing recorded"
    );
    t.netd_ok(&["net", "stop", "p"]);
}

/// The daemon is SIGKILLed while 20 acquires run. After a restart the pool
/// file is whole, every owner told "yes" holds its VF, and nothing is
/// recorded that was not programmed first.
#[test]
fn vf_pool_survives_a_kill_during_acquires() {
    require_netd!();
    let mut p = pool("vf_pool_survives_a_kill", |s| {
        s.pf("eth3", "0000:02:00.0", 8, 8, 8);
    });
    define(
        &p.t,
        "p.toml",
        "name = \"p\"\nmode = \"hostdev\"\npf = \"eth3\"\n",
    );
    p.t.netd_ok(&["net", "start", "p"]);
    let pid = p.t.daemon_pid().unwrap() as i32;
    let t = &p.t;
    let results: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                s.spawn(move || {
                    let owner = format!("vm-{i:02}");
                    t.netd(&["vf", "acquire", "p", "--owner", &owner, "-o", "json"])
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(150));
        // SAFETY: plain syscall on the daemon this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let told_yes: Vec<Value> = results
        .iter()
        .filter(|o| o.success())
        .map(|o| serde_json::from_str(&o.stdout).unwrap())
        .collect();
    p.t.restart_daemon().unwrap();
    let list = vfs(&p.t, "p");
    let held: Vec<&Value> = list.iter().filter(|v| v["state"] == "held").collect();
    let sent = vf_log(&p.log);
    eprintln!(
        "kill during 20 acquires: {} answered yes, {} held after restart, {} messages sent",
        told_yes.len(),
        held.len(),
        sent.len()
    );
    for v in &told_yes {
        let row = list.iter().find(|r| r["pci"] == v["pci"]).unwrap();
        assert_eq!(row["owner"], v["owner"], "{row}");
    }
    for h in &held {
        let idx = h["vf"].as_u64().unwrap() as u32;
        let mac = h["mac"].as_str().unwrap();
        assert!(
            sent.iter().any(|m| m.vf == idx && m.mac == mac),
            "recorded but never programmed: {h}"
        );
    }
    assert!(held.len() <= 8 && sent.len() <= 8);
    // The pool keeps working: the rest of the VFs are handed out.
    let free = list.iter().filter(|v| v["state"] == "free").count();
    for i in 0..free {
        acquire(&p.t, "p", &format!("late-{i}"), &[]);
    }
    refused(
        &p.t,
        &["vf", "acquire", "p", "--owner", "late-x"],
        "exhausted",
    );
}
