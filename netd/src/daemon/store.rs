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

    /// Every persistent definition. A file that no longer parses is moved
    /// aside (`NAME.toml.bad-UNIXTIME`) with an error line, never deleted
    /// and never ignored silently; temp files of an interrupted write are
    /// removed first (the file they were replacing is intact).
    pub fn load_definitions(&self) -> BTreeMap<String, Network> {
        let mut out = BTreeMap::new();
        let dir = self.paths.networks_dir();
        remove_stale_temps(&dir);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return out;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for p in files {
            if !p.extension().is_some_and(|x| x == "toml" || x == "xml") {
                continue;
            }
            match config::load_file(&p) {
                Ok(mut n) => {
                    // Live edits made since the file was last written.
                    super::journal::fold(&self.journal_path(&n.name), &mut n);
                    out.insert(n.name.clone(), n);
                }
                Err(err) => {
                    let _ = move_aside(&p, &format!("{err:#}"));
                }
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
        if let Ok(s) = std::fs::read_to_string(&p) {
            match config::mac_bytes(s.trim()) {
                Ok(m) => return Ok(m),
                // Not silently replaced: the old file stays for a look.
                Err(e) => {
                    let _ = move_aside(&p, &e);
                }
            }
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
    /// A file that does not parse at all is moved aside, like a definition:
    /// its networks are then not adopted (and not torn down either: nothing
    /// is deleted on a guess).
    pub fn load_running(&self) -> BTreeMap<String, RunRecord> {
        #[derive(Deserialize)]
        struct Loose {
            networks: BTreeMap<String, serde_json::Value>,
        }
        remove_stale_temps(&self.paths.state_dir);
        remove_stale_temps(&self.paths.state_dir.join("macs"));
        let p = self.run_file();
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
            Err(e) => {
                tracing::error!("reading {}: {e}", p.display());
                return BTreeMap::new();
            }
        };
        let f = match serde_json::from_slice::<Loose>(&bytes) {
            Ok(f) => f,
            Err(e) => {
                let _ = move_aside(&p, &e.to_string());
                return BTreeMap::new();
            }
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

/// Takes the state dir for this daemon: an exclusive `flock` on
/// `<state-dir>/netd.lock`, held as long as the returned file is open (the
/// kernel drops it when the process dies, however it dies). The file holds
/// the owner's pid, for the error a second daemon prints.
pub fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = state_dir.join("netd.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        let pid = text.trim();
        let pid = if pid.is_empty() { "?" } else { pid };
        anyhow::bail!(
            "another netd daemon (pid {pid}) holds {}",
            state_dir.display()
        );
    }
    f.set_len(0)?;
    f.rewind()?;
    writeln!(f, "{}", std::process::id())?;
    f.sync_all()?;
    Ok(f)
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Writes a state file so that a crash at any point leaves either the old
/// or the new content, never a torn one: a temp file beside it (`PATH.tmp~`,
/// mode 0600), fsync, rename over PATH, fsync of the folder (so the rename
/// itself is on disk). Every state file goes through here.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, 0o600)
}

/// [`write_atomic`] with another mode, for files other users must read.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} into place", tmp.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsync of a folder: makes renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing folder {}", dir.display()))
}

/// The temp file [`write_atomic`] writes before renaming it to `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp~");
    PathBuf::from(s)
}

/// Removes what an interrupted [`write_atomic`] left in `dir` (the file
/// it was replacing is intact). Logs each one.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.to_string_lossy().ends_with(".tmp~") && p.is_file() {
            match std::fs::remove_file(&p) {
                Ok(()) => tracing::warn!("removed {} left by an interrupted write", p.display()),
                Err(err) => tracing::warn!("cannot remove stale {}: {err}", p.display()),
            }
        }
    }
}

/// Moves a file that cannot be used out of the way, to
/// `PATH.bad-UNIXTIME`, with one error line naming it and why. Nothing is
/// deleted: the operator can look at it and fix it.
pub fn move_aside(path: &Path, why: &str) -> Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".bad-{now}"));
    let to = PathBuf::from(s);
    match std::fs::rename(path, &to) {
        Ok(()) => {
            let _ = sync_dir(path.parent().unwrap_or(Path::new(".")));
            tracing::error!(
                "{} cannot be used ({why}); moved it to {}",
                path.display(),
                to.display()
            );
            Ok(to)
        }
        Err(e) => {
            tracing::error!(
                "{} cannot be used ({why}), and moving it aside failed: {e}; ignoring it",
                path.display()
            );
            Err(e).with_context(|| format!("moving {} aside", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netd-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_replaces_whole_file_with_mode_0600() {
        let d = tmpdir("atomic");
        let p = d.join("running.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new content").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new content");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!temp_path(&p).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_temps_go_and_bad_files_move_aside() {
        let d = tmpdir("stale");
        let p = d.join("net.toml");
        std::fs::write(&p, "old").unwrap();
        // A kill between the temp write and the rename.
        std::fs::write(temp_path(&p), "half").unwrap();
        remove_stale_temps(&d);
        assert!(!temp_path(&p).exists());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        let to = move_aside(&p, "test").unwrap();
        assert!(!p.exists());
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "old");
        assert!(to.to_string_lossy().contains("net.toml.bad-"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
