//! SR-IOV VF pools (`mode = "hostdev"`): discovery from sysfs, the
//! persisted assignments, and handing VF settings to the PF. The netlink
//! message itself is built in `link` (link/vf.rs), like every other one.

pub mod pool;
pub mod sysfs;
pub mod types;

pub use pool::{Assignment, Decision, Pool, Request};
pub use sysfs::{PfError, Sysfs, Vf};
pub use types::{Mac, OwnerId, Vlan, derived_mac};

use crate::config::{Mode, Network};
use crate::link::{Netlink, VfConfig};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;

/// How the daemon reaches VFs.
#[derive(Clone, Debug)]
pub struct Sriov {
    pub sysfs: Sysfs,
    /// Test only (`netd daemon --vf-netlink-log FILE`): append each VF
    /// message to this file instead of sending it, for kernels without
    /// SR-IOV where no PF could take it.
    pub netlink_log: Option<PathBuf>,
}

/// A pool's VFs as sysfs shows them now.
#[derive(Clone, Debug, Default)]
pub struct Discovered {
    pub vfs: Vec<Vf>,
    /// Why the pool's PF cannot serve, when it cannot.
    pub pf_problem: Option<PfError>,
    /// The PF's counts (PF form only).
    pub pf: Option<sysfs::Pf>,
}

impl Sriov {
    pub fn new(sysfs_root: impl Into<PathBuf>, netlink_log: Option<PathBuf>) -> Sriov {
        Sriov {
            sysfs: Sysfs::new(sysfs_root),
            netlink_log,
        }
    }

    /// The pool's VFs: every enabled VF of the PF, or the listed addresses.
    /// Never fails: what is not there is marked missing.
    pub fn discover(&self, net: &Network) -> Discovered {
        if net.mode != Mode::Hostdev {
            return Discovered::default();
        }
        match &net.pf {
            Some(pf) => match self.sysfs.pf(pf) {
                Ok(p) => Discovered {
                    vfs: self.sysfs.pf_vfs(&p),
                    pf_problem: None,
                    pf: Some(p),
                },
                Err(e) => Discovered {
                    vfs: vec![],
                    pf_problem: Some(e),
                    pf: None,
                },
            },
            None => Discovered {
                vfs: net
                    .vfs_pci
                    .iter()
                    .map(|a| self.sysfs.vf_by_addr(*a))
                    .collect(),
                pf_problem: None,
                pf: None,
            },
        }
    }

    /// Gives a VF its MAC and VLAN (or clears them), through the PF.
    pub async fn program(&self, nl: &Netlink, c: &VfConfig) -> Result<()> {
        match &self.netlink_log {
            None => nl.set_vf(c).await,
            Some(p) => {
                let bytes = crate::link::vf_config_bytes(c);
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let line = format!(
                    "pf_index={} vf={} mac={} vlan={} bytes={hex}\n",
                    c.pf_index,
                    c.vf,
                    Mac(c.mac),
                    c.vlan
                );
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .and_then(|mut f| f.write_all(line.as_bytes()))
                    .with_context(|| format!("writing the VF log {}", p.display()))
            }
        }
    }
}
