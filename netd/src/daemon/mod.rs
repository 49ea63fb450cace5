//! The daemon: a store of definitions, and a reconciler that makes the
//! kernel match them. All changes go through one lock, so two requests never
//! interleave their netlink and map writes.

mod doctor;
mod forwards;
pub mod metrics;
mod natlog;
mod network;
mod status;
pub mod store;
mod teardown;
mod uplink;

pub use forwards::ForwardInfo;
pub use network::State;

use crate::dataplane::Dataplane;
use crate::link::Netlink;
use crate::paths::Paths;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

pub struct Options {
    pub paths: Paths,
    pub bpf_log: bool,
    /// Conntrack timeouts, written to the datapath at start.
    pub settings: netd_common::Settings,
    pub cgroup: Option<std::path::PathBuf>,
    /// Also serve GET /metrics over TCP here (off when None).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

pub struct Daemon {
    pub state: Mutex<State>,
    pub started: Instant,
    pub paths: Paths,
}

pub async fn run(opts: Options) -> Result<()> {
    let paths = opts.paths.clone();
    let dp = Dataplane::load(&paths.bpffs, opts.bpf_log).context("loading the dataplane")?;
    let mut dp = dp;
    let mut settings = opts.settings;
    settings.netns_cookie = crate::link::netns_cookie().context("reading our netns cookie")?;
    crate::dataplane::maps::set_settings(&dp.maps_dir(), &settings)?;
    match cgroup_for_host_forwards(opts.cgroup.as_deref()) {
        Some(cg) => dp
            .attach_cgroup(&cg)
            .context("attaching host-local forward programs")?,
        None => tracing::info!("host-local forwards are off (no cgroup v2)"),
    }
    let nl = Netlink::connect().await?;
    crate::link::set_ipv4_forwarding(true).context("enabling IPv4 forwarding")?;
    let mut state = State::new(&paths, nl, dp)?;
    state.adopt_previous().await;
    state.autostart().await;
    let daemon = Arc::new(Daemon {
        state: Mutex::new(state),
        started: Instant::now(),
        paths: paths.clone(),
    });

    tokio::spawn(uplink::watch(daemon.clone()));
    tokio::spawn(uplink::gc(daemon.clone()));
    let server = tokio::spawn(crate::api::server::serve(daemon.clone()));
    if let Some(addr) = opts.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener on {addr}"))?;
        tokio::spawn(crate::api::server::serve_metrics(daemon.clone(), listener));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down, networks stay up"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down, networks stay up"),
        r = server => { r??; }
    }
    daemon.state.lock().await.shutdown().await;
    let _ = std::fs::remove_file(paths.socket());
    Ok(())
}

/// The cgroup the host-local forward programs hang on: the one given, or
/// the root of the cgroup v2 hierarchy (pure v2 at /sys/fs/cgroup, or the
/// hybrid layout's /sys/fs/cgroup/unified).
fn cgroup_for_host_forwards(given: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    if let Some(p) = given {
        return (p != std::path::Path::new("none")).then(|| p.to_path_buf());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| std::path::PathBuf::from(f[1]))
        })
        .min_by_key(|p| p.as_os_str().len())
}
