//! netd: virtual networks for KVM hosts, with the packet work in eBPF.
//!
//! One module per concern: `config` (definitions), `link` (rtnetlink),
//! `dhcp` (dnsmasq), `sriov` (VF pools), `dataplane` (aya), `daemon` (state and reconciler),
//! `api` (HTTP+JSON on the unix socket) and `cli` (the subcommands).

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod dhcp;
pub mod link;
pub mod paths;
pub mod sriov;
