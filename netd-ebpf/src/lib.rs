//! The datapath's building blocks, one module per concern. Only compiled
//! for the BPF target; the host build is empty so `cargo clippy --workspace`
//! works.
#![no_std]
#![cfg(target_arch = "bpf")]

pub mod bridge;
pub mod csum;
pub mod ct;
pub mod flow;
pub mod forward;
pub mod frag;
pub mod hostfwd;
pub mod icmp;
pub mod ipv6;
pub mod lane;
pub mod mapping;
pub mod maps;
pub mod mss;
pub mod nat;
pub mod nat66;
pub mod parse;
pub mod reject;
pub mod stats;
pub mod uplink;
