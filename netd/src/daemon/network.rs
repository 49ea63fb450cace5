//! Network lifecycle: define, start, stop, undefine, live host updates.
//!
//! The steps themselves are in lifecycle.rs (over the kernel traits of
//! kernel.rs): starting is all-or-nothing, adoption after a daemon restart
//! re-applies only what is missing and never tears down (a network with a
//! failed step is `degraded` and retried with backoff), and teardown happens
//! on `net stop` / `undefine` only.

use super::kernel::Real;
use super::lifecycle::{self, StepError};
use super::store::{RunRecord, Store, format_mac};
use super::teardown::Teardown;
use crate::api::wire::{NetworkInfo, NetworkSummary};
use crate::config::{self, Mode, Network};
use crate::dataplane::{self, Dataplane};
use crate::dhcp::{self, Dnsmasq};
use crate::link::Netlink;
use crate::paths::Paths;
use anyhow::{Result, anyhow, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Retry delays of a degraded network: 1 s doubling to 30 s.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct State {
    pub paths: Paths,
    pub store: Store,
    pub nl: Netlink,
    pub dp: Dataplane,
    /// Persistent definitions, by name.
    pub defs: BTreeMap<String, Network>,
    pub running: BTreeMap<String, Running>,
    /// Where hostdev networks find their VFs (sysfs) and how they program them.
    pub sriov: crate::sriov::Sriov,
    /// What the reconciler remembers and counts (see repair.rs).
    pub repairs: super::repair::Repairs,
}

pub struct Running {
    pub record: RunRecord,
    pub dnsmasq: Option<Dnsmasq>,
    /// Set while a step of the network failed (it keeps running with what
    /// works); cleared when a retry succeeds.
    pub degraded: Option<Degraded>,
}

/// What is broken in a running network, and when it is retried.
#[derive(Clone, Debug)]
pub struct Degraded {
    pub errors: Vec<StepError>,
    pub delay: Duration,
    pub next_try: Instant,
}

impl Degraded {
    /// One line: "step: error; step: error".
    pub fn summary(&self) -> String {
        self.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl State {
    pub fn new(
        paths: &Paths,
        nl: Netlink,
        dp: Dataplane,
        sriov: crate::sriov::Sriov,
    ) -> Result<State> {
        let store = Store::new(paths)?;
        let defs = store.load_definitions();
        Ok(State {
            paths: paths.clone(),
            store,
            nl,
            dp,
            defs,
            running: BTreeMap::new(),
            sriov,
            repairs: Default::default(),
        })
    }

    /// The definition in force for a name: the running one if it is up
    /// (transient networks have no other), else the stored one.
    pub(super) fn definition(&self, name: &str) -> Option<&Network> {
        self.running
            .get(name)
            .map(|r| &r.record.definition)
            .or_else(|| self.defs.get(name))
    }

    fn require(&self, name: &str) -> Result<&Network> {
        self.definition(name)
            .ok_or_else(|| anyhow!("network {name:?} is not defined"))
    }

    // ---- define / undefine -------------------------------------------------

    /// Validates against the other networks and the host, then stores it.
    pub async fn define(&mut self, text: &str, xml: bool) -> Result<String> {
        let net = config::parse(text, xml)?;
        self.check_against_others(&net).await?;
        self.store.save_definition(&net)?;
        let name = net.name.clone();
        self.defs.insert(name.clone(), net);
        Ok(name)
    }

    /// `net create`: a transient network, started now, gone when stopped.
    pub async fn create(&mut self, text: &str, xml: bool) -> Result<String> {
        let net = config::parse(text, xml)?;
        if self.defs.contains_key(&net.name) || self.running.contains_key(&net.name) {
            bail!("network {:?} already exists", net.name);
        }
        self.check_against_others(&net).await?;
        let name = net.name.clone();
        self.start_definition(net, true).await?;
        Ok(name)
    }

    pub fn undefine(&mut self, name: &str) -> Result<()> {
        if !self.defs.contains_key(name) {
            if self.running.contains_key(name) {
                bail!("network {name:?} is transient: stop it instead");
            }
            bail!("network {name:?} is not defined");
        }
        self.store.remove_definition(name)?;
        self.defs.remove(name);
        if !self.running.contains_key(name) {
            self.store.forget_mac(name);
            self.forget_pool(name);
        }
        Ok(())
    }

    pub fn set_autostart(&mut self, name: &str, enable: bool) -> Result<()> {
        let mut net = self
            .defs
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("network {name:?} is not a persistent network"))?;
        net.autostart = enable;
        self.store.save_definition(&net)?;
        self.defs.insert(name.to_string(), net);
        Ok(())
    }

    /// Refuses subnets that overlap another netd network or a host route,
    /// and bridge names that another network uses.
    async fn check_against_others(&self, net: &Network) -> Result<()> {
        self.check_vf_pools_apart(net)?;
        let mine = net.ipv4.as_ref().and_then(|v| v.parsed().ok());
        let others = self
            .defs
            .values()
            .chain(self.running.values().map(|r| &r.record.definition))
            .filter(|o| o.name != net.name);
        for o in others {
            if let (Some(a), Some(b)) = (mine, o.ipv4.as_ref().and_then(|v| v.parsed().ok()))
                && config::overlaps(a, b)
            {
                bail!(
                    "subnet {} overlaps network {:?} ({})",
                    net.ipv4
                        .as_ref()
                        .map(|v| v.address.to_string())
                        .unwrap_or_default(),
                    o.name,
                    o.ipv4
                        .as_ref()
                        .map(|v| v.address.to_string())
                        .unwrap_or_default()
                );
            }
            if net.bridge.is_some() && net.bridge == o.bridge && net.mode.owns_bridge() {
                bail!(
                    "bridge {:?} is already used by network {:?}",
                    net.bridge.as_deref().unwrap_or(""),
                    o.name
                );
            }
        }
        if let Some(a) = mine {
            self.check_host_routes(net, a).await?;
        }
        Ok(())
    }

    async fn check_host_routes(&self, net: &Network, subnet: (Ipv4Addr, u8)) -> Result<()> {
        let ours: Vec<u32> = self
            .running
            .iter()
            .filter(|(n, _)| *n != &net.name)
            .map(|(_, r)| r.record.bridge_ifindex)
            .collect();
        for r in self.nl.routes_v4().await? {
            // The default route overlaps everything and means nothing here.
            if r.prefix == 0 || r.oif.is_some_and(|o| ours.contains(&o)) {
                continue;
            }
            if self
                .running
                .get(&net.name)
                .is_some_and(|me| r.oif == Some(me.record.bridge_ifindex))
            {
                continue;
            }
            if config::overlaps(subnet, (r.dst, r.prefix)) {
                let dev = r
                    .oif
                    .and_then(crate::link::ifname_of)
                    .unwrap_or_else(|| "?".into());
                bail!(
                    "subnet {}/{} overlaps the host route {}/{} on {dev}",
                    subnet.0,
                    subnet.1,
                    r.dst,
                    r.prefix
                );
            }
        }
        Ok(())
    }

    // ---- start -------------------------------------------------------------

    pub async fn start(&mut self, name: &str) -> Result<()> {
        if self.running.contains_key(name) {
            bail!("network {name:?} is already running");
        }
        let net = self
            .defs
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("network {name:?} is not defined"))?;
        self.check_against_others(&net).await?;
        // Compaction: the live edits of the persistent side go into its file.
        if self.store.journal_path(name).exists()
            && let Err(e) = self.store.save_definition(&net)
        {
            tracing::warn!("network {name}: folding its journal into the definition: {e:#}");
        }
        self.start_definition(net, false).await
    }

    async fn start_definition(&mut self, mut net: Network, transient: bool) -> Result<()> {
        let name = net.name.clone();
        // A chosen bridge name is persisted only once the start succeeded, so
        // a failed start leaves the definition as it was.
        let chose_bridge = net.bridge.is_none() && net.mode.owns_bridge();
        if chose_bridge {
            let free = self.free_bridge_name().await?;
            net.bridge = Some(free.parse().map_err(anyhow::Error::msg)?);
        }
        let had_mac = self.store.has_mac(&name);
        let bridge = net
            .bridge
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        if net.mode.owns_bridge()
            && let Some(l) = self.nl.link_by_name(&bridge).await?
        {
            bail!(
                "bridge name {bridge:?} is in use by a device netd did not create (ifindex {})",
                l.index
            );
        }
        let mac = self.mac_for(&net)?;
        let mut run = Running {
            record: RunRecord {
                bridge,
                bridge_ifindex: 0,
                created_bridge: false,
                uplinks: vec![],
                definition: net.clone(),
                transient,
                dnsmasq_pid: None,
            },
            dnsmasq: None,
            degraded: None,
        };
        if net.mode == Mode::Hostdev {
            // No bridge, datapath or dnsmasq: a pool of VFs only.
            self.start_hostdev(&net).await?;
            tracing::info!("network {name} started (VF pool)");
            self.running.insert(name, run);
            self.save_running();
            return Ok(());
        }
        let shared = self.uplinks_of_others(&name);
        let Self { nl, dp, paths, .. } = self;
        let mut k = Real { nl, dp, paths };
        let r = lifecycle::start(
            &mut k,
            &net,
            mac,
            &mut run.record,
            &mut run.dnsmasq,
            &shared,
        )
        .await;
        match r {
            Ok(()) => {
                tracing::info!("network {name} started on {}", run.record.bridge);
                self.note_uplinks(&run.record.uplinks);
                if chose_bridge && !transient {
                    // Persist the chosen name so the bridge is the same on every start.
                    if let Err(e) = self.store.save_definition(&net) {
                        tracing::warn!("network {name}: saving the chosen bridge name: {e:#}");
                    }
                    self.defs.insert(name.clone(), net.clone());
                }
                self.running.insert(name, run);
                self.save_running();
                Ok(())
            }
            Err(e) => {
                tracing::warn!("starting {name} failed, rolling back: {e:#}");
                let t =
                    lifecycle::tear_down(&mut k, &run.record, run.dnsmasq.take(), &shared).await;
                if !had_mac {
                    // A MAC generated by this start goes with it.
                    self.store.forget_mac(&name);
                }
                if let Err(t) = t {
                    return Err(e.context(format!("and the rollback left: {t:#}")));
                }
                Err(e)
            }
        }
    }

    /// The bridge MAC of a network that owns its bridge: the configured one,
    /// else the one generated once and kept in the state dir.
    fn mac_for(&self, net: &Network) -> Result<[u8; 6]> {
        if !net.mode.owns_bridge() {
            return Ok([0; 6]);
        }
        match &net.mac {
            Some(m) => config::mac_bytes(m).map_err(anyhow::Error::msg),
            None => self.store.bridge_mac(&net.name),
        }
    }

    /// The datapath's view of a network as it is defined now (the ifindex of
    /// a configured uplink looked up); None for modes with no datapath.
    pub(super) async fn datapath_config(
        &self,
        net: &Network,
    ) -> Result<Option<netd_common::NetConfig>> {
        let uplink_ifindex = match &net.uplink {
            Some(u) => {
                crate::link::ifindex_of(u).ok_or_else(|| anyhow!("uplink {u:?} does not exist"))?
            }
            None => 0,
        };
        lifecycle::datapath_config(net, uplink_ifindex)
    }

    /// Hooks the uplink programs onto `uplink` (once, however many networks
    /// share it) and publishes its addresses.
    pub(super) async fn use_uplink(&mut self, net: &str, uplink: &str) -> Result<()> {
        let attach = !self.uplinks_of_others(net).contains(uplink);
        let Self { nl, dp, paths, .. } = self;
        let mut k = Real { nl, dp, paths };
        lifecycle::use_uplink(&mut k, uplink, attach).await?;
        self.note_uplinks(&[uplink.to_string()]);
        Ok(())
    }

    /// Remembers the ifindex of each hooked uplink, so the reconciler can
    /// take a vanished one's entry out of the uplinks map.
    fn note_uplinks(&mut self, uplinks: &[String]) {
        for u in uplinks {
            if let Some(i) = crate::link::ifindex_of(u) {
                self.repairs.hooked_uplink(u, i);
            }
        }
    }

    /// Uplinks that running networks other than `name` use.
    fn uplinks_of_others(&self, name: &str) -> BTreeSet<String> {
        self.running
            .iter()
            .filter(|(n, _)| *n != name)
            .flat_map(|(_, r)| r.record.uplinks.iter().cloned())
            .collect()
    }

    /// Re-homes a running network from its `old` uplinks onto `new`.
    pub async fn move_uplink(&mut self, name: &str, old: &[String], new: &str) -> Result<()> {
        let shared = self.uplinks_of_others(name);
        let Self {
            nl,
            dp,
            paths,
            running,
            ..
        } = self;
        let mut k = Real { nl, dp, paths };
        let mut t = Teardown::default();
        for u in old {
            t.step(
                &format!("releasing uplink {u}"),
                lifecycle::release_uplink(&mut k, u, &shared).await,
            );
        }
        if let Some(r) = running.get_mut(name) {
            r.record.uplinks = vec![new.to_string()];
        }
        t.step(
            &format!("using uplink {new}"),
            lifecycle::use_uplink(&mut k, new, !shared.contains(new)).await,
        );
        self.note_uplinks(&[new.to_string()]);
        t.finish()
    }

    async fn free_bridge_name(&self) -> Result<String> {
        let taken: Vec<String> = self
            .defs
            .values()
            .chain(self.running.values().map(|r| &r.record.definition))
            .filter_map(|n| n.bridge.as_ref().map(ToString::to_string))
            .collect();
        for i in 0..1024 {
            let name = format!("netd{i}");
            if !taken.contains(&name) && self.nl.link_by_name(&name).await?.is_none() {
                return Ok(name);
            }
        }
        bail!("no free netdN bridge name")
    }

    // ---- stop --------------------------------------------------------------

    /// Stops a network. A VF pool with VFs held refuses unless `force`,
    /// which releases them all first; returns how many it released.
    pub async fn stop(&mut self, name: &str, force: bool) -> Result<u32> {
        let Some(run) = self.running.get(name) else {
            bail!("network {name:?} is not running");
        };
        let mut released = 0;
        if run.record.definition.mode == Mode::Hostdev {
            let held = self.held_vfs(name)?;
            if held > 0 && !force {
                bail!(
                    "network {name} has {held} VFs held; release them (netd vf release) or stop with --force"
                );
            }
            if held > 0 {
                released = self.release_all_vfs(name).await?;
            }
        }
        let run = self.running.remove(name).expect("checked above");
        let transient = run.record.transient;
        let shared = self.uplinks_of_others(name);
        let Self { nl, dp, paths, .. } = self;
        let mut k = Real { nl, dp, paths };
        let r = lifecycle::tear_down(&mut k, &run.record, run.dnsmasq, &shared).await;
        self.save_running();
        if transient {
            self.store.forget_mac(name);
            self.forget_pool(name);
        }
        r.map(|()| released)
    }

    pub fn save_running(&self) {
        let recs: BTreeMap<String, RunRecord> = self
            .running
            .iter()
            .map(|(k, r)| {
                let mut rec = r.record.clone();
                rec.dnsmasq_pid = r.dnsmasq.as_ref().and_then(Dnsmasq::pid);
                (k.clone(), rec)
            })
            .collect();
        if let Err(e) = self.store.save_running(&recs) {
            tracing::warn!("saving running state: {e:#}");
        }
    }

    // ---- daemon start and shutdown ----------------------------------------

    /// Takes over the networks a previous daemon left running: their bridges,
    /// pinned programs and dnsmasq are still live, so guests never noticed.
    /// Each step is checked and only what is missing applied; a network
    /// with a failed step keeps running `degraded` and is retried.
    pub async fn adopt_previous(&mut self) {
        let records = self.store.load_running();
        for (name, rec) in &records {
            self.running.insert(
                name.clone(),
                Running {
                    record: rec.clone(),
                    dnsmasq: None,
                    degraded: None,
                },
            );
        }
        for name in records.keys() {
            if self.reconcile(name).await {
                tracing::info!("network {name} adopted");
            }
        }
        self.save_running();
    }

    /// Checks every step of a running network and applies what is missing.
    /// Returns whether the network is whole; if not, it is marked degraded
    /// and the next try is scheduled (1 s doubling to 30 s).
    pub async fn reconcile(&mut self, name: &str) -> bool {
        if self
            .running
            .get(name)
            .is_some_and(|r| r.record.definition.mode == Mode::Hostdev)
        {
            // Nothing in the kernel to check: the pool lives in its file.
            return true;
        }
        let Some(mut run) = self.running.remove(name) else {
            return true;
        };
        let net = run.record.definition.clone();
        let mac = self.mac_for(&net).unwrap_or_else(|e| {
            tracing::warn!("network {name}: bridge MAC: {e:#}");
            [0x52, 0x54, 0, 0, 0, 0]
        });
        let shared = self.uplinks_of_others(name);
        let Self { nl, dp, paths, .. } = self;
        let mut k = Real { nl, dp, paths };
        let errors = lifecycle::adopt(
            &mut k,
            &net,
            mac,
            &mut run.record,
            &mut run.dnsmasq,
            &shared,
        )
        .await;
        self.note_uplinks(&run.record.uplinks);
        let whole = errors.is_empty();
        if whole {
            if run.degraded.take().is_some() {
                tracing::info!("network {name} recovered");
            }
        } else {
            let delay = run
                .degraded
                .as_ref()
                .map(|d| (d.delay * 2).min(RETRY_MAX))
                .unwrap_or(RETRY_MIN);
            let d = Degraded {
                errors,
                delay,
                next_try: Instant::now() + delay,
            };
            tracing::warn!(
                "network {name} is degraded: {}; retrying in {delay:?}",
                d.summary()
            );
            run.degraded = Some(d);
        }
        self.running.insert(name.to_string(), run);
        whole
    }

    /// Retries the degraded networks whose time has come.
    pub async fn retry_degraded(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.degraded.as_ref().is_some_and(|d| d.next_try <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &due {
            self.reconcile(name).await;
        }
        if !due.is_empty() {
            self.save_running();
        }
    }

    pub async fn autostart(&mut self) {
        let names: Vec<String> = self
            .defs
            .values()
            .filter(|n| n.autostart && !self.running.contains_key(&n.name))
            .map(|n| n.name.clone())
            .collect();
        for name in names {
            if let Err(e) = self.start(&name).await {
                tracing::error!("autostart of {name} failed: {e:#}");
            }
        }
    }

    /// Daemon exit. By default networks stay up: bridges and pinned
    /// programs keep forwarding and dnsmasq keeps serving (dropping its
    /// handle only ends our supervision); the next daemon adopts them.
    /// `stop_networks` (`--stop-networks-on-exit`) stops every network.
    pub async fn shutdown(&mut self, stop_networks: bool) {
        if stop_networks {
            let names: Vec<String> = self.running.keys().cloned().collect();
            for name in names {
                // A VF pool with VFs held refuses, as `net stop` without --force does.
                match self.stop(&name, false).await {
                    Ok(_) => tracing::info!("network {name} stopped"),
                    Err(e) => tracing::warn!("stopping network {name}: {e:#}"),
                }
            }
            return;
        }
        self.save_running();
        for run in self.running.values_mut() {
            drop(run.dnsmasq.take());
        }
    }

    // ---- queries -----------------------------------------------------------

    pub fn list(&self, all: bool) -> Vec<NetworkSummary> {
        let mut names: Vec<&String> = self.running.keys().collect();
        if all {
            names.extend(self.defs.keys().filter(|n| !self.running.contains_key(*n)));
        }
        names.sort();
        names
            .into_iter()
            .filter_map(|n| {
                let net = self.definition(n)?;
                Some(NetworkSummary {
                    name: n.clone(),
                    mode: net.mode.as_str().into(),
                    active: self.running.contains_key(n),
                    autostart: self.defs.get(n).is_some_and(|d| d.autostart),
                    persistent: self.defs.contains_key(n),
                    bridge: self
                        .running
                        .get(n)
                        .map(|r| r.record.bridge.clone())
                        .or_else(|| net.bridge.as_ref().map(ToString::to_string))
                        .filter(|b| !b.is_empty()),
                })
            })
            .collect()
    }

    pub async fn info(&self, name: &str) -> Result<NetworkInfo> {
        let net = self.require(name)?;
        let run = self.running.get(name);
        let mut notes = Vec::new();
        let uplink = match &net.uplink {
            Some(u) => Some(u.to_string()),
            None if net.mode == Mode::Hostdev => None,
            None => self.nl.default_route_dev().await.ok().flatten(),
        };
        let uplink_addr = match &uplink {
            Some(u) => match crate::link::ifindex_of(u) {
                Some(i) => self.nl.primary_ipv4(i).await.ok().flatten(),
                None => None,
            },
            None => None,
        };
        let masq = match net.mode {
            Mode::Nat => net
                .nat
                .as_ref()
                .and_then(|n| n.address)
                .or(uplink_addr)
                .map(|a| a.to_string()),
            _ => None,
        };
        if net.mode == Mode::Route
            && let (Some(v4), Some(host)) = (&net.ipv4, uplink_addr)
            && let Ok((gw, p)) = v4.parsed()
        {
            let subnet = Ipv4Addr::from(u32::from(gw) & config::mask4(p));
            notes.push(format!(
                "upstream routers need: ip route add {subnet}/{p} via {host}"
            ));
        }
        let vf_pool = (net.mode == Mode::Hostdev).then(|| self.vf_pool_summary(net));
        Ok(NetworkInfo {
            name: name.to_string(),
            mode: net.mode.as_str().into(),
            active: run.is_some(),
            autostart: self.defs.get(name).is_some_and(|d| d.autostart),
            persistent: self.defs.contains_key(name),
            // A hostdev network has none (its record holds "").
            bridge: run
                .map(|r| r.record.bridge.clone())
                .or_else(|| net.bridge.as_ref().map(ToString::to_string))
                .filter(|b| !b.is_empty()),
            bridge_ifindex: run.map(|r| r.record.bridge_ifindex).filter(|i| *i != 0),
            mac: match (&net.mac, run) {
                (Some(m), _) => Some(m.to_string()),
                // No bridge, so no bridge MAC (and none generated for it).
                (None, _) if net.mode == Mode::Hostdev => None,
                (None, Some(_)) => self.store.bridge_mac(name).ok().map(|m| format_mac(&m)),
                _ => None,
            },
            ipv4: net.ipv4.as_ref().map(|v| v.address.to_string()),
            ipv6: net.ipv6.as_ref().map(|v| v.address.to_string()),
            dhcp_range: net
                .ipv4
                .as_ref()
                .and_then(|v| v.dhcp.as_ref())
                .map(|d| format!("{}-{}", d.start, d.end)),
            uplink,
            masquerade_address: masq,
            dnsmasq_pid: run.and_then(|r| r.dnsmasq.as_ref()).and_then(Dnsmasq::pid),
            dnsmasq_restarts: run
                .and_then(|r| r.dnsmasq.as_ref())
                .map(Dnsmasq::restarts)
                .unwrap_or(0),
            dnsmasq_healthy: run.and_then(|r| r.dnsmasq.as_ref()).map(Dnsmasq::healthy),
            notes,
            connections: vf_pool.as_ref().map(|p| p.held),
            vf_pool,
            pending_changes: self.pending_changes(name),
            // A failed step (retried), else what the reconciler saw.
            degraded: run
                .and_then(|r| r.degraded.as_ref())
                .map(Degraded::summary)
                .or_else(|| run.and_then(|_| self.repairs.degraded(name))),
            masquerade_ports: self.masquerade_ports(net),
            nat_timeouts: self.nat_timeouts(net),
        })
    }

    /// The connection timeouts a NAT network's flows get: its own
    /// `[nat.timeouts]`, else the global settings.
    fn nat_timeouts(&self, net: &Network) -> Option<crate::api::wire::NatTimeoutInfo> {
        if net.mode != Mode::Nat {
            return None;
        }
        let g = dataplane::maps::settings(&self.dp.maps_dir())
            .unwrap_or(netd_common::Settings::DEFAULT);
        let own = net
            .nat
            .as_ref()
            .and_then(|n| n.timeouts)
            .map(|t| t.datapath())
            .unwrap_or_default();
        let refresh = net.nat.as_ref().and_then(|n| n.refresh).unwrap_or_default();
        let or = |v: u32, global: u32| if v == 0 { global } else { v };
        Some(crate::api::wire::NatTimeoutInfo {
            udp: or(own.udp, g.udp_timeout),
            tcp_established: or(
                own.tcp_established.div_ceil(60) * 60,
                g.tcp_established_timeout,
            ),
            tcp_handshake: or(own.tcp_transitory, g.tcp_syn_timeout),
            tcp_closing: or(own.tcp_transitory, g.tcp_closing_timeout),
            own: own != netd_common::NatTimeouts::default(),
            udp_refresh: match refresh {
                config::NatRefresh::Outbound => "outbound".into(),
                config::NatRefresh::Both => "both".into(),
            },
        })
    }

    /// Per protocol, the masquerade ports of a NAT network that the
    /// forwards of every network leave it.
    fn masquerade_ports(&self, net: &Network) -> Vec<crate::api::wire::MasqueradePorts> {
        if net.mode != Mode::Nat {
            return Vec::new();
        }
        let mut names: std::collections::BTreeSet<&String> = self.defs.keys().collect();
        names.extend(self.running.keys());
        let forwards: Vec<&config::Forward> = names
            .into_iter()
            .filter_map(|n| self.definition(n))
            .flat_map(|n| &n.forwards)
            .collect();
        let min_free = net
            .nat
            .as_ref()
            .and_then(|n| n.min_free_ports)
            .unwrap_or(config::nat_pool::DEFAULT_MIN_FREE_PORTS);
        [config::Proto::Tcp, config::Proto::Udp]
            .into_iter()
            .map(|p| {
                let (left, size) = config::nat_pool::ports_left(net, p, forwards.iter().copied());
                crate::api::wire::MasqueradePorts {
                    proto: p.as_str().into(),
                    left,
                    size,
                    min_free,
                }
            })
            .collect()
    }

    pub fn leases(&self, name: &str) -> Result<Vec<dhcp::Lease>> {
        self.require(name)?;
        let paths = dhcp::paths(&self.paths.run_dir, &self.paths.state_dir, name);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(dhcp::read_leases(&paths.leasefile)?
            .into_iter()
            .filter(|l| l.expiry == 0 || l.expiry > now)
            .collect())
    }
}
