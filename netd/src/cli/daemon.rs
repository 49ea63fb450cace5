//! `netd daemon`.

use crate::paths::{self, Paths};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = paths::DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,
    #[arg(long, default_value = paths::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[arg(long, default_value = paths::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[arg(long, default_value = paths::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Forward aya-log messages from the BPF programs (off by default: they
    /// cost time in the fast path).
    #[arg(long)]
    bpf_log: bool,
}

pub fn exec(a: &Args) -> anyhow::Result<()> {
    init_logging();
    let opts = crate::daemon::Options {
        paths: Paths {
            config_dir: a.config_dir.clone(),
            state_dir: a.state_dir.clone(),
            run_dir: a.run_dir.clone(),
            bpffs: a.bpffs.clone(),
        },
        bpf_log: a.bpf_log,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(crate::daemon::run(opts))
}

/// Plain lines on stderr, which journald captures as they are; RUST_LOG
/// picks the level (info by default).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
