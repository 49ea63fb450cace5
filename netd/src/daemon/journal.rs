//! Live edits as small records: one JSON line per `forward add|remove|import`
//! or `net update add-host|remove-host`, appended to a journal beside the
//! definition it changes (`networks/NAME.journal` for the persistent side,
//! `state/live/NAME.journal` for the running one). An edit therefore costs
//! one short append, however many forwards the network has; the whole
//! definition is rewritten only when the journal is compacted (on `net
//! start`, on a full save, or past [`COMPACT_BYTES`]).
//!
//! Every record is an idempotent set operation keyed like the daemon's own
//! checks (a forward by protocol, first host port and address; a host by
//! MAC or IP). Replaying a journal over a definition that already holds
//! some or all of its records gives the same result as replaying it once,
//! so a crash between "write the compacted file" and "remove the journal"
//! is harmless.

use crate::config::{Forward, Host, Mac, Network, PortRange, Proto};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::Path;

/// A journal larger than this is folded into its definition at the next edit.
pub const COMPACT_BYTES: u64 = 256 * 1024;

/// One live edit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Edit {
    /// Insert (or replace) these forwards.
    AddForwards { forwards: Vec<Forward> },
    /// Remove the forward on this protocol, first port and address.
    RemoveForward {
        proto: Proto,
        port: PortRange,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<Ipv4Addr>,
    },
    /// Insert (or replace) a DHCP host; any entry with its MAC or IP goes.
    AddHost { host: Host },
    /// Remove the host entry with this MAC and IP.
    RemoveHost { mac: Mac, ip: Ipv4Addr },
}

/// What identifies a forward: protocol, first host port and host address
/// (the key `forward remove` takes).
type Key = (Proto, u16, Option<Ipv4Addr>);

fn key(proto: Proto, port: &PortRange, address: Option<Ipv4Addr>) -> Key {
    (proto, port.start, address)
}

/// Two forwards are the same entry when their keys match.
pub fn same_forward(f: &Forward, proto: Proto, port: PortRange, address: Option<Ipv4Addr>) -> bool {
    key(f.proto, &f.port, f.address) == key(proto, &port, address)
}

impl Edit {
    /// Applies the edit as a set operation. Never fails: whether the edit
    /// makes sense was checked before it was journaled.
    pub fn apply(&self, net: &mut Network) {
        match self {
            Edit::AddForwards { forwards } => {
                // One pass however many are added (an import can bring thousands).
                let mut last: std::collections::HashMap<Key, usize> = Default::default();
                for (i, f) in forwards.iter().enumerate() {
                    last.insert(key(f.proto, &f.port, f.address), i);
                }
                net.forwards
                    .retain(|o| !last.contains_key(&key(o.proto, &o.port, o.address)));
                net.forwards.extend(
                    forwards
                        .iter()
                        .enumerate()
                        .filter(|(i, f)| last.get(&key(f.proto, &f.port, f.address)) == Some(i))
                        .map(|(_, f)| f.clone()),
                );
            }
            Edit::RemoveForward {
                proto,
                port,
                address,
            } => net
                .forwards
                .retain(|f| !same_forward(f, *proto, *port, *address)),
            Edit::AddHost { host } => {
                if let Some(v4) = net.ipv4.as_mut() {
                    v4.hosts
                        .retain(|h| h.mac != host.mac && h.ip != host.ip);
                    v4.hosts.push(host.clone());
                }
            }
            Edit::RemoveHost { mac, ip } => {
                if let Some(v4) = net.ipv4.as_mut() {
                    v4.hosts
                        .retain(|h| !(h.mac == *mac && h.ip == *ip));
                }
            }
        }
    }
}

impl Edit {
    /// Like [`Edit::apply`] for an edit just checked against `net`: forwards
    /// added were checked not to clash with any there, so they are appended
    /// without a pass over the others.
    pub fn apply_checked(&self, net: &mut Network) {
        match self {
            Edit::AddForwards { forwards } => net.forwards.extend(forwards.iter().cloned()),
            other => other.apply(net),
        }
    }
}

/// Appends one record and syncs it. A torn last record (a crash mid-write)
/// is cut off first, so it can never glue itself to this one.
pub fn append(path: &Path, edit: &Edit) -> Result<u64> {
    let mut line = serde_json::to_vec(edit)?;
    line.push(b'\n');
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let created = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if created {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    cut_torn_tail(&mut f).with_context(|| format!("repairing {}", path.display()))?;
    // One write of the whole line: O_APPEND makes it land at the end in one piece
    // unless the machine stops mid-write, and then the reader skips it.
    f.write_all(&line)
        .and_then(|()| f.sync_data())
        .with_context(|| format!("appending to {}", path.display()))?;
    if created {
        // The new name must survive a crash too.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(f.metadata().map(|m| m.len()).unwrap_or(0))
}

/// Truncates the file after its last newline when it does not end in one.
/// Costs one byte read in the normal case.
fn cut_torn_tail(f: &mut std::fs::File) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut all)?;
    let keep = all.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    tracing::warn!(
        "journal: dropping a torn last record ({} bytes)",
        len as usize - keep
    );
    f.set_len(keep as u64)
}

/// The records of a journal, in order. A missing file is an empty journal;
/// a torn last line (no newline: the writer died mid-append) and any line
/// that does not parse are skipped, each with a log line.
pub fn read(path: &Path) -> Vec<Edit> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(
                "cannot read {}: {e}; its edits are not applied",
                path.display()
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if i + 1 == n {
            if !complete && !line.is_empty() {
                tracing::warn!(
                    "{}: skipping a torn last record ({} bytes)",
                    path.display(),
                    line.len()
                );
            }
            break;
        }
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Edit>(line) {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!(
                "{}: skipping unreadable record on line {}: {e}",
                path.display(),
                i + 1
            ),
        }
    }
    out
}

/// Applies a journal's records to `net`; true when there were any.
pub fn fold(path: &Path, net: &mut Network) -> bool {
    let edits = read(path);
    for e in &edits {
        e.apply(net);
    }
    !edits.is_empty()
}

/// Removes a journal (after its records went into a full save).
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        crate::config::from_toml(
            r#"
name = "n"
mode = "nat"
[ipv4]
address = "10.9.0.1/24"
hosts = [{ mac = "52:54:00:00:00:01", ip = "10.9.0.10" }]
"#,
        )
        .unwrap()
    }

    fn fwd(port: &str, to: &str) -> Forward {
        Forward {
            proto: Proto::Tcp,
            port: port.parse().unwrap(),
            to: to.parse().unwrap(),
            address: None,
        }
    }

    fn edits() -> Vec<Edit> {
        vec![
            Edit::AddForwards {
                forwards: vec![fwd("80", "10.9.0.10"), fwd("443", "10.9.0.10")],
            },
            Edit::RemoveForward {
                proto: Proto::Tcp,
                port: "80".parse().unwrap(),
                address: None,
            },
            Edit::AddForwards {
                forwards: vec![fwd("443", "10.9.0.11")],
            },
            Edit::AddHost {
                host: Host {
                    mac: "52:54:00:00:00:02".parse().unwrap(),
                    ip: "10.9.0.20".parse().unwrap(),
                    name: None,
                },
            },
            Edit::RemoveHost {
                mac: "52:54:00:00:00:01".parse().unwrap(),
                ip: "10.9.0.10".parse().unwrap(),
            },
        ]
    }

    #[test]
    fn replaying_twice_is_replaying_once() {
        let mut once = net();
        for e in edits() {
            e.apply(&mut once);
        }
        assert_eq!(once.forwards, vec![fwd("443", "10.9.0.11")]);
        let hosts = &once.ipv4.as_ref().unwrap().hosts;
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].ip.to_string(), "10.9.0.20");
        let mut twice = once.clone();
        for e in edits() {
            e.apply(&mut twice);
        }
        assert_eq!(once, twice);
    }

    #[test]
    fn a_batch_replaces_by_key_and_the_last_of_a_key_wins() {
        let mut n = net();
        n.forwards = vec![fwd("80", "10.9.0.10"), fwd("81-82", "10.9.0.10")];
        Edit::AddForwards {
            forwards: vec![
                fwd("80", "10.9.0.11"),
                fwd("90", "10.9.0.12"),
                fwd("80", "10.9.0.13"),
            ],
        }
        .apply(&mut n);
        assert_eq!(
            n.forwards,
            vec![
                fwd("81-82", "10.9.0.10"),
                fwd("90", "10.9.0.12"),
                fwd("80", "10.9.0.13")
            ]
        );
        // Another address is another forward.
        let mut other = fwd("90", "10.9.0.14");
        other.address = Some("198.51.100.9".parse().unwrap());
        Edit::AddForwards {
            forwards: vec![other.clone()],
        }
        .apply(&mut n);
        assert_eq!(n.forwards.len(), 4);
        Edit::RemoveForward {
            proto: Proto::Tcp,
            port: "81".parse().unwrap(),
            address: None,
        }
        .apply(&mut n);
        assert_eq!(n.forwards.len(), 3);
    }

    #[test]
    fn torn_tail_is_skipped_and_cut_before_the_next_append() {
        let dir = std::env::temp_dir().join(format!("netd-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("n.journal");
        let all = edits();
        append(&p, &all[0]).unwrap();
        append(&p, &all[1]).unwrap();
        // A crash in the middle of the third append.
        let third = serde_json::to_vec(&all[2]).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&third[..third.len() / 2]).unwrap();
        drop(f);
        assert_eq!(read(&p), all[..2].to_vec());
        append(&p, &all[3]).unwrap();
        assert_eq!(
            read(&p),
            vec![all[0].clone(), all[1].clone(), all[3].clone()]
        );
        // A garbage line in the middle is skipped, the rest kept.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{not json}\n").unwrap();
        drop(f);
        append(&p, &all[4]).unwrap();
        assert_eq!(read(&p).len(), 4);
        let mut n = net();
        assert!(fold(&p, &mut n));
        remove(&p).unwrap();
        assert!(read(&p).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_edit_is_one_short_line_whatever_the_network_size() {
        let dir = std::env::temp_dir().join(format!("netd-journal-sz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("n.journal");
        let e = Edit::AddForwards {
            forwards: vec![fwd("8080", "10.9.0.10:80")],
        };
        let a = append(&p, &e).unwrap();
        let b = append(&p, &e).unwrap();
        assert!(a < 120 && b == 2 * a, "{a} {b}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
