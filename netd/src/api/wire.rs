//! Request and response bodies shared by the server and the CLI.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize)]
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
pub struct AutostartRequest {
    pub enable: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HostRequest {
    pub add: bool,
    pub mac: String,
    pub ip: std::net::Ipv4Addr,
    pub name: Option<String>,
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
    /// Set while a step of a running network failed ("step: error; ..."):
    /// it keeps running with what works and is retried.
    #[serde(default)]
    pub degraded: Option<String>,
    /// Hints for operators, e.g. the static route upstream routers need.
    pub notes: Vec<String>,
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
pub struct ForwardRequest {
    pub proto: crate::config::Proto,
    pub port: String,
    /// Required to add; ignored to remove.
    pub to: Option<String>,
    pub address: Option<std::net::Ipv4Addr>,
}

/// The body of POST /v1/networks/NAME/forwards.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ForwardAdd {
    Batch { forwards: Vec<ForwardRequest> },
    One(ForwardRequest),
}
