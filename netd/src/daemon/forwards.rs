//! Port forwards: part of a network's definition, applied live. A forward
//! names host ports and a guest; the datapath wants one map entry per
//! (proto, host address, host port), so a forward without an address is
//! expanded over the addresses of the network's uplinks, and re-expanded
//! when those change.

use super::State;
use crate::config::{self, Forward, Mode, Network, PortRange};
use crate::dataplane::maps::{self, ForwardEntry};
use anyhow::{Result, anyhow, bail};
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

fn same_forward(
    f: &Forward,
    proto: config::Proto,
    port: PortRange,
    address: Option<Ipv4Addr>,
) -> bool {
    f.proto == proto && f.port.start == port.start && f.address == address
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

    /// Adds forwards to a network, all or none: each is validated and
    /// checked against every forward of every network (and the others of
    /// the batch); a running network's map entries are written first (only
    /// the new keys, so other flows never notice; a failure restores every
    /// key it touched), and the definition is stored only once they took.
    pub async fn add_forwards(&mut self, name: &str, new: Vec<Forward>) -> Result<()> {
        let mut net = self
            .definition(name)
            .ok_or_else(|| anyhow!("network {name:?} is not defined"))?
            .clone();
        let mut taken = PortIndex::default();
        let everyone = self
            .defs
            .values()
            .chain(self.running.values().map(|r| &r.record.definition));
        for other in everyone {
            for f in &other.forwards {
                taken.insert(f, &other.name);
            }
        }
        for f in &new {
            config::validate_forward(&net, f)?;
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
        let mut added = net.clone();
        added.forwards = new.clone();
        net.forwards.extend(new);
        let mut written = Vec::new();
        if let Some(run) = self.running.get(name) {
            let (idx, uplinks) = (run.record.bridge_ifindex, run.record.uplinks.clone());
            written = self.forward_entries(&added, idx, &uplinks).await;
            maps::add_forwards(&self.dp.maps_dir(), &written)?;
        }
        if let Err(e) = self.store_definition(net) {
            // Not stored: take back what the kernel got.
            let _ = maps::remove_forwards(&self.dp.maps_dir(), &written);
            return Err(e);
        }
        Ok(())
    }

    pub async fn remove_forward(
        &mut self,
        name: &str,
        proto: config::Proto,
        port: PortRange,
        address: Option<Ipv4Addr>,
    ) -> Result<()> {
        let mut net = self
            .definition(name)
            .ok_or_else(|| anyhow!("network {name:?} is not defined"))?
            .clone();
        let (gone, kept): (Vec<Forward>, Vec<Forward>) = net
            .forwards
            .drain(..)
            .partition(|f| same_forward(f, proto, port, address));
        if gone.is_empty() {
            bail!(
                "network {name:?} has no {} forward on port {port}",
                proto.as_str()
            );
        }
        net.forwards = kept;
        let mut removed = net.clone();
        removed.forwards = gone;
        let mut entries = Vec::new();
        if let Some(run) = self.running.get(name) {
            let (idx, uplinks) = (run.record.bridge_ifindex, run.record.uplinks.clone());
            entries = self.forward_entries(&removed, idx, &uplinks).await;
            maps::remove_forwards(&self.dp.maps_dir(), &entries)?;
        }
        if let Err(e) = self.store_definition(net) {
            // Not stored: the forward stays, so put its entries back.
            let _ = maps::add_forwards(&self.dp.maps_dir(), &entries);
            return Err(e);
        }
        Ok(())
    }

    /// Stores a changed definition, persistent or running.
    fn store_definition(&mut self, net: Network) -> Result<()> {
        let name = net.name.clone();
        if self.defs.contains_key(&name) {
            self.store.save_definition(&net)?;
            self.defs.insert(name.clone(), net.clone());
        }
        if let Some(run) = self.running.get_mut(&name) {
            run.record.definition = net;
            self.save_running();
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
