//! The datapath's building blocks, one module per concern. Only compiled
//! for the BPF target; the host build is empty so `cargo clippy --workspace`
//! works.
#![no_std]

#[cfg(target_arch = "bpf")]
pub mod maps;
#[cfg(target_arch = "bpf")]
pub mod stats;
