//! A network's lifecycle as steps over the kernel traits (kernel.rs):
//! bridge, addresses, datapath, uplink, forwards, dnsmasq.
//!
//! - [`start`] applies them in order, recording in the run record what each
//!   created before it can fail; on an error the caller hands that record to
//!   [`tear_down`], which undoes exactly what it says, in reverse.
//! - [`adopt`] (a daemon restart, or a retry of a degraded network) checks
//!   every step against the kernel and applies only what is missing; it is
//!   idempotent and never undoes anything: a step that fails is reported and
//!   the others still run, so what works keeps working.
//! - [`tear_down`] runs on `net stop` / `undefine` only, and keeps going past
//!   failures.

use super::kernel::{DhcpServer, Kernel, Links};
use super::store::RunRecord;
use super::teardown::Teardown;
use crate::config::{self, Mode, Network};
use crate::dataplane::Hook;
use crate::link::BridgeSpec;
use anyhow::{Result, anyhow, bail};
use netd_common::NetConfig;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One step that failed, for `status`, metrics and `net info`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepError {
    pub step: &'static str,
    pub error: String,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

fn step_error(step: &'static str, e: anyhow::Error) -> StepError {
    StepError {
        step,
        error: format!("{e:#}").replace('\n', " "),
    }
}

/// Brings up a network that is not running. `rec` must name the bridge;
/// every step records what it created in `rec` (and `dns`) before it can
/// fail, so [`tear_down`] of them after an error removes exactly that.
/// `shared` holds the uplinks other running networks use.
pub async fn start<K: Kernel>(
    k: &mut K,
    net: &Network,
    mac: [u8; 6],
    rec: &mut RunRecord,
    dns: &mut Option<K::Server>,
    shared: &BTreeSet<String>,
) -> Result<()> {
    if net.mode.owns_bridge() {
        if let Some(l) = k.link_by_name(&rec.bridge).await? {
            bail!(
                "bridge name {:?} is in use by a device netd did not create (ifindex {})",
                rec.bridge,
                l.index
            );
        }
        rec.bridge_ifindex = k.create_bridge(&bridge_spec(net, &rec.bridge, mac)).await?;
        rec.created_bridge = true;
        ensure_addresses(k, net, rec.bridge_ifindex).await?;
    } else {
        let l = k.link_by_name(&rec.bridge).await?.ok_or_else(|| {
            anyhow!(
                "bridge {:?} does not exist; create it on the host first",
                rec.bridge
            )
        })?;
        if !l.is_bridge {
            bail!("{:?} is not a bridge", rec.bridge);
        }
        rec.bridge_ifindex = l.index;
    }
    ensure_datapath(k, net, rec).await?;
    ensure_uplink(k, net, rec, shared, false).await?;
    ensure_forwards(k, net, rec).await?;
    ensure_dnsmasq(k, net, rec, dns).await
}

/// Re-uses what runs and applies only what is missing, step by step. Never
/// removes anything that works; returns the steps that failed (empty: the
/// network is whole). Uplink hooks are re-attached even when present, which
/// swaps this build's programs into the same pinned links.
pub async fn adopt<K: Kernel>(
    k: &mut K,
    net: &Network,
    mac: [u8; 6],
    rec: &mut RunRecord,
    dns: &mut Option<K::Server>,
    shared: &BTreeSet<String>,
) -> Vec<StepError> {
    let mut errors = Vec::new();
    match ensure_bridge(k, net, mac, rec).await {
        Ok(()) => {
            let idx = rec.bridge_ifindex;
            if net.mode.owns_bridge()
                && let Err(e) = ensure_addresses(k, net, idx).await
            {
                errors.push(step_error("addresses", e));
            }
            if let Err(e) = ensure_datapath(k, net, rec).await {
                errors.push(step_error("datapath", e));
            }
            if let Err(e) = ensure_uplink(k, net, rec, shared, true).await {
                errors.push(step_error("uplink", e));
            }
            if let Err(e) = ensure_forwards(k, net, rec).await {
                errors.push(step_error("forwards", e));
            }
        }
        Err(e) => errors.push(step_error("bridge", e)),
    }
    // dnsmasq does not need the bridge to exist (bind-dynamic), and guests
    // renewing leases need it most when something else is broken.
    if let Err(e) = ensure_dnsmasq(k, net, rec, dns).await {
        errors.push(step_error("dnsmasq", e));
    }
    errors
}

/// Removes what `rec` says the network owns, in reverse order of creation,
/// continuing past failures. Uplinks in `shared` stay hooked.
pub async fn tear_down<K: Kernel>(
    k: &mut K,
    rec: &RunRecord,
    dns: Option<K::Server>,
    shared: &BTreeSet<String>,
) -> Result<()> {
    let mut t = Teardown::default();
    let net = &rec.definition;
    match dns {
        Some(d) => t.step("stopping dnsmasq", d.stop().await),
        // One left by an earlier daemon, or by a degraded adoption.
        None if net.wants_dnsmasq() => k.stop_orphans(&net.name).await,
        None => {}
    }
    t.step(
        "removing dnsmasq files",
        k.remove_files(&net.name, rec.transient),
    );
    let (v4, v6) = prefixes(net);
    if rec.bridge_ifindex != 0 {
        for hook in [Hook::BridgeIngress, Hook::BridgeEgress] {
            t.step(
                &format!("detaching {}", hook.as_str()),
                k.detach(hook, &rec.bridge),
            );
        }
        t.step(
            "removing port forwards",
            k.sync_forwards(rec.bridge_ifindex, &[]),
        );
        t.step(
            "removing the network from the datapath",
            k.withdraw(rec.bridge_ifindex, v4, v6),
        );
    }
    for uplink in &rec.uplinks {
        t.step(
            &format!("releasing uplink {uplink}"),
            release_uplink(k, uplink, shared).await,
        );
    }
    if rec.created_bridge && rec.bridge_ifindex != 0 {
        // Only if that ifindex is still our bridge: a bridge deleted behind
        // our back frees its index for some other device.
        let ours = match k.link_by_index(rec.bridge_ifindex).await {
            Ok(Some(l)) => l.name == rec.bridge,
            _ => false,
        };
        if ours {
            t.step(
                "deleting the bridge",
                k.delete_link(rec.bridge_ifindex).await,
            );
        }
    }
    t.finish()
}

// ---- the steps --------------------------------------------------------------

fn bridge_spec(net: &Network, name: &str, mac: [u8; 6]) -> BridgeSpec {
    BridgeSpec {
        name: name.to_string(),
        mac,
        mtu: net.mtu,
        stp: net.stp.enabled,
        forward_delay_secs: net.stp.delay,
    }
}

/// A network's IPv4 subnet and IPv6 prefix, each (address, length).
type Prefixes = (Option<(Ipv4Addr, u8)>, Option<(Ipv6Addr, u8)>);

fn prefixes(net: &Network) -> Prefixes {
    (
        net.ipv4.as_ref().and_then(|v| v.parsed().ok()),
        net.ipv6.as_ref().and_then(|v| v.parsed().ok()),
    )
}

/// The bridge of the record still exists; else one of that name (someone
/// recreated it); else, if netd owns it, a new one with the same MAC. A
/// new ifindex drops the datapath entries of the old one.
async fn ensure_bridge<K: Kernel>(
    k: &mut K,
    net: &Network,
    mac: [u8; 6],
    rec: &mut RunRecord,
) -> Result<()> {
    if rec.bridge_ifindex != 0
        && let Some(l) = k.link_by_index(rec.bridge_ifindex).await?
        && l.name == rec.bridge
    {
        return Ok(());
    }
    let new = match k.link_by_name(&rec.bridge).await? {
        // A bridge of our name but not our MAC is someone else's: never
        // taken over (a later `net stop` would delete it), as repair.rs.
        Some(l) if l.is_bridge && net.mode.owns_bridge() && l.mac.is_some_and(|m| m != mac) => {
            bail!(
                "{:?} exists but is not the bridge netd made (another MAC); remove or rename it",
                rec.bridge
            )
        }
        Some(l) if l.is_bridge => l.index,
        Some(_) => bail!("{:?} exists but is not a bridge", rec.bridge),
        None if net.mode.owns_bridge() => {
            let i = k.create_bridge(&bridge_spec(net, &rec.bridge, mac)).await?;
            rec.created_bridge = true;
            tracing::warn!(
                "network {}: bridge {} was gone; recreated it",
                net.name,
                rec.bridge
            );
            i
        }
        None => bail!("bridge {:?} does not exist", rec.bridge),
    };
    let old = std::mem::replace(&mut rec.bridge_ifindex, new);
    if old != 0 && old != new {
        let (v4, v6) = prefixes(net);
        k.sync_forwards(old, &[])?;
        k.withdraw(old, v4, v6)?;
    }
    Ok(())
}

/// The definition's addresses are on the bridge.
async fn ensure_addresses<K: Links>(k: &K, net: &Network, idx: u32) -> Result<()> {
    let have = k.addresses(idx).await?;
    let (v4, v6) = prefixes(net);
    let want = [
        v4.map(|(a, p)| (IpAddr::V4(a), p)),
        v6.map(|(a, p)| (IpAddr::V6(a), p)),
    ];
    for (a, p) in want.into_iter().flatten() {
        if !have.contains(&(a, p)) {
            k.add_address(idx, a, p).await?;
        }
    }
    Ok(())
}

/// The network's entry in the datapath, and the bridge hooks.
async fn ensure_datapath<K: Kernel>(k: &mut K, net: &Network, rec: &RunRecord) -> Result<()> {
    let uplink_ifindex = match &net.uplink {
        Some(u) => {
            k.uplink(u)
                .await?
                .ok_or_else(|| anyhow!("uplink {u:?} does not exist"))?
                .index
        }
        None => 0,
    };
    let Some(cfg) = datapath_config(net, uplink_ifindex)? else {
        return Ok(());
    };
    let (v4, v6) = prefixes(net);
    k.publish(rec.bridge_ifindex, &cfg, v4, v6)?;
    k.publish_extras(rec.bridge_ifindex, net)?;
    if net.strict {
        // Host entries bind before the first packet; leases follow within
        // a poll of the lease file (lane.rs).
        k.sync_bindings(net, rec.bridge_ifindex)?;
    }
    for hook in [Hook::BridgeIngress, Hook::BridgeEgress] {
        k.attach(hook, &rec.bridge)?;
    }
    Ok(())
}

fn routes_out(net: &Network) -> bool {
    matches!(net.mode, Mode::Nat | Mode::Route | Mode::Open)
}

/// The configured uplink, else whatever holds the default route now.
async fn uplink_for<K: Links>(k: &K, net: &Network) -> Result<Option<String>> {
    if let Some(u) = &net.uplink {
        return Ok(Some(u.to_string()));
    }
    let name = k.default_route_dev().await?;
    if name.is_none() {
        tracing::warn!(
            "network {}: no default route yet, so no uplink to masquerade on",
            net.name
        );
    }
    Ok(name)
}

/// Hooks the uplink programs on the network's uplink and publishes its
/// addresses; releases uplinks it no longer uses. `reattach`: hook even if
/// another network did already (adoption swaps programs in).
async fn ensure_uplink<K: Kernel>(
    k: &mut K,
    net: &Network,
    rec: &mut RunRecord,
    shared: &BTreeSet<String>,
    reattach: bool,
) -> Result<()> {
    if !routes_out(net) || datapath_config(net, 0)?.is_none() {
        return Ok(());
    }
    let Some(want) = uplink_for(k, net).await? else {
        // No default route right now (a flapping router, say): keep what
        // the network has; a route event moves it when one appears.
        return Ok(());
    };
    let want = Some(want);
    for old in rec.uplinks.clone() {
        if Some(&old) != want.as_ref() {
            release_uplink(k, &old, shared).await?;
            rec.uplinks.retain(|u| *u != old);
        }
    }
    let Some(uplink) = want else {
        return Ok(());
    };
    if !rec.uplinks.contains(&uplink) {
        rec.uplinks.push(uplink.clone());
    }
    use_uplink(k, &uplink, reattach || !shared.contains(&uplink)).await
}

/// Publishes an uplink's addresses and (if `attach`) hooks its programs.
pub async fn use_uplink<K: Kernel>(k: &mut K, uplink: &str, attach: bool) -> Result<()> {
    let u = k
        .uplink(uplink)
        .await?
        .ok_or_else(|| anyhow!("uplink {uplink:?} does not exist"))?;
    if attach {
        for hook in [Hook::UplinkIngress, Hook::UplinkEgress] {
            k.attach(hook, uplink)?;
        }
    }
    k.set_uplink(&u)
}

/// Unhooks an uplink no other network uses (`shared`) and forgets its addresses.
pub async fn release_uplink<K: Kernel>(
    k: &mut K,
    uplink: &str,
    shared: &BTreeSet<String>,
) -> Result<()> {
    if shared.contains(uplink) {
        return Ok(());
    }
    for hook in [Hook::UplinkIngress, Hook::UplinkEgress] {
        k.detach(hook, uplink)?;
    }
    if let Some(u) = k.uplink(uplink).await? {
        k.remove_uplink(u.index)?;
    }
    Ok(())
}

/// The forward entries of the network are exactly what its forwards
/// expand to over its uplinks' addresses now.
async fn ensure_forwards<K: Kernel>(k: &mut K, net: &Network, rec: &RunRecord) -> Result<()> {
    if datapath_config(net, 0)?.is_none() {
        return Ok(());
    }
    let want = if routes_out(net) {
        let mut addrs = Vec::new();
        for u in &rec.uplinks {
            if let Some(a) = k.uplink(u).await?.and_then(|u| u.v4) {
                addrs.push(a);
            }
        }
        super::forwards::expand(net, rec.bridge_ifindex, &addrs)
    } else {
        Vec::new()
    };
    k.sync_forwards(rec.bridge_ifindex, &want)
}

/// dnsmasq runs on the current config: the one we hold, or the one a
/// previous daemon left (adopted), else a new one. Restarted only when its
/// config changed, and then the old one has exited before the new starts.
async fn ensure_dnsmasq<K: Kernel>(
    k: &mut K,
    net: &Network,
    rec: &mut RunRecord,
    dns: &mut Option<K::Server>,
) -> Result<()> {
    if !net.wants_dnsmasq() {
        return Ok(());
    }
    k.write_files(net, &rec.bridge)?;
    let current = match dns.take() {
        Some(d) => Some(d),
        None => k.adopt(&net.name),
    };
    match current {
        Some(d) if d.config_current() => {
            // Host files may have changed while nobody was watching.
            let r = d.reload();
            *dns = Some(d);
            r?;
        }
        Some(d) => {
            tracing::info!(
                "network {}: dnsmasq's config changed; restarting it",
                net.name
            );
            d.stop().await?;
            *dns = Some(k.start(&net.name).await?);
        }
        None => *dns = Some(k.start(&net.name).await?),
    }
    rec.dnsmasq_pid = dns.as_ref().and_then(|d| d.pid());
    Ok(())
}

/// The datapath's view of a network; None for modes with no datapath.
pub fn datapath_config(net: &Network, uplink_ifindex: u32) -> Result<Option<NetConfig>> {
    let mode = match net.mode {
        Mode::Nat => netd_common::mode::NAT,
        Mode::Route => netd_common::mode::ROUTE,
        Mode::Open => netd_common::mode::OPEN,
        Mode::Isolated => netd_common::mode::ISOLATED,
        Mode::Bridge | Mode::Hostdev => return Ok(None),
    };
    let (gw, prefix) = match &net.ipv4 {
        Some(v4) => v4.parsed().map_err(anyhow::Error::msg)?,
        None => (Ipv4Addr::UNSPECIFIED, 0),
    };
    let mask = config::mask4(prefix);
    let (port_min, port_max) = net.nat_ports();
    Ok(Some(NetConfig {
        subnet: (u32::from(gw) & mask).to_be(),
        mask: mask.to_be(),
        gateway: u32::from(gw).to_be(),
        nat_addr: net
            .nat
            .as_ref()
            .and_then(|n| n.address)
            .map(|a| u32::from(a).to_be())
            .unwrap_or(0),
        port_min,
        port_max,
        uplink_ifindex,
        mode,
        flags: datapath_flags(net),
        _pad: [0; 2],
    }))
}

/// `net_flags` for a network's datapath entry.
fn datapath_flags(net: &Network) -> u8 {
    use netd_common::net_flags;
    let mut f = 0;
    if net.ipv6.as_ref().is_some_and(|v| v.nat) {
        f |= net_flags::NAT66;
    }
    if net.strict {
        f |= net_flags::STRICT;
    }
    if net.host_access == config::HostAccess::DhcpDns {
        f |= net_flags::HOST_DHCP_DNS;
    }
    if net.mode == Mode::Nat {
        f |= config::Nat::behaviour_flags(net.nat.as_ref());
    }
    f
}
