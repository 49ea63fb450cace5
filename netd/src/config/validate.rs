//! Checks a definition can be started as written. Every failure is one line
//! that names the offending field.

use super::model::*;
use super::types::*;
use anyhow::{Result, bail};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::str::FromStr;

pub fn check_interface_name(what: &str, name: &str) -> Result<()> {
    IfName::from_str(name).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(())
}

/// A network name becomes a file name, part of dnsmasq's file names and a
/// comment line in its config, and is sized like an interface name: letters,
/// digits, '-', '_' and '.', not starting with '-' or '.'.
pub fn check_network_name(name: &str) -> Result<()> {
    if let Err(e) = IfName::from_str(name) {
        bail!("name: {}", e.replace("interface name", "network name"));
    }
    if name.starts_with('.') {
        bail!("name: {name:?} is not a valid network name: it starts with '.'");
    }
    Ok(())
}

pub fn validate(net: &Network) -> Result<()> {
    // Names, MACs, DNS names, DUIDs, lease times and ports were checked by
    // their types when they were built; what is left is how they fit together.
    check_network_name(&net.name)?;
    super::hostdev::validate_hostdev(net)?;
    if let Some(mtu) = net.mtu
        && !(68..=65535).contains(&mtu)
    {
        bail!("mtu {mtu} is outside 68-65535");
    }
    match net.mode {
        Mode::Bridge if net.bridge.is_none() => {
            bail!("a bridge network needs `bridge` naming an existing host bridge")
        }
        Mode::Nat | Mode::Route | Mode::Open | Mode::Isolated => {}
        _ => {}
    }
    if !net.mode.owns_bridge() && (net.strict || !net.host_access.is_all()) {
        bail!(
            "strict and host_access need netd's datapath, which mode = \"{}\" does not have",
            net.mode.as_str()
        );
    }
    if net.strict && net.ipv4.is_none() {
        bail!("strict = true binds guests' IPv4 addresses: it needs an [ipv4] subnet");
    }
    if net.nat.is_some() && net.mode != Mode::Nat {
        bail!("[nat] only applies to mode = \"nat\"");
    }
    if let Some(nat) = &net.nat {
        nat.port_range()
            .map_err(|e| anyhow::anyhow!("nat.ports: {e}"))?;
        if let Some(m) = nat.min_free_ports
            && m > 65535
        {
            bail!("nat.min_free_ports {m} is more than there are ports (65535)");
        }
        if let Some(t) = &nat.timeouts {
            for (name, v, min) in [
                ("udp", t.udp, NatTimeoutsConfig::MIN_UDP),
                (
                    "tcp_established",
                    t.tcp_established,
                    NatTimeoutsConfig::MIN_TCP_ESTABLISHED,
                ),
                (
                    "tcp_transitory",
                    t.tcp_transitory,
                    NatTimeoutsConfig::MIN_TCP_TRANSITORY,
                ),
            ] {
                if let Some(v) = v {
                    if v < min {
                        bail!(
                            "nat.timeouts.{name} = {v} is below the {min} s RFC 4787/5382 ask for"
                        );
                    }
                    let max = if name == "tcp_established" {
                        NatTimeoutsConfig::MAX * 60
                    } else {
                        NatTimeoutsConfig::MAX
                    };
                    if v > max {
                        bail!("nat.timeouts.{name} = {v} is above the {max} s netd can keep");
                    }
                }
            }
        }
        if nat.max_flows_per_guest == Some(0) {
            bail!("nat.max_flows_per_guest must be at least 1 (leave it out for no limit)");
        }
        if let Some(f) = &nat.log_file {
            if nat.log.is_none() {
                bail!("nat.log_file needs nat.log = \"mappings\"");
            }
            if !f.is_absolute() {
                bail!("nat.log_file {} must be an absolute path", f.display());
            }
        }
        if nat.max_ports_per_guest == Some(0) {
            bail!("nat.max_ports_per_guest must be at least 1 (leave it out for no limit)");
        }
        if nat.max_ports_per_guest.is_some()
            && nat.mapping == Some(NatMappingKind::AddressPortDependent)
        {
            bail!(
                "nat.max_ports_per_guest needs nat.mapping = \"endpoint-independent\" (per-destination mappings hold no ports per guest)"
            );
        }
        if nat.mapping == Some(NatMappingKind::AddressPortDependent)
            && nat
                .filtering
                .is_some_and(|f| f != NatFiltering::AddressPortDependent)
        {
            bail!(
                "nat.filtering other than \"address-port-dependent\" needs nat.mapping = \"endpoint-independent\""
            );
        }
    }
    if matches!(net.mode, Mode::Nat | Mode::Route | Mode::Open)
        && net.ipv4.is_none()
        && net.ipv6.is_none()
    {
        bail!(
            "a {} network needs an [ipv4] or [ipv6] address",
            net.mode.as_str()
        );
    }
    if let Some(v4) = &net.ipv4 {
        validate_ipv4(v4)?;
    }
    if let Some(v6) = &net.ipv6 {
        validate_ipv6(v6)?;
    }
    for f in &net.forwards {
        validate_forward(net, f)?;
    }
    Ok(())
}

fn validate_ipv4(v4: &Ipv4) -> Result<()> {
    let (gw, prefix) = v4
        .parsed()
        .map_err(|e| anyhow::anyhow!("ipv4.address: {e}"))?;
    if prefix > 30 {
        bail!(
            "ipv4.address {}: a /{prefix} leaves no room for guests",
            v4.address
        );
    }
    if gw.is_multicast() || gw.is_loopback() || gw.is_unspecified() || gw.is_broadcast() {
        bail!("ipv4.address: {gw} is not a unicast host address");
    }
    let net = u32::from(gw) & mask4(prefix);
    let bcast = net | !mask4(prefix);
    if u32::from(gw) == net || u32::from(gw) == bcast {
        bail!("ipv4.address {gw} is the subnet's network or broadcast address");
    }
    let net_ip = Ipv4Addr::from(net);
    let usable = |ip: Ipv4Addr| {
        in_subnet4(ip, net_ip, prefix) && u32::from(ip) != net && u32::from(ip) != bcast
    };
    if let Some(d) = &v4.dhcp {
        if !usable(d.start) || !usable(d.end) {
            bail!(
                "ipv4.dhcp range {}-{} is outside the subnet {net_ip}/{prefix}",
                d.start,
                d.end
            );
        }
        if u32::from(d.start) > u32::from(d.end) {
            bail!("ipv4.dhcp range {}-{} is reversed", d.start, d.end);
        }
    }
    let mut macs = HashSet::new();
    let mut ips = HashSet::new();
    for h in &v4.hosts {
        let mac = h.mac.clone();
        if !usable(h.ip) {
            bail!(
                "host {} ip {} is outside the subnet {net_ip}/{prefix}",
                h.mac,
                h.ip
            );
        }
        if h.ip == gw {
            bail!("host {} ip {} is the gateway's address", h.mac, h.ip);
        }
        if !macs.insert(mac) {
            bail!("two hosts have the MAC {}", h.mac);
        }
        if !ips.insert(h.ip) {
            bail!("two hosts have the IP {}", h.ip);
        }
    }
    Ok(())
}

fn validate_ipv6(v6: &Ipv6) -> Result<()> {
    let (_, prefix) = v6
        .parsed()
        .map_err(|e| anyhow::anyhow!("ipv6.address: {e}"))?;
    if v6.slaac && prefix != 64 {
        bail!("ipv6.slaac needs a /64 prefix, not /{prefix}");
    }
    let (addr, _) = v6.parsed().map_err(anyhow::Error::msg)?;
    if addr.is_multicast() || addr.is_unspecified() || addr.is_loopback() {
        bail!("ipv6.address: {addr} is not a unicast host address");
    }
    let subnet = v6.address.trunc();
    if let Some(d) = &v6.dhcp {
        if !subnet.contains(&d.start) || !subnet.contains(&d.end) {
            bail!(
                "ipv6.dhcp range {}-{} is outside the prefix {subnet}",
                d.start,
                d.end
            );
        }
        if d.start > d.end {
            bail!("ipv6.dhcp range {}-{} is reversed", d.start, d.end);
        }
    }
    let mut duids = HashSet::new();
    for h in &v6.hosts {
        if !subnet.contains(&h.ip) || h.ip == addr {
            bail!(
                "ipv6.hosts: {} ({}) is not a guest address in {subnet}",
                h.ip,
                h.duid
            );
        }
        if !duids.insert(h.duid.to_ascii_lowercase()) {
            bail!("two IPv6 hosts have the DUID {}", h.duid);
        }
    }
    Ok(())
}

/// Whether a forward can ever work on this network: the target is a guest
/// address (inside the subnet, not its network, broadcast or gateway
/// address) and the host address is a unicast address outside it.
pub fn validate_forward(net: &Network, f: &Forward) -> Result<()> {
    if matches!(net.mode, Mode::Isolated | Mode::Hostdev | Mode::Bridge) {
        bail!(
            "port forwards need a nat, route or open network; {} is {}",
            net.name,
            net.mode.as_str()
        );
    }
    let (host, to) = (f.port, f.to);
    if let Some(g) = to.ports
        && g.len() != host.len()
    {
        bail!(
            "forward {host} -> {to}: port ranges differ in length ({} vs {})",
            host.len(),
            g.len()
        );
    }
    let v4 = net
        .ipv4
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("port forwards need an [ipv4] subnet"))?;
    let subnet = v4.address.trunc();
    let gw = v4.address.addr();
    let ip = to.ip;
    if !subnet.contains(&ip) {
        bail!("forward to: {ip} is outside the network's subnet {subnet}");
    }
    if ip == subnet.network() || ip == subnet.broadcast() {
        bail!("forward to: {ip} is the subnet's network or broadcast address, not a guest");
    }
    if ip == gw {
        bail!("forward to: {ip} is the gateway's own address, not a guest");
    }
    if let Some(a) = f.address {
        let why = if a.is_unspecified() {
            Some("the unspecified address")
        } else if a.is_broadcast() {
            Some("the broadcast address")
        } else if a.is_multicast() {
            Some("a multicast address")
        } else if a.is_loopback() {
            Some("a loopback address")
        } else if u32::from(a) >> 28 == 0xf {
            Some("a reserved (240.0.0.0/4) address")
        } else if a == gw {
            Some("the bridge's own address")
        } else if subnet.contains(&a) {
            Some("inside the network's own subnet")
        } else {
            None
        };
        if let Some(why) = why {
            bail!("forward address: {a} is {why}; give a unicast host address outside {subnet}");
        }
    }
    Ok(())
}

/// "ip", "ip:port" or "ip:port-port".
pub fn parse_forward_target(s: &str) -> Result<(Ipv4Addr, Option<PortRange>)> {
    let t = Target::from_str(s).map_err(anyhow::Error::msg)?;
    Ok((t.ip, t.ports))
}

/// True when two IPv4 subnets share any address.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let p = a.1.min(b.1);
    u32::from(a.0) & mask4(p) == u32::from(b.0) & mask4(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml;

    fn base() -> String {
        r#"
name = "default"
mode = "nat"
bridge = "virbr0"
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.2", end = "192.168.122.254", lease = "1h" }
hosts = [{ mac = "52:54:00:6f:78:f3", ip = "192.168.122.222", name = "web" }]
[dns]
domain = "default.netd"
"#
        .to_string()
    }

    fn check(text: &str) -> Result<Network> {
        let n = from_toml(text)?;
        validate(&n)?;
        Ok(n)
    }

    #[test]
    fn the_example_definition_is_valid() {
        let n = check(&base()).unwrap();
        assert_eq!(n.ipv4.unwrap().hosts[0].name.as_deref(), Some("web"));
        assert!(n.stp.enabled);
    }

    #[test]
    fn lane_settings_parse_round_trip_and_need_a_datapath() {
        let t = base().replace(
            "bridge = \"virbr0\"\n",
            "bridge = \"virbr0\"\nstrict = true\nhost_access = \"dhcp-dns\"\n",
        );
        let n = check(&t).unwrap();
        assert!(n.strict);
        assert_eq!(n.host_access, crate::config::HostAccess::DhcpDns);
        let again = check(&crate::config::to_toml(&n)).unwrap();
        assert_eq!(again, n, "round trip");
        // Defaults are not written out.
        let plain = crate::config::to_toml(&check(&base()).unwrap());
        assert!(
            !plain.contains("strict") && !plain.contains("host_access"),
            "{plain}"
        );

        let e = check(&t.replace("dhcp-dns", "ssh-only"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("host_access") || e.contains("unknown variant"),
            "{e}"
        );
        let bridged = t.replace("mode = \"nat\"", "mode = \"bridge\"");
        let e = check(&bridged).unwrap_err().to_string();
        assert!(e.contains("datapath"), "{e}");
        let no_v4 = "name = \"s\"\nmode = \"isolated\"\nstrict = true\n";
        let e = check(no_v4).unwrap_err().to_string();
        assert!(e.contains("[ipv4]"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = check(&(base() + "colour = 1\n")).unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn bad_ranges_are_refused() {
        let t = base().replace("192.168.122.254\", lease", "192.168.123.254\", lease");
        assert!(
            check(&t)
                .unwrap_err()
                .to_string()
                .contains("outside the subnet")
        );
        let t = base()
            .replace("start = \"192.168.122.2\"", "start = \"192.168.122.250\"")
            .replace("192.168.122.254\", lease", "192.168.122.3\", lease");
        assert!(check(&t).unwrap_err().to_string().contains("reversed"));
    }

    #[test]
    fn bad_hosts_are_refused() {
        let t = base().replace("192.168.122.222", "10.0.0.5");
        assert!(
            check(&t)
                .unwrap_err()
                .to_string()
                .contains("outside the subnet")
        );
        let t = base().replace(
            "name = \"web\" }]",
            "name = \"web\" }, { mac = \"52:54:00:6F:78:F3\", ip = \"192.168.122.9\" }]",
        );
        assert!(
            check(&t).unwrap_err().to_string().contains("same MAC")
                || check(&t).unwrap_err().to_string().contains("the MAC")
        );
        let t = base().replace(
            "name = \"web\" }]",
            "name = \"web\" }, { mac = \"52:54:00:00:00:01\", ip = \"192.168.122.222\" }]",
        );
        assert!(check(&t).unwrap_err().to_string().contains("the IP"));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["a/b", "..", "has space", "sixteen-bytes-xx"] {
            let t = base().replace("name = \"default\"", &format!("name = {bad:?}"));
            assert!(check(&t).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn forwards_are_checked() {
        let n = check(&base()).unwrap();
        let f = |port: &str, to: &str| Forward {
            proto: Proto::Tcp,
            port: port.parse().unwrap(),
            to: to.parse().unwrap(),
            address: None,
        };
        assert!(validate_forward(&n, &f("8080", "192.168.122.10:80")).is_ok());
        assert!(validate_forward(&n, &f("8000-8010", "192.168.122.10:80-90")).is_ok());
        assert!(
            validate_forward(&n, &f("8000-8010", "192.168.122.10:80-85"))
                .unwrap_err()
                .to_string()
                .contains("differ")
        );
        assert!("0".parse::<PortRange>().unwrap_err().contains("port 0"));
        assert!(
            validate_forward(&n, &f("80", "10.1.1.1"))
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        // Targets that can never be a guest.
        for (to, why) in [
            ("192.168.122.0", "network or broadcast"),
            ("192.168.122.255", "network or broadcast"),
            ("192.168.122.1", "gateway"),
        ] {
            let e = validate_forward(&n, &f("80", to)).unwrap_err().to_string();
            assert!(
                e.starts_with("forward to: ") && e.contains(why),
                "{to}: {e}"
            );
        }
        // Host addresses that can never receive a forward.
        for (addr, why) in [
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.5", "multicast"),
            ("127.0.0.1", "loopback"),
            ("240.0.0.1", "reserved"),
            ("192.168.122.1", "bridge's own"),
            ("192.168.122.50", "inside"),
        ] {
            let mut fw = f("80", "192.168.122.10");
            fw.address = Some(addr.parse().unwrap());
            let e = validate_forward(&n, &fw).unwrap_err().to_string();
            assert!(
                e.starts_with("forward address: ") && e.contains(why),
                "{addr}: {e}"
            );
        }
        let mut fw = f("80", "192.168.122.10");
        fw.address = Some("198.51.100.2".parse().unwrap());
        validate_forward(&n, &fw).unwrap();
    }

    #[test]
    fn overlap_detection() {
        let a = ("192.168.122.0".parse().unwrap(), 24);
        assert!(overlaps(a, ("192.168.0.0".parse().unwrap(), 16)));
        assert!(!overlaps(a, ("192.168.123.0".parse().unwrap(), 24)));
    }
}
