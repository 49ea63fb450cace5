//! Request and response bodies shared by the server and the CLI.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

// Every request body refuses unknown fields, as the TOML does: a misspelt
// field is a mistake to report, not a default to apply silently.

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefineRequest {
    /// The definition's text, TOML or libvirt XML.
    pub text: String,
    pub xml: bool,
    /// `net create`: start now and forget the definition when stopped.
    pub transient: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NameResponse {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutostartRequest {
    pub enable: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRequest {
    pub add: bool,
    pub mac: crate::config::Mac,
    pub ip: std::net::Ipv4Addr,
    #[serde(default)]
    pub name: Option<crate::config::HostName>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkSummary {
    pub name: String,
    pub mode: String,
    pub active: bool,
    pub autostart: bool,
    pub persistent: bool,
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub mode: String,
    pub active: bool,
    pub autostart: bool,
    pub persistent: bool,
    pub bridge: Option<String>,
    pub bridge_ifindex: Option<u32>,
    pub mac: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub dhcp_range: Option<String>,
    pub uplink: Option<String>,
    pub masquerade_address: Option<String>,
    pub dnsmasq_pid: Option<u32>,
    pub dnsmasq_restarts: u64,
    /// Whether dnsmasq runs right now (None: the network has none).
    #[serde(default)]
    pub dnsmasq_healthy: Option<bool>,
    /// Hints for operators, e.g. the static route upstream routers need.
    pub notes: Vec<String>,
    /// Hostdev networks: VFs held (libvirt's `<network connections='N'>`).
    #[serde(default)]
    pub connections: Option<u32>,
    /// Hostdev networks: the VF pool.
    #[serde(default)]
    pub vf_pool: Option<VfPoolSummary>,
    /// A running network whose persistent definition differs from the live
    /// one (`net dump --inactive` shows it; the next start uses it).
    #[serde(default)]
    pub pending_changes: bool,
    /// Why a running network does not work fully right now (e.g. its uplink
    /// is gone); None when it does.
    #[serde(default)]
    pub degraded: Option<String>,
    /// NAT networks: per protocol, the masquerade ports forwards leave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masquerade_ports: Vec<MasqueradePorts>,
    /// NAT networks: the idle timeouts their connections get, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_timeouts: Option<NatTimeoutInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatTimeoutInfo {
    pub udp: u32,
    pub tcp_established: u32,
    pub tcp_handshake: u32,
    pub tcp_closing: u32,
    /// Set by the network's `[nat.timeouts]` (else the global defaults).
    pub own: bool,
    /// What keeps a UDP flow alive: "outbound" (the guest's packets) or
    /// "both".
    #[serde(default)]
    pub udp_refresh: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasqueradePorts {
    pub proto: String,
    /// Ports of the range no forward takes.
    pub left: u32,
    /// Ports in the range.
    pub size: u32,
    /// The `nat.min_free_ports` a new forward must leave.
    pub min_free: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpResponse {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramStatus {
    /// The kernel's program id.
    pub id: Option<u32>,
    pub hook: String,
    /// Interface name, or cgroup folder for the host-local forward hooks.
    pub interface: String,
    pub direction: String,
    /// "tcx 1/2": first of two programs on that hook; "cgroup" for cgroup links.
    pub position: String,
    #[serde(default)]
    pub program: String,
    #[serde(default)]
    pub link_id: Option<u32>,
    /// tcx: 1-based place among the hook's programs, and their number.
    #[serde(default)]
    pub tcx_index: Option<u32>,
    #[serde(default)]
    pub tcx_count: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub level: String,
    pub name: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapFill {
    pub name: String,
    /// The kernel's map type (arrays are always full).
    #[serde(default)]
    pub kind: String,
    pub entries: u64,
    pub max_entries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub version: String,
    pub uptime_secs: u64,
    pub networks: Vec<NetworkInfo>,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapFill>,
    /// Conntrack (which also holds every NAT translation), summed up.
    #[serde(default)]
    pub conntrack: ConntrackFill,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConntrackFill {
    /// Map entries (two per connection, one per direction).
    pub entries: u64,
    pub max_entries: u32,
    pub connections: u64,
    /// Connections masqueraded (SNAT) and port-forwarded (DNAT).
    pub snat: u64,
    pub dnat: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    pub proto: crate::config::Proto,
    pub port: crate::config::PortRange,
    /// Required to add; ignored to remove.
    #[serde(default)]
    pub to: Option<crate::config::Target>,
    #[serde(default)]
    pub address: Option<std::net::Ipv4Addr>,
}

/// The body of POST /v1/networks/NAME/forwards: one forward, or a batch
/// (`{"forwards": [...]}`) applied all or none. Decoded by the server
/// according to whether `forwards` is there, so a refusal names its field
/// (serde's untagged enums only say "did not match any variant").
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ForwardAdd {
    Batch { forwards: Vec<ForwardRequest> },
    One(ForwardRequest),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardBatch {
    pub forwards: Vec<ForwardRequest>,
}

// ---- SR-IOV VF pools ---------------------------------------------------------

/// The body of POST /v1/networks/NAME/vfs/acquire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfAcquireRequest {
    pub owner: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// A number, checked against 1-4094 by the daemon.
    #[serde(default)]
    pub vlan: Option<i64>,
}

/// The body of POST /v1/networks/NAME/vfs/release.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfReleaseRequest {
    pub owner: String,
}

/// One VF of a pool, as `vf list` and `vf acquire` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VfRecord {
    pub network: String,
    /// "0000:02:10.1".
    pub pci: String,
    /// libvirt's `<address type='pci' …/>` for a domain's hostdev source.
    pub address_xml: String,
    pub pf: Option<String>,
    /// The VF's number on its PF.
    pub vf: Option<u32>,
    pub netdev: Option<String>,
    pub driver: Option<String>,
    /// "free", "held" or "missing" (free but unusable: see `problem`).
    pub state: String,
    /// Why the VF is missing (PF gone, no netdev, no driver …).
    pub problem: Option<String>,
    pub owner: Option<String>,
    pub mac: Option<String>,
    pub vlan: Option<u16>,
}

/// A pool in `net info` and `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VfPoolSummary {
    /// The PF, or None for an address-list pool.
    pub pf: Option<String>,
    pub total: u32,
    pub free: u32,
    pub held: u32,
    /// Not held and not usable: device, netdev or driver missing.
    pub missing: u32,
    /// Why the PF cannot serve, when it cannot.
    pub problem: Option<String>,
}

/// The answer to POST /v1/networks/NAME/stop.
#[derive(Debug, Serialize, Deserialize)]
pub struct StopResponse {
    pub name: String,
    /// VFs `--force` released.
    #[serde(default)]
    pub released_vfs: u32,
}
