//! The reconciler's repair loop: on every link, address or route event, and
//! once a second, the kernel is compared with what each running network
//! should have, and whatever someone else undid is put back.
//!
//! - A deleted netd bridge is recreated with its MAC and addresses; the
//!   guest ports that still exist are put back on it; the datapath entries
//!   keyed by the old ifindex are replaced and the programs re-hooked.
//! - A flushed bridge address is re-added; a bridge set down is set up; a
//!   program no longer on its bridge or uplink (its pinned link removed, or
//!   the device recreated under the same name) is attached again.
//! - An uplink that disappears (or is replaced by a new device of the same
//!   name) leaves its networks `degraded`: guests keep reaching each other
//!   and the host. When it, or another default route, comes back, the uplink
//!   programs are hooked again and the network recovers by itself.
//!
//! Every repair logs one line and counts in `netd_repairs_total{network,what}`.

use super::kernel::{Datapath, Real};
use super::{Daemon, State};
use crate::config::{self, Mode};
use crate::dataplane::{self, Hook};
use crate::link::{BridgeSpec, LinkInfo};
use anyhow::{Result, anyhow};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// How often the kernel is checked when no event says something changed
/// (an event can be lost on a netlink overrun).
const PERIOD: Duration = Duration::from_secs(1);
/// Events come in bursts (a bridge deletion first detaches each port); one
/// check after the burst sees the end state.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct Repairs {
    /// Per network: the ports seen on its bridge (ifindex -> name), put back
    /// when the bridge has to be recreated.
    ports: BTreeMap<String, BTreeMap<u32, String>>,
    /// Per uplink name: the ifindex its programs were hooked on.
    uplink_index: BTreeMap<String, u32>,
    /// Per network: why it is degraded right now.
    degraded: BTreeMap<String, String>,
    /// (network, what) -> repairs done since the daemon started.
    counts: BTreeMap<(String, String), u64>,
}

impl Repairs {
    pub fn hooked_uplink(&mut self, uplink: &str, index: u32) {
        self.uplink_index.insert(uplink.to_string(), index);
    }

    /// Why `network` is degraded, if it is.
    pub fn degraded(&self, network: &str) -> Option<String> {
        self.degraded.get(network).cloned()
    }

    /// (network, what, count) for every repair kind done at least once.
    pub fn counts(&self) -> Vec<(String, String, u64)> {
        self.counts
            .iter()
            .map(|((n, w), c)| (n.clone(), w.clone(), *c))
            .collect()
    }

    fn count(&mut self, network: &str, what: &str) {
        *self
            .counts
            .entry((network.to_string(), what.to_string()))
            .or_default() += 1;
    }

    /// Sets or clears the reason; true when that changed something.
    fn set_degraded(&mut self, network: &str, why: Option<String>) -> bool {
        match why {
            Some(w) => self.degraded.insert(network.to_string(), w.clone()) != Some(w),
            None => self.degraded.remove(network).is_some(),
        }
    }
}

/// Runs the checks on every event and each [`PERIOD`].
pub async fn watch(daemon: Arc<Daemon>) {
    let mut events = match crate::link::subscribe().await {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::error!("reconciler: cannot watch links ({e:#}); checking each second only");
            None
        }
    };
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = async {
            match events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = event => {
                if ev.is_none() {
                    tracing::error!("reconciler: link events stopped; checking each second only");
                    events = None;
                    continue;
                }
                tokio::time::sleep(SETTLE).await;
                if let Some(rx) = events.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
            _ = tick.tick() => {}
        }
        daemon.state.lock().await.repair_pass().await;
    }
}

impl State {
    /// One pass of every check, for every running network.
    pub async fn repair_pass(&mut self) {
        let Ok(links) = self.nl.links().await else {
            return;
        };
        let names: Vec<String> = self.running.keys().cloned().collect();
        self.repairs.ports.retain(|n, _| names.contains(n));
        self.repairs.degraded.retain(|n, _| names.contains(n));
        let hooks = self.live_hooks();
        for name in &names {
            if let Err(e) = self.check_bridge(name, &links, &hooks).await {
                // Retried each pass; logged when the reason changes.
                let why = format!("bridge repair failed: {e:#}");
                if self.repairs.set_degraded(name, Some(why.clone())) {
                    tracing::warn!("network {name} is degraded: {why}");
                }
            }
        }
        self.check_uplinks(&hooks).await;
    }

    /// (interface, hook) of every pinned tcx link whose program is in the
    /// chain of the device that has that name now. A device deleted and
    /// created again under the same name, or a link whose pin someone
    /// removed, is missing here.
    fn live_hooks(&self) -> BTreeSet<(String, String)> {
        self.dp
            .attached()
            .into_iter()
            .filter(|l| l.tcx_position.is_some())
            .map(|l| (l.interface, l.hook))
            .collect()
    }

    async fn check_bridge(
        &mut self,
        name: &str,
        links: &[LinkInfo],
        hooks: &BTreeSet<(String, String)>,
    ) -> Result<()> {
        let Some(run) = self.running.get(name) else {
            return Ok(());
        };
        // A host bridge (bridge mode) is its owner's to repair.
        if !run.record.created_bridge || run.record.bridge_ifindex == 0 {
            return Ok(());
        }
        let idx = run.record.bridge_ifindex;
        let bridge = run.record.bridge.clone();
        let net = run.record.definition.clone();
        let Some(link) = links.iter().find(|l| l.index == idx) else {
            if let Some(other) = links.iter().find(|l| l.name == bridge) {
                // Not ours: never delete or take over someone else's device.
                let why = format!(
                    "bridge {bridge} was replaced by a device netd did not create (ifindex {})",
                    other.index
                );
                if self.repairs.set_degraded(name, Some(why.clone())) {
                    tracing::warn!("network {name}: {why}");
                }
                return Ok(());
            }
            return self.recreate_bridge(name, links).await;
        };
        // Remember the ports; forget those deleted or moved to another master.
        let ports = self.repairs.ports.entry(name.to_string()).or_default();
        for p in links.iter().filter(|p| p.master == Some(idx)) {
            ports.insert(p.index, p.name.clone());
        }
        ports.retain(|i, _| {
            links
                .iter()
                .any(|p| p.index == *i && (p.master.is_none() || p.master == Some(idx)))
        });
        if !link.up {
            self.nl.set_up(idx).await?;
            tracing::warn!("network {name}: bridge {bridge} was set down; set it up again");
            self.repairs.count(name, "bridge_down");
        }
        if self.datapath_config(&net).await.is_ok_and(|c| c.is_some()) {
            for hook in [Hook::BridgeIngress, Hook::BridgeEgress] {
                if !hooks.contains(&(bridge.clone(), hook.as_str().to_string())) {
                    self.dp.detach(hook, &bridge)?;
                    self.dp.attach(hook, &bridge)?;
                    tracing::warn!(
                        "network {name}: the {} program was no longer on {bridge}; attached it again",
                        hook.as_str()
                    );
                    self.repairs.count(name, "programs");
                }
            }
        }
        let missing = self.missing_addresses(&net, idx).await?;
        for (a, p) in &missing {
            self.nl.add_address(idx, *a, *p).await?;
            tracing::warn!(
                "network {name}: address {a}/{p} was removed from {bridge}; re-added it"
            );
            self.repairs.count(name, "address");
        }
        if matches!(self.repairs.degraded.get(name), Some(w) if w.starts_with("bridge"))
            && self.repairs.set_degraded(name, None)
        {
            tracing::info!("network {name}: bridge {bridge} is whole again");
        }
        Ok(())
    }

    /// The definition's addresses that the bridge lacks.
    async fn missing_addresses(
        &self,
        net: &config::Network,
        idx: u32,
    ) -> Result<Vec<(std::net::IpAddr, u8)>> {
        let mut want = Vec::new();
        if let Some(v4) = &net.ipv4 {
            let (a, p) = v4.parsed().map_err(anyhow::Error::msg)?;
            want.push((std::net::IpAddr::from(a), p));
        }
        if let Some(v6) = &net.ipv6 {
            let (a, p) = v6.parsed().map_err(anyhow::Error::msg)?;
            want.push((std::net::IpAddr::from(a), p));
        }
        let have = self.nl.addresses(Some(idx)).await?;
        Ok(want
            .into_iter()
            .filter(|(a, p)| !have.iter().any(|h| h.addr == *a && h.prefix == *p))
            .collect())
    }

    /// The bridge is gone: build it again as the start did and move
    /// everything keyed by its old ifindex to the new one.
    async fn recreate_bridge(&mut self, name: &str, links: &[LinkInfo]) -> Result<()> {
        let run = self
            .running
            .get(name)
            .ok_or_else(|| anyhow!("not running"))?;
        let old = run.record.bridge_ifindex;
        let bridge = run.record.bridge.clone();
        let net = run.record.definition.clone();
        let mac = match &net.mac {
            Some(m) => config::mac_bytes(m).map_err(anyhow::Error::msg)?,
            None => self.store.bridge_mac(name)?,
        };
        // STP off until the ports are back: they join forwarding at once, as
        // they were on the old bridge, instead of listening and learning for
        // twice the forward delay (at least 4 s) while the guests wait.
        let spec = BridgeSpec {
            name: bridge.clone(),
            mac,
            mtu: net.mtu,
            stp: false,
            forward_delay_secs: net.stp.delay,
        };
        let new = self.nl.create_bridge(&spec).await?;
        let remembered = self.repairs.ports.get(name).cloned().unwrap_or_default();
        match self
            .rebuild_on(name, &net, old, new, &remembered, links)
            .await
        {
            Ok((attached, kept)) => {
                tracing::warn!(
                    "network {name}: bridge {bridge} was deleted; recreated it (ifindex {old} -> {new}) with its MAC and addresses, ports put back: [{}], {kept} connections kept",
                    attached.join(", ")
                );
                self.repairs.count(name, "bridge");
                Ok(())
            }
            Err(e) => {
                // Leave things as they were; the next pass tries again.
                if let Some(r) = self.running.get_mut(name) {
                    r.record.bridge_ifindex = old;
                }
                let _ = self.nl.delete_link(new).await;
                Err(e.context(format!("recreating bridge {bridge}")))
            }
        }
    }

    /// Everything keyed by the old bridge ifindex, moved to the new one.
    /// Returns the ports put back and the connections kept.
    async fn rebuild_on(
        &mut self,
        name: &str,
        net: &config::Network,
        old: u32,
        new: u32,
        remembered: &BTreeMap<u32, String>,
        links: &[LinkInfo],
    ) -> Result<(Vec<String>, usize)> {
        let bridge = self
            .running
            .get(name)
            .map(|r| r.record.bridge.clone())
            .unwrap_or_default();
        for (a, p) in self.missing_addresses(net, new).await? {
            self.nl.add_address(new, a, p).await?;
        }
        let mut kept = 0;
        let mut attached = Vec::new();
        for (pidx, pname) in remembered {
            if links.iter().any(|l| l.index == *pidx && l.master.is_none()) {
                match self.nl.set_master(*pidx, new).await {
                    Ok(()) => attached.push(pname.clone()),
                    Err(e) => tracing::warn!("network {name}: putting {pname} back: {e:#}"),
                }
            }
        }
        if net.stp.enabled {
            self.nl.set_bridge_stp(new, &bridge, true).await?;
        }
        if let Some(cfg) = self.datapath_config(net).await? {
            let dir = self.dp.maps_dir();
            let subnet = net.ipv4.as_ref().and_then(|v| v.parsed().ok());
            // Open connections follow the bridge, so replies, even ones the
            // guest did not ask for since, still reach it.
            kept = dataplane::maps::ct_move_bridge(&dir, old, new)? / 2;
            dataplane::maps::remove_network(&dir, old, subnet)?;
            dataplane::maps::add_network(&dir, new, &cfg, subnet)?;
            if let Some(prefix) = net.ipv6.as_ref().and_then(|v| v.parsed().ok()) {
                dataplane::maps::remove_subnet6(&dir, prefix)?;
                dataplane::maps::add_subnet6(&dir, new, prefix)?;
                dataplane::maps::remove_gateway6(&dir, old)?;
                dataplane::maps::set_gateway6(&dir, new, prefix.0)?;
            }
            // What the definition adds to the entry (NAT limits and
            // timeouts) and the strict bindings, now keyed by the new bridge.
            dataplane::maps::remove_bindings(&dir, old)?;
            let Self { nl, dp, paths, .. } = &mut *self;
            let mut k = Real { nl, dp, paths };
            k.publish_extras(new, net)?;
            if net.strict {
                k.sync_bindings(net, new)?;
            }
            for hook in [Hook::BridgeIngress, Hook::BridgeEgress] {
                // The pinned link died with the old device: replace it.
                self.dp.detach(hook, &bridge)?;
                self.dp.attach(hook, &bridge)?;
            }
            self.clear_forwards(old)?;
        }
        if let Some(r) = self.running.get_mut(name) {
            r.record.bridge_ifindex = new;
        }
        self.sync_forwards(name).await?;
        self.save_running();
        Ok((attached, kept))
    }

    /// Uplinks that vanished are let go (their networks degraded); networks
    /// without an uplink get one as soon as there is one.
    async fn check_uplinks(&mut self, hooks: &BTreeSet<(String, String)>) {
        let dir = self.dp.maps_dir();
        let in_use: BTreeSet<String> = self
            .running
            .values()
            .flat_map(|r| r.record.uplinks.iter().cloned())
            .collect();
        for u in in_use {
            let now = crate::link::ifindex_of(&u);
            let was = self.repairs.uplink_index.get(&u).copied();
            let hooked = [Hook::UplinkIngress, Hook::UplinkEgress]
                .iter()
                .all(|h| hooks.contains(&(u.clone(), h.as_str().to_string())));
            if now.is_some() && hooked && (was.is_none() || was == now) {
                continue;
            }
            // Gone, or a new device of the same name whose hooks are not ours.
            for hook in [Hook::UplinkIngress, Hook::UplinkEgress] {
                if let Err(e) = self.dp.detach(hook, &u) {
                    tracing::warn!("uplink {u}: dropping its dead hook: {e:#}");
                }
            }
            if let Some(old) = was {
                let _ = dataplane::maps::remove_uplink(&dir, old);
            }
            self.repairs.uplink_index.remove(&u);
            let users: Vec<String> = self
                .running
                .iter()
                .filter(|(_, r)| r.record.uplinks.contains(&u))
                .map(|(n, _)| n.clone())
                .collect();
            for n in &users {
                if let Some(r) = self.running.get_mut(n) {
                    r.record.uplinks.retain(|x| x != &u);
                }
                if let Err(e) = self.sync_forwards(n).await {
                    tracing::warn!("network {n}: withdrawing forwards of uplink {u}: {e:#}");
                }
            }
            if now.is_some() {
                // Same name, but the programs are not on it (a new device,
                // or links removed): hooked again just below.
                tracing::warn!(
                    "uplink {u}: its programs were no longer attached; attaching them again"
                );
                for n in &users {
                    self.repairs.count(n, "programs");
                }
            } else {
                tracing::warn!(
                    "uplink {u} is gone; {} degraded until it or another default route is back",
                    users.join(", ")
                );
            }
            self.save_running();
        }
        self.claim_uplinks().await;
    }

    /// Networks that route out but have no uplink get one as soon as there
    /// is one; a network that got its uplink back is no longer degraded.
    async fn claim_uplinks(&mut self) {
        let needy: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| {
                matches!(
                    r.record.definition.mode,
                    Mode::Nat | Mode::Route | Mode::Open
                )
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in needy {
            let Some(run) = self.running.get(&name) else {
                continue;
            };
            let net = run.record.definition.clone();
            if run.record.uplinks.is_empty() {
                let want = match &net.uplink {
                    Some(u) => crate::link::ifindex_of(u).map(|_| u.to_string()),
                    None => self.nl.default_route_dev().await.ok().flatten(),
                };
                let Some(u) = want else {
                    let why = match &net.uplink {
                        Some(u) => format!("uplink {u} is gone"),
                        None => "no uplink: there is no default route".to_string(),
                    };
                    if self.repairs.set_degraded(&name, Some(why.clone())) {
                        tracing::warn!("network {name} is degraded: {why}");
                    }
                    continue;
                };
                if let Err(e) = self.rehook_uplink(&name, &net, &u).await {
                    let why = format!("uplink {u}: {e:#}");
                    if self.repairs.set_degraded(&name, Some(why.clone())) {
                        tracing::warn!("network {name} is degraded: {why}");
                    }
                    continue;
                }
            }
            if matches!(self.repairs.degraded.get(&name), Some(w) if w.contains("uplink")) {
                let now = self
                    .running
                    .get(&name)
                    .map(|r| r.record.uplinks.join(","))
                    .unwrap_or_default();
                self.repairs.set_degraded(&name, None);
                tracing::warn!("network {name}: uplink {now} is back; recovered");
                self.repairs.count(&name, "uplink");
            }
        }
    }

    async fn rehook_uplink(&mut self, name: &str, net: &config::Network, u: &str) -> Result<()> {
        self.use_uplink(name, u).await?;
        if let Some(r) = self.running.get_mut(name) {
            r.record.uplinks = vec![u.to_string()];
        }
        if net.uplink.is_some()
            && let Some(cfg) = self.datapath_config(net).await?
            && let Some(r) = self.running.get(name)
        {
            // The network's entry names its configured uplink's ifindex.
            dataplane::maps::update_network(&self.dp.maps_dir(), r.record.bridge_ifindex, &cfg)?;
        }
        self.sync_forwards(name).await?;
        self.save_running();
        Ok(())
    }
}
