//! The two baselines' rule sets, as text for `iptables-restore` and `nft -f`.
//!
//! libvirt: the rules libvirt installs for a NAT network, verbatim from
//! ../shared/seeds/openstack-disable-libvirt-networking.txt (bridge and
//! subnet substituted), plus the port-forward rules of the libvirt
//! networking handbook's "NAT with connection forwarding" example: one DNAT
//! rule in nat PREROUTING and one ACCEPT rule in filter FORWARD per forward,
//! placed before libvirt's REJECT rules as the handbook places them.
//!
//! nftables: the same policy written for nft by a careful admin: one table,
//! the forwards in a concatenated verdict-free map looked up by a single
//! dnat rule, and one `ct status dnat accept` in the forward chain instead of
//! a rule per forward.

use std::fmt::Write;
use std::net::Ipv4Addr;

pub const BRIDGE: &str = "virbr0";
pub const SUBNET: &str = "192.168.122.0/24";
pub const GATEWAY_CIDR: &str = "192.168.122.1/24";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 1);
pub const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A port forward: `proto` to the host's address, port `port`, goes to the
/// guest's `to_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fwd {
    pub proto: Proto,
    pub port: u16,
    pub to_port: u16,
}

impl Fwd {
    pub fn new(proto: Proto, port: u16, to_port: u16) -> Fwd {
        Fwd {
            proto,
            port,
            to_port,
        }
    }

    /// The handbook's DNAT rule (without the chain).
    pub fn ipt_dnat(&self, host: Ipv4Addr) -> String {
        let p = self.proto.as_str();
        let syn = if self.proto == Proto::Tcp {
            " --syn"
        } else {
            ""
        };
        format!(
            "-d {host}/32 -p {p} -m {p}{syn} --dport {} -j DNAT --to-destination {GUEST}:{}",
            self.port, self.to_port
        )
    }

    /// The handbook's FORWARD rule that lets the DNATed connection in.
    pub fn ipt_accept(&self) -> String {
        let p = self.proto.as_str();
        let syn = if self.proto == Proto::Tcp {
            " --syn"
        } else {
            ""
        };
        format!(
            "-d {GUEST}/32 -o {BRIDGE} -p {p} -m {p}{syn} -m conntrack --ctstate NEW --dport {} -j ACCEPT",
            self.to_port
        )
    }

    pub fn nft_element(&self) -> String {
        format!(
            "{} . {} : {GUEST} . {}",
            self.proto.as_str(),
            self.port,
            self.to_port
        )
    }

    pub fn nft_key(&self) -> String {
        format!("{} . {}", self.proto.as_str(), self.port)
    }
}

/// The whole iptables-restore file: libvirt's rules and one DNAT + one
/// FORWARD rule per forward.
pub fn iptables(host: Ipv4Addr, fwds: &[Fwd]) -> String {
    let mut s = String::with_capacity(200 * fwds.len() + 4096);
    let _ = write!(
        s,
        "*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o {BRIDGE} -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
"
    );
    for f in fwds {
        let _ = writeln!(s, "-A PREROUTING {}", f.ipt_dnat(host));
    }
    let _ = write!(
        s,
        "-A POSTROUTING -s {SUBNET} -d 224.0.0.0/24 -j RETURN
-A POSTROUTING -s {SUBNET} -d 255.255.255.255/32 -j RETURN
-A POSTROUTING -s {SUBNET} ! -d {SUBNET} -p tcp -j MASQUERADE --to-ports 1024-65535
-A POSTROUTING -s {SUBNET} ! -d {SUBNET} -p udp -j MASQUERADE --to-ports 1024-65535
-A POSTROUTING -s {SUBNET} ! -d {SUBNET} -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i {BRIDGE} -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -i {BRIDGE} -p tcp -m tcp --dport 53 -j ACCEPT
-A INPUT -i {BRIDGE} -p udp -m udp --dport 67 -j ACCEPT
-A INPUT -i {BRIDGE} -p tcp -m tcp --dport 67 -j ACCEPT
-A FORWARD -d {SUBNET} -o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -s {SUBNET} -i {BRIDGE} -j ACCEPT
-A FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT
"
    );
    for f in fwds {
        let _ = writeln!(s, "-A FORWARD {}", f.ipt_accept());
    }
    let _ = write!(
        s,
        "-A FORWARD -o {BRIDGE} -j REJECT --reject-with icmp-port-unreachable
-A FORWARD -i {BRIDGE} -j REJECT --reject-with icmp-port-unreachable
-A OUTPUT -o {BRIDGE} -p udp -m udp --dport 68 -j ACCEPT
COMMIT
"
    );
    s
}

/// Changing one forward the way the handbook's rules are edited in place:
/// `iptables -R` of its DNAT rule and of its FORWARD rule. `index` is the
/// forward's position (0-based) among `fwds` as installed by [`iptables`].
pub fn iptables_change(host: Ipv4Addr, index: usize, new: &Fwd) -> String {
    // FORWARD: 3 libvirt rules come first.
    format!(
        "iptables -t nat -R PREROUTING {} {} && iptables -R FORWARD {} {}",
        index + 1,
        new.ipt_dnat(host),
        index + 4,
        new.ipt_accept()
    )
}

pub const NFT_TABLE: &str = "vmnet";

/// The whole nft ruleset (one table) with the forwards in its map.
pub fn nft(host: Ipv4Addr, fwds: &[Fwd]) -> String {
    let mut s = String::with_capacity(60 * fwds.len() + 4096);
    let _ = write!(
        s,
        "table ip {NFT_TABLE}
delete table ip {NFT_TABLE}
table ip {NFT_TABLE} {{
    map forwards {{
        type inet_proto . inet_service : ipv4_addr . inet_service
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {host} meta l4proto {{ tcp, udp }} dnat ip to meta l4proto . th dport map @forwards
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {SUBNET} ip daddr {{ 224.0.0.0/24, 255.255.255.255 }} return
        ip saddr {SUBNET} ip daddr != {SUBNET} meta l4proto {{ tcp, udp }} masquerade to :1024-65535
        ip saddr {SUBNET} ip daddr != {SUBNET} masquerade
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname \"{BRIDGE}\" meta l4proto {{ tcp, udp }} th dport {{ 53, 67 }} accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        oifname \"{BRIDGE}\" ip daddr {SUBNET} ct state established,related accept
        iifname \"{BRIDGE}\" ip saddr {SUBNET} accept
        iifname \"{BRIDGE}\" oifname \"{BRIDGE}\" accept
        oifname \"{BRIDGE}\" ct status dnat accept
        oifname \"{BRIDGE}\" reject with icmp type port-unreachable
        iifname \"{BRIDGE}\" reject with icmp type port-unreachable
    }}
}}
"
    );
    s.push_str(&nft_add(fwds));
    s
}

/// `nft -f` text adding forwards to the map (one transaction).
pub fn nft_add(fwds: &[Fwd]) -> String {
    if fwds.is_empty() {
        return String::new();
    }
    let mut s = format!("add element ip {NFT_TABLE} forwards {{\n");
    for f in fwds {
        let _ = writeln!(s, "  {},", f.nft_element());
    }
    s.push_str("}\n");
    s
}

/// `nft -f` text changing one forward's target (one transaction).
pub fn nft_change(old: &Fwd, new: &Fwd) -> String {
    format!(
        "delete element ip {NFT_TABLE} forwards {{ {} }}\nadd element ip {NFT_TABLE} forwards {{ {} }}\n",
        old.nft_key(),
        new.nft_element()
    )
}

/// netd's definition of the same network: NAT, no DHCP or DNS (the
/// baselines run no dnsmasq either), static guests.
pub fn netd_definition(
    name: &str,
    bridge: &str,
    cidr: &str,
    fwds: &[Fwd],
    guest: Ipv4Addr,
) -> String {
    let mut s = format!(
        "name = \"{name}\"
mode = \"nat\"
bridge = \"{bridge}\"
[stp]
enabled = false
[ipv4]
address = \"{cidr}\"
[dns]
enable = false
"
    );
    for f in fwds {
        let _ = write!(
            s,
            "[[forwards]]\nproto = \"{}\"\nport = \"{}\"\nto = \"{guest}:{}\"\n",
            f.proto.as_str(),
            f.port,
            f.to_port
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_change_targets_the_rules_iptables_writes() {
        let host = Ipv4Addr::new(198, 51, 100, 2);
        let fwds = [
            Fwd::new(Proto::Tcp, 80, 80),
            Fwd::new(Proto::Udp, 10000, 10000),
        ];
        let text = iptables(host, &fwds);
        let nat: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A PREROUTING"))
            .collect();
        let fwd: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A FORWARD"))
            .collect();
        assert!(nat[1].contains("--dport 10000 "));
        // iptables -R counts from 1.
        assert!(fwd[1 + 3].contains("--dport 10000 "));
        let c = iptables_change(host, 1, &Fwd::new(Proto::Udp, 10000, 20000));
        assert!(
            c.contains("-R PREROUTING 2 ") && c.contains("-R FORWARD 5 "),
            "{c}"
        );
    }
}
