//! dnsmasq: config generation, supervision, SIGHUP, leases.
//!
//! The only place in netd that knows dnsmasq's flags. Per network: [`paths`] says where the
//! files go, [`write_files`] (or [`sync_files`]) writes them, [`Dnsmasq::start`] runs and
//! supervises dnsmasq on them, [`write_host_files`] + [`Dnsmasq::reload`] apply live host
//! changes, [`read_leases`] reads what it handed out.
//!
//! dnsmasq drops root after startup and rereads the host files as `nobody` on SIGHUP, so they
//! are written 0644 in a 0755 folder (and every folder above must be searchable by others).

mod conf;
mod leases;
mod process;

pub use conf::{
    Apply, DEFAULT_LEASE, DhcpPaths, paths, remove_files, render_addnhosts, render_conf,
    render_hostsfile, render_hostsfile6, sync_files, write_files, write_host_files,
};
pub use leases::{Lease, mac_from_duid, parse_leases, read_leases};
pub use process::{Dnsmasq, binary, remove_runtime_files};

#[cfg(test)]
mod netns_test;
