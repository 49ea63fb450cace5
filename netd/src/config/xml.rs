//! libvirt network XML import and export, for the subset that maps onto netd:
//! name, bridge, forward mode/dev, nat address/port, mac, mtu, ip with dhcp
//! range and hosts, IPv6, and domain.

use super::model::*;
use anyhow::{Context, Result, bail};
use std::fmt::Write;
use std::net::Ipv4Addr;

pub fn from_libvirt(text: &str) -> Result<Network> {
    let doc = roxmltree::Document::parse(text).map_err(|e| anyhow::anyhow!("invalid XML: {e}"))?;
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
            m => bail!("libvirt forward mode {m:?} is not supported"),
        };
        net.uplink = fwd.attribute("dev").map(str::to_string);
        if net.mode == Mode::Hostdev {
            super::hostdev::from_libvirt(root, fwd, &mut net)?;
        }
        if let Some(nat) = child(fwd, "nat") {
            let mut n = Nat::default();
            if let Some(a) = child(nat, "address") {
                n.address = a
                    .attribute("start")
                    .map(|s| s.parse())
                    .transpose()
                    .context("nat address")?;
            }
            if let Some(p) = child(nat, "port") {
                n.ports = Some(format!(
                    "{}-{}",
                    p.attribute("start").unwrap_or("1024"),
                    p.attribute("end").unwrap_or("65535")
                ));
            }
            net.nat = Some(n);
        }
    }
    if let Some(b) = child(root, "bridge") {
        net.bridge = b.attribute("name").map(str::to_string);
        if let Some(stp) = b.attribute("stp") {
            net.stp.enabled = stp == "on";
        }
        if let Some(d) = b.attribute("delay") {
            net.stp.delay = d.parse().context("bridge delay")?;
        }
    }
    net.mac = child(root, "mac")
        .and_then(|m| m.attribute("address"))
        .map(str::to_string);
    net.mtu = child(root, "mtu")
        .and_then(|m| m.attribute("size"))
        .map(|s| s.parse())
        .transpose()
        .context("mtu")?;
    if let Some(d) = child(root, "domain").and_then(|d| d.attribute("name")) {
        net.dns = Some(Dns {
            domain: Some(d.to_string()),
            hosts: vec![],
            enable: true,
        });
    }
    for ip in root
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "ip")
    {
        let addr = ip.attribute("address").context("<ip> without address")?;
        let family = ip.attribute("family").unwrap_or("ipv4");
        let dhcp = child(ip, "dhcp");
        if family == "ipv6" {
            let prefix = ip.attribute("prefix").unwrap_or("64");
            let range = dhcp.and_then(|d| child(d, "range"));
            net.ipv6 = Some(Ipv6 {
                address: format!("{addr}/{prefix}"),
                slaac: dhcp.is_none(),
                dhcp: range
                    .map(|r| -> Result<Dhcp6> {
                        Ok(Dhcp6 {
                            start: r.attribute("start").context("range start")?.parse()?,
                            end: r.attribute("end").context("range end")?.parse()?,
                            lease: None,
                        })
                    })
                    .transpose()?,
                hosts: vec![],
                nat: false,
            });
            continue;
        }
        let prefix: u8 = match (ip.attribute("prefix"), ip.attribute("netmask")) {
            (Some(p), _) => p.parse().context("prefix")?,
            (None, Some(m)) => {
                u32::from(m.parse::<Ipv4Addr>().context("netmask")?).count_ones() as u8
            }
            (None, None) => 24,
        };
        let mut v4 = Ipv4 {
            address: format!("{addr}/{prefix}"),
            dhcp: None,
            hosts: vec![],
        };
        if let Some(d) = dhcp {
            if let Some(r) = child(d, "range") {
                v4.dhcp = Some(Dhcp4 {
                    start: r.attribute("start").context("range start")?.parse()?,
                    end: r.attribute("end").context("range end")?.parse()?,
                    lease: child(r, "lease").and_then(|l| {
                        let v = l.attribute("expiry")?;
                        Some(match l.attribute("unit").unwrap_or("minutes") {
                            "seconds" => v.to_string(),
                            "hours" => format!("{v}h"),
                            _ => format!("{v}m"),
                        })
                    }),
                });
            }
            for h in d
                .children()
                .filter(|c| c.is_element() && c.tag_name().name() == "host")
            {
                v4.hosts.push(Host {
                    mac: h
                        .attribute("mac")
                        .context("<host> without mac")?
                        .to_string(),
                    ip: h.attribute("ip").context("<host> without ip")?.parse()?,
                    name: h.attribute("name").map(str::to_string),
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
                let _ = writeln!(s, "      <range start='{}' end='{}'/>", d.start, d.end);
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
        if let Some(d) = &v6.dhcp {
            let _ = writeln!(
                s,
                "    <dhcp>\n      <range start='{}' end='{}'/>\n    </dhcp>",
                d.start, d.end
            );
        }
        let _ = writeln!(s, "  </ip>");
    }
    let _ = writeln!(s, "</network>");
    s
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
        assert_eq!(v4.address, "192.168.122.1/24");
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
