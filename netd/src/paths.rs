//! The four folders a daemon works in; every one is a flag so tests run side by side.
use std::path::PathBuf;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Paths {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub bpffs: PathBuf,
}

impl Paths {
    pub fn networks_dir(&self) -> PathBuf {
        self.config_dir.join("networks")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("netd.sock")
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.bpffs.join("maps")
    }
}

pub const DEFAULT_CONFIG_DIR: &str = "/etc/netd";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netd";
pub const DEFAULT_RUN_DIR: &str = "/run/netd";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/netd";
