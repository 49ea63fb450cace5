//! `netd daemon`.

use crate::paths::{self, Paths};
use netd_common::Settings;
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
    /// cgroup v2 folder for the host-local port-forward programs (connect,
    /// sendmsg, recvmsg): processes in it reach forwards via the host's
    /// addresses. Default: the root of the cgroup v2 hierarchy. "none"
    /// turns host-local forwards off.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Also serve Prometheus metrics at http://ADDR:PORT/metrics (off by
    /// default; the control socket always serves GET /metrics).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Let members of this group use the control socket too (mode 0660,
    /// owned by the group); by default only root can (0600).
    #[arg(long, value_name = "NAME")]
    socket_group: Option<String>,
    /// Entries in each port-forward map: one per forwarded (protocol, host
    /// address, port). Sizes the maps when they are first created.
    #[arg(long, default_value_t = netd_common::FORWARD_MAX_ENTRIES, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    forwards_max: u32,
    /// Conntrack timeout of TCP connections still in the handshake (s).
    #[arg(long, default_value_t = Settings::DEFAULT.tcp_syn_timeout)]
    ct_tcp_syn_timeout: u32,
    /// Conntrack timeout of established TCP connections (s).
    #[arg(long, default_value_t = Settings::DEFAULT.tcp_established_timeout)]
    ct_tcp_established_timeout: u32,
    /// Conntrack timeout of TCP connections after FIN or RST (s).
    #[arg(long, default_value_t = Settings::DEFAULT.tcp_closing_timeout)]
    ct_tcp_closing_timeout: u32,
    #[arg(long, default_value_t = Settings::DEFAULT.udp_timeout)]
    ct_udp_timeout: u32,
    #[arg(long, default_value_t = Settings::DEFAULT.icmp_timeout)]
    ct_icmp_timeout: u32,
    /// Where hostdev networks look for PFs and VFs (tests point it at a
    /// fake tree).
    #[arg(long, default_value = "/sys")]
    sysfs_root: PathBuf,
    /// Test only: append the VF netlink messages to FILE instead of sending
    /// them (for kernels without SR-IOV).
    #[arg(long, hide = true, value_name = "FILE")]
    vf_netlink_log: Option<PathBuf>,
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
        settings: Settings {
            tcp_syn_timeout: a.ct_tcp_syn_timeout,
            tcp_established_timeout: a.ct_tcp_established_timeout,
            tcp_closing_timeout: a.ct_tcp_closing_timeout,
            udp_timeout: a.ct_udp_timeout,
            icmp_timeout: a.ct_icmp_timeout,
            _pad: 0,
            // Filled in by the daemon from its own namespace.
            netns_cookie: 0,
        },
        cgroup: a.cgroup.clone(),
        metrics_addr: a.metrics_addr,
        socket_group: a.socket_group.clone(),
        forwards_max: a.forwards_max,
        sriov: crate::sriov::Sriov::new(&a.sysfs_root, a.vf_netlink_log.clone()),
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
