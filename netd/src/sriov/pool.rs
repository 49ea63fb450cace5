//! A pool's assignments: which VF each owner holds, persisted in
//! `<state-dir>/vf/NAME.json` (written atomically, mode 0600), and the
//! choice of a VF for a new owner. No I/O but the file: the daemon finds the
//! VFs (sysfs) and programs them (netlink) around these decisions.

use super::sysfs::Vf;
use super::types::{Mac, OwnerId, Vlan};
use crate::config::PciAddr;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One held VF.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub owner: OwnerId,
    pub mac: Mac,
    pub vlan: Option<Vlan>,
    /// The VF's number on its PF when it was handed out (to clear it).
    pub index: u32,
    pub pf: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Held VFs, by PCI address.
    pub held: BTreeMap<PciAddr, Assignment>,
    /// The VF each owner had last, so it gets the same one back whenever
    /// it is free: a guest sees the same hardware on every start.
    pub last: BTreeMap<OwnerId, PciAddr>,
}

/// What an owner asks for.
#[derive(Clone, Debug)]
pub struct Request {
    pub owner: OwnerId,
    pub mac: Option<Mac>,
    pub vlan: Option<Vlan>,
}

/// The outcome of [`Pool::decide`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The owner holds this VF already, as asked: nothing to do.
    Holds(PciAddr),
    /// Hand out this VF with this MAC and VLAN.
    Take {
        vf: PciAddr,
        mac: Mac,
        vlan: Option<Vlan>,
    },
}

pub fn path(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join("vf").join(format!("{network}.json"))
}

impl Pool {
    /// The stored pool; an absent file is an empty pool. A file that does
    /// not parse is an error, never silently an empty pool: that would hand
    /// out VFs guests hold.
    pub fn load(p: &Path) -> Result<Pool> {
        match std::fs::read(p) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is corrupt; fix or remove it", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Pool::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes the pool to a temporary file (0600, synced) and renames it
    /// over the old one, so a crash leaves the old or the new pool, whole.
    pub fn save(&self, p: &Path) -> Result<()> {
        let dir = p.parent().context("pool file has no folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = p.with_extension("json.tmp~");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, p)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().with_context(|| format!("writing {}", p.display()))
    }

    pub fn held_by(&self, owner: &OwnerId) -> Option<(PciAddr, &Assignment)> {
        self.held
            .iter()
            .find(|(_, a)| &a.owner == owner)
            .map(|(p, a)| (*p, a))
    }

    /// Decides what an acquire does, or why it cannot. `vfs` are the
    /// pool's VFs as discovered now; `derived` is the MAC to use when the
    /// request names none, `default_vlan` the network's.
    pub fn decide(
        &self,
        network: &str,
        vfs: &[Vf],
        req: &Request,
        derived: Mac,
        default_vlan: Option<Vlan>,
    ) -> Result<Decision> {
        if let Some((pci, a)) = self.held_by(&req.owner) {
            // The same request again returns the VF (retries are safe); a
            // different one is refused rather than silently ignored.
            if let Some(m) = req.mac
                && m != a.mac
            {
                bail!(
                    "owner {} already holds VF {pci} with MAC {}; release it first to ask for MAC {m}",
                    req.owner,
                    a.mac
                );
            }
            if req.vlan.is_some() && req.vlan != a.vlan {
                bail!(
                    "owner {} already holds VF {pci} with VLAN {}; release it first to ask for VLAN {}",
                    req.owner,
                    a.vlan
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "none".into()),
                    req.vlan.map(|v| v.to_string()).unwrap_or_default()
                );
            }
            return Ok(Decision::Holds(pci));
        }
        let mac = req.mac.unwrap_or(derived);
        if let Some((pci, a)) = self.held.iter().find(|(_, a)| a.mac == mac) {
            let hint = if req.mac.is_none() {
                " (the MAC derived from this owner ID; pass --mac)"
            } else {
                ""
            };
            bail!(
                "MAC {mac}{hint} is already used in pool {network} by VF {pci} (owner {})",
                a.owner
            );
        }
        let usable =
            |v: &&Vf| v.missing.is_none() && v.index.is_some() && !self.held.contains_key(&v.pci);
        let free: Vec<&Vf> = vfs.iter().filter(usable).collect();
        let remembered = self.last.get(&req.owner);
        // Its own VF if free; else one no other owner remembers; else any.
        let claimed = |v: &&&Vf| {
            self.last
                .iter()
                .any(|(o, p)| *p == v.pci && o != &req.owner)
        };
        let pick = free
            .iter()
            .find(|v| Some(&v.pci) == remembered)
            .or_else(|| free.iter().find(|v| !claimed(v)))
            .or_else(|| free.first());
        let Some(vf) = pick else {
            let missing = vfs
                .iter()
                .filter(|v| v.missing.is_some() && !self.held.contains_key(&v.pci))
                .count();
            let extra = if missing > 0 {
                format!(" ({missing} more are missing)")
            } else {
                String::new()
            };
            bail!(
                "pool {network} is exhausted: all {} VFs are held{extra}",
                self.held.len()
            );
        };
        Ok(Decision::Take {
            vf: vf.pci,
            mac,
            vlan: req.vlan.or(default_vlan),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::sysfs::{Sysfs, fake::Tree};
    use super::super::types::derived_mac;
    use super::*;

    fn req(owner: &str) -> Request {
        Request {
            owner: owner.parse().unwrap(),
            mac: None,
            vlan: None,
        }
    }

    fn vfs(t: &Tree, n: u32) -> Vec<Vf> {
        t.pf("eth3", "0000:02:00.0", n, n, n);
        let s = Sysfs::new(&t.root);
        s.pf_vfs(&s.pf("eth3").unwrap())
    }

    /// What the daemon does after a Take, without the netlink part.
    fn take(p: &mut Pool, vfs: &[Vf], r: &Request) -> Result<PciAddr> {
        match p.decide("pool", vfs, r, derived_mac("pool", &r.owner), None)? {
            Decision::Holds(pci) => Ok(pci),
            Decision::Take { vf, mac, vlan } => {
                p.held.insert(
                    vf,
                    Assignment {
                        owner: r.owner.clone(),
                        mac,
                        vlan,
                        index: 0,
                        pf: "eth3".into(),
                    },
                );
                p.last.insert(r.owner.clone(), vf);
                Ok(vf)
            }
        }
    }

    fn release(p: &mut Pool, owner: &str) {
        let o: OwnerId = owner.parse().unwrap();
        let (pci, _) = p.held_by(&o).unwrap();
        p.held.remove(&pci);
    }

    #[test]
    fn acquire_release_and_sticky_reacquire() {
        let t = Tree::new("sticky");
        let v = vfs(&t, 3);
        let mut p = Pool::default();
        let a = take(&mut p, &v, &req("a")).unwrap();
        let b = take(&mut p, &v, &req("b")).unwrap();
        assert_ne!(a, b);
        // The same request again: the same VF.
        assert_eq!(take(&mut p, &v, &req("a")).unwrap(), a);
        release(&mut p, "a");
        release(&mut p, "b");
        // c comes first and takes a VF nobody remembers, so a and b get theirs back.
        let c = take(&mut p, &v, &req("c")).unwrap();
        assert!(c != a && c != b);
        assert_eq!(take(&mut p, &v, &req("b")).unwrap(), b);
        assert_eq!(take(&mut p, &v, &req("a")).unwrap(), a);
    }

    #[test]
    fn exhaustion_and_missing_vfs() {
        let t = Tree::new("exhaust");
        let mut v = vfs(&t, 2);
        v[1].missing = Some("no driver".into());
        let mut p = Pool::default();
        take(&mut p, &v, &req("a")).unwrap();
        let e = take(&mut p, &v, &req("b")).unwrap_err().to_string();
        assert_eq!(
            e,
            "pool pool is exhausted: all 1 VFs are held (1 more are missing)"
        );
    }

    #[test]
    fn different_mac_or_vlan_for_a_held_vf_is_refused() {
        let t = Tree::new("diff");
        let v = vfs(&t, 2);
        let mut p = Pool::default();
        let mut r = req("a");
        r.mac = Some("52:54:00:00:00:01".parse().unwrap());
        r.vlan = Some("10".parse().unwrap());
        let a = take(&mut p, &v, &r).unwrap();
        assert_eq!(take(&mut p, &v, &r).unwrap(), a, "same request again");
        assert_eq!(
            take(&mut p, &v, &req("a")).unwrap(),
            a,
            "no mac/vlan: what it holds"
        );
        let mut r2 = r.clone();
        r2.mac = Some("52:54:00:00:00:02".parse().unwrap());
        let e = take(&mut p, &v, &r2).unwrap_err().to_string();
        assert!(
            e.contains("already holds VF") && e.contains("MAC 52:54:00:00:00:02"),
            "{e}"
        );
        let mut r3 = r.clone();
        r3.vlan = Some("11".parse().unwrap());
        let e = take(&mut p, &v, &r3).unwrap_err().to_string();
        assert!(e.contains("VLAN 10") && e.contains("VLAN 11"), "{e}");
        // A MAC another owner has.
        let mut rb = req("b");
        rb.mac = r.mac;
        let e = take(&mut p, &v, &rb).unwrap_err().to_string();
        assert!(
            e.starts_with("MAC 52:54:00:00:00:01 is already used in pool pool by VF"),
            "{e}"
        );
        assert_eq!(p.held.len(), 1, "refusals change nothing");
    }

    #[test]
    fn default_vlan_applies_when_none_is_asked() {
        let t = Tree::new("vlan");
        let v = vfs(&t, 1);
        let p = Pool::default();
        let r = req("a");
        let d = p
            .decide(
                "pool",
                &v,
                &r,
                derived_mac("pool", &r.owner),
                Some("7".parse().unwrap()),
            )
            .unwrap();
        let Decision::Take { vlan, mac, .. } = d else {
            panic!()
        };
        assert_eq!(vlan.map(Vlan::get), Some(7));
        assert_eq!(mac, derived_mac("pool", &r.owner));
    }

    #[test]
    fn persists_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let t = Tree::new("persist");
        let v = vfs(&t, 2);
        let mut p = Pool::default();
        take(&mut p, &v, &req("a")).unwrap();
        let file = path(&t.root, "pool");
        assert_eq!(Pool::load(&file).unwrap(), Pool::default(), "absent: empty");
        p.save(&file).unwrap();
        assert_eq!(Pool::load(&file).unwrap(), p);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!file.with_extension("json.tmp~").exists());
        std::fs::write(&file, "{\"held\": 3}").unwrap();
        let e = format!("{:#}", Pool::load(&file).unwrap_err());
        assert!(e.contains("is corrupt"), "{e}");
    }
}
