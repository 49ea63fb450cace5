//! SR-IOV discovery from sysfs, under a root the daemon is given
//! (`--sysfs-root`, /sys by default) so tests can use a fake tree:
//!
//! ```text
//! class/net/PF/device            -> the PF's PCI device folder, holding
//!     sriov_totalvfs, sriov_numvfs  how many VFs it can have / has enabled
//!     virtfnN                    -> the Nth VF's PCI device folder (name = its address)
//! <VF folder>/net/NAME           the VF's netdev, while a host driver owns it
//! <VF folder>/driver             -> the bound driver (ixgbevf, vfio-pci …)
//! <VF folder>/physfn             -> its PF's PCI device folder
//! bus/pci/devices/ADDR           -> any PCI device folder, by address
//! ```
//!
//! Reading never fails as a whole: a PF or VF that is not there is reported
//! as such, because `vf list` must still show what is held when a PF
//! disappeared.

use crate::config::PciAddr;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

/// A PF as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pf {
    pub name: String,
    pub numvfs: u32,
    pub totalvfs: u32,
}

/// One VF as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vf {
    pub pci: PciAddr,
    /// Its PF's netdev name, when known.
    pub pf: Option<String>,
    /// N of the PF's `virtfnN`: what the PF's netlink calls the VF.
    pub index: Option<u32>,
    pub netdev: Option<String>,
    pub driver: Option<String>,
    /// Why it cannot be handed out, when it cannot (device gone, PF gone,
    /// no netdev or no driver).
    pub missing: Option<String>,
}

/// Why a PF cannot serve a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PfError {
    NotFound(String),
    NoSriov(String),
}

impl std::fmt::Display for PfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PfError::NotFound(pf) => write!(f, "PF {pf} does not exist"),
            PfError::NoSriov(pf) => {
                write!(f, "PF {pf} has no SR-IOV capability (no sriov_totalvfs)")
            }
        }
    }
}

impl std::error::Error for PfError {}

fn read_u32(p: &Path) -> Result<u32> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    s.trim()
        .parse()
        .with_context(|| format!("{} holds {:?}, not a number", p.display(), s.trim()))
}

/// The last component of a symlink's target (`../0000:02:10.1` -> `0000:02:10.1`).
fn link_name(p: &Path) -> Option<String> {
    let t = std::fs::read_link(p).ok()?;
    Some(t.file_name()?.to_string_lossy().into_owned())
}

/// The first entry of `<dev>/net/`: the device's netdev.
fn netdev_of(dev: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dev.join("net"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pf_device(&self, pf: &str) -> PathBuf {
        self.root.join("class/net").join(pf).join("device")
    }

    /// The PF's SR-IOV counts, or why it has none.
    pub fn pf(&self, pf: &str) -> std::result::Result<Pf, PfError> {
        // A name with '/' would walk out of class/net.
        if pf.is_empty() || pf.contains('/') || pf == "." || pf == ".." {
            return Err(PfError::NotFound(pf.into()));
        }
        if !self.root.join("class/net").join(pf).exists() {
            return Err(PfError::NotFound(pf.into()));
        }
        let dev = self.pf_device(pf);
        let total = read_u32(&dev.join("sriov_totalvfs"));
        let num = read_u32(&dev.join("sriov_numvfs"));
        match (total, num) {
            (Ok(totalvfs), Ok(numvfs)) => Ok(Pf {
                name: pf.into(),
                numvfs,
                totalvfs,
            }),
            _ => Err(PfError::NoSriov(pf.into())),
        }
    }

    /// The enabled VFs of a PF: the first `sriov_numvfs` `virtfnN` links.
    pub fn pf_vfs(&self, pf: &Pf) -> Vec<Vf> {
        let dev = self.pf_device(&pf.name);
        let mut out = Vec::new();
        for i in 0..pf.numvfs {
            let link = dev.join(format!("virtfn{i}"));
            let Some(pci) = link_name(&link).and_then(|n| n.parse::<PciAddr>().ok()) else {
                // numvfs says it is enabled, but the kernel has not made
                // (or a fake tree lacks) its link: nothing to hand out.
                continue;
            };
            out.push(self.describe(pci, &link, Some(pf.name.clone()), Some(i)));
        }
        out
    }

    fn describe(&self, pci: PciAddr, dir: &Path, pf: Option<String>, index: Option<u32>) -> Vf {
        let netdev = netdev_of(dir);
        let driver = link_name(&dir.join("driver"));
        let missing = if !dir.exists() {
            Some("device is gone".to_string())
        } else if netdev.is_none() {
            // Bound to vfio-pci or unbound: something outside netd has it.
            Some("no netdev".to_string())
        } else if driver.is_none() {
            Some("no driver".to_string())
        } else {
            None
        };
        Vf {
            pci,
            pf,
            index,
            netdev,
            driver,
            missing,
        }
    }

    /// A VF named by its PCI address: its PF and index come from `physfn`.
    pub fn vf_by_addr(&self, pci: PciAddr) -> Vf {
        let dir = self.root.join("bus/pci/devices").join(pci.to_string());
        let gone = |why: &str| Vf {
            pci,
            pf: None,
            index: None,
            netdev: None,
            driver: None,
            missing: Some(why.to_string()),
        };
        if !dir.exists() {
            return gone("not in sysfs");
        }
        let physfn = dir.join("physfn");
        if !physfn.exists() {
            return gone("not a VF (no physfn)");
        }
        let pf = netdev_of(&physfn);
        let index = std::fs::read_dir(&physfn).ok().and_then(|rd| {
            rd.flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n: u32 = name.strip_prefix("virtfn")?.parse().ok()?;
                (link_name(&e.path())? == pci.to_string()).then_some(n)
            })
        });
        let mut vf = self.describe(pci, &dir, pf.clone(), index);
        if vf.missing.is_none() {
            if pf.is_none() {
                vf.missing = Some("its PF has no netdev".into());
            } else if index.is_none() {
                vf.missing = Some("its PF does not list it".into());
            }
        }
        vf
    }

    /// Enables `want` VFs on a PF whose `sriov_numvfs` is 0. Never writes
    /// when VFs are already enabled (the kernel refuses to change a nonzero
    /// count, and another user may rely on them), nor beyond
    /// `sriov_totalvfs`. Returns whether it wrote.
    pub fn enable_vfs(&self, pf: &Pf, want: u32) -> Result<bool> {
        if want > pf.totalvfs {
            bail!(
                "vfs = {want} is more than PF {}'s sriov_totalvfs ({})",
                pf.name,
                pf.totalvfs
            );
        }
        if pf.numvfs != 0 {
            return Ok(false);
        }
        let p = self.pf_device(&pf.name).join("sriov_numvfs");
        std::fs::write(&p, format!("{want}\n")).with_context(|| {
            format!(
                "enabling {want} VFs on {}: writing {}",
                pf.name,
                p.display()
            )
        })?;
        Ok(true)
    }
}

impl Sysfs {
    /// Undoes [`Sysfs::enable_vfs`] (a start that failed after it).
    pub fn disable_vfs(&self, pf: &Pf) -> Result<()> {
        let p = self.pf_device(&pf.name).join("sriov_numvfs");
        std::fs::write(&p, "0\n").with_context(|| format!("writing {}", p.display()))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake sysfs tree with the real layout (links and all).
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    pub struct Tree {
        pub root: PathBuf,
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    impl Tree {
        pub fn new(tag: &str) -> Tree {
            let root = std::env::temp_dir().join(format!(
                "netd-sysfs-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&root);
            for d in [
                "class/net",
                "bus/pci/devices",
                "bus/pci/drivers/ixgbevf",
                "devices/pci0000:00",
            ] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            Tree { root }
        }

        fn dev(&self, addr: &str) -> PathBuf {
            self.root.join("devices/pci0000:00").join(addr)
        }

        /// A PF `name` at `addr` with `total` VFs possible, `num` enabled and
        /// `links` virtfn links (the kernel makes them when enabling; a
        /// fake tree has them up front), VF i at 0000:02:10+i/2.(i%2)*2+1.
        pub fn pf(&self, name: &str, addr: &str, total: u32, num: u32, links: u32) -> Vec<String> {
            let d = self.dev(addr);
            std::fs::create_dir_all(d.join("net").join(name)).unwrap();
            std::fs::write(d.join("sriov_totalvfs"), format!("{total}\n")).unwrap();
            std::fs::write(d.join("sriov_numvfs"), format!("{num}\n")).unwrap();
            symlink(
                format!("../../devices/pci0000:00/{addr}/net/{name}"),
                self.root.join("class/net").join(name),
            )
            .unwrap();
            // class/net/NAME is a link to .../ADDR/net/NAME; its `device` points back at ADDR.
            symlink(
                "../../../".to_string() + addr,
                d.join("net").join(name).join("device"),
            )
            .unwrap();
            symlink(
                format!("../../../devices/pci0000:00/{addr}"),
                self.root.join("bus/pci/devices").join(addr),
            )
            .unwrap();
            let mut vfs = Vec::new();
            for i in 0..links {
                let vf = format!("{}:{:02x}.{}", &addr[..7], 0x10 + i / 4, (i % 4) * 2 + 1);
                let vd = self.dev(&vf);
                std::fs::create_dir_all(vd.join("net").join(format!("{name}v{i}"))).unwrap();
                symlink("../../../bus/pci/drivers/ixgbevf", vd.join("driver")).unwrap();
                symlink(format!("../{addr}"), vd.join("physfn")).unwrap();
                symlink(format!("../{vf}"), d.join(format!("virtfn{i}"))).unwrap();
                symlink(
                    format!("../../../devices/pci0000:00/{vf}"),
                    self.root.join("bus/pci/devices").join(&vf),
                )
                .unwrap();
                vfs.push(vf);
            }
            vfs
        }

        pub fn path(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }

        pub fn vf_dir(&self, vf: &str) -> PathBuf {
            self.dev(vf)
        }

        pub fn read(&self, p: &Path) -> String {
            std::fs::read_to_string(p).unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Tree;
    use super::*;

    #[test]
    fn discovers_a_pf_and_its_vfs() {
        let t = Tree::new("disc");
        let vfs = t.pf("eth3", "0000:02:00.0", 8, 4, 4);
        let s = Sysfs::new(&t.root);
        let pf = s.pf("eth3").unwrap();
        assert_eq!((pf.numvfs, pf.totalvfs), (4, 8));
        let found = s.pf_vfs(&pf);
        assert_eq!(found.len(), 4);
        assert_eq!(found[0].pci.to_string(), vfs[0]);
        assert_eq!(found[0].pci.to_string(), "0000:02:10.1");
        assert_eq!(found[3].pci.to_string(), "0000:02:10.7");
        assert_eq!(found[2].index, Some(2));
        assert_eq!(found[2].netdev.as_deref(), Some("eth3v2"));
        assert_eq!(found[2].driver.as_deref(), Some("ixgbevf"));
        assert_eq!(found[2].pf.as_deref(), Some("eth3"));
        assert!(found.iter().all(|v| v.missing.is_none()));
        // By address: the same VF, with PF and index from physfn.
        let by = s.vf_by_addr(found[2].pci);
        assert_eq!(by, found[2]);
    }

    #[test]
    fn only_enabled_vfs_count() {
        let t = Tree::new("enabled");
        t.pf("eth3", "0000:02:00.0", 8, 2, 8);
        let s = Sysfs::new(&t.root);
        assert_eq!(s.pf_vfs(&s.pf("eth3").unwrap()).len(), 2);
    }

    #[test]
    fn missing_pf_and_no_sriov_are_told_apart() {
        let t = Tree::new("nopf");
        let s = Sysfs::new(&t.root);
        assert_eq!(s.pf("eth9").unwrap_err(), PfError::NotFound("eth9".into()));
        assert_eq!(s.pf("../x").unwrap_err(), PfError::NotFound("../x".into()));
        t.pf("eth4", "0000:03:00.0", 8, 0, 0);
        std::fs::remove_file(t.vf_dir("0000:03:00.0").join("sriov_totalvfs")).unwrap();
        let e = s.pf("eth4").unwrap_err();
        assert_eq!(e, PfError::NoSriov("eth4".into()));
        assert_eq!(
            e.to_string(),
            "PF eth4 has no SR-IOV capability (no sriov_totalvfs)"
        );
    }

    #[test]
    fn vfs_lose_netdev_driver_or_device() {
        let t = Tree::new("lose");
        let vfs = t.pf("eth3", "0000:02:00.0", 4, 4, 4);
        std::fs::remove_dir_all(t.vf_dir(&vfs[0]).join("net")).unwrap();
        std::fs::remove_file(t.vf_dir(&vfs[1]).join("driver")).unwrap();
        std::fs::remove_dir_all(t.vf_dir(&vfs[2])).unwrap();
        let s = Sysfs::new(&t.root);
        let found = s.pf_vfs(&s.pf("eth3").unwrap());
        let why: Vec<Option<&str>> = found.iter().map(|v| v.missing.as_deref()).collect();
        assert_eq!(
            why,
            [
                Some("no netdev"),
                Some("no driver"),
                Some("device is gone"),
                None
            ]
        );
        let gone = s.vf_by_addr("0000:09:00.1".parse().unwrap());
        assert_eq!(gone.missing.as_deref(), Some("not in sysfs"));
        let pf_itself = s.vf_by_addr("0000:02:00.0".parse().unwrap());
        assert_eq!(pf_itself.missing.as_deref(), Some("not a VF (no physfn)"));
    }

    #[test]
    fn enabling_vfs_writes_only_when_zero_and_within_total() {
        let t = Tree::new("enable");
        t.pf("eth3", "0000:02:00.0", 8, 0, 8);
        let s = Sysfs::new(&t.root);
        let numvfs = t.vf_dir("0000:02:00.0").join("sriov_numvfs");
        let pf = s.pf("eth3").unwrap();
        let e = s.enable_vfs(&pf, 9).unwrap_err().to_string();
        assert_eq!(e, "vfs = 9 is more than PF eth3's sriov_totalvfs (8)");
        assert_eq!(t.read(&numvfs), "0\n", "nothing written on refusal");
        assert!(s.enable_vfs(&pf, 4).unwrap());
        assert_eq!(t.read(&numvfs), "4\n");
        let pf = s.pf("eth3").unwrap();
        assert_eq!(s.pf_vfs(&pf).len(), 4);
        // Already enabled: left alone, even when asked for another count.
        assert!(!s.enable_vfs(&pf, 6).unwrap());
        assert_eq!(t.read(&numvfs), "4\n");
        let _ = t.path("class");
    }
}
