//! What the daemon keeps on disk: definitions in the config dir, and in the
//! state dir the bridge MACs and the record of running networks that makes a
//! daemon restart able to adopt what the previous one built.

use crate::config::{self, Network};
use crate::paths::Paths;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Store {
    paths: Paths,
}

/// What a running network owns, enough to stop it after a daemon restart.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub bridge: String,
    pub bridge_ifindex: u32,
    /// False when the bridge is the host's (bridge mode): never delete it.
    pub created_bridge: bool,
    pub uplinks: Vec<String>,
    /// The definition as started (transient networks live only here).
    pub definition: Network,
    pub transient: bool,
    pub dnsmasq_pid: Option<u32>,
}

#[derive(Default, Serialize, Deserialize)]
struct RunFile {
    networks: BTreeMap<String, RunRecord>,
}

impl Store {
    /// Creates the daemon's folders, private to root: definitions, leases
    /// (MACs, host names) and run records are nobody else's business. The
    /// run dir is 0711: dnsmasq, after dropping root, must still pass through
    /// it to reread its host files, but cannot list it. Modes are set on
    /// every start, so folders made by an older netd are narrowed too.
    pub fn new(paths: &Paths) -> Result<Store> {
        use std::os::unix::fs::PermissionsExt;
        for (d, mode) in [
            (paths.networks_dir(), 0o700),
            (paths.state_dir.clone(), 0o700),
            (paths.state_dir.join("macs"), 0o700),
            (paths.run_dir.clone(), 0o711),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", d.display()))?;
        }
        Ok(Store {
            paths: paths.clone(),
        })
    }

    fn def_path(&self, name: &str) -> PathBuf {
        self.paths.networks_dir().join(format!("{name}.toml"))
    }

    /// Every persistent definition. A file that no longer parses is skipped
    /// with a warning rather than keeping the daemon down.
    pub fn load_definitions(&self) -> BTreeMap<String, Network> {
        let mut out = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(self.paths.networks_dir()) else {
            return out;
        };
        for e in rd.flatten() {
            let p = e.path();
            if !p.extension().is_some_and(|x| x == "toml" || x == "xml") {
                continue;
            }
            match config::load_file(&p) {
                Ok(mut n) => {
                    // Live edits made since the file was last written.
                    super::journal::fold(&self.journal_path(&n.name), &mut n);
                    out.insert(n.name.clone(), n);
                }
                Err(err) => tracing::warn!("ignoring {}: {err:#}", p.display()),
            }
        }
        out
    }

    /// Writes the whole definition; its journal, now folded in, goes.
    pub fn save_definition(&self, net: &Network) -> Result<()> {
        write_atomic(&self.def_path(&net.name), config::to_toml(net).as_bytes())?;
        super::journal::remove(&self.journal_path(&net.name))
    }

    pub fn remove_definition(&self, name: &str) -> Result<()> {
        match std::fs::remove_file(self.def_path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => super::journal::remove(&self.journal_path(name)),
        }
    }

    /// Live edits of the persistent definition since its file was written.
    pub fn journal_path(&self, name: &str) -> PathBuf {
        self.paths.networks_dir().join(format!("{name}.journal"))
    }

    /// Live edits of the running definition since running.json was written.
    pub fn live_journal_path(&self, name: &str) -> PathBuf {
        self.paths
            .state_dir
            .join("live")
            .join(format!("{name}.journal"))
    }

    /// The bridge MAC for a network: generated once (52:54:00:xx:xx:xx, the
    /// KVM prefix libvirt uses) and reused on every start.
    pub fn bridge_mac(&self, name: &str) -> Result<[u8; 6]> {
        let p = self.paths.state_dir.join("macs").join(name);
        if let Ok(s) = std::fs::read_to_string(&p)
            && let Ok(m) = config::mac_bytes(s.trim())
        {
            return Ok(m);
        }
        let r: [u8; 3] = rand::random();
        let mac = [0x52, 0x54, 0x00, r[0], r[1], r[2]];
        write_atomic(&p, format_mac(&mac).as_bytes())?;
        Ok(mac)
    }

    /// Whether a bridge MAC was generated for `name` already.
    pub fn has_mac(&self, name: &str) -> bool {
        self.paths.state_dir.join("macs").join(name).is_file()
    }

    pub fn forget_mac(&self, name: &str) {
        let _ = std::fs::remove_file(self.paths.state_dir.join("macs").join(name));
    }

    fn run_file(&self) -> PathBuf {
        self.paths.state_dir.join("running.json")
    }

    /// The record of running networks. Each network is read on its own: one
    /// whose recorded definition no longer passes the checks (written by an
    /// older netd) is skipped with a warning instead of losing every other.
    pub fn load_running(&self) -> BTreeMap<String, RunRecord> {
        #[derive(Deserialize)]
        struct Loose {
            networks: BTreeMap<String, serde_json::Value>,
        }
        let Some(f) = std::fs::read(self.run_file())
            .ok()
            .and_then(|b| serde_json::from_slice::<Loose>(&b).ok())
        else {
            return BTreeMap::new();
        };
        f.networks
            .into_iter()
            .filter_map(|(name, v)| match serde_json::from_value::<RunRecord>(v) {
                Ok(mut r) => {
                    super::journal::fold(&self.live_journal_path(&name), &mut r.definition);
                    Some((name, r))
                }
                Err(e) => {
                    tracing::warn!("running network {name:?}: its record does not load: {e}");
                    None
                }
            })
            .collect()
    }

    /// Writes every run record in full; the live journals, folded into
    /// them, go.
    pub fn save_running(&self, running: &BTreeMap<String, RunRecord>) -> Result<()> {
        let f = RunFile {
            networks: running.clone(),
        };
        write_atomic(&self.run_file(), &serde_json::to_vec_pretty(&f)?)?;
        if let Ok(rd) = std::fs::read_dir(self.paths.state_dir.join("live")) {
            for e in rd.flatten() {
                super::journal::remove(&e.path())?;
            }
        }
        Ok(())
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Writes a state file (mode 0600) through a temp file and a rename, so a
/// crash leaves the old or the new file, never half of one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp~");
    (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // A temp file left by an older netd keeps its mode through open.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(data)
    })()
    .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
