//! Upgrade in place: a new build reuses the maps a previous one pinned (and
//! with them every connection), but only if it defines them the same way.
//! aya reuses a pinned map by name without looking at it, so a map whose
//! type, key or value size, size or flags changed would be handed to
//! programs that read it wrongly. [`check`] compares each pinned map with
//! this build's object before anything is loaded; a difference refuses the
//! start unless the operator asks for a migration: [`set_aside`] reads the
//! old map's entries and unpins it, the load then creates the new map, and
//! [`restore`] copies every entry that still fits.
//!
//! A daemon killed between [`set_aside`] and [`restore`] loses the entries
//! of the maps being migrated (the old map is gone with its last fd); the
//! migration is one explicit step, run while watching it.

use super::BPF_OBJECT;
use anyhow::{Context, Result, anyhow};
use aya::maps::MapData;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

/// How a map is defined, as the kernel and the object file both say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Layout {
    /// What differs from `new`, as "value_size 24 -> 28, max_entries ...".
    fn diff(&self, new: &Layout) -> String {
        let fields = [
            ("type", self.map_type, new.map_type),
            ("key_size", self.key_size, new.key_size),
            ("value_size", self.value_size, new.value_size),
            ("max_entries", self.max_entries, new.max_entries),
            ("flags", self.flags, new.flags),
        ];
        fields
            .iter()
            .filter(|(_, a, b)| a != b)
            .map(|(n, a, b)| format!("{n} {a} -> {b}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn per_cpu(&self) -> bool {
        // BPF_MAP_TYPE_PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH.
        matches!(self.map_type, 5 | 6 | 10)
    }

    fn holds_programs(&self) -> bool {
        // BPF_MAP_TYPE_PROG_ARRAY: refilled by every load.
        self.map_type == 3
    }
}

/// A pinned map that this build defines differently.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub name: String,
    pub pinned: Layout,
    pub object: Layout,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.pinned.diff(&self.object))
    }
}

/// This build's pinned maps, by name, with the sizes the daemon sets at
/// load time (`sizes`: map name, max entries) instead of the object's.
fn object_layouts(sizes: &[(&str, u32)]) -> Result<BTreeMap<String, Layout>> {
    let obj = aya_obj::Object::parse(BPF_OBJECT).context("parsing the BPF object")?;
    Ok(obj
        .maps
        .iter()
        .filter(|(_, m)| m.pinning() == aya_obj::maps::PinningType::ByName)
        .map(|(name, m)| {
            (
                name.clone(),
                Layout {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: sizes
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or(m.max_entries(), |(_, max)| *max),
                    flags: m.map_flags(),
                },
            )
        })
        .collect())
}

fn pinned_layout(map: &MapData) -> Result<Layout> {
    let info = map.info()?;
    Ok(Layout {
        map_type: info.map_type()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// The pinned maps under `maps_dir` that this build defines differently
/// (with `sizes` as in [`object_layouts`]). Maps not pinned yet are fine:
/// the load creates them.
pub fn check(maps_dir: &Path, sizes: &[(&str, u32)]) -> Result<Vec<Mismatch>> {
    let mut out = Vec::new();
    for (name, object) in object_layouts(sizes)? {
        let path = maps_dir.join(&name);
        if !path.exists() {
            continue;
        }
        let map = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let pinned = pinned_layout(&map)?;
        if pinned != object {
            out.push(Mismatch {
                name,
                pinned,
                object,
            });
        }
    }
    Ok(out)
}

/// The entries of a map on its way to a new layout.
pub struct Saved {
    mismatch: Mismatch,
    /// Raw (key, value) bytes; per-CPU values hold every CPU's slot.
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads every entry of each mismatched map and unpins it, so the load
/// creates the new layout under the same name.
pub fn set_aside(maps_dir: &Path, mismatches: &[Mismatch]) -> Result<Vec<Saved>> {
    let mut out = Vec::new();
    for m in mismatches {
        let path = maps_dir.join(&m.name);
        let map = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let entries = if m.pinned.holds_programs() {
            Vec::new()
        } else {
            read_all(&map, &m.pinned).with_context(|| format!("reading map {}", m.name))?
        };
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        out.push(Saved {
            mismatch: m.clone(),
            entries,
        });
    }
    Ok(out)
}

/// Copies the saved entries into the new maps: all of them when key and
/// value sizes (and per-CPU-ness) are unchanged, as many as fit when only
/// the size changed, none otherwise. Logs and returns (kept, dropped) per map.
pub fn restore(maps_dir: &Path, saved: Vec<Saved>) -> Result<Vec<(String, usize, usize)>> {
    let mut out = Vec::new();
    for s in saved {
        let m = &s.mismatch;
        let path = maps_dir.join(&m.name);
        let map = MapData::from_pin(&path)
            .with_context(|| format!("opening new map {}", path.display()))?;
        let fits = m.pinned.key_size == m.object.key_size
            && m.pinned.value_size == m.object.value_size
            && m.pinned.per_cpu() == m.object.per_cpu();
        let mut kept = 0;
        if fits {
            for (k, v) in &s.entries {
                if update(&map, k, v).is_ok() {
                    kept += 1;
                }
            }
        }
        let dropped = s.entries.len() - kept;
        tracing::warn!("migrated map {m}: {kept} entries kept, {dropped} dropped");
        out.push((m.name.clone(), kept, dropped));
    }
    Ok(out)
}

// ---- raw map access (sizes known only at run time) --------------------------

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// `union bpf_attr` as the map element commands use it.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

fn bpf_elem(
    cmd: libc::c_long,
    map: &MapData,
    key: *const u8,
    value: *mut u8,
) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: key as u64,
        value_or_next_key: value as u64,
        flags: 0,
    };
    // SAFETY: attr points at valid buffers of the map's key and value sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn value_len(l: &Layout) -> Result<usize> {
    if l.per_cpu() {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("counting CPUs: {e}"))?;
        Ok(((l.value_size as usize + 7) & !7) * cpus)
    } else {
        Ok(l.value_size as usize)
    }
}

fn read_all(map: &MapData, l: &Layout) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let vlen = value_len(l)?;
    let mut out = Vec::new();
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; l.key_size as usize];
        let cur = key.as_ref().map_or(std::ptr::null(), |k| k.as_ptr());
        match bpf_elem(BPF_MAP_GET_NEXT_KEY, map, cur, next.as_mut_ptr()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e.into()),
        }
        let mut value = vec![0u8; vlen];
        // An entry removed meanwhile is simply not copied.
        if bpf_elem(BPF_MAP_LOOKUP_ELEM, map, next.as_ptr(), value.as_mut_ptr()).is_ok() {
            out.push((next.clone(), value));
        }
        key = Some(next);
        if out.len() > l.max_entries as usize {
            break;
        }
    }
    Ok(out)
}

fn update(map: &MapData, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    let mut v = value.to_vec();
    bpf_elem(BPF_MAP_UPDATE_ELEM, map, key.as_ptr(), v.as_mut_ptr())
}
