//! Everything that touches aya: loading the BPF object, tcx attachment,
//! pinned maps and their typed access.

mod load;
pub mod maps;
mod upgrade;

pub use load::{
    AttachedLink, Dataplane, Hook, attached_links, detach_pinned, is_bpffs, link_pin_path,
};

/// The compiled BPF object, built by build.rs.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netd"));
