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
    pub fn new(paths: &Paths) -> Result<Store> {
        // dnsmasq, which drops root, must be able to pass through the run
        // dir to its files: when netd creates it, it is 0755 whatever the umask.
        if !paths.run_dir.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&paths.run_dir)
                .with_context(|| format!("creating {}", paths.run_dir.display()))?;
            std::fs::set_permissions(&paths.run_dir, std::fs::Permissions::from_mode(0o755))?;
        }
        for d in [
            paths.networks_dir(),
            paths.state_dir.clone(),
            paths.state_dir.join("macs"),
            paths.run_dir.clone(),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
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

    pub fn load_running(&self) -> BTreeMap<String, RunRecord> {
        let mut recs = std::fs::read(self.run_file())
            .ok()
            .and_then(|b| serde_json::from_slice::<RunFile>(&b).ok())
            .map(|f| f.networks)
            .unwrap_or_default();
        for (name, rec) in recs.iter_mut() {
            super::journal::fold(&self.live_journal_path(name), &mut rec.definition);
        }
        recs
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

pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
