//! The `netd` command line: one file per subcommand, each with an `exec()`.
//! Everything but `daemon` and `bpf` talks to the daemon over its socket.

mod bpf;
mod daemon;
mod forward;
mod leases;
mod metrics;
mod net;
mod output;
mod status;
mod vf;

use crate::api::client::Client;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub use output::{Format, Table};

#[derive(Parser)]
#[command(
    name = "netd",
    version,
    about = "Virtual networks for KVM hosts, with an eBPF dataplane"
)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "NETD_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Daemon(daemon::Args),
    /// Define, start, stop and inspect networks.
    #[command(subcommand)]
    Net(net::Command),
    /// Port forwards (DNAT), applied live.
    #[command(subcommand)]
    Forward(forward::Command),
    /// DHCP leases of a network.
    Leases(leases::Args),
    /// Read the pinned BPF maps (works without the daemon).
    #[command(subcommand)]
    Bpf(bpf::Command),
    /// Daemon, networks, programs and health checks.
    Status(status::Args),
    /// Prometheus metrics (text format), as GET /metrics serves them.
    Metrics(metrics::Args),
    /// SR-IOV VF pools (hostdev networks): hand VFs to guests.
    #[command(subcommand)]
    Vf(vf::Command),
}

impl Cli {
    fn client(&self) -> Client {
        let sock = self
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::paths::DEFAULT_RUN_DIR).join("netd.sock"));
        Client::new(&sock)
    }
}

/// Rust ignores SIGPIPE, so `netd status | head -1` would make println!
/// panic ("failed printing to stdout") once the reader is gone. A client
/// command ends quietly instead, as Unix tools do (exit 141). The daemon
/// keeps ignoring it: a client that hangs up must not kill it.
fn default_sigpipe() {
    // SAFETY: restoring a signal's default disposition has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap exits 2 on usage errors and 0 for --help/--version.
            e.exit();
        }
    };
    if !matches!(cli.command, Command::Daemon(_)) {
        default_sigpipe();
    }
    let r = match &cli.command {
        Command::Daemon(a) => daemon::exec(a),
        Command::Net(c) => net::exec(c, &cli.client()),
        Command::Leases(a) => leases::exec(a, &cli.client()),
        Command::Forward(c) => forward::exec(c, &cli.client()),
        Command::Bpf(c) => bpf::exec(c),
        Command::Status(a) => status::exec(a, &cli.client()),
        Command::Metrics(a) => metrics::exec(a, &cli.client()),
        Command::Vf(c) => vf::exec(c, &cli.client()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}
