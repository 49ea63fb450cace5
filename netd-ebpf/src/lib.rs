//! The datapath's building blocks, one module per concern. Only compiled
//! for the BPF target; the host build is empty so `cargo clippy --workspace`
//! works.
#![no_std]

#[cfg(target_arch = "bpf")]
pub mod bridge;
#[cfg(target_arch = "bpf")]
pub mod csum;
#[cfg(target_arch = "bpf")]
pub mod ct;
#[cfg(target_arch = "bpf")]
pub mod flow;
#[cfg(target_arch = "bpf")]
pub mod forward;
#[cfg(target_arch = "bpf")]
pub mod frag;
#[cfg(target_arch = "bpf")]
pub mod hostfwd;
#[cfg(target_arch = "bpf")]
pub mod icmp;
#[cfg(target_arch = "bpf")]
pub mod ipv6;
#[cfg(target_arch = "bpf")]
pub mod maps;
#[cfg(target_arch = "bpf")]
pub mod nat;
#[cfg(target_arch = "bpf")]
pub mod nat66;
#[cfg(target_arch = "bpf")]
pub mod parse;
#[cfg(target_arch = "bpf")]
pub mod reject;
#[cfg(target_arch = "bpf")]
pub mod stats;
#[cfg(target_arch = "bpf")]
pub mod uplink;
