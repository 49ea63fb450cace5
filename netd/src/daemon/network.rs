//! Network lifecycle: define, start, stop, undefine, live host updates.
//!
//! Starting is all-or-nothing: each step records what it created in the
//! network's `Running` entry as it goes, and a failure tears down exactly
//! that record. Stopping uses the same teardown.

use super::store::{RunRecord, Store, format_mac};
use super::teardown::Teardown;
use crate::api::wire::{NetworkInfo, NetworkSummary};
use crate::config::{self, Mode, Network};
use crate::dataplane::{self, Dataplane, Hook};
use crate::dhcp::{self, Dnsmasq};
use crate::link::{BridgeSpec, Netlink};
use crate::paths::Paths;
use anyhow::{Result, anyhow, bail};
use netd_common::NetConfig;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

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
        let mut run = Running {
            record: RunRecord {
                bridge: net
                    .bridge
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                bridge_ifindex: 0,
                created_bridge: false,
                uplinks: vec![],
                definition: net.clone(),
                transient,
                dnsmasq_pid: None,
            },
            dnsmasq: None,
        };
        match self.bring_up(&net, &mut run).await {
            Ok(()) if net.mode == Mode::Hostdev => {
                tracing::info!("network {name} started (VF pool)");
                self.running.insert(name, run);
                self.save_running();
                Ok(())
            }
            Ok(()) => {
                tracing::info!("network {name} started on {}", run.record.bridge);
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
                if !had_mac {
                    // A MAC generated by this start goes with it.
                    self.store.forget_mac(&name);
                }
                if let Err(t) = self.tear_down(run).await {
                    return Err(e.context(format!("and the rollback left: {t:#}")));
                }
                Err(e)
            }
        }
    }

    async fn bring_up(&mut self, net: &Network, run: &mut Running) -> Result<()> {
        if net.mode == Mode::Hostdev {
            // No bridge, datapath or dnsmasq: a pool of VFs only.
            return self.start_hostdev(net).await;
        }
        let bridge = run.record.bridge.clone();
        if net.mode.owns_bridge() {
            if let Some(l) = self.nl.link_by_name(&bridge).await? {
                bail!(
                    "bridge name {bridge:?} is in use by a device netd did not create (ifindex {})",
                    l.index
                );
            }
            let mac = match &net.mac {
                Some(m) => config::mac_bytes(m).map_err(anyhow::Error::msg)?,
                None => self.store.bridge_mac(&net.name)?,
            };
            let spec = BridgeSpec {
                name: bridge.clone(),
                mac,
                mtu: net.mtu,
                stp: net.stp.enabled,
                forward_delay_secs: net.stp.delay,
            };
            run.record.bridge_ifindex = self.nl.create_bridge(&spec).await?;
            run.record.created_bridge = true;
            let idx = run.record.bridge_ifindex;
            if let Some(v4) = &net.ipv4 {
                let (a, p) = v4.parsed().map_err(anyhow::Error::msg)?;
                self.nl.add_address(idx, a.into(), p).await?;
            }
            if let Some(v6) = &net.ipv6 {
                let (a, p) = v6.parsed().map_err(anyhow::Error::msg)?;
                self.nl.add_address(idx, a.into(), p).await?;
            }
        } else {
            let l = self.nl.link_by_name(&bridge).await?.ok_or_else(|| {
                anyhow!("bridge {bridge:?} does not exist; create it on the host first")
            })?;
            if !l.is_bridge {
                bail!("{bridge:?} is not a bridge");
            }
            run.record.bridge_ifindex = l.index;
        }

        self.attach_datapath(net, run).await?;

        if net.wants_dnsmasq() {
            let paths = dhcp::paths(&self.paths.run_dir, &self.paths.state_dir, &net.name);
            dhcp::write_files(net, &bridge, &paths)?;
            let d = Dnsmasq::start(&net.name, &paths.conf).await?;
            run.record.dnsmasq_pid = d.pid();
            run.dnsmasq = Some(d);
        }
        Ok(())
    }

    /// The datapath's view of a network; None for modes with no datapath.
    pub(super) async fn datapath_config(&self, net: &Network) -> Result<Option<NetConfig>> {
        let mode = match net.mode {
            Mode::Nat => netd_common::mode::NAT,
            Mode::Route => netd_common::mode::ROUTE,
            Mode::Open => netd_common::mode::OPEN,
            Mode::Isolated => netd_common::mode::ISOLATED,
            Mode::Bridge | Mode::Hostdev => return Ok(None),
        };
        let (gw, prefix) = match &net.ipv4 {
            Some(v4) => v4.parsed().map_err(anyhow::Error::msg)?,
            None => (Ipv4Addr::UNSPECIFIED, 0),
        };
        let mask = config::mask4(prefix);
        let (port_min, port_max) = net.nat_ports();
        let uplink_ifindex = match &net.uplink {
            Some(u) => {
                crate::link::ifindex_of(u).ok_or_else(|| anyhow!("uplink {u:?} does not exist"))?
            }
            None => 0,
        };
        Ok(Some(NetConfig {
            subnet: (u32::from(gw) & mask).to_be(),
            mask: mask.to_be(),
            gateway: u32::from(gw).to_be(),
            nat_addr: net
                .nat
                .as_ref()
                .and_then(|n| n.address)
                .map(|a| u32::from(a).to_be())
                .unwrap_or(0),
            port_min,
            port_max,
            uplink_ifindex,
            mode,
            flags: datapath_flags(net),
            _pad: [0; 2],
        }))
    }

    /// Publishes the network to the datapath and hooks the programs onto
    /// its bridge and its uplink. Each step is recorded in `run` first, so a
    /// failure rolls back exactly what happened.
    async fn attach_datapath(&mut self, net: &Network, run: &mut Running) -> Result<()> {
        let Some(cfg) = self.datapath_config(net).await? else {
            return Ok(());
        };
        let subnet = net.ipv4.as_ref().and_then(|v| v.parsed().ok());
        dataplane::maps::add_network(&self.dp.maps_dir(), run.record.bridge_ifindex, &cfg, subnet)?;
        if net.mode == Mode::Nat {
            let nat = net.nat.as_ref();
            dataplane::maps::set_nat_limits(
                &self.dp.maps_dir(),
                run.record.bridge_ifindex,
                nat.and_then(|n| n.max_flows_per_guest).unwrap_or(0),
                nat.and_then(|n| n.max_ports_per_guest).unwrap_or(0),
            )?;
            let timeouts = config::Nat::datapath_timeouts(net.nat.as_ref());
            dataplane::maps::set_nat_timeouts(
                &self.dp.maps_dir(),
                run.record.bridge_ifindex,
                Some(timeouts),
            )?;
        }
        if let Some(prefix) = net.ipv6.as_ref().and_then(|v| v.parsed().ok()) {
            crate::link::set_ipv6_forwarding(true)?;
            dataplane::maps::add_subnet6(&self.dp.maps_dir(), run.record.bridge_ifindex, prefix)?;
            dataplane::maps::set_gateway6(
                &self.dp.maps_dir(),
                run.record.bridge_ifindex,
                prefix.0,
            )?;
        }
        if net.strict {
            // Host entries bind before the first packet; leases follow
            // within a poll of the lease file (see `lane::watch`).
            self.sync_bindings(&net.name, net, run.record.bridge_ifindex)?;
        }
        for hook in [Hook::BridgeIngress, Hook::BridgeEgress] {
            self.dp.attach(hook, &run.record.bridge)?;
        }
        if matches!(net.mode, Mode::Nat | Mode::Route | Mode::Open)
            && let Some(uplink) = self.uplink_for(net).await?
        {
            run.record.uplinks.push(uplink.clone());
            self.use_uplink(&net.name, &uplink).await?;
        }
        let entries = self
            .forward_entries(net, run.record.bridge_ifindex, &run.record.uplinks)
            .await;
        dataplane::maps::add_forwards(&self.dp.maps_dir(), &entries)?;
        Ok(())
    }

    /// The configured uplink, else whatever holds the default route now.
    pub(super) async fn uplink_for(&self, net: &Network) -> Result<Option<String>> {
        if let Some(u) = &net.uplink {
            return Ok(Some(u.to_string()));
        }
        let oif = self.nl.default_route_v4().await?.and_then(|r| r.oif);
        let name = oif.and_then(crate::link::ifname_of);
        if name.is_none() {
            tracing::warn!(
                "network {}: no default route yet, so no uplink to masquerade on",
                net.name
            );
        }
        Ok(name)
    }

    /// Hooks the uplink programs onto `uplink` (once, however many
    /// networks share it) and publishes its address.
    pub(super) async fn use_uplink(&mut self, net: &str, uplink: &str) -> Result<()> {
        let index = crate::link::ifindex_of(uplink)
            .ok_or_else(|| anyhow!("uplink {uplink:?} does not exist"))?;
        let first = !self.uplink_users(uplink).any(|n| n != net);
        if first {
            for hook in [Hook::UplinkIngress, Hook::UplinkEgress] {
                self.dp.attach(hook, uplink)?;
            }
        }
        let addr = self.nl.primary_ipv4(index).await?;
        let addr6 = self.global_ipv6(index).await;
        dataplane::maps::set_uplink(&self.dp.maps_dir(), index, addr, addr6)?;
        // The reconciler tells a recreated uplink (new ifindex) by this.
        self.repairs.hooked_uplink(uplink, index);
        Ok(())
    }

    fn release_uplink(&mut self, net: &str, uplink: &str) -> Result<()> {
        if self.uplink_users(uplink).any(|n| n != net) {
            return Ok(());
        }
        for hook in [Hook::UplinkIngress, Hook::UplinkEgress] {
            self.dp.detach(hook, uplink)?;
        }
        if let Some(index) = crate::link::ifindex_of(uplink) {
            dataplane::maps::remove_uplink(&self.dp.maps_dir(), index)?;
        }
        Ok(())
    }

    /// Re-homes a running network from its `old` uplinks onto `new`.
    pub async fn move_uplink(&mut self, name: &str, old: &[String], new: &str) -> Result<()> {
        let mut t = Teardown::default();
        for u in old {
            t.step(
                &format!("releasing uplink {u}"),
                self.release_uplink(name, u),
            );
        }
        if let Some(r) = self.running.get_mut(name) {
            r.record.uplinks = vec![new.to_string()];
        }
        t.step(
            &format!("using uplink {new}"),
            self.use_uplink(name, new).await,
        );
        t.finish()
    }

    /// Names of running networks that use `uplink`.
    fn uplink_users<'a>(&'a self, uplink: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.running
            .values()
            .filter(move |r| r.record.uplinks.iter().any(|u| u == uplink))
            .map(|r| r.record.definition.name.as_str())
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
        let r = self.tear_down(run).await;
        self.save_running();
        if transient {
            self.store.forget_mac(name);
            self.forget_pool(name);
        }
        r.map(|()| released)
    }

    /// Removes exactly what `run` records, in reverse order of creation,
    /// continuing past failures.
    async fn tear_down(&mut self, run: Running) -> Result<()> {
        let mut t = Teardown::default();
        let rec = &run.record;
        let name = rec.definition.name.clone();
        if let Some(d) = run.dnsmasq {
            t.step("stopping dnsmasq", d.stop().await);
        } else if let Some(pid) = rec.dnsmasq_pid {
            // Adopted from a previous daemon: that dnsmasq is not our child.
            kill_stale_dnsmasq(pid);
        }
        let dpaths = dhcp::paths(&self.paths.run_dir, &self.paths.state_dir, &name);
        t.step(
            "removing dnsmasq files",
            dhcp::remove_files(&dpaths, rec.transient),
        );
        if rec.bridge_ifindex != 0 {
            for hook in [Hook::BridgeIngress, Hook::BridgeEgress] {
                t.step(
                    &format!("detaching {}", hook.as_str()),
                    self.dp.detach(hook, &rec.bridge),
                );
            }
            t.step(
                "removing port forwards",
                self.clear_forwards(rec.bridge_ifindex),
            );
            if let Some(prefix) = rec.definition.ipv6.as_ref().and_then(|v| v.parsed().ok()) {
                t.step(
                    "removing the IPv6 prefix",
                    dataplane::maps::remove_subnet6(&self.dp.maps_dir(), prefix),
                );
            }
            t.step(
                "removing the IPv6 router address",
                dataplane::maps::remove_gateway6(&self.dp.maps_dir(), rec.bridge_ifindex),
            );
            t.step(
                "removing the guests' bindings",
                dataplane::maps::remove_bindings(&self.dp.maps_dir(), rec.bridge_ifindex),
            );
            let subnet = rec.definition.ipv4.as_ref().and_then(|v| v.parsed().ok());
            t.step(
                "removing the network from the datapath",
                dataplane::maps::remove_network(&self.dp.maps_dir(), rec.bridge_ifindex, subnet),
            );
        }
        for uplink in &rec.uplinks {
            t.step(
                &format!("releasing uplink {uplink}"),
                self.release_uplink(&name, uplink),
            );
        }
        if rec.created_bridge && rec.bridge_ifindex != 0 {
            t.step(
                "deleting the bridge",
                self.nl.delete_link(rec.bridge_ifindex).await,
            );
        }
        t.finish()
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

    /// Takes over the networks a previous daemon left running: their bridges
    /// and pinned programs are still live, so guests never noticed. Programs
    /// are swapped for this build's, and dnsmasq restarted under us.
    pub async fn adopt_previous(&mut self) {
        for (name, rec) in self.store.load_running() {
            if rec.definition.mode == Mode::Hostdev {
                // Nothing in the kernel to adopt: the pool lives in its file.
                tracing::info!("network {name} (VF pool) adopted");
                self.running.insert(
                    name,
                    Running {
                        record: rec,
                        dnsmasq: None,
                    },
                );
                continue;
            }
            let alive = match self.nl.link_by_index(rec.bridge_ifindex).await {
                Ok(Some(l)) => l.name == rec.bridge,
                _ => false,
            };
            if let Some(pid) = rec.dnsmasq_pid {
                kill_stale_dnsmasq(pid);
            }
            let mut run = Running {
                record: rec.clone(),
                dnsmasq: None,
            };
            run.record.dnsmasq_pid = None;
            if !alive {
                tracing::warn!(
                    "network {name}: bridge {} vanished while the daemon was down; cleaning up",
                    rec.bridge
                );
                run.record.bridge_ifindex = 0;
                let _ = self.tear_down(run).await;
                continue;
            }
            match self.readopt(&mut run).await {
                Ok(()) => {
                    tracing::info!("network {name} adopted");
                    self.running.insert(name, run);
                }
                Err(e) => {
                    tracing::warn!("network {name}: adopting failed, stopping it: {e:#}");
                    let _ = self.tear_down(run).await;
                }
            }
        }
        self.save_running();
    }

    async fn readopt(&mut self, run: &mut Running) -> Result<()> {
        let net = run.record.definition.clone();
        run.record.uplinks.clear();
        self.clear_forwards(run.record.bridge_ifindex)?;
        self.attach_datapath(&net, run).await?;
        if net.wants_dnsmasq() {
            let paths = dhcp::paths(&self.paths.run_dir, &self.paths.state_dir, &net.name);
            dhcp::write_files(&net, &run.record.bridge, &paths)?;
            let d = Dnsmasq::start(&net.name, &paths.conf).await?;
            run.dnsmasq = Some(d);
        }
        Ok(())
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

    /// Daemon exit: networks stay up (bridges and pinned programs keep
    /// forwarding); only dnsmasq, our child, goes and is restarted by the
    /// next daemon.
    pub async fn shutdown(&mut self) {
        for run in self.running.values_mut() {
            if let Some(d) = run.dnsmasq.take() {
                let _ = d.stop().await;
            }
        }
        self.save_running();
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
            None => self
                .nl
                .default_route_v4()
                .await
                .ok()
                .flatten()
                .and_then(|r| r.oif)
                .and_then(crate::link::ifname_of),
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
            degraded: run.and_then(|_| self.repairs.degraded(name)),
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

/// `net_flags` for a network's datapath entry.
fn datapath_flags(net: &Network) -> u8 {
    use netd_common::net_flags;
    let mut f = 0;
    if net.ipv6.as_ref().is_some_and(|v| v.nat) {
        f |= net_flags::NAT66;
    }
    if net.strict {
        f |= net_flags::STRICT;
    }
    if net.host_access == config::HostAccess::DhcpDns {
        f |= net_flags::HOST_DHCP_DNS;
    }
    if net.mode == Mode::Nat {
        f |= config::Nat::behaviour_flags(net.nat.as_ref());
    }
    f
}

/// Kills a dnsmasq left by a previous daemon, after checking the pid still
/// belongs to a dnsmasq (pids are reused).
fn kill_stale_dnsmasq(pid: u32) {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "dnsmasq" {
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
}
