//! Port forwards: part of a network's definition, applied live. A forward
//! names host ports and a guest; the datapath wants one map entry per
//! (proto, host address, host port), so a forward without an address is
//! expanded over the addresses of the network's uplinks, and re-expanded
//! when those change.

use super::State;
use super::journal::{Edit, same_forward};
use super::live::Scope;
use crate::config::{self, Forward, Mode, Network, PortRange};
use crate::dataplane::maps::{self, ForwardEntry};
use anyhow::{Result, bail};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// A forward as the API lists it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ForwardInfo {
    pub network: String,
    pub proto: String,
    pub port: String,
    pub to: String,
    pub address: Option<Ipv4Addr>,
    /// Host addresses it is installed on right now (empty: network down).
    pub installed_on: Vec<Ipv4Addr>,
}

/// The host ports of a forward and, for each, the guest port.
fn port_pairs(f: &Forward) -> Vec<(u16, Ipv4Addr, u16)> {
    let host = f.port;
    let guest = f.to.ports.unwrap_or(host);
    (0..host.len())
        .map(|i| (host.start + i as u16, f.to.ip, guest.start + i as u16))
        .collect()
}

/// Every forwarded (proto, port), with who holds it on which address, so
/// checking a new forward costs its own ports, not every forward there is.
/// Who holds a forwarded port: (host address or any, network, target).
type Holder = (Option<Ipv4Addr>, String, config::Target);

#[derive(Default)]
struct PortIndex {
    by_port: std::collections::HashMap<(config::Proto, u16), Vec<Holder>>,
}

impl PortIndex {
    fn insert(&mut self, f: &Forward, network: &str) {
        let r = f.port;
        for p in r.start..=r.end {
            self.by_port.entry((f.proto, p)).or_default().push((
                f.address,
                network.to_string(),
                f.to,
            ));
        }
    }

    /// Two forwards clash when they share a protocol, an address (no address
    /// means every uplink address) and a port.
    fn clash(&self, f: &Forward) -> Option<(String, config::Target)> {
        let r = f.port;
        (r.start..=r.end).find_map(|p| {
            self.by_port
                .get(&(f.proto, p))?
                .iter()
                .find_map(|(addr, net, to)| {
                    let same_addr = match (addr, f.address) {
                        (Some(x), Some(y)) => *x == y,
                        _ => true,
                    };
                    same_addr.then(|| (net.clone(), *to))
                })
        })
    }
}

/// The datapath entries a network's forwards expand to over these uplink
/// addresses (a forward without an address is on every one of them).
pub(super) fn expand(
    net: &Network,
    bridge_ifindex: u32,
    uplink_addrs: &[Ipv4Addr],
) -> Vec<ForwardEntry> {
    let mut out = Vec::new();
    for f in &net.forwards {
        let pairs = port_pairs(f);
        let addrs = match f.address {
            Some(a) => vec![a],
            None => uplink_addrs.to_vec(),
        };
        for a in &addrs {
            for (hp, gip, gp) in &pairs {
                out.push(ForwardEntry {
                    proto: f.proto.number(),
                    host: (*a, *hp),
                    guest: (*gip, *gp),
                    bridge_ifindex,
                });
            }
        }
    }
    out
}

impl State {
    /// The datapath entries a network's forwards expand to right now.
    pub(super) async fn forward_entries(
        &self,
        net: &Network,
        bridge_ifindex: u32,
        uplinks: &[String],
    ) -> Vec<ForwardEntry> {
        let mut uplink_addrs = Vec::new();
        for u in uplinks {
            if let Some(i) = crate::link::ifindex_of(u)
                && let Ok(Some(a)) = self.nl.primary_ipv4(i).await
            {
                uplink_addrs.push(a);
            }
        }
        expand(net, bridge_ifindex, &uplink_addrs)
    }

    /// Makes the forwards map hold exactly this network's current entries.
    pub(super) async fn sync_forwards(&mut self, name: &str) -> Result<()> {
        let Some(run) = self.running.get(name) else {
            return Ok(());
        };
        let (net, idx, uplinks) = (
            run.record.definition.clone(),
            run.record.bridge_ifindex,
            run.record.uplinks.clone(),
        );
        let want: BTreeSet<ForwardEntry> =
            if matches!(net.mode, Mode::Nat | Mode::Route | Mode::Open) {
                self.forward_entries(&net, idx, &uplinks)
                    .await
                    .into_iter()
                    .collect()
            } else {
                BTreeSet::new()
            };
        let dir = self.dp.maps_dir();
        let have: BTreeSet<ForwardEntry> = maps::list_forwards(&dir)?
            .into_iter()
            .map(|(e, _)| e)
            .filter(|e| e.bridge_ifindex == idx)
            .collect();
        let stale: Vec<ForwardEntry> = have.difference(&want).copied().collect();
        let new: Vec<ForwardEntry> = want.difference(&have).copied().collect();
        maps::remove_forwards(&dir, &stale)?;
        maps::add_forwards(&dir, &new)?;
        Ok(())
    }

    /// Removes every forward entry of a bridge (a bridge that was replaced).
    pub(super) fn clear_forwards(&self, bridge_ifindex: u32) -> Result<()> {
        let dir = self.dp.maps_dir();
        let mine: Vec<ForwardEntry> = maps::list_forwards(&dir)?
            .into_iter()
            .map(|(e, _)| e)
            .filter(|e| e.bridge_ifindex == bridge_ifindex)
            .collect();
        maps::remove_forwards(&dir, &mine)
    }

    /// Adds forwards to a network, all or none: each is validated and
    /// checked against every forward of every network (and the others of
    /// the batch), only the new map keys are written, so other flows never
    /// notice, and each changed side gets one journal record.
    pub async fn add_forwards(
        &mut self,
        name: &str,
        new: Vec<Forward>,
        scope: Scope,
    ) -> Result<()> {
        let (persistent, live) = self.edit_sides(name, scope)?;
        // Only forwards that could clash go into the index: one edit then
        // costs a scan of the others, not an index of all of them.
        let ranges: Vec<PortRange> = new.iter().map(|f| f.port).collect();
        let lo = ranges.iter().map(|r| r.start).min().unwrap_or(0);
        let hi = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        let protos: std::collections::HashSet<config::Proto> =
            new.iter().map(|f| f.proto).collect();
        let near =
            |f: &Forward| protos.contains(&f.proto) && f.port.start <= hi && f.port.end >= lo;
        let mut taken = PortIndex::default();
        {
            let mine = self
                .defs
                .get(name)
                .filter(|_| persistent)
                .into_iter()
                .chain(
                    self.running
                        .get(name)
                        .filter(|_| live)
                        .map(|r| &r.record.definition),
                );
            let sides: Vec<&Network> = mine.collect();
            let others = self
                .defs
                .values()
                .chain(self.running.values().map(|r| &r.record.definition))
                .filter(|o| o.name != name);
            for other in others.chain(sides.iter().copied()) {
                for f in other.forwards.iter().filter(|f| near(f)) {
                    taken.insert(f, &other.name);
                }
            }
            for f in &new {
                for side in &sides {
                    config::validate_forward(side, f)?;
                }
                if let Some((owner, to)) = taken.clash(f) {
                    bail!(
                        "{} port {} on {} is already forwarded by network {owner:?} to {to}",
                        f.proto.as_str(),
                        f.port,
                        f.address
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "the uplink addresses".into()),
                    );
                }
                taken.insert(f, name);
            }
        }
        // Forwards and the masquerade share the ports of one address: none
        // may leave the masquerade short (checked before anything changes).
        self.check_masquerade_pool(name, &new, persistent, live)?;
        let mut entries = Vec::new();
        if live && let Some(run) = self.running.get(name) {
            // Only the new forwards' entries: clone the definition without
            // its (possibly many) forwards.
            let mut added = Network {
                forwards: Vec::new(),
                ..run.record.definition.clone()
            };
            added.forwards = new.clone();
            let (idx, uplinks) = (run.record.bridge_ifindex, run.record.uplinks.clone());
            entries = self.forward_entries(&added, idx, &uplinks).await;
            maps::add_forwards(&self.dp.maps_dir(), &entries)?;
        }
        let edit = Edit::AddForwards { forwards: new };
        if let Err(e) = self.record_edit(name, &edit, persistent, live) {
            let _ = maps::remove_forwards(&self.dp.maps_dir(), &entries);
            return Err(e);
        }
        Ok(())
    }

    /// Refuses forwards that would starve a network's masquerade pool
    /// (see `config::nat_pool`): each side the edit changes (persistent,
    /// live) with every other network, defined or running, as it is now.
    fn check_masquerade_pool(
        &self,
        name: &str,
        new: &[Forward],
        persistent: bool,
        live: bool,
    ) -> Result<()> {
        let mut names: BTreeSet<&String> = self.defs.keys().collect();
        names.extend(self.running.keys());
        let others: Vec<&Network> = names
            .into_iter()
            .filter(|n| *n != name)
            .filter_map(|n| self.definition(n))
            .collect();
        let sides = [
            self.defs.get(name).filter(|_| persistent),
            self.running
                .get(name)
                .filter(|_| live)
                .map(|r| &r.record.definition),
        ];
        for side in sides.into_iter().flatten() {
            // The network being changed first, so its own pool is named
            // when both would be short.
            let mut nets = vec![side];
            nets.extend(others.iter().copied());
            config::nat_pool::check_masquerade_pool(&nets, new)?;
        }
        Ok(())
    }

    pub async fn remove_forward(
        &mut self,
        name: &str,
        proto: config::Proto,
        port: PortRange,
        address: Option<Ipv4Addr>,
        scope: Scope,
    ) -> Result<()> {
        let (persistent, live) = self.edit_sides(name, scope)?;
        let found = self.sides(name, persistent, live).iter().any(|n| {
            n.forwards
                .iter()
                .any(|f| same_forward(f, proto, port, address))
        });
        if !found {
            bail!(
                "network {name:?} has no {} forward on port {port}",
                proto.as_str()
            );
        }
        let mut entries = Vec::new();
        if live && let Some(run) = self.running.get(name) {
            let mut removed = run.record.definition.clone();
            removed
                .forwards
                .retain(|f| same_forward(f, proto, port, address));
            let (idx, uplinks) = (run.record.bridge_ifindex, run.record.uplinks.clone());
            entries = self.forward_entries(&removed, idx, &uplinks).await;
            maps::remove_forwards(&self.dp.maps_dir(), &entries)?;
        }
        let edit = Edit::RemoveForward {
            proto,
            port,
            address,
        };
        if let Err(e) = self.record_edit(name, &edit, persistent, live) {
            let _ = maps::add_forwards(&self.dp.maps_dir(), &entries);
            return Err(e);
        }
        Ok(())
    }

    pub fn list_forwards(&self, name: Option<&str>) -> Result<Vec<ForwardInfo>> {
        if let Some(n) = name
            && self.definition(n).is_none()
        {
            bail!("network {n:?} is not defined");
        }
        let installed = maps::list_forwards(&self.dp.maps_dir()).unwrap_or_default();
        let mut names: BTreeSet<&String> = self.defs.keys().collect();
        names.extend(self.running.keys());
        let mut out = Vec::new();
        for n in names {
            if name.is_some_and(|x| x != n) {
                continue;
            }
            let Some(net) = self.definition(n) else {
                continue;
            };
            let idx = self.running.get(n).map(|r| r.record.bridge_ifindex);
            for f in &net.forwards {
                let first = port_pairs(f).first().copied();
                let on: BTreeSet<Ipv4Addr> = installed
                    .iter()
                    .filter(|(e, _)| Some(e.bridge_ifindex) == idx)
                    .filter(|(e, _)| {
                        e.proto == f.proto.number()
                            && first.is_some_and(|(hp, _, _)| e.host.1 == hp)
                    })
                    .map(|(e, _)| e.host.0)
                    .collect();
                out.push(ForwardInfo {
                    network: n.clone(),
                    proto: f.proto.as_str().into(),
                    port: f.port.to_string(),
                    to: f.to.to_string(),
                    address: f.address,
                    installed_on: on.into_iter().collect(),
                });
            }
        }
        Ok(out)
    }
}
