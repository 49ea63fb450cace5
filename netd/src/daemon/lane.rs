//! Strict networks: keeps each guest's MAC/IPv4 binding in the datapath in
//! step with its static host entry and with what dnsmasq leased it.
//!
//! dnsmasq rewrites its lease file as soon as it grants, renews or releases
//! a lease, so polling that file every [`POLL`] binds a new lease before the
//! guest has finished configuring its address (it ARP-probes first, from
//! 0.0.0.0, which strict networks let through).

use super::Daemon;
use super::network::State;
use crate::config::Network;
use crate::dataplane::maps;
use crate::dhcp::{self, Lease};
use anyhow::Result;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

pub const POLL: Duration = Duration::from_millis(250);

/// The pairs a strict network's guests may send from: every static host
/// entry, then every live IPv4 lease of a MAC without one (dnsmasq hands a
/// MAC with a host entry that address, so the entry is the truth).
pub fn bindings(net: &Network, leases: &[Lease], now: u64) -> BTreeMap<[u8; 6], Ipv4Addr> {
    let mut out = BTreeMap::new();
    for l in leases {
        let IpAddr::V4(ip) = l.ip else { continue };
        if l.expiry != 0 && l.expiry <= now {
            continue;
        }
        if let Ok(mac) = crate::config::mac_bytes(&l.mac) {
            out.insert(mac, ip);
        }
    }
    for h in net.ipv4_dhcp_hosts() {
        if let Ok(mac) = crate::config::mac_bytes(&h.mac) {
            out.insert(mac, h.ip);
        }
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl State {
    /// Writes a strict network's bindings to the datapath.
    pub(super) fn sync_bindings(&self, name: &str, net: &Network, bridge: u32) -> Result<usize> {
        let paths = dhcp::paths(&self.paths.run_dir, &self.paths.state_dir, name);
        // A lease file being rewritten reads as what it held or what it
        // holds; a missing one as no leases.
        let leases = dhcp::read_leases(&paths.leasefile).unwrap_or_default();
        let want = bindings(net, &leases, unix_now());
        maps::sync_bindings(&self.dp.maps_dir(), bridge, &want)
    }

    fn sync_all_bindings(&self) {
        for (name, run) in &self.running {
            let net = &run.record.definition;
            if !net.strict || run.record.bridge_ifindex == 0 {
                continue;
            }
            match self.sync_bindings(name, net, run.record.bridge_ifindex) {
                Ok(0) => {}
                Ok(n) => tracing::debug!("network {name}: {n} binding(s) changed"),
                Err(e) => tracing::warn!("network {name}: syncing bindings: {e:#}"),
            }
        }
    }
}

/// Polls the lease files of strict networks.
pub async fn watch(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        daemon.state.lock().await.sync_all_bindings();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(expiry: u64, mac: &str, ip: &str) -> Lease {
        Lease {
            expiry,
            mac: mac.into(),
            ip: ip.parse().unwrap(),
            hostname: None,
            client_id: None,
        }
    }

    #[test]
    fn host_entries_win_and_expired_or_v6_leases_do_not_bind() {
        let net = crate::config::from_toml(
            r#"
name = "s"
strict = true
[ipv4]
address = "10.1.0.1/24"
hosts = [{ mac = "52:54:00:00:00:01", ip = "10.1.0.5" }]
"#,
        )
        .unwrap();
        let leases = [
            lease(0, "52:54:00:00:00:01", "10.1.0.77"),
            lease(2000, "52:54:00:00:00:02", "10.1.0.20"),
            lease(999, "52:54:00:00:00:03", "10.1.0.30"),
            lease(2000, "", "fd00::5"),
            lease(2000, "not-a-mac", "10.1.0.40"),
        ];
        let b = bindings(&net, &leases, 1000);
        let want: BTreeMap<[u8; 6], Ipv4Addr> = [
            ([0x52, 0x54, 0, 0, 0, 1], "10.1.0.5".parse().unwrap()),
            ([0x52, 0x54, 0, 0, 0, 2], "10.1.0.20".parse().unwrap()),
        ]
        .into();
        assert_eq!(b, want);
    }
}
