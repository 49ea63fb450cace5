//! Checks a definition can be started as written. Every failure is one line
//! that names the offending field.

use super::model::*;
use anyhow::{Result, bail};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Linux's IFNAMSIZ less the terminating NUL.
const IFNAME_MAX: usize = 15;

pub fn check_interface_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("{what} must not be empty");
    }
    if name.len() > IFNAME_MAX {
        bail!("{what} {name:?} is longer than {IFNAME_MAX} bytes");
    }
    if name == "." || name == ".." || name.contains('/') || name.chars().any(char::is_whitespace) {
        bail!("{what} {name:?} must not contain '/', whitespace or be '.' or '..'");
    }
    if name.contains(':') {
        bail!("{what} {name:?} must not contain ':'");
    }
    Ok(())
}

pub fn check_network_name(name: &str) -> Result<()> {
    if name.contains("..") {
        bail!("network name {name:?} must not contain '..'");
    }
    // The name becomes a file name and, for dnsmasq, part of interface-sized
    // identifiers, so it follows interface-name rules.
    check_interface_name("network name", name)
}

pub fn validate(net: &Network) -> Result<()> {
    check_network_name(&net.name)?;
    if let Some(b) = &net.bridge {
        check_interface_name("bridge name", b)?;
    }
    if let Some(u) = &net.uplink {
        check_interface_name("uplink", u)?;
    }
    if let Some(mac) = &net.mac {
        normalize_mac(mac).map_err(anyhow::Error::msg)?;
    }
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
        if let Some(l) = &d.lease {
            parse_lease(l)?;
        }
    }
    let mut macs = HashSet::new();
    let mut ips = HashSet::new();
    for h in &v4.hosts {
        let mac = normalize_mac(&h.mac).map_err(anyhow::Error::msg)?;
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
        if let Some(n) = &h.name {
            check_hostname(n)?;
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
    let mut duids = HashSet::new();
    for h in &v6.hosts {
        if !duids.insert(h.duid.to_ascii_lowercase()) {
            bail!("two IPv6 hosts have the DUID {}", h.duid);
        }
    }
    Ok(())
}

fn check_hostname(n: &str) -> Result<()> {
    if n.is_empty()
        || n.len() > 63
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        bail!("host name {n:?} must be letters, digits, '-' or '.'");
    }
    Ok(())
}

/// "1h", "30m", "3600" (seconds) or "infinite".
pub fn parse_lease(s: &str) -> Result<String> {
    let ok = s == "infinite"
        || s.strip_suffix(['s', 'm', 'h', 'd'])
            .unwrap_or(s)
            .parse::<u32>()
            .is_ok_and(|v| v > 0);
    if !ok {
        bail!("lease time {s:?} must be like 3600, 30m, 1h, 1d or infinite");
    }
    Ok(s.to_string())
}

pub fn validate_forward(net: &Network, f: &Forward) -> Result<()> {
    if matches!(net.mode, Mode::Isolated | Mode::Hostdev | Mode::Bridge) {
        bail!(
            "port forwards need a nat, route or open network; {} is {}",
            net.name,
            net.mode.as_str()
        );
    }
    let host = PortRange::from_str(&f.port).map_err(|e| anyhow::anyhow!("forward port: {e}"))?;
    let (ip, guest) = parse_forward_target(&f.to)?;
    if let Some(g) = guest
        && g.len() != host.len()
    {
        bail!(
            "forward {} -> {}: port ranges differ in length ({} vs {})",
            f.port,
            f.to,
            host.len(),
            g.len()
        );
    }
    let v4 = net
        .ipv4
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("port forwards need an [ipv4] subnet"))?;
    let (gw, prefix) = v4.parsed().map_err(anyhow::Error::msg)?;
    if !in_subnet4(ip, gw, prefix) || ip == gw {
        bail!(
            "forward target {ip} is outside the network's subnet {}",
            v4.address
        );
    }
    Ok(())
}

/// "ip", "ip:port" or "ip:port-port".
pub fn parse_forward_target(s: &str) -> Result<(Ipv4Addr, Option<PortRange>)> {
    let (ip, ports) = match s.split_once(':') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip = Ipv4Addr::from_str(ip)
        .map_err(|_| anyhow::anyhow!("invalid forward target address {ip:?}"))?;
    let ports = ports
        .map(PortRange::from_str)
        .transpose()
        .map_err(|e| anyhow::anyhow!("forward target: {e}"))?;
    Ok((ip, ports))
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
            port: port.into(),
            to: to.into(),
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
        assert!(
            validate_forward(&n, &f("0", "192.168.122.10"))
                .unwrap_err()
                .to_string()
                .contains("port 0")
        );
        assert!(
            validate_forward(&n, &f("80", "10.1.1.1"))
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
    }

    #[test]
    fn overlap_detection() {
        let a = ("192.168.122.0".parse().unwrap(), 24);
        assert!(overlaps(a, ("192.168.0.0".parse().unwrap(), 16)));
        assert!(!overlaps(a, ("192.168.123.0".parse().unwrap(), 24)));
    }
}
