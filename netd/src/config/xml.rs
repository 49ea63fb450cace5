//! libvirt network XML import and export, for the subset that maps onto netd:
//! name, bridge, forward mode/dev, nat address/port, mac, mtu, ip with dhcp
//! range and hosts, IPv6, and domain.

use super::model::*;
use super::types::*;
use anyhow::{Context, Result, anyhow, bail};
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Limits checked before roxmltree sees the text. roxmltree itself is not
/// recursive, but a deep tree is never a network definition and everything
/// after parsing walks it, so depth is bounded first; its duplicate-attribute
/// check is quadratic, so attributes per element are bounded too.
pub const MAX_DEPTH: usize = 32;
pub const MAX_ELEMENTS: usize = 10_000;
pub const MAX_ATTRIBUTES: usize = 64;

/// Counts nesting depth, elements and attributes per element in one pass,
/// without recursion. Exact for well-formed XML; for malformed text it may
/// miscount, but roxmltree refuses that anyway.
fn check_limits(text: &str) -> Result<()> {
    let b = text.as_bytes();
    let (mut i, mut depth, mut elements) = (0usize, 0usize, 0usize);
    let skip_to = |from: usize, end: &[u8]| -> usize {
        b[from..]
            .windows(end.len())
            .position(|w| w == end)
            .map(|p| from + p + end.len())
            .unwrap_or(b.len())
    };
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = skip_to(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_to(i + 2, b"?>");
        } else if rest.starts_with(b"<!") {
            bail!("invalid XML: DTDs are not allowed in a network definition");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_to(i + 2, b">");
        } else {
            // A start tag: find its end outside quoted attribute values.
            let (mut j, mut quote, mut attrs) = (i + 1, 0u8, 0usize);
            while j < b.len() {
                let c = b[j];
                if quote != 0 {
                    if c == quote {
                        quote = 0;
                    }
                } else if c == b'"' || c == b'\'' {
                    quote = c;
                } else if c == b'=' {
                    attrs += 1;
                } else if c == b'>' {
                    break;
                }
                j += 1;
            }
            elements += 1;
            if attrs > MAX_ATTRIBUTES {
                bail!("invalid XML: an element has more than {MAX_ATTRIBUTES} attributes");
            }
            if elements > MAX_ELEMENTS {
                bail!("invalid XML: more than {MAX_ELEMENTS} elements");
            }
            if j > 0 && j < b.len() && b[j - 1] != b'/' {
                depth += 1;
                if depth > MAX_DEPTH {
                    bail!("invalid XML: nested deeper than {MAX_DEPTH} levels");
                }
            }
            i = j + 1;
        }
    }
    Ok(())
}

/// An attribute's value, parsed; errors name the element and attribute.
fn attr<T>(n: roxmltree::Node, name: &str) -> Result<Option<T>>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    n.attribute(name)
        .map(|v| {
            T::from_str(v).map_err(|e| {
                anyhow!(
                    "<{} {name}>: {}",
                    n.tag_name().name(),
                    one_line_value(v, &e.to_string())
                )
            })
        })
        .transpose()
}

/// One port, digits only (`types::parse_port`).
struct Port(u16);

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_port(s).map(Port)
    }
}

/// A required attribute.
fn need<T>(n: roxmltree::Node, name: &str) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    attr(n, name)?.ok_or_else(|| anyhow!("<{}> has no {name} attribute", n.tag_name().name()))
}

/// A type's error quotes the value already; std's parse errors do not.
fn one_line_value(v: &str, e: &str) -> String {
    if e.contains(&format!("{v:?}")) {
        e.to_string()
    } else {
        format!("{v:?}: {e}")
    }
}

pub fn from_libvirt(text: &str) -> Result<Network> {
    if text.len() > super::MAX_DEFINITION_BYTES {
        bail!(
            "definition is larger than {} bytes; a definition is a few KiB",
            super::MAX_DEFINITION_BYTES
        );
    }
    check_limits(text)?;
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: 4 * MAX_ELEMENTS as u32,
    };
    let doc = roxmltree::Document::parse_with_options(text, opts)
        .map_err(|e| anyhow!("invalid XML: {}", super::one_line(&e.to_string())))?;
    let root = doc.root_element();
    if root.tag_name().name() != "network" {
        bail!(
            "libvirt XML must have a <network> root, not <{}>",
            root.tag_name().name()
        );
    }
    let name = child(root, "name")
        .and_then(|n| n.text())
        .context("libvirt XML has no <name>")?
        .trim()
        .to_string();
    super::check_network_name(&name).map_err(|e| anyhow!("<name>: {e}"))?;
    let mut net = Network {
        name,
        ..Default::default()
    };
    net.mode = Mode::Isolated;
    if let Some(fwd) = child(root, "forward") {
        net.mode = match fwd.attribute("mode").unwrap_or("nat") {
            "nat" => Mode::Nat,
            "route" => Mode::Route,
            "open" => Mode::Open,
            "bridge" => Mode::Bridge,
            "hostdev" => Mode::Hostdev,
            m => bail!("<forward mode>: libvirt forward mode {m:?} is not supported"),
        };
        net.uplink = attr(fwd, "dev")?;
        if net.mode == Mode::Hostdev {
            super::hostdev::from_libvirt(root, fwd, &mut net)?;
        }
        if let Some(nat) = child(fwd, "nat") {
            let mut n = Nat::default();
            if let Some(a) = child(nat, "address") {
                n.address = attr(a, "start")?;
            }
            if let Some(p) = child(nat, "port") {
                let lo = attr::<Port>(p, "start")?.map(|p| p.0).unwrap_or(1024);
                let hi = attr::<Port>(p, "end")?.map(|p| p.0).unwrap_or(65535);
                n.ports = Some(
                    PortRange::from_str(&format!("{lo}-{hi}"))
                        .map_err(|e| anyhow!("<nat port>: {e}"))?,
                );
            }
            net.nat = Some(n);
        }
    }
    if let Some(b) = child(root, "bridge") {
        net.bridge = attr(b, "name")?;
        match b.attribute("stp") {
            None => {}
            Some("on") => net.stp.enabled = true,
            Some("off") => net.stp.enabled = false,
            Some(v) => bail!("<bridge stp>: {v:?} must be on or off"),
        }
        if let Some(d) = attr(b, "delay")? {
            net.stp.delay = d;
        }
    }
    if let Some(m) = child(root, "mac") {
        net.mac = attr(m, "address")?;
    }
    if let Some(m) = child(root, "mtu") {
        net.mtu = attr(m, "size")?;
    }
    if let Some(d) = child(root, "domain") {
        net.dns = Some(Dns {
            domain: attr(d, "name")?,
            hosts: vec![],
            enable: true,
        });
    }
    for ip in root
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "ip")
    {
        let addr: std::net::IpAddr = need(ip, "address")?;
        let family = ip.attribute("family").unwrap_or("ipv4");
        let dhcp = child(ip, "dhcp");
        if family == "ipv6" {
            let prefix: u8 = attr(ip, "prefix")?.unwrap_or(64);
            let range = dhcp.and_then(|d| child(d, "range"));
            let address = ipnet::Ipv6Net::from_str(&format!("{addr}/{prefix}")).map_err(|_| {
                anyhow!("<ip address prefix>: {addr}/{prefix} is not an IPv6 prefix")
            })?;
            let mut v6 = Ipv6 {
                address,
                slaac: dhcp.is_none(),
                dhcp: range
                    .map(|r| -> Result<Dhcp6> {
                        Ok(Dhcp6 {
                            start: need(r, "start")?,
                            end: need(r, "end")?,
                            lease: None,
                        })
                    })
                    .transpose()?,
                hosts: vec![],
                nat: false,
            };
            if let Some(d) = dhcp {
                for h in d
                    .children()
                    .filter(|c| c.is_element() && c.tag_name().name() == "host")
                {
                    v6.hosts.push(Host6 {
                        duid: need(h, "id")?,
                        ip: need(h, "ip")?,
                        name: attr(h, "name")?,
                    });
                }
            }
            net.ipv6 = Some(v6);
            continue;
        }
        let prefix: u8 = match (attr::<u8>(ip, "prefix")?, ip.attribute("netmask")) {
            (Some(p), _) => p,
            (None, Some(_)) => {
                let m: Ipv4Addr = need(ip, "netmask")?;
                let m = u32::from(m);
                if m.leading_ones() != m.count_ones() {
                    bail!(
                        "<ip netmask>: {} is not a contiguous netmask",
                        Ipv4Addr::from(m)
                    );
                }
                m.count_ones() as u8
            }
            (None, None) => 24,
        };
        let address = ipnet::Ipv4Net::from_str(&format!("{addr}/{prefix}"))
            .map_err(|_| anyhow!("<ip address prefix>: {addr}/{prefix} is not an IPv4 prefix"))?;
        let mut v4 = Ipv4 {
            address,
            dhcp: None,
            hosts: vec![],
        };
        if let Some(d) = dhcp {
            if let Some(r) = child(d, "range") {
                let lease = match child(r, "lease") {
                    Some(l) => {
                        let v: u32 = need(l, "expiry")?;
                        // libvirt: expiry 0 is an infinite lease.
                        let text = match l.attribute("unit").unwrap_or("minutes") {
                            _ if v == 0 => "infinite".to_string(),
                            "seconds" => v.to_string(),
                            "minutes" => format!("{v}m"),
                            "hours" => format!("{v}h"),
                            u => bail!("<lease unit>: {u:?} must be seconds, minutes or hours"),
                        };
                        Some(
                            LeaseTime::from_str(&text)
                                .map_err(|e| anyhow!("<lease expiry>: {e}"))?,
                        )
                    }
                    None => None,
                };
                v4.dhcp = Some(Dhcp4 {
                    start: need(r, "start")?,
                    end: need(r, "end")?,
                    lease,
                });
            }
            for h in d
                .children()
                .filter(|c| c.is_element() && c.tag_name().name() == "host")
            {
                v4.hosts.push(Host {
                    mac: need(h, "mac")?,
                    ip: need(h, "ip")?,
                    name: attr(h, "name")?,
                });
            }
        }
        net.ipv4 = Some(v4);
    }
    Ok(net)
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == tag)
}

pub fn to_libvirt(net: &Network) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "<network>");
    let _ = writeln!(s, "  <name>{}</name>", esc(&net.name));
    if net.mode != Mode::Isolated {
        let dev = net
            .uplink
            .as_ref()
            .map(|d| format!(" dev='{}'", esc(d)))
            .unwrap_or_default();
        match &net.nat {
            _ if net.mode == Mode::Hostdev => super::hostdev::to_libvirt(net, &mut s),
            Some(n) if net.mode == Mode::Nat => {
                let _ = writeln!(s, "  <forward mode='nat'{dev}>");
                let _ = writeln!(s, "    <nat>");
                if let Some(a) = n.address {
                    let _ = writeln!(s, "      <address start='{a}' end='{a}'/>");
                }
                let (lo, hi) = n.port_range().unwrap_or((1024, 65535));
                let _ = writeln!(s, "      <port start='{lo}' end='{hi}'/>");
                let _ = writeln!(s, "    </nat>");
                let _ = writeln!(s, "  </forward>");
            }
            _ => {
                let _ = writeln!(s, "  <forward mode='{}'{dev}/>", net.mode.as_str());
            }
        }
    }
    if let Some(b) = &net.bridge {
        let stp = if net.stp.enabled { "on" } else { "off" };
        let _ = writeln!(
            s,
            "  <bridge name='{}' stp='{stp}' delay='{}'/>",
            esc(b),
            net.stp.delay
        );
    }
    if let Some(m) = &net.mac {
        let _ = writeln!(s, "  <mac address='{m}'/>");
    }
    if let Some(m) = net.mtu {
        let _ = writeln!(s, "  <mtu size='{m}'/>");
    }
    if let Some(d) = net.dns.as_ref().and_then(|d| d.domain.as_ref()) {
        let _ = writeln!(s, "  <domain name='{}'/>", esc(d));
    }
    if let Some(v4) = &net.ipv4
        && let Ok((a, p)) = v4.parsed()
    {
        let _ = writeln!(s, "  <ip address='{a}' prefix='{p}'>");
        if v4.dhcp.is_some() || !v4.hosts.is_empty() {
            let _ = writeln!(s, "    <dhcp>");
            if let Some(d) = &v4.dhcp {
                match d.lease.as_ref().map(lease_xml) {
                    Some((v, unit)) => {
                        let _ = writeln!(
                            s,
                            "      <range start='{}' end='{}'><lease expiry='{v}' unit='{unit}'/></range>",
                            d.start, d.end
                        );
                    }
                    None => {
                        let _ = writeln!(s, "      <range start='{}' end='{}'/>", d.start, d.end);
                    }
                }
            }
            for h in &v4.hosts {
                let name = h
                    .name
                    .as_ref()
                    .map(|n| format!(" name='{}'", esc(n)))
                    .unwrap_or_default();
                let _ = writeln!(s, "      <host mac='{}'{name} ip='{}'/>", h.mac, h.ip);
            }
            let _ = writeln!(s, "    </dhcp>");
        }
        let _ = writeln!(s, "  </ip>");
    }
    if let Some(v6) = &net.ipv6
        && let Ok((a, p)) = v6.parsed()
    {
        let _ = writeln!(s, "  <ip family='ipv6' address='{a}' prefix='{p}'>");
        if v6.dhcp.is_some() || !v6.hosts.is_empty() {
            let _ = writeln!(s, "    <dhcp>");
            if let Some(d) = &v6.dhcp {
                let _ = writeln!(s, "      <range start='{}' end='{}'/>", d.start, d.end);
            }
            for h in &v6.hosts {
                let name = h
                    .name
                    .as_ref()
                    .map(|n| format!(" name='{}'", esc(n)))
                    .unwrap_or_default();
                let _ = writeln!(s, "      <host id='{}'{name} ip='{}'/>", h.duid, h.ip);
            }
            let _ = writeln!(s, "    </dhcp>");
        }
        let _ = writeln!(s, "  </ip>");
    }
    let _ = writeln!(s, "</network>");
    s
}

/// A lease time as libvirt's (expiry, unit); days go as hours.
fn lease_xml(l: &LeaseTime) -> (u64, &'static str) {
    let t = l.as_str();
    if t == "infinite" {
        return (0, "seconds");
    }
    let (num, unit) = match t.as_bytes()[t.len() - 1] {
        b's' => (&t[..t.len() - 1], "seconds"),
        b'm' => (&t[..t.len() - 1], "minutes"),
        b'h' => (&t[..t.len() - 1], "hours"),
        b'd' => (&t[..t.len() - 1], "days"),
        _ => (t, "seconds"),
    };
    let n: u64 = num.parse().unwrap_or(0);
    match unit {
        "days" => (n * 24, "hours"),
        u => (n, u),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_XML: &str = r#"<network>
  <name>default</name>
  <bridge name="virbr0"/>
  <forward mode="nat"/>
  <ip address="192.168.122.1" netmask="255.255.255.0">
    <dhcp>
      <range start="192.168.122.2" end="192.168.122.254"/>
      <host mac="52:54:00:6f:78:f3" name="web" ip="192.168.122.222"/>
    </dhcp>
  </ip>
</network>"#;

    #[test]
    fn imports_libvirts_default_network() {
        let n = from_libvirt(DEFAULT_XML).unwrap();
        assert_eq!(n.name, "default");
        assert_eq!(n.mode, Mode::Nat);
        assert_eq!(n.bridge.as_deref(), Some("virbr0"));
        let v4 = n.ipv4.as_ref().unwrap();
        assert_eq!(v4.address.to_string(), "192.168.122.1/24");
        assert_eq!(
            v4.hosts[0].ip,
            "192.168.122.222".parse::<Ipv4Addr>().unwrap()
        );
        super::super::validate(&n).unwrap();
    }

    #[test]
    fn export_round_trips() {
        let n = from_libvirt(DEFAULT_XML).unwrap();
        let back = from_libvirt(&to_libvirt(&n)).unwrap();
        assert_eq!(back.ipv4, n.ipv4);
        assert_eq!(back.mode, n.mode);
    }
}
