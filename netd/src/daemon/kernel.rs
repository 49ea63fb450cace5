//! The kernel-facing parts of a network's lifecycle, behind three small
//! traits: links (rtnetlink), the datapath (pinned maps and tcx hooks) and
//! DHCP (dnsmasq). `lifecycle.rs` drives start, rollback, adoption and
//! teardown through them only, so unit tests run it against in-memory fakes
//! (lifecycle_tests.rs) without root; [`Real`] is the host.

use crate::config::Network;
use crate::dataplane::maps::ForwardEntry;
use crate::dataplane::{self, Dataplane, Hook};
use crate::dhcp::{self, Apply, Dnsmasq};
use crate::link::{BridgeSpec, LinkInfo, Netlink};
use crate::paths::Paths;
use anyhow::Result;
use netd_common::NetConfig;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An uplink as the datapath needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct UplinkAddrs {
    pub index: u32,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

pub trait Links: Send + Sync {
    fn link_by_name(&self, name: &str) -> impl Future<Output = Result<Option<LinkInfo>>> + Send;
    fn link_by_index(&self, index: u32) -> impl Future<Output = Result<Option<LinkInfo>>> + Send;
    /// Creates, configures and sets up a bridge; its ifindex.
    fn create_bridge(&self, spec: &BridgeSpec) -> impl Future<Output = Result<u32>> + Send;
    fn delete_link(&self, index: u32) -> impl Future<Output = Result<()>> + Send;
    fn addresses(&self, index: u32) -> impl Future<Output = Result<Vec<(IpAddr, u8)>>> + Send;
    fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The device that holds the IPv4 default route now.
    fn default_route_dev(&self) -> impl Future<Output = Result<Option<String>>> + Send;
    /// An uplink's index and masquerade addresses; None if it does not exist.
    fn uplink(&self, name: &str) -> impl Future<Output = Result<Option<UplinkAddrs>>> + Send;
}

pub trait Datapath: Send {
    /// Publishes a network. An identical entry is left alone (its counters
    /// are kept), so adoption can call it every time.
    fn publish(
        &mut self,
        bridge_ifindex: u32,
        cfg: &NetConfig,
        subnet: Option<(Ipv4Addr, u8)>,
        subnet6: Option<(Ipv6Addr, u8)>,
    ) -> Result<()>;
    /// Publishes what a NAT network's definition adds to its entry: its
    /// limits and timeouts. Idempotent.
    fn publish_extras(&mut self, _bridge_ifindex: u32, _net: &Network) -> Result<()> {
        Ok(())
    }
    /// Binds a strict network's guests (MAC/IPv4 from host entries and
    /// leases) before its hooks see a packet.
    fn sync_bindings(&mut self, net: &Network, bridge_ifindex: u32) -> Result<()>;
    /// Withdraws a network and its connections; missing entries are fine.
    fn withdraw(
        &mut self,
        bridge_ifindex: u32,
        subnet: Option<(Ipv4Addr, u8)>,
        subnet6: Option<(Ipv6Addr, u8)>,
    ) -> Result<()>;
    /// Hooks a program (or swaps this build's into the link already there).
    fn attach(&mut self, hook: Hook, ifname: &str) -> Result<()>;
    fn detach(&mut self, hook: Hook, ifname: &str) -> Result<()>;
    fn set_uplink(&mut self, u: &UplinkAddrs) -> Result<()>;
    fn remove_uplink(&mut self, index: u32) -> Result<()>;
    /// Makes a bridge's forward entries exactly `want`.
    fn sync_forwards(&mut self, bridge_ifindex: u32, want: &[ForwardEntry]) -> Result<()>;
}

/// A running DHCP server of one network.
pub trait DhcpServer: Send + Sync {
    fn pid(&self) -> Option<u32>;
    /// Rereads host files without a restart.
    fn reload(&self) -> Result<()>;
    /// Whether it runs the config now on disk (else it needs a restart).
    fn config_current(&self) -> bool;
    /// Stops it and returns once it has exited.
    fn stop(self) -> impl Future<Output = Result<()>> + Send;
}

pub trait Dhcp: Send {
    type Server: DhcpServer;
    /// Writes the network's files; says what a running server needs.
    fn write_files(&mut self, net: &Network, bridge: &str) -> Result<Apply>;
    fn remove_files(&mut self, net: &str, forget_leases: bool) -> Result<()>;
    /// Starts a server and returns once it serves.
    fn start(&mut self, net: &str) -> impl Future<Output = Result<Self::Server>> + Send;
    /// Takes over a server a previous daemon left running, if there is one.
    fn adopt(&mut self, net: &str) -> Option<Self::Server>;
    /// Stops any server running the network's config we hold no handle for.
    fn stop_orphans(&mut self, net: &str) -> impl Future<Output = ()> + Send;
}

/// All three, as the lifecycle takes them.
pub trait Kernel: Links + Datapath + Dhcp {}
impl<T: Links + Datapath + Dhcp> Kernel for T {}

// ---- the host -----------------------------------------------------------------

/// The host's kernel, borrowed from the daemon state for one operation.
pub struct Real<'a> {
    pub nl: &'a Netlink,
    pub dp: &'a mut Dataplane,
    pub paths: &'a Paths,
}

impl Links for Real<'_> {
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        self.nl.link_by_name(name).await
    }
    async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        self.nl.link_by_index(index).await
    }
    async fn create_bridge(&self, spec: &BridgeSpec) -> Result<u32> {
        self.nl.create_bridge(spec).await
    }
    async fn delete_link(&self, index: u32) -> Result<()> {
        self.nl.delete_link(index).await
    }
    async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        Ok(self
            .nl
            .addresses(Some(index))
            .await?
            .into_iter()
            .map(|a| (a.addr, a.prefix))
            .collect())
    }
    async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        self.nl.add_address(index, addr, prefix).await
    }
    async fn default_route_dev(&self) -> Result<Option<String>> {
        self.nl.default_route_dev().await
    }
    async fn uplink(&self, name: &str) -> Result<Option<UplinkAddrs>> {
        let Some(index) = crate::link::ifindex_of(name) else {
            return Ok(None);
        };
        let v4 = self.nl.primary_ipv4(index).await?;
        let v6 = self
            .nl
            .addresses(Some(index))
            .await?
            .into_iter()
            .find_map(|a| match a.addr {
                IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80 && !v6.is_loopback() => {
                    Some(v6)
                }
                _ => None,
            });
        Ok(Some(UplinkAddrs { index, v4, v6 }))
    }
}

impl Datapath for Real<'_> {
    fn publish(
        &mut self,
        bridge_ifindex: u32,
        cfg: &NetConfig,
        subnet: Option<(Ipv4Addr, u8)>,
        subnet6: Option<(Ipv6Addr, u8)>,
    ) -> Result<()> {
        let dir = self.dp.maps_dir();
        let same = dataplane::maps::list_networks(&dir)?
            .iter()
            .any(|(i, c)| *i == bridge_ifindex && c == cfg);
        if !same {
            dataplane::maps::add_network(&dir, bridge_ifindex, cfg, subnet)?;
        }
        if let Some(p) = subnet6 {
            crate::link::set_ipv6_forwarding(true)?;
            dataplane::maps::add_subnet6(&dir, bridge_ifindex, p)?;
            dataplane::maps::set_gateway6(&dir, bridge_ifindex, p.0)?;
        }
        Ok(())
    }
    fn publish_extras(&mut self, bridge_ifindex: u32, net: &Network) -> Result<()> {
        let dir = self.dp.maps_dir();
        if net.mode == crate::config::Mode::Nat {
            let nat = net.nat.as_ref();
            dataplane::maps::set_nat_limits(
                &dir,
                bridge_ifindex,
                nat.and_then(|n| n.max_flows_per_guest).unwrap_or(0),
                nat.and_then(|n| n.max_ports_per_guest).unwrap_or(0),
            )?;
            let timeouts = crate::config::Nat::datapath_timeouts(nat);
            dataplane::maps::set_nat_timeouts(&dir, bridge_ifindex, Some(timeouts))?;
        }
        Ok(())
    }
    fn sync_bindings(&mut self, net: &Network, bridge_ifindex: u32) -> Result<()> {
        let paths = self.dhcp_paths(&net.name);
        // A lease file being rewritten reads as what it held or what it
        // holds; a missing one as no leases.
        let leases = dhcp::read_leases(&paths.leasefile).unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let want = super::lane::bindings(net, &leases, now);
        dataplane::maps::sync_bindings(&self.dp.maps_dir(), bridge_ifindex, &want).map(|_| ())
    }
    fn withdraw(
        &mut self,
        bridge_ifindex: u32,
        subnet: Option<(Ipv4Addr, u8)>,
        subnet6: Option<(Ipv6Addr, u8)>,
    ) -> Result<()> {
        let dir = self.dp.maps_dir();
        dataplane::maps::remove_gateway6(&dir, bridge_ifindex)?;
        dataplane::maps::remove_bindings(&dir, bridge_ifindex)?;
        dataplane::maps::set_nat_limits(&dir, bridge_ifindex, 0, 0)?;
        dataplane::maps::set_nat_timeouts(&dir, bridge_ifindex, None)?;
        if let Some(p) = subnet6 {
            dataplane::maps::remove_subnet6(&dir, p)?;
        }
        dataplane::maps::remove_network(&dir, bridge_ifindex, subnet)
    }
    fn attach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        self.dp.attach(hook, ifname)
    }
    fn detach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        self.dp.detach(hook, ifname)
    }
    fn set_uplink(&mut self, u: &UplinkAddrs) -> Result<()> {
        dataplane::maps::set_uplink(&self.dp.maps_dir(), u.index, u.v4, u.v6)
    }
    fn remove_uplink(&mut self, index: u32) -> Result<()> {
        dataplane::maps::remove_uplink(&self.dp.maps_dir(), index)
    }
    fn sync_forwards(&mut self, bridge_ifindex: u32, want: &[ForwardEntry]) -> Result<()> {
        let dir = self.dp.maps_dir();
        let want: BTreeSet<ForwardEntry> = want.iter().copied().collect();
        let have: BTreeSet<ForwardEntry> = dataplane::maps::list_forwards(&dir)?
            .into_iter()
            .map(|(e, _)| e)
            .filter(|e| e.bridge_ifindex == bridge_ifindex)
            .collect();
        let stale: Vec<ForwardEntry> = have.difference(&want).copied().collect();
        let new: Vec<ForwardEntry> = want.difference(&have).copied().collect();
        dataplane::maps::remove_forwards(&dir, &stale)?;
        dataplane::maps::add_forwards(&dir, &new)
    }
}

impl DhcpServer for Dnsmasq {
    fn pid(&self) -> Option<u32> {
        Dnsmasq::pid(self)
    }
    fn reload(&self) -> Result<()> {
        Dnsmasq::reload(self)
    }
    fn config_current(&self) -> bool {
        Dnsmasq::config_current(self)
    }
    async fn stop(self) -> Result<()> {
        Dnsmasq::stop(self).await
    }
}

impl Real<'_> {
    fn dhcp_paths(&self, net: &str) -> dhcp::DhcpPaths {
        dhcp::paths(&self.paths.run_dir, &self.paths.state_dir, net)
    }
}

impl Dhcp for Real<'_> {
    type Server = Dnsmasq;
    fn write_files(&mut self, net: &Network, bridge: &str) -> Result<Apply> {
        dhcp::sync_files(net, bridge, &self.dhcp_paths(&net.name))
    }
    fn remove_files(&mut self, net: &str, forget_leases: bool) -> Result<()> {
        let p = self.dhcp_paths(net);
        dhcp::remove_runtime_files(&p.conf);
        dhcp::remove_files(&p, forget_leases)
    }
    async fn start(&mut self, net: &str) -> Result<Dnsmasq> {
        Dnsmasq::start(net, &self.dhcp_paths(net).conf).await
    }
    fn adopt(&mut self, net: &str) -> Option<Dnsmasq> {
        Dnsmasq::adopt(net, &self.dhcp_paths(net).conf)
    }
    async fn stop_orphans(&mut self, net: &str) {
        Dnsmasq::stop_all(&self.dhcp_paths(net).conf).await
    }
}
