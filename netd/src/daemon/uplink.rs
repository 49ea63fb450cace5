//! Keeps the datapath's view of uplinks current from rtnetlink events.

use super::Daemon;
use crate::dataplane::maps;
use crate::link::LinkEvent;
use std::sync::Arc;

pub async fn watch(daemon: Arc<Daemon>) {
    let mut events = match crate::link::subscribe().await {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!("cannot watch links and addresses: {e:#}");
            return;
        }
    };
    while let Some(ev) = events.recv().await {
        let mut state = daemon.state.lock().await;
        state.on_link_event(&ev).await;
    }
}

impl super::State {
    /// An uplink's address changed: publish the new one and, as MASQUERADE
    /// does, forget connections translated to the old one (their replies
    /// can no longer arrive).
    pub async fn on_link_event(&mut self, ev: &LinkEvent) {
        match ev {
            LinkEvent::AddressChanged { index } => self.on_address_change(*index).await,
            LinkEvent::RouteChanged => self.follow_default_route().await,
            _ => {}
        }
    }

    async fn on_address_change(&mut self, index: u32) {
        let index = &index;
        let Some(name) = crate::link::ifname_of(*index) else {
            return;
        };
        if !self
            .running
            .values()
            .any(|r| r.record.uplinks.contains(&name))
        {
            return;
        }
        let dir = self.dp.maps_dir();
        let old = maps::uplink_addr(&dir, *index).ok().flatten();
        let new = self.nl.primary_ipv4(*index).await.ok().flatten();
        let new6 = self.global_ipv6(*index).await;
        if let Err(e) = maps::set_uplink(&dir, *index, new, new6) {
            tracing::warn!("updating uplink {name}: {e:#}");
        }
        if old == new {
            return;
        }
        tracing::info!("uplink {name}: address {old:?} -> {new:?}");
        // Forwards without an address follow the uplink's.
        let users: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.record.uplinks.contains(&name))
            .map(|(n, _)| n.clone())
            .collect();
        for n in users {
            if let Err(e) = self.sync_forwards(&n).await {
                tracing::warn!("network {n}: re-applying forwards: {e:#}");
            }
        }
        if let Some(old) = old {
            let old_be = u32::from(old).to_be();
            match maps::ct_remove_where(&dir, |k, e| {
                e.nat == netd_common::nat_kind::SNAT
                    && (e.xlate.saddr == old_be || k.daddr == old_be)
            }) {
                Ok(n) => tracing::info!("flushed {n} conntrack entries for {old}"),
                Err(e) => tracing::warn!("flushing conntrack for {old}: {e:#}"),
            }
        }
    }
}

impl super::State {
    /// An uplink's first global IPv6 address, the NAT66 source.
    pub(super) async fn global_ipv6(&self, index: u32) -> Option<std::net::Ipv6Addr> {
        let addrs = self.nl.addresses(Some(index)).await.ok()?;
        addrs.into_iter().find_map(|a| match a.addr {
            std::net::IpAddr::V6(v6)
                if (v6.segments()[0] & 0xffc0) != 0xfe80 && !v6.is_loopback() =>
            {
                Some(v6)
            }
            _ => None,
        })
    }

    /// Networks without a configured uplink masquerade on whatever holds the
    /// default route; when that moves, their uplink moves with it.
    async fn follow_default_route(&mut self) {
        let Ok(Some(route)) = self.nl.default_route_v4().await else {
            return;
        };
        let Some(now) = route.oif.and_then(crate::link::ifname_of) else {
            return;
        };
        let movers: Vec<(String, Vec<String>)> = self
            .running
            .iter()
            .filter(|(_, r)| {
                r.record.definition.uplink.is_none() && r.record.uplinks != [now.clone()]
            })
            .filter(|(_, r)| {
                matches!(
                    r.record.definition.mode,
                    crate::config::Mode::Nat
                        | crate::config::Mode::Route
                        | crate::config::Mode::Open
                )
            })
            .map(|(n, r)| (n.clone(), r.record.uplinks.clone()))
            .collect();
        for (name, old) in movers {
            tracing::info!(
                "network {name}: default route moved to {now}; moving the uplink from {old:?}"
            );
            if let Err(e) = self.move_uplink(&name, &old, &now).await {
                tracing::warn!("network {name}: moving the uplink to {now}: {e:#}");
            }
            if let Err(e) = self.sync_forwards(&name).await {
                tracing::warn!("network {name}: re-applying forwards: {e:#}");
            }
        }
        self.save_running();
    }
}

/// Removes expired connections every few seconds, and writes the NAT
/// mapping logs of the networks that ask for them.
pub async fn gc(daemon: Arc<Daemon>) {
    let dir = daemon.paths.maps_dir();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    let mut natlog = Some(super::natlog::NatLog::default());
    loop {
        tick.tick().await;
        let targets = daemon.state.lock().await.nat_log_targets();
        let dir = dir.clone();
        let mut log = natlog.take().unwrap_or_default();
        let r = tokio::task::spawn_blocking(move || {
            let r = maps::gc(&dir);
            log.poll(&dir, &targets);
            (r, log)
        })
        .await;
        match r {
            Ok((r, log)) => {
                natlog = Some(log);
                match r {
                    Ok((0, 0)) => {}
                    Ok((ct, frags)) => {
                        tracing::debug!("gc: {ct} conntrack entries, {frags} fragment records")
                    }
                    Err(e) => tracing::debug!("gc: {e:#}"),
                }
            }
            Err(_) => natlog = Some(Default::default()),
        }
    }
}

impl super::State {
    /// The running NAT networks with `nat.log = "mappings"`.
    pub(super) fn nat_log_targets(&self) -> Vec<super::natlog::Target> {
        self.running
            .values()
            .filter(|r| r.record.bridge_ifindex != 0)
            .filter_map(|r| {
                let net = &r.record.definition;
                let nat = net.nat.as_ref()?;
                nat.log?;
                let macs = self
                    .leases(&net.name)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|l| match l.ip {
                        std::net::IpAddr::V4(a) if !l.mac.is_empty() => Some((a, l.mac)),
                        _ => None,
                    })
                    .collect();
                Some(super::natlog::Target {
                    bridge: r.record.bridge_ifindex,
                    network: net.name.clone(),
                    eim: nat.mapping.unwrap_or_default()
                        == crate::config::NatMappingKind::EndpointIndependent,
                    file: nat.log_file.clone(),
                    macs,
                })
            })
            .collect()
    }
}
