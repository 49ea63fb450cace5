//! Mapping logs (`nat.log = "mappings"`), for abuse tracking: one line when
//! a guest address and port starts using an outside address and port, one
//! when it stops, so "who used 198.51.100.2:41234 at 14:03?" has an
//! answer. Written to the daemon log, or appended to `nat.log_file`.
//!
//! The lines come from the GC's pass over the maps (every few seconds):
//! the endpoint-independent mappings of a network, or, for a network that
//! maps per destination, its masqueraded connections, each (guest end,
//! outside end) once. A start is stamped with the time the datapath made
//! the mapping; an end with the pass that found it gone, so it is late by
//! up to one pass. After a daemon restart the live ones are logged again.
//! (The monitor's event stream, once there, can feed the same lines
//! without the wait.)

use crate::dataplane::maps;
use netd_common::{dir as ctdir, nat_kind};
use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A network whose mappings are logged.
#[derive(Clone, Debug)]
pub struct Target {
    pub bridge: u32,
    pub network: String,
    /// Endpoint-independent mapping: log the mappings, else connections.
    pub eim: bool,
    pub file: Option<PathBuf>,
    /// Guest MACs by address, from the network's DHCP leases.
    pub macs: HashMap<Ipv4Addr, String>,
}

/// One (guest end, outside end) of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Use {
    pub bridge: u32,
    pub proto: u8,
    pub guest: (Ipv4Addr, u16),
    pub outside: (Ipv4Addr, u16),
}

/// What the last pass saw, with when each began (CLOCK_MONOTONIC ns).
#[derive(Default)]
pub struct NatLog {
    seen: HashMap<Use, u64>,
}

impl NatLog {
    /// One pass: reads the maps, writes the lines.
    pub fn poll(&mut self, dir: &std::path::Path, targets: &[Target]) {
        if targets.is_empty() && self.seen.is_empty() {
            return;
        }
        let now = maps::monotonic_ns();
        let current = current_uses(dir, targets, now);
        let (started, ended) = self.diff(current);
        let by_bridge: HashMap<u32, &Target> = targets.iter().map(|t| (t.bridge, t)).collect();
        let wall_now = SystemTime::now();
        for (u, created) in started {
            let at = wall_now
                .checked_sub(Duration::from_nanos(now.saturating_sub(created)))
                .unwrap_or(wall_now);
            emit(by_bridge.get(&u.bridge).copied(), &u, "start", at);
        }
        for u in ended {
            emit(by_bridge.get(&u.bridge).copied(), &u, "end", wall_now);
        }
    }

    /// Compares a pass with the last: (uses that began, uses that ended).
    pub fn diff(&mut self, current: HashMap<Use, u64>) -> (Vec<(Use, u64)>, Vec<Use>) {
        let mut started: Vec<(Use, u64)> = current
            .iter()
            .filter(|(u, _)| !self.seen.contains_key(u))
            .map(|(u, c)| (*u, *c))
            .collect();
        let mut ended: Vec<Use> = self
            .seen
            .keys()
            .filter(|u| !current.contains_key(u))
            .copied()
            .collect();
        started.sort_by_key(|(u, c)| (*c, u.guest, u.outside));
        ended.sort_by_key(|u| (u.guest, u.outside));
        self.seen = current;
        (started, ended)
    }
}

fn ip(wire: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(wire))
}

/// The live uses of the logged networks.
fn current_uses(dir: &std::path::Path, targets: &[Target], now: u64) -> HashMap<Use, u64> {
    let eim: HashSet<u32> = targets.iter().filter(|t| t.eim).map(|t| t.bridge).collect();
    let per_dest: HashSet<u32> = targets
        .iter()
        .filter(|t| !t.eim)
        .map(|t| t.bridge)
        .collect();
    let mut out: HashMap<Use, u64> = HashMap::new();
    if !eim.is_empty() {
        for (k, m) in maps::nat_mappings(dir).unwrap_or_default() {
            if eim.contains(&m.bridge_ifindex) {
                let u = Use {
                    bridge: m.bridge_ifindex,
                    proto: k.proto,
                    guest: (ip(m.addr), u16::from_be(m.port)),
                    outside: (ip(k.addr), u16::from_be(k.port)),
                };
                out.insert(u, m.created_ns);
            }
        }
    }
    if !per_dest.is_empty() {
        for (k, e) in maps::ct_entries(dir).unwrap_or_default() {
            if e.dir == ctdir::ORIGINAL
                && e.nat == nat_kind::SNAT
                && e.expires_ns > now
                && per_dest.contains(&e.bridge_ifindex)
            {
                let u = Use {
                    bridge: e.bridge_ifindex,
                    proto: k.proto,
                    guest: (ip(k.saddr), u16::from_be(k.sport)),
                    outside: (ip(e.xlate.saddr), u16::from_be(e.xlate.sport)),
                };
                let c = out.entry(u).or_insert(e.created_ns);
                *c = (*c).min(e.created_ns);
            }
        }
    }
    out
}

/// The line for one use.
pub fn line(network: &str, mac: &str, u: &Use, event: &str, at: SystemTime) -> String {
    let proto = match u.proto {
        1 => "icmp".to_string(),
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        p => p.to_string(),
    };
    format!(
        "{} nat mapping {event} network={network} mac={mac} ip={} port={} outside={}:{} proto={proto}",
        rfc3339(at),
        u.guest.0,
        u.guest.1,
        u.outside.0,
        u.outside.1,
    )
}

fn emit(t: Option<&Target>, u: &Use, event: &str, at: SystemTime) {
    let (network, mac, file) = match t {
        Some(t) => (
            t.network.as_str(),
            t.macs.get(&u.guest.0).map(String::as_str).unwrap_or("-"),
            t.file.as_ref(),
        ),
        // Its network stopped logging (or went) since the last pass.
        None => ("-", "-", None),
    };
    let l = line(network, mac, u, event, at);
    match file {
        Some(path) => {
            let w = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{l}"));
            if let Err(e) = w {
                tracing::warn!("nat log {}: {e}", path.display());
            }
        }
        None => tracing::info!(target: "netd::nat_log", "{l}"),
    }
}

/// UTC, to the second: "2026-12-03T14:03:07Z".
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_306_587);
        assert_eq!(rfc3339(t), "2026-12-03T14:03:07Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    fn u(gport: u16, oport: u16) -> Use {
        Use {
            bridge: 7,
            proto: 17,
            guest: (Ipv4Addr::new(192, 168, 122, 10), gport),
            outside: (Ipv4Addr::new(198, 51, 100, 2), oport),
        }
    }

    #[test]
    fn a_use_starts_once_and_ends_once() {
        let mut log = NatLog::default();
        let (s, e) = log.diff([(u(5000, 41234), 10)].into());
        assert_eq!((s, e), (vec![(u(5000, 41234), 10)], vec![]));
        // Still there: nothing; a second one: its start only.
        let (s, e) = log.diff([(u(5000, 41234), 10), (u(5001, 41236), 20)].into());
        assert_eq!((s, e), (vec![(u(5001, 41236), 20)], vec![]));
        // The first is gone: its end.
        let (s, e) = log.diff([(u(5001, 41236), 20)].into());
        assert_eq!((s, e), (vec![], vec![u(5000, 41234)]));
        // The same guest end on another outside port is another use.
        let (s, e) = log.diff([(u(5001, 41238), 30)].into());
        assert_eq!((s, e), (vec![(u(5001, 41238), 30)], vec![u(5001, 41236)]));
    }

    #[test]
    fn the_line_answers_who_used_a_port_when() {
        let at = UNIX_EPOCH + Duration::from_secs(1_796_306_587);
        assert_eq!(
            line("default", "52:54:00:6f:78:f3", &u(5000, 41234), "start", at),
            "2026-12-03T14:03:07Z nat mapping start network=default mac=52:54:00:6f:78:f3 ip=192.168.122.10 port=5000 outside=198.51.100.2:41234 proto=udp"
        );
    }
}
