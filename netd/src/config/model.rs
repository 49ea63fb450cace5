use super::types::*;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Nat,
    Route,
    Open,
    Isolated,
    Bridge,
    Hostdev,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Route => "route",
            Mode::Open => "open",
            Mode::Isolated => "isolated",
            Mode::Bridge => "bridge",
            Mode::Hostdev => "hostdev",
        }
    }

    /// Whether netd creates and owns the bridge for this mode.
    pub fn owns_bridge(self) -> bool {
        !matches!(self, Mode::Bridge | Mode::Hostdev)
    }
}

/// What of the host a network's guests may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HostAccess {
    /// Every service on every host address (libvirt's default).
    #[default]
    #[serde(rename = "all")]
    All,
    /// DHCP, DNS and ICMP echo only, on every host address.
    #[serde(rename = "dhcp-dns")]
    DhcpDns,
}

impl HostAccess {
    pub fn is_all(&self) -> bool {
        *self == HostAccess::All
    }
}

/// A network definition, as stored in `<config-dir>/networks/NAME.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    /// Bridge device; defaults to the first free `netdN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<IfName>,
    #[serde(default)]
    pub autostart: bool,
    /// Restrict forwarding to this uplink (libvirt's `forward dev=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<IfName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Fixed bridge MAC; generated once and persisted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(default)]
    pub stp: Stp,
    /// Guests send only from the MAC/IPv4 pair DHCP leased them or a host
    /// entry gives them, ARP included (libvirt's nwfilter clean-traffic).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// What of the host guests may reach.
    #[serde(default, skip_serializing_if = "HostAccess::is_all")]
    pub host_access: HostAccess,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<Nat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<Forward>,
    // ---- hostdev (SR-IOV VF pool) only; see `validate_hostdev`. ----
    /// The PF whose VFs make the pool (libvirt's `<pf dev=…/>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pf: Option<String>,
    /// Or an explicit list of VF PCI addresses (libvirt's `<address type='pci'>` list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vfs_pci: Vec<PciAddr>,
    /// Enable this many VFs on the PF at start when none are enabled yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfs: Option<u32>,
    /// VLAN a VF gets when `vf acquire` names none (libvirt's `<vlan><tag id=…/>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stp {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Forward delay in seconds.
    #[serde(default)]
    pub delay: u32,
}

fn yes() -> bool {
    true
}

impl Default for Stp {
    fn default() -> Self {
        Stp {
            enabled: true,
            delay: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Nat {
    /// Masquerade port range, "1024-65535".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// Fixed masquerade address instead of the uplink's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Masquerade ports per protocol a forward may not take away (default
    /// 1024, see `nat_pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_ports: Option<u32>,
    /// RFC 4787 mapping behaviour; endpoint-independent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<NatMappingKind>,
    /// RFC 4787 filtering behaviour; address-port-dependent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtering: Option<NatFiltering>,
    /// Lower the MSS option of guests' SYNs to the uplink's MTU (for
    /// uplinks with a smaller MTU than the bridge: PPPoE, tunnels).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clamp_mss: bool,
    /// Masqueraded flows one guest address may have open at once; more
    /// are refused with ICMP "administratively prohibited". Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_flows_per_guest: Option<u32>,
    /// Outside ports (endpoint-independent mappings) one guest address may
    /// hold; a new one past it is refused like a flow over the flow limit.
    /// Needs endpoint-independent mapping. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ports_per_guest: Option<u32>,
    /// This network's connection timeouts; the global ones when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<NatTimeoutsConfig>,
    /// What keeps a masqueraded UDP flow alive (RFC 4787 REQ-6): the
    /// guest's packets only ("outbound", the default) or replies too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<NatRefresh>,
    /// `"mappings"`: log each guest end's use of an outside address and
    /// port, start and end (see `daemon::natlog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<NatLogKind>,
    /// Where those lines go instead of the daemon log (appended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatLogKind {
    Mappings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NatRefresh {
    #[default]
    Outbound,
    Both,
}

impl Nat {
    /// The datapath's per-network timeouts: `[nat.timeouts]` and the
    /// refresh direction.
    pub fn datapath_timeouts(nat: Option<&Nat>) -> netd_common::NatTimeouts {
        let mut t = nat
            .and_then(|n| n.timeouts)
            .map(|t| t.datapath())
            .unwrap_or_default();
        if nat.and_then(|n| n.refresh).unwrap_or_default() == NatRefresh::Outbound {
            t.flags |= netd_common::timeout_flags::REFRESH_OUTBOUND;
        }
        t
    }
}

/// `[nat.timeouts]`, in seconds, each at least what RFC 4787 REQ-5 and
/// RFC 5382 REQ-5 ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NatTimeoutsConfig {
    /// Idle UDP flows (at least 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<u32>,
    /// Idle established TCP connections (at least 7440, 2 h 4 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established: Option<u32>,
    /// Half-open and closing TCP connections (at least 240).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_transitory: Option<u32>,
}

impl NatTimeoutsConfig {
    pub const MIN_UDP: u32 = 120;
    pub const MIN_TCP_ESTABLISHED: u32 = 7440;
    pub const MIN_TCP_TRANSITORY: u32 = 240;
    /// What the datapath can carry (see `NatTimeouts::packed`).
    pub const MAX: u32 = 65535;

    /// The datapath's form: unset UDP stays global (0); TCP is global when
    /// neither TCP value is set, else the unset one takes the RFC minimum
    /// (transitory) or the global default (established).
    pub fn datapath(&self) -> netd_common::NatTimeouts {
        let tcp = self.tcp_established.is_some() || self.tcp_transitory.is_some();
        netd_common::NatTimeouts {
            udp: self.udp.unwrap_or(0),
            tcp_established: if tcp {
                self.tcp_established
                    .unwrap_or(netd_common::Settings::DEFAULT.tcp_established_timeout)
            } else {
                0
            },
            tcp_transitory: if tcp {
                self.tcp_transitory.unwrap_or(Self::MIN_TCP_TRANSITORY)
            } else {
                0
            },
            flags: 0,
        }
    }
}

/// Which outside port a guest address and port gets (RFC 4787 section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NatMappingKind {
    /// One outside port for every destination (REQ-1).
    #[default]
    EndpointIndependent,
    /// An outside port per destination address and port.
    AddressPortDependent,
}

/// Who may send to a guest's outside port (RFC 4787 section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NatFiltering {
    /// Anyone, while the mapping lives.
    EndpointIndependent,
    /// Hosts the guest sent to, from any of their ports.
    AddressDependent,
    /// Only the address and port the guest sent to.
    #[default]
    AddressPortDependent,
}

impl Nat {
    /// The `net_flags` bits of the mapping and filtering behaviours.
    pub fn behaviour_flags(nat: Option<&Nat>) -> u8 {
        let mapping = nat.and_then(|n| n.mapping).unwrap_or_default();
        let filtering = nat.and_then(|n| n.filtering).unwrap_or_default();
        let mut f = 0;
        if mapping == NatMappingKind::EndpointIndependent {
            f |= netd_common::net_flags::EIM;
            f |= match filtering {
                NatFiltering::EndpointIndependent => netd_common::net_flags::EIF,
                NatFiltering::AddressDependent => netd_common::net_flags::ADF,
                NatFiltering::AddressPortDependent => 0,
            };
        }
        if nat.is_some_and(|n| n.clamp_mss) {
            f |= netd_common::net_flags::CLAMP_MSS;
        }
        f
    }
}

impl Nat {
    pub fn port_range(&self) -> Result<(u16, u16), String> {
        match &self.ports {
            None => Ok((1024, 65535)),
            Some(r) => Ok((r.start, r.end)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv4 {
    /// Gateway address with prefix, "192.168.122.1/24".
    #[serde(deserialize_with = "cidr")]
    pub address: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<Dhcp4>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Host>,
}

impl Ipv4 {
    /// (gateway, prefix length).
    pub fn parsed(&self) -> Result<(Ipv4Addr, u8), String> {
        Ok((self.address.addr(), self.address.prefix_len()))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhcp4 {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseTime>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<HostName>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv6 {
    /// Router address with prefix, "fd00:122::1/64".
    #[serde(deserialize_with = "cidr")]
    pub address: Ipv6Net,
    /// Router advertisements for SLAAC.
    #[serde(default)]
    pub slaac: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<Dhcp6>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Host6>,
    #[serde(default)]
    pub nat: bool,
}

impl Ipv6 {
    pub fn parsed(&self) -> Result<(Ipv6Addr, u8), String> {
        Ok((self.address.addr(), self.address.prefix_len()))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhcp6 {
    pub start: Ipv6Addr,
    pub end: Ipv6Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseTime>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host6 {
    pub duid: Duid,
    pub ip: Ipv6Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<HostName>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DnsName>,
    /// Extra name records served by the network's dnsmasq.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<DnsHost>,
    /// Set false to run DHCP only (dnsmasq `port=0`).
    #[serde(default = "yes")]
    pub enable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsHost {
    pub ip: std::net::IpAddr,
    pub names: Vec<DnsName>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("protocol must be tcp or udp, not {s:?}")),
        }
    }
}

/// A port forward: `proto` traffic to `address:port` goes to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub proto: Proto,
    /// "8080" or "8000-8010".
    pub port: PortRange,
    /// "192.168.122.10", "192.168.122.10:80" or "192.168.122.10:80-90".
    pub to: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
}

/// An address with its prefix ("192.168.122.1/24"), parsed with ipnet; the
/// error quotes the value, so serde_path_to_error's field name completes it.
fn cidr<'de, D: Deserializer<'de>, N: FromStr>(d: D) -> Result<N, D::Error> {
    let s = String::deserialize(d)?;
    N::from_str(&s).map_err(|_| {
        serde::de::Error::custom(format!(
            "{s:?} is not an address with a prefix, like 192.168.122.1/24 or fd00::1/64"
        ))
    })
}

pub fn mask4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// True when `ip` is inside `net/prefix`.
pub fn in_subnet4(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    u32::from(ip) & mask4(prefix) == u32::from(net) & mask4(prefix)
}

/// Canonical lower-case MAC, or an error.
pub fn normalize_mac(s: &str) -> Result<String, String> {
    Mac::from_str(s).map(String::from)
}

pub fn mac_bytes(s: &str) -> Result<[u8; 6], String> {
    Mac::from_str(s).map(|m| m.bytes())
}

impl Network {
    pub fn ipv4_dhcp_hosts(&self) -> &[Host] {
        self.ipv4
            .as_ref()
            .map(|v| v.hosts.as_slice())
            .unwrap_or(&[])
    }

    /// Parsed masquerade port range (validated at definition time).
    pub fn nat_ports(&self) -> (u16, u16) {
        self.nat
            .as_ref()
            .map(|n| n.port_range().unwrap_or((1024, 65535)))
            .unwrap_or((1024, 65535))
    }

    /// Whether this network wants a dnsmasq at all.
    pub fn wants_dnsmasq(&self) -> bool {
        let dhcp4 = self.ipv4.as_ref().is_some_and(|v| v.dhcp.is_some());
        let v6 = self
            .ipv6
            .as_ref()
            .is_some_and(|v| v.slaac || v.dhcp.is_some());
        let dns = self.dns.as_ref().is_none_or(|d| d.enable) && self.ipv4.is_some();
        dhcp4 || v6 || dns
    }
}

/// A PCI address, "0000:02:10.1" (domain:bus:slot.function), the form sysfs
/// names devices by. Checked on parse, so a pool never holds a malformed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    pub domain: u16,
    pub bus: u8,
    /// 0-31.
    pub slot: u8,
    /// 0-7.
    pub function: u8,
}

impl PciAddr {
    pub fn new(domain: u16, bus: u8, slot: u8, function: u8) -> Result<PciAddr, String> {
        if slot > 31 {
            return Err(format!("PCI slot 0x{slot:x} is above 0x1f"));
        }
        if function > 7 {
            return Err(format!("PCI function {function} is above 7"));
        }
        Ok(PciAddr {
            domain,
            bus,
            slot,
            function,
        })
    }

    /// libvirt's `<address type='pci' …/>`, as a domain's hostdev source takes it.
    pub fn libvirt_xml(&self) -> String {
        format!(
            "<address type='pci' domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'/>",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

impl std::fmt::Display for PciAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

impl FromStr for PciAddr {
    type Err = String;
    /// "0000:02:10.1", or "02:10.1" with domain 0 (lspci's short form).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid PCI address {s:?}: want DDDD:BB:SS.F, like 0000:02:10.1");
        let hex = |p: &str, max_len: usize| -> Result<u32, String> {
            if p.is_empty() || p.len() > max_len || !p.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        let (head, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, slot) = match parts.as_slice() {
            [d, b, sl] => (hex(d, 4)?, hex(b, 2)?, hex(sl, 2)?),
            [b, sl] => (0, hex(b, 2)?, hex(sl, 2)?),
            _ => return Err(bad()),
        };
        let function = hex(function, 1)?;
        PciAddr::new(domain as u16, bus as u8, slot as u8, function as u8)
            .map_err(|e| format!("invalid PCI address {s:?}: {e}"))
    }
}

impl Serialize for PciAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
