//! rtnetlink: bridges, addresses, routes, link and address events. Nothing
//! else in netd builds netlink messages.
//!
//! Every netlink socket acts on the network namespace of the thread that
//! opened it: [`Netlink::connect`] and [`subscribe`] open theirs when first
//! polled, on the calling thread.

mod error;
mod events;
mod sysctl;
#[cfg(test)]
mod tests;
mod vf;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, bail};
use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
    link::{
        BridgeStpState, InfoBridge, InfoData, InfoKind, LinkAttribute, LinkFlags,
        LinkInfo as NlLinkInfo, LinkMessage,
    },
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

pub use self::error::{NetlinkError, errno_of};
use self::error::{is_errno, nl, nl_lazy};
pub use self::events::{LinkEvent, subscribe};
pub use self::sysctl::{
    ifindex_of, ifname_of, netns_cookie, set_ipv4_forwarding, set_ipv6_forwarding, set_sysctl,
    sysctl,
};
pub use self::vf::{VfConfig, vf_config_bytes};

/// A link as netd sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub is_bridge: bool,
    /// Administratively up (IFF_UP), not carrier.
    pub up: bool,
    /// The bridge (or other master) this link is a port of.
    pub master: Option<u32>,
}

/// What [`Netlink::create_bridge`] creates.
#[derive(Clone, Debug)]
pub struct BridgeSpec {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    pub stp: bool,
    pub forward_delay_secs: u32,
}

/// Bridge settings read back from the kernel (IFLA_BR_*). A `None` is an
/// attribute the kernel did not report (nf_call_* need CONFIG_BRIDGE_NETFILTER).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BridgeSettings {
    pub stp: Option<bool>,
    /// Centiseconds, the kernel unit.
    pub forward_delay_cs: Option<u32>,
    pub nf_call_iptables: Option<bool>,
    pub nf_call_ip6tables: Option<bool>,
    pub nf_call_arptables: Option<bool>,
}

/// An address on a link (IFA_LOCAL, or IFA_ADDRESS when there is no local).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// An IPv4 unicast route of the main table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route4 {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
}

/// A route-netlink connection in the network namespace of the thread that
/// called [`Netlink::connect`]. Cheap to clone; the connection task ends when
/// the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a route-netlink socket and spawns its connection task on the
    /// current tokio runtime.
    pub async fn connect() -> Result<Netlink> {
        let (conn, handle, _unsolicited) = rtnetlink::new_connection()
            .map_err(|e| NetlinkError::io("opening a route netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The link called `name`; `Ok(None)` when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        if name.is_empty() || name.len() >= libc::IF_NAMESIZE || name.contains(['/', '\0']) {
            return Ok(None);
        }
        self.get_one(
            self.handle.link().get().match_name(name),
            &format!("looking up link {name}"),
        )
        .await
    }

    /// The link with ifindex `index`; `Ok(None)` when there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        if index == 0 || index > i32::MAX as u32 {
            return Ok(None);
        }
        self.get_one(
            self.handle.link().get().match_index(index),
            &format!("looking up link {index}"),
        )
        .await
    }

    async fn get_one(
        &self,
        req: rtnetlink::LinkGetRequest,
        what: &str,
    ) -> Result<Option<LinkInfo>> {
        Ok(self.get_one_raw(req, what).await?.map(|m| link_info(&m)))
    }

    async fn get_one_raw(
        &self,
        req: rtnetlink::LinkGetRequest,
        what: &str,
    ) -> Result<Option<LinkMessage>> {
        match req.execute().try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(what)(e)),
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))?;
        Ok(msgs.iter().map(link_info).collect())
    }

    /// Creates the bridge with the given MAC, STP state and forward delay
    /// (the kernel unit is centiseconds) and nf_call_iptables/ip6tables/
    /// arptables = 0, all through IFLA_BR_* attributes (no sysfs), then sets
    /// the MTU (as `ip link set mtu` would, so the kernel treats it as chosen
    /// by the user and keeps it when ports come and go) and sets it up.
    /// Returns its ifindex. If a step after the creation fails, the bridge is
    /// deleted again.
    ///
    /// Note the kernel ORs the per-bridge nf_call_* with the namespace-wide
    /// net.bridge.bridge-nf-call-* sysctls once br_netfilter is loaded.
    pub async fn create_bridge(&self, spec: &BridgeSpec) -> Result<u32> {
        let name = &spec.name;
        if name.is_empty() || name.len() >= libc::IF_NAMESIZE {
            bail!("creating bridge {name:?}: invalid interface name");
        }
        let msg = LinkMessageBuilder::<LinkBridge>::new(name)
            .address(spec.mac.to_vec())
            .stp_state(if spec.stp {
                BridgeStpState::KernelStp
            } else {
                BridgeStpState::Disabled
            })
            .forward_delay(spec.forward_delay_secs.saturating_mul(100))
            .nf_call_iptables(false)
            .nf_call_ip6tables(false)
            .nf_call_arptables(false)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl_lazy(|| format!("creating bridge {name}")))?;

        let index = match self.link_by_name(name).await {
            Ok(Some(l)) => l.index,
            Ok(None) => bail!("creating bridge {name}: it vanished right after creation"),
            Err(e) => return Err(e),
        };
        let rest = async {
            if let Some(mtu) = spec.mtu {
                self.set_mtu(index, mtu)
                    .await
                    .map_err(|e| anyhow::anyhow!("creating bridge {name}: {e}"))?;
            }
            self.set_up(index)
                .await
                .map_err(|e| anyhow::anyhow!("creating bridge {name}: {e}"))
        };
        if let Err(e) = rest.await {
            let _ = self.delete_link(index).await;
            return Err(e);
        }
        Ok(index)
    }

    /// The IFLA_BR_* settings of a bridge; `Ok(None)` if there is no such
    /// link or it is not a bridge.
    pub async fn bridge_settings(&self, index: u32) -> Result<Option<BridgeSettings>> {
        if index == 0 || index > i32::MAX as u32 {
            return Ok(None);
        }
        let Some(msg) = self
            .get_one_raw(
                self.handle.link().get().match_index(index),
                &format!("looking up link {index}"),
            )
            .await?
        else {
            return Ok(None);
        };
        let Some(infos) = bridge_info_data(&msg) else {
            return Ok(None);
        };
        let mut s = BridgeSettings {
            stp: None,
            forward_delay_cs: None,
            nf_call_iptables: None,
            nf_call_ip6tables: None,
            nf_call_arptables: None,
        };
        for i in infos {
            match i {
                InfoBridge::StpState(st) => s.stp = Some(*st != BridgeStpState::Disabled),
                InfoBridge::ForwardDelay(d) => s.forward_delay_cs = Some(*d),
                InfoBridge::NfCallIpTables(b) => s.nf_call_iptables = Some(*b),
                InfoBridge::NfCallIp6Tables(b) => s.nf_call_ip6tables = Some(*b),
                InfoBridge::NfCallArpTables(b) => s.nf_call_arptables = Some(*b),
                _ => {}
            }
        }
        Ok(Some(s))
    }

    /// Deletes a link; a link that does not exist is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        if index == 0 || index > i32::MAX as u32 {
            return Ok(());
        }
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(format!("deleting link {}", describe(index)))(e)),
        }
    }

    /// Makes `index` a port of `master` (`ip link set DEV master BR`).
    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(master).build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl_lazy(|| {
                format!("attaching {} to {}", describe(index), describe(master))
            }))
    }

    /// Detaches `index` from its master (`ip link set DEV nomaster`).
    pub async fn set_nomaster(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).nocontroller().build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl_lazy(|| {
                format!("detaching {} from its master", describe(index))
            }))
    }

    /// `ip link set DEV type bridge stp_state 0|1` (kernel STP). Ports that
    /// are forwarding when STP is turned on keep forwarding.
    pub async fn set_bridge_stp(&self, index: u32, name: &str, enabled: bool) -> Result<()> {
        let msg = LinkMessageBuilder::<LinkBridge>::new(name)
            .index(index)
            .stp_state(if enabled {
                BridgeStpState::KernelStp
            } else {
                BridgeStpState::Disabled
            })
            .build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl_lazy(|| format!("setting STP on {}", describe(index))))
    }

    /// `ip link set DEV up`.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl_lazy(|| format!("setting link {} up", describe(index))))
    }

    /// `ip link set DEV down`.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl_lazy(|| format!("setting link {} down", describe(index))))
    }

    /// `ip link set DEV mtu MTU`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl_lazy(|| {
                format!("setting the MTU of {} to {mtu}", describe(index))
            }))
    }

    /// Adds an address (`ip addr add ADDR/PREFIX dev DEV`; IPv4 also gets the
    /// broadcast address). IPv6 addresses get IFA_F_NODAD so they are usable
    /// at once.
    pub async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let what = || format!("adding address {addr}/{prefix} to {}", describe(index));
        check_prefix(addr, prefix).map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
        let mut req = self.handle.address().add(index, addr, prefix);
        if addr.is_ipv6() {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(nl_lazy(what))
    }

    /// Removes an address (`ip addr del ADDR/PREFIX dev DEV`); an address
    /// that is not there is not an error.
    pub async fn del_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.attributes.push(AddressAttribute::Local(addr));
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) || is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(format!(
                "removing address {addr}/{prefix} from {}",
                describe(index)
            ))(e)),
        }
    }

    /// The addresses of one link, or of all links (`None`), IPv4 and IPv6.
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<AddrInfo>> {
        Ok(self
            .address_messages(index)
            .await?
            .iter()
            .filter_map(addr_info)
            .collect())
    }

    async fn address_messages(&self, index: Option<u32>) -> Result<Vec<AddressMessage>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        req.execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))
    }

    /// The first primary (not secondary) IPv4 address of a link.
    pub async fn primary_ipv4(&self, index: u32) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .address_messages(Some(index))
            .await?
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet && !is_secondary(m))
            .filter_map(addr_info)
            .find_map(|a| match a.addr {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            }))
    }

    async fn route_messages_v4(&self) -> Result<Vec<RouteMessage>> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing IPv4 routes"))
    }

    /// The IPv4 unicast routes of the main table.
    pub async fn routes_v4(&self) -> Result<Vec<Route4>> {
        Ok(self
            .route_messages_v4()
            .await?
            .iter()
            .filter_map(route4)
            .map(|(r, _)| r)
            .collect())
    }

    /// The IPv4 default route of the main table (the lowest metric one if
    /// there are several).
    pub async fn default_route_v4(&self) -> Result<Option<Route4>> {
        Ok(self
            .route_messages_v4()
            .await?
            .iter()
            .filter_map(route4)
            .filter(|(r, _)| r.prefix == 0)
            .min_by_key(|(_, metric)| *metric)
            .map(|(r, _)| r))
    }

    /// Adds an IPv4 route to the main table (`ip route add DST/PREFIX [via
    /// GW] [dev OIF]`, proto static; scope link when there is no gateway).
    /// Host bits of `dst` are cleared. A route that is already there is an
    /// error (File exists).
    pub async fn add_route_v4(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        oif: Option<u32>,
    ) -> Result<()> {
        let what = || format!("adding route {}", route_desc(dst, prefix, gateway, oif));
        let msg = route_msg_v4(dst, prefix, gateway, oif)
            .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(nl_lazy(what))
    }

    /// Deletes an IPv4 route of the main table; a route that is not there is
    /// not an error.
    pub async fn del_route_v4(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        oif: Option<u32>,
    ) -> Result<()> {
        let what = || format!("deleting route {}", route_desc(dst, prefix, gateway, oif));
        let mut msg = route_msg_v4(dst, prefix, gateway, oif)
            .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
        // Match any protocol and scope, like `ip route del`.
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(what())(e)),
        }
    }
}

/// "netd0 (7)" when the name is known, else "7".
fn describe(index: u32) -> String {
    match ifname_of(index) {
        Some(name) => format!("{name} ({index})"),
        None => index.to_string(),
    }
}

fn check_prefix(addr: IpAddr, prefix: u8) -> Result<()> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        bail!("prefix length {prefix} is longer than {max}");
    }
    Ok(())
}

fn route_desc(dst: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>, oif: Option<u32>) -> String {
    let mut s = format!("{dst}/{prefix}");
    if let Some(gw) = gateway {
        s += &format!(" via {gw}");
    }
    if let Some(i) = oif {
        s += &format!(" dev {}", describe(i));
    }
    s
}

fn route_msg_v4(
    dst: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
) -> Result<RouteMessage> {
    check_prefix(IpAddr::V4(dst), prefix)?;
    if gateway.is_none() && oif.is_none() {
        bail!("a route needs a gateway or an output interface");
    }
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new();
    if prefix > 0 {
        b = b.destination_prefix(mask_v4(dst, prefix), prefix);
    }
    if let Some(gw) = gateway {
        b = b.gateway(gw);
    } else {
        b = b.scope(RouteScope::Link);
    }
    if let Some(i) = oif {
        b = b.output_interface(i);
    }
    Ok(b.build())
}

fn mask_v4(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(addr);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    Ipv4Addr::from(bits & mask)
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        is_bridge: false,
        up: m.header.flags.contains(LinkFlags::Up),
        master: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(a) => info.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::Controller(c) if *c != 0 => info.master = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                info.is_bridge = infos
                    .iter()
                    .any(|i| matches!(i, NlLinkInfo::Kind(InfoKind::Bridge)))
            }
            _ => {}
        }
    }
    info
}

fn bridge_info_data(m: &LinkMessage) -> Option<&Vec<InfoBridge>> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            NlLinkInfo::Data(InfoData::Bridge(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    })
}

fn is_secondary(m: &AddressMessage) -> bool {
    m.header.flags.contains(AddressHeaderFlags::Secondary)
        || m.attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Secondary)))
}

fn addr_info(m: &AddressMessage) -> Option<AddrInfo> {
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    let family_ok = match addr {
        IpAddr::V4(_) => m.header.family == AddressFamily::Inet,
        IpAddr::V6(_) => m.header.family == AddressFamily::Inet6,
    };
    family_ok.then_some(AddrInfo {
        index: m.header.index,
        addr,
        prefix: m.header.prefix_len,
    })
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// A main-table IPv4 unicast route, with its metric.
fn route4(m: &RouteMessage) -> Option<(Route4, u32)> {
    if m.header.address_family != AddressFamily::Inet
        || m.header.kind != RouteType::Unicast
        || route_table(m) != u32::from(RouteHeader::RT_TABLE_MAIN)
    {
        return None;
    }
    let mut r = Route4 {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: m.header.destination_prefix_length,
        oif: None,
        gateway: None,
    };
    let mut metric = 0;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => r.dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(*g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    Some((r, metric))
}
