//! The lifecycle (lifecycle.rs) driven against an in-memory kernel: start,
//! rollback after a failure at each step, adoption, teardown. No root.

use super::kernel::{Datapath, Dhcp, DhcpServer, Links, UplinkAddrs};
use super::lifecycle::{self, StepError};
use super::store::RunRecord;
use crate::config::{Network, from_toml};
use crate::dataplane::Hook;
use crate::dataplane::maps::ForwardEntry;
use crate::dhcp::Apply;
use crate::link::{BridgeSpec, LinkInfo};
use anyhow::{Result, bail};
use netd_common::NetConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// A fake device: name, whether it is a bridge, its addresses.
type Device = (String, bool, Vec<(IpAddr, u8)>);

/// Everything the fake kernel holds; compared whole before and after.
#[derive(Clone, Debug, Default, PartialEq)]
struct World {
    /// ifindex -> (name, is a bridge, addresses)
    links: BTreeMap<u32, Device>,
    next_index: u32,
    networks: BTreeMap<u32, NetConfig>,
    subnets: BTreeMap<(Ipv4Addr, u8), u32>,
    hooks: BTreeSet<(String, &'static str)>,
    uplinks: BTreeMap<u32, Option<Ipv4Addr>>,
    forwards: BTreeSet<ForwardEntry>,
    /// Networks with DHCP files.
    files: BTreeSet<String>,
    /// Network -> pid of its running DHCP server.
    servers: BTreeMap<String, u32>,
    next_pid: u32,
    /// Networks whose server runs an old config.
    stale_conf: BTreeSet<String>,
    default_dev: Option<String>,
}

#[derive(Clone)]
struct Fake {
    w: Arc<Mutex<World>>,
    /// Operations that fail ("create_bridge", "dhcp_start", ...).
    fail: Arc<Mutex<BTreeSet<&'static str>>>,
    /// Operations in order, for ordering checks.
    log: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    /// A host with an uplink "eth0" (index 1, 198.51.100.2) holding the
    /// default route, and an unrelated network "other" already running.
    fn new() -> Fake {
        let mut w = World {
            next_index: 10,
            next_pid: 1000,
            default_dev: Some("eth0".into()),
            ..World::default()
        };
        w.links.insert(
            1,
            (
                "eth0".into(),
                false,
                vec![(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 24)],
            ),
        );
        w.links.insert(
            5,
            (
                "other0".into(),
                true,
                vec![(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)), 24)],
            ),
        );
        w.networks.insert(5, NetConfig::default());
        for (dev, hook) in [
            ("other0", "bridge_ingress"),
            ("other0", "bridge_egress"),
            ("eth0", "uplink_ingress"),
            ("eth0", "uplink_egress"),
        ] {
            w.hooks.insert((dev.into(), hook));
        }
        w.uplinks.insert(1, Some(Ipv4Addr::new(198, 51, 100, 2)));
        w.servers.insert("other".into(), 999);
        w.files.insert("other".into());
        Fake {
            w: Arc::new(Mutex::new(w)),
            fail: Arc::default(),
            log: Arc::default(),
        }
    }

    fn world(&self) -> World {
        self.w.lock().unwrap().clone()
    }

    fn check(&self, op: &'static str) -> Result<()> {
        self.log.lock().unwrap().push(op.to_string());
        if self.fail.lock().unwrap().contains(op) {
            bail!("injected failure of {op}");
        }
        Ok(())
    }

    fn set_fail(&self, ops: &[&'static str]) {
        *self.fail.lock().unwrap() = ops.iter().copied().collect();
    }
}

fn info(index: u32, name: &str, is_bridge: bool) -> LinkInfo {
    LinkInfo {
        index,
        name: name.into(),
        mac: None,
        mtu: 1500,
        is_bridge,
        up: true,
        master: None,
    }
}

impl Links for Fake {
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let w = self.w.lock().unwrap();
        Ok(w.links
            .iter()
            .find(|(_, l)| l.0 == name)
            .map(|(i, l)| info(*i, &l.0, l.1)))
    }
    async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let w = self.w.lock().unwrap();
        Ok(w.links.get(&index).map(|l| info(index, &l.0, l.1)))
    }
    async fn create_bridge(&self, spec: &BridgeSpec) -> Result<u32> {
        self.check("create_bridge")?;
        let mut w = self.w.lock().unwrap();
        let i = w.next_index;
        w.next_index += 1;
        w.links.insert(i, (spec.name.clone(), true, vec![]));
        Ok(i)
    }
    async fn delete_link(&self, index: u32) -> Result<()> {
        self.check("delete_link")?;
        let mut w = self.w.lock().unwrap();
        if let Some((name, _, _)) = w.links.remove(&index) {
            // The kernel drops a device's tcx links with it.
            w.hooks.retain(|(d, _)| *d != name);
        }
        Ok(())
    }
    async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        let w = self.w.lock().unwrap();
        Ok(w.links.get(&index).map(|l| l.2.clone()).unwrap_or_default())
    }
    async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        self.check("add_address")?;
        let mut w = self.w.lock().unwrap();
        match w.links.get_mut(&index) {
            Some(l) => l.2.push((addr, prefix)),
            None => bail!("no device {index}"),
        }
        Ok(())
    }
    async fn default_route_dev(&self) -> Result<Option<String>> {
        Ok(self.w.lock().unwrap().default_dev.clone())
    }
    async fn uplink(&self, name: &str) -> Result<Option<UplinkAddrs>> {
        let w = self.w.lock().unwrap();
        Ok(w.links.iter().find(|(_, l)| l.0 == name).map(|(i, l)| {
            let v4 = l.2.iter().find_map(|(a, _)| match a {
                IpAddr::V4(v4) => Some(*v4),
                _ => None,
            });
            UplinkAddrs {
                index: *i,
                v4,
                v6: None,
            }
        }))
    }
}

impl Datapath for Fake {
    fn publish(
        &mut self,
        idx: u32,
        cfg: &NetConfig,
        subnet: Option<(Ipv4Addr, u8)>,
        _subnet6: Option<(Ipv6Addr, u8)>,
    ) -> Result<()> {
        self.check("publish")?;
        let mut w = self.w.lock().unwrap();
        w.networks.insert(idx, *cfg);
        if let Some(s) = subnet {
            w.subnets.insert(s, idx);
        }
        Ok(())
    }
    fn sync_bindings(&mut self, _net: &Network, _idx: u32) -> Result<()> {
        self.check("sync_bindings")
    }
    fn withdraw(
        &mut self,
        idx: u32,
        subnet: Option<(Ipv4Addr, u8)>,
        _subnet6: Option<(Ipv6Addr, u8)>,
    ) -> Result<()> {
        self.check("withdraw")?;
        let mut w = self.w.lock().unwrap();
        w.networks.remove(&idx);
        if let Some(s) = subnet {
            w.subnets.remove(&s);
        }
        Ok(())
    }
    fn attach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        self.check(match hook {
            Hook::BridgeIngress | Hook::BridgeEgress => "attach_bridge",
            _ => "attach_uplink",
        })?;
        let mut w = self.w.lock().unwrap();
        if !w.links.values().any(|l| l.0 == ifname) {
            bail!("no device {ifname}");
        }
        w.hooks.insert((ifname.to_string(), hook.as_str()));
        Ok(())
    }
    fn detach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        self.check("detach")?;
        self.w
            .lock()
            .unwrap()
            .hooks
            .remove(&(ifname.to_string(), hook.as_str()));
        Ok(())
    }
    fn set_uplink(&mut self, u: &UplinkAddrs) -> Result<()> {
        self.check("set_uplink")?;
        self.w.lock().unwrap().uplinks.insert(u.index, u.v4);
        Ok(())
    }
    fn remove_uplink(&mut self, index: u32) -> Result<()> {
        self.check("remove_uplink")?;
        self.w.lock().unwrap().uplinks.remove(&index);
        Ok(())
    }
    fn sync_forwards(&mut self, idx: u32, want: &[ForwardEntry]) -> Result<()> {
        self.check("sync_forwards")?;
        let mut w = self.w.lock().unwrap();
        w.forwards.retain(|e| e.bridge_ifindex != idx);
        w.forwards.extend(want.iter().copied());
        Ok(())
    }
}

struct FakeServer {
    net: String,
    pid: u32,
    fake: Fake,
}

impl DhcpServer for FakeServer {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }
    fn reload(&self) -> Result<()> {
        self.fake.check("dhcp_reload")
    }
    fn config_current(&self) -> bool {
        !self.fake.w.lock().unwrap().stale_conf.contains(&self.net)
    }
    async fn stop(self) -> Result<()> {
        self.fake.check("dhcp_stop")?;
        let mut w = self.fake.w.lock().unwrap();
        w.servers.remove(&self.net);
        w.stale_conf.remove(&self.net);
        Ok(())
    }
}

impl Dhcp for Fake {
    type Server = FakeServer;
    fn write_files(&mut self, net: &Network, _bridge: &str) -> Result<Apply> {
        self.check("write_files")?;
        self.w.lock().unwrap().files.insert(net.name.clone());
        Ok(Apply::Unchanged)
    }
    fn remove_files(&mut self, net: &str, _forget_leases: bool) -> Result<()> {
        self.check("remove_files")?;
        self.w.lock().unwrap().files.remove(net);
        Ok(())
    }
    async fn start(&mut self, net: &str) -> Result<FakeServer> {
        self.check("dhcp_start")?;
        let mut w = self.w.lock().unwrap();
        if w.servers.contains_key(net) {
            bail!("address already in use");
        }
        let pid = w.next_pid;
        w.next_pid += 1;
        w.servers.insert(net.to_string(), pid);
        Ok(FakeServer {
            net: net.into(),
            pid,
            fake: self.clone(),
        })
    }
    fn adopt(&mut self, net: &str) -> Option<FakeServer> {
        let pid = *self.w.lock().unwrap().servers.get(net)?;
        Some(FakeServer {
            net: net.into(),
            pid,
            fake: self.clone(),
        })
    }
    async fn stop_orphans(&mut self, net: &str) {
        self.w.lock().unwrap().servers.remove(net);
    }
}

fn nat() -> Network {
    from_toml(
        r#"
name = "default"
mode = "nat"
bridge = "virbr0"
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.2", end = "192.168.122.254" }
[[forwards]]
proto = "tcp"
port = "8080"
to = "192.168.122.10:80"
"#,
    )
    .unwrap()
}

fn record(net: &Network) -> RunRecord {
    RunRecord {
        bridge: net.bridge.clone().unwrap().to_string(),
        bridge_ifindex: 0,
        created_bridge: false,
        uplinks: vec![],
        definition: net.clone(),
        transient: false,
        dnsmasq_pid: None,
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];

/// "eth0" is used by "other" too, as in [`Fake::new`].
fn shared() -> BTreeSet<String> {
    ["eth0".to_string()].into()
}

async fn started(k: &mut Fake) -> (RunRecord, Option<FakeServer>) {
    let net = nat();
    let mut rec = record(&net);
    let mut dns = None;
    lifecycle::start(k, &net, MAC, &mut rec, &mut dns, &shared())
        .await
        .unwrap();
    (rec, dns)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn start_builds_everything_and_teardown_removes_exactly_it() {
    rt().block_on(async {
        let mut k = Fake::new();
        let before = k.world();
        let (rec, dns) = started(&mut k).await;
        let w = k.world();
        let idx = rec.bridge_ifindex;
        assert_eq!(w.links[&idx].0, "virbr0");
        assert_eq!(
            w.links[&idx].2,
            vec![(IpAddr::V4(Ipv4Addr::new(192, 168, 122, 1)), 24)]
        );
        assert!(w.networks.contains_key(&idx));
        assert!(w.hooks.contains(&("virbr0".into(), "bridge_ingress")));
        assert!(w.hooks.contains(&("virbr0".into(), "bridge_egress")));
        assert_eq!(rec.uplinks, vec!["eth0".to_string()]);
        assert_eq!(w.forwards.len(), 1);
        assert_eq!(
            w.servers.get("default").copied(),
            dns.as_ref().map(|d| d.pid)
        );
        assert_eq!(rec.dnsmasq_pid, dns.as_ref().map(|d| d.pid));

        lifecycle::tear_down(&mut k, &rec, dns, &shared())
            .await
            .unwrap();
        // The other network, its server and the shared uplink are untouched.
        let mut after = k.world();
        after.next_index = before.next_index;
        after.next_pid = before.next_pid;
        assert_eq!(after, before);
    });
}

#[test]
fn a_start_that_fails_at_any_step_undoes_exactly_what_it_did() {
    let steps = [
        "create_bridge",
        "add_address",
        "publish",
        "attach_bridge",
        "set_uplink",
        "sync_forwards",
        "write_files",
        "dhcp_start",
    ];
    for step in steps {
        rt().block_on(async {
            let mut k = Fake::new();
            let before = k.world();
            k.set_fail(&[step]);
            let net = nat();
            let mut rec = record(&net);
            let mut dns = None;
            let e = lifecycle::start(&mut k, &net, MAC, &mut rec, &mut dns, &shared())
                .await
                .expect_err(step);
            assert!(e.to_string().contains(step), "{step}: {e:#}");
            k.set_fail(&[]);
            lifecycle::tear_down(&mut k, &rec, dns, &shared())
                .await
                .unwrap_or_else(|e| panic!("{step}: rollback: {e:#}"));
            let mut after = k.world();
            after.next_index = before.next_index;
            after.next_pid = before.next_pid;
            assert_eq!(after, before, "after a failure of {step}");
        });
    }
}

#[test]
fn adopting_a_whole_network_changes_nothing_and_keeps_dnsmasq() {
    rt().block_on(async {
        let mut k = Fake::new();
        let (mut rec, dns) = started(&mut k).await;
        let pid = dns.as_ref().unwrap().pid;
        // The daemon exits: the handle goes, the server keeps running.
        drop(dns);
        let before = k.world();
        k.log.lock().unwrap().clear();
        let mut dns = None;
        let errs = lifecycle::adopt(&mut k, &nat(), MAC, &mut rec, &mut dns, &shared()).await;
        assert_eq!(errs, Vec::<StepError>::new());
        assert_eq!(k.world(), before);
        assert_eq!(dns.as_ref().map(|d| d.pid), Some(pid));
        let log = k.log.lock().unwrap().clone();
        for op in [
            "create_bridge",
            "add_address",
            "dhcp_start",
            "dhcp_stop",
            "withdraw",
            "detach",
            "delete_link",
        ] {
            assert!(!log.iter().any(|l| l == op), "adoption did {op}: {log:?}");
        }
    });
}

#[test]
fn a_failed_adoption_step_keeps_the_network_and_a_retry_mends_it() {
    rt().block_on(async {
        let mut k = Fake::new();
        let (mut rec, dns) = started(&mut k).await;
        drop(dns);
        // dnsmasq died while the daemon was down, and cannot start now.
        k.w.lock().unwrap().servers.remove("default");
        let before = k.world();
        k.set_fail(&["dhcp_start"]);
        let mut dns = None;
        let errs = lifecycle::adopt(&mut k, &nat(), MAC, &mut rec, &mut dns, &shared()).await;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].step, "dnsmasq");
        // Nothing that works was torn down.
        assert_eq!(k.world(), before);
        assert!(dns.is_none());

        // A step earlier in the chain fails too: the rest still runs.
        k.set_fail(&["publish", "dhcp_start"]);
        let errs = lifecycle::adopt(&mut k, &nat(), MAC, &mut rec, &mut dns, &shared()).await;
        let steps: Vec<_> = errs.iter().map(|e| e.step).collect();
        assert_eq!(steps, vec!["datapath", "dnsmasq"]);
        assert_eq!(k.world(), before);

        // The retry succeeds once the cause is gone.
        k.set_fail(&[]);
        let errs = lifecycle::adopt(&mut k, &nat(), MAC, &mut rec, &mut dns, &shared()).await;
        assert!(errs.is_empty(), "{errs:?}");
        assert!(k.world().servers.contains_key("default"));
        assert_eq!(rec.dnsmasq_pid, dns.as_ref().map(|d| d.pid));
    });
}

#[test]
fn adoption_recreates_a_vanished_bridge_and_rekeys_the_datapath() {
    rt().block_on(async {
        let mut k = Fake::new();
        let (mut rec, dns) = started(&mut k).await;
        let pid = dns.as_ref().unwrap().pid;
        drop(dns);
        let old = rec.bridge_ifindex;
        {
            // Someone deleted the bridge while the daemon was down.
            let mut w = k.w.lock().unwrap();
            w.links.remove(&old);
            w.hooks.retain(|(d, _)| d != "virbr0");
        }
        let mut dns = None;
        let errs = lifecycle::adopt(&mut k, &nat(), MAC, &mut rec, &mut dns, &shared()).await;
        assert!(errs.is_empty(), "{errs:?}");
        let new = rec.bridge_ifindex;
        assert_ne!(new, old);
        let w = k.world();
        assert_eq!(w.links[&new].0, "virbr0");
        assert_eq!(w.links[&new].2.len(), 1, "address re-added");
        assert!(w.networks.contains_key(&new) && !w.networks.contains_key(&old));
        assert!(w.forwards.iter().all(|f| f.bridge_ifindex != old));
        assert_eq!(w.forwards.len(), 1);
        assert!(w.hooks.contains(&("virbr0".into(), "bridge_ingress")));
        // dnsmasq (bind-dynamic) was kept.
        assert_eq!(dns.as_ref().map(|d| d.pid), Some(pid));
    });
}

#[test]
fn a_changed_config_restarts_dnsmasq_only_after_the_old_one_exited() {
    rt().block_on(async {
        let mut k = Fake::new();
        let (mut rec, dns) = started(&mut k).await;
        let pid = dns.as_ref().unwrap().pid;
        drop(dns);
        k.w.lock().unwrap().stale_conf.insert("default".into());
        k.log.lock().unwrap().clear();
        let mut dns = None;
        let errs = lifecycle::adopt(&mut k, &nat(), MAC, &mut rec, &mut dns, &shared()).await;
        assert!(errs.is_empty(), "{errs:?}");
        assert_ne!(dns.as_ref().map(|d| d.pid), Some(pid));
        let log = k.log.lock().unwrap().clone();
        let stop = log.iter().position(|l| l == "dhcp_stop").expect("stopped");
        let start = log.iter().position(|l| l == "dhcp_start").expect("started");
        assert!(stop < start, "{log:?}");
    });
}

#[test]
fn teardown_never_deletes_a_device_that_took_the_bridges_index() {
    rt().block_on(async {
        let mut k = Fake::new();
        let (rec, dns) = started(&mut k).await;
        {
            // The bridge was deleted, and a guest's veth got its ifindex.
            let mut w = k.w.lock().unwrap();
            w.links
                .insert(rec.bridge_ifindex, ("vnet7".into(), false, vec![]));
        }
        lifecycle::tear_down(&mut k, &rec, dns, &shared())
            .await
            .unwrap();
        let w = k.world();
        assert_eq!(w.links[&rec.bridge_ifindex].0, "vnet7");
        assert!(!w.networks.contains_key(&rec.bridge_ifindex));
        assert!(!w.servers.contains_key("default"));
    });
}
