//! Hostdev networks: SR-IOV VF pools. Such a network has no bridge,
//! dnsmasq or BPF program; starting it checks the PF and the pool (and
//! enables VFs when the definition asks), and `vf acquire` / `vf release`
//! hand VFs to owners. Every change runs under the daemon's state lock, so
//! two acquires never see the same free VF.

use super::State;
use crate::api::wire::{VfPoolSummary, VfRecord};
use crate::config::{Mode, Network, PciAddr};
use crate::link::VfConfig;
use crate::sriov::{Assignment, Decision, OwnerId, Pool, Request, Vf, Vlan, derived_mac};
use anyhow::{Context, Result, anyhow, bail};
use std::path::PathBuf;

impl State {
    fn pool_path(&self, name: &str) -> PathBuf {
        crate::sriov::pool::path(&self.paths.state_dir, name)
    }

    fn hostdev_definition(&self, name: &str) -> Result<Network> {
        let net = self
            .definition(name)
            .ok_or_else(|| anyhow!("network {name:?} is not defined"))?;
        if net.mode != Mode::Hostdev {
            bail!(
                "network {name:?} is {} {} network, not a hostdev VF pool",
                if net.mode == Mode::Isolated {
                    "an"
                } else {
                    "a"
                },
                net.mode.as_str()
            );
        }
        Ok(net.clone())
    }

    /// Refuses a hostdev definition whose VFs another network's pool has.
    pub(super) fn check_vf_pools_apart(&self, net: &Network) -> Result<()> {
        if net.mode != Mode::Hostdev {
            return Ok(());
        }
        let others = self
            .defs
            .values()
            .chain(self.running.values().map(|r| &r.record.definition))
            .filter(|o| o.name != net.name && o.mode == Mode::Hostdev);
        for o in others {
            if net.pf.is_some() && net.pf == o.pf {
                bail!(
                    "PF {} is already the pool of network {:?}",
                    net.pf.as_deref().unwrap_or(""),
                    o.name
                );
            }
            if let Some(a) = net.vfs_pci.iter().find(|a| o.vfs_pci.contains(a)) {
                bail!("VF {a} is already in the pool of network {:?}", o.name);
            }
        }
        Ok(())
    }

    /// `net start` of a hostdev network: the PF exists, has SR-IOV and
    /// VFs (enabled here when `vfs = N` asks and none are), and at least
    /// one VF of the pool is usable. A start that fails after enabling VFs
    /// disables them again, so it changes nothing.
    pub(super) async fn start_hostdev(&self, net: &Network) -> Result<()> {
        let mut enabled_here = None;
        if let Some(pf) = &net.pf {
            let p = self.sriov.sysfs.pf(pf)?;
            if self.nl.link_by_name(pf).await?.is_none() {
                bail!("PF {pf} does not exist in netd's network namespace");
            }
            match net.vfs {
                Some(n) => {
                    if self.sriov.sysfs.enable_vfs(&p, n)? {
                        tracing::info!("network {}: enabled {n} VFs on {pf}", net.name);
                        enabled_here = Some(p);
                    } else if p.numvfs != n {
                        tracing::warn!(
                            "network {}: {pf} has {} VFs enabled already; vfs = {n} left alone",
                            net.name,
                            p.numvfs
                        );
                    }
                }
                None if p.numvfs == 0 => bail!(
                    "PF {pf} has no VFs enabled (sriov_numvfs is 0); add vfs = N to the definition to enable N of its {}",
                    p.totalvfs
                ),
                None => {}
            }
        }
        let mut d = self.sriov.discover(net);
        if enabled_here.is_some() {
            // The kernel makes the VFs at once, but their drivers bind and
            // register netdevs a little later: give them up to 5 s.
            for _ in 0..50 {
                if d.vfs.iter().any(|v| v.missing.is_none()) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                d = self.sriov.discover(net);
            }
        }
        if !d.vfs.iter().any(|v| v.missing.is_none()) {
            if let Some(p) = &enabled_here {
                // Put sriov_numvfs back as it was.
                let _ = self.sriov.sysfs.disable_vfs(p);
            }
            let why: Vec<String> = d
                .vfs
                .iter()
                .map(|v| format!("{}: {}", v.pci, v.missing.as_deref().unwrap_or("?")))
                .collect();
            bail!(
                "pool {} has no usable VF{}",
                net.name,
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", why.join(", "))
                }
            );
        }
        Ok(())
    }

    /// How many VFs a pool has handed out.
    pub(super) fn held_vfs(&self, name: &str) -> Result<usize> {
        Ok(Pool::load(&self.pool_path(name))?.held.len())
    }

    /// `vf list`: every VF of the pool, and held ones sysfs no longer shows.
    pub fn vf_list(&self, name: &str) -> Result<Vec<VfRecord>> {
        let net = self.hostdev_definition(name)?;
        let pool = Pool::load(&self.pool_path(name))?;
        let d = self.sriov.discover(&net);
        let mut out: Vec<VfRecord> = d
            .vfs
            .iter()
            .map(|v| record(name, v.pci, Some(v), pool.held.get(&v.pci)))
            .collect();
        for (pci, a) in &pool.held {
            if !d.vfs.iter().any(|v| v.pci == *pci) {
                let mut r = record(name, *pci, None, Some(a));
                r.problem = Some(match &d.pf_problem {
                    Some(p) => p.to_string(),
                    None => "no longer among the PF's VFs".into(),
                });
                out.push(r);
            }
        }
        Ok(out)
    }

    pub fn vf_pool_summary(&self, net: &Network) -> VfPoolSummary {
        let held = Pool::load(&self.pool_path(&net.name))
            .map(|p| p.held)
            .unwrap_or_default();
        let d = self.sriov.discover(net);
        let mut s = VfPoolSummary {
            pf: net.pf.clone(),
            problem: d.pf_problem.as_ref().map(|p| p.to_string()),
            ..Default::default()
        };
        for v in &d.vfs {
            s.total += 1;
            if held.contains_key(&v.pci) {
                s.held += 1;
            } else if v.missing.is_some() {
                s.missing += 1;
            } else {
                s.free += 1;
            }
        }
        // Held VFs sysfs lost (their PF disappeared) still count.
        let lost = held
            .keys()
            .filter(|p| !d.vfs.iter().any(|v| v.pci == **p))
            .count() as u32;
        s.total += lost;
        s.held += lost;
        s
    }

    /// `vf acquire`: the owner's VF (the same one again for a repeated
    /// request), or a free one programmed with the MAC and VLAN, recorded
    /// before the answer goes out.
    pub async fn vf_acquire(&mut self, name: &str, req: Request) -> Result<VfRecord> {
        let net = self.hostdev_definition(name)?;
        if !self.running.contains_key(name) {
            bail!("network {name:?} is not running; start it first");
        }
        let path = self.pool_path(name);
        let mut pool = Pool::load(&path)?;
        let d = self.sriov.discover(&net);
        if let Some(p) = &d.pf_problem
            && pool.held_by(&req.owner).is_none()
        {
            bail!("pool {name}: {p}");
        }
        let default_vlan = net
            .vlan
            .map(|v| Vlan::try_from(i64::from(v)))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let derived = derived_mac(name, &req.owner);
        let (pci, mac, vlan) = match pool.decide(name, &d.vfs, &req, derived, default_vlan)? {
            Decision::Holds(pci) => {
                let v = d.vfs.iter().find(|v| v.pci == pci);
                return Ok(record(name, pci, v, pool.held.get(&pci)));
            }
            Decision::Take { vf, mac, vlan } => (vf, mac, vlan),
        };
        let v = d
            .vfs
            .iter()
            .find(|v| v.pci == pci)
            .context("the chosen VF vanished")?;
        let (Some(pf), Some(index)) = (v.pf.clone(), v.index) else {
            bail!("VF {pci} has no PF");
        };
        let pf_index = self
            .nl
            .link_by_name(&pf)
            .await?
            .ok_or_else(|| anyhow!("PF {pf} does not exist"))?
            .index;
        let cfg = VfConfig {
            pf_index,
            vf: index,
            mac: mac.0,
            vlan: vlan.map(Vlan::get).unwrap_or(0),
        };
        self.sriov.program(&self.nl, &cfg).await?;
        pool.held.insert(
            pci,
            Assignment {
                owner: req.owner.clone(),
                mac,
                vlan,
                index,
                pf,
            },
        );
        pool.last.insert(req.owner.clone(), pci);
        if let Err(e) = pool.save(&path) {
            // Not recorded, so not handed out: take the settings back.
            let _ = self
                .sriov
                .program(&self.nl, &VfConfig::cleared(pf_index, index))
                .await;
            return Err(e);
        }
        tracing::info!("network {name}: VF {pci} to {} (MAC {mac})", req.owner);
        Ok(record(name, pci, Some(v), pool.held.get(&pci)))
    }

    /// `vf release`: clears the VF's MAC and VLAN and returns it. A VF whose
    /// PF disappeared is released without clearing (nothing to clear).
    pub async fn vf_release(&mut self, name: &str, owner: &OwnerId) -> Result<VfRecord> {
        self.hostdev_definition(name)?;
        let path = self.pool_path(name);
        let mut pool = Pool::load(&path)?;
        let Some((pci, a)) = pool.held_by(owner) else {
            bail!("owner {owner} holds no VF in pool {name}");
        };
        let a = a.clone();
        self.clear_vf(name, pci, &a).await?;
        pool.held.remove(&pci);
        pool.save(&path)?;
        tracing::info!("network {name}: VF {pci} released by {owner}");
        let net = self.hostdev_definition(name)?;
        let d = self.sriov.discover(&net);
        Ok(record(name, pci, d.vfs.iter().find(|v| v.pci == pci), None))
    }

    async fn clear_vf(&self, name: &str, pci: PciAddr, a: &Assignment) -> Result<()> {
        match self.nl.link_by_name(&a.pf).await? {
            Some(l) => self
                .sriov
                .program(&self.nl, &VfConfig::cleared(l.index, a.index))
                .await
                .with_context(|| format!("clearing VF {pci}")),
            None => {
                tracing::warn!(
                    "network {name}: PF {} is gone; releasing VF {pci} without clearing it",
                    a.pf
                );
                Ok(())
            }
        }
    }

    /// `net stop --force`: releases every VF of the pool; returns how many.
    pub(super) async fn release_all_vfs(&mut self, name: &str) -> Result<u32> {
        let path = self.pool_path(name);
        let mut pool = Pool::load(&path)?;
        let n = pool.held.len() as u32;
        for (pci, a) in std::mem::take(&mut pool.held) {
            if let Err(e) = self.clear_vf(name, pci, &a).await {
                // The network goes down regardless; say what was left set.
                tracing::warn!("network {name}: {e:#}");
            }
        }
        pool.save(&path)?;
        Ok(n)
    }

    /// Forgets a pool's file when its network is undefined and holds nothing.
    pub(super) fn forget_pool(&self, name: &str) {
        let p = self.pool_path(name);
        if Pool::load(&p).is_ok_and(|pool| pool.held.is_empty()) {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl State {
    /// `status` checks of running pools: FAIL when the PF cannot serve,
    /// WARN when VFs are missing or none is free.
    pub(super) fn vf_pool_checks(&self) -> Vec<crate::api::wire::Check> {
        use super::doctor::{FAIL, OK, WARN, check};
        let mut out = Vec::new();
        for run in self.running.values() {
            let net = &run.record.definition;
            if net.mode != Mode::Hostdev {
                continue;
            }
            let p = self.vf_pool_summary(net);
            let name = &net.name;
            out.push(match &p.problem {
                Some(why) => check(
                    FAIL,
                    "vf-pool",
                    format!("{name}: {why}; held VFs can only be released."),
                ),
                None if p.missing > 0 => check(
                    WARN,
                    "vf-pool",
                    format!(
                        "{name}: {} of {} VFs are missing (device, netdev or driver gone); `netd vf list {name}` says which.",
                        p.missing, p.total
                    ),
                ),
                None if p.free == 0 => check(
                    WARN,
                    "vf-pool",
                    format!("{name}: all {} VFs are held; the next acquire will fail.", p.total),
                ),
                None => check(
                    OK,
                    "vf-pool",
                    format!("{name}: {} of {} VFs free.", p.free, p.total),
                ),
            });
        }
        out
    }
}

fn record(network: &str, pci: PciAddr, v: Option<&Vf>, a: Option<&Assignment>) -> VfRecord {
    let missing = v.map_or(Some("not found in sysfs".to_string()), |v| {
        v.missing.clone()
    });
    VfRecord {
        network: network.to_string(),
        pci: pci.to_string(),
        address_xml: pci.libvirt_xml(),
        pf: v
            .and_then(|v| v.pf.clone())
            .or_else(|| a.map(|a| a.pf.clone())),
        vf: v.and_then(|v| v.index).or_else(|| a.map(|a| a.index)),
        netdev: v.and_then(|v| v.netdev.clone()),
        driver: v.and_then(|v| v.driver.clone()),
        state: match (a, &missing) {
            (Some(_), _) => "held",
            (None, Some(_)) => "missing",
            (None, None) => "free",
        }
        .into(),
        problem: missing,
        owner: a.map(|a| a.owner.to_string()),
        mac: a.map(|a| a.mac.to_string()),
        vlan: a.and_then(|a| a.vlan).map(Vlan::get),
    }
}
