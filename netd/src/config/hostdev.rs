//! `mode = "hostdev"`: a pool of SR-IOV virtual functions. Kept apart from
//! the other modes' checks and XML so each stays readable: a hostdev network
//! has no bridge, addresses, DHCP or forwards, only a PF (or a list of VF
//! PCI addresses), an optional VF count to enable and a default VLAN.

use super::model::*;
use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::fmt::Write;

/// 802.1Q VLAN ids usable on a VF (0 means "no VLAN", 4095 is reserved).
pub const VLAN_RANGE: std::ops::RangeInclusive<u16> = 1..=4094;

/// Checks the hostdev fields: required and consistent on a hostdev
/// network, absent on every other kind.
pub fn validate_hostdev(net: &Network) -> Result<()> {
    if net.mode != Mode::Hostdev {
        for (set, key) in [
            (net.pf.is_some(), "pf"),
            (!net.vfs_pci.is_empty(), "vfs_pci"),
            (net.vfs.is_some(), "vfs"),
            (net.vlan.is_some(), "vlan"),
        ] {
            if set {
                bail!("`{key}` only applies to mode = \"hostdev\"");
            }
        }
        return Ok(());
    }
    for (set, key) in [
        (net.bridge.is_some(), "bridge"),
        (net.uplink.is_some(), "uplink"),
        (net.mtu.is_some(), "mtu"),
        (net.mac.is_some(), "mac"),
        (net.nat.is_some(), "[nat]"),
        (net.ipv4.is_some(), "[ipv4]"),
        (net.ipv6.is_some(), "[ipv6]"),
        (net.dns.is_some(), "[dns]"),
        (!net.forwards.is_empty(), "forwards"),
    ] {
        if set {
            bail!("a hostdev network has no bridge or addresses: `{key}` does not apply");
        }
    }
    match (&net.pf, net.vfs_pci.is_empty()) {
        (Some(_), false) => bail!("a hostdev network takes `pf` or `vfs_pci`, not both"),
        (None, true) => {
            bail!("a hostdev network needs `pf` (the PF's netdev) or `vfs_pci` (VF PCI addresses)")
        }
        (Some(pf), true) => super::check_interface_name("pf", pf)?,
        (None, false) => {
            let mut seen = HashSet::new();
            for a in &net.vfs_pci {
                if !seen.insert(a) {
                    bail!("vfs_pci lists {a} twice");
                }
            }
            if net.vfs.is_some() {
                bail!("`vfs` needs `pf`: VFs are enabled on a PF");
            }
        }
    }
    if net.vfs == Some(0) {
        bail!("vfs = 0 enables nothing; leave it out to use the VFs the PF has");
    }
    if let Some(v) = net.vlan
        && !VLAN_RANGE.contains(&v)
    {
        bail!("vlan {v} is outside 1-4094");
    }
    Ok(())
}

/// Reads `<forward mode='hostdev'>`'s `<pf dev=…/>` or `<address type='pci' …/>`
/// list, and the network's `<vlan><tag id=…/></vlan>`. When both a PF and
/// addresses are there (libvirt's `net-dumpxml` after a guest started), the
/// addresses are the ones libvirt derived from the PF, so the PF wins.
pub fn from_libvirt(
    root: roxmltree::Node<'_, '_>,
    fwd: roxmltree::Node<'_, '_>,
    net: &mut Network,
) -> Result<()> {
    if let Some(m) = fwd.attribute("managed")
        && m != "yes"
        && m != "no"
    {
        bail!("<forward managed={m:?}> must be yes or no");
    }
    if let Some(pf) = elems(fwd, "pf").first() {
        net.pf = Some(pf.attribute("dev").context("<pf> without dev")?.to_string());
    } else {
        for a in elems(fwd, "address") {
            if a.attribute("type").is_some_and(|t| t != "pci") {
                bail!(
                    "<address type={:?}> is not a PCI address",
                    a.attribute("type")
                );
            }
            let field = |k: &str| -> Result<u32> {
                let v = a
                    .attribute(k)
                    .with_context(|| format!("<address type='pci'> without {k}"))?;
                let hex = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"));
                let n = match hex {
                    Some(h) => u32::from_str_radix(h, 16),
                    None => v.parse(),
                };
                n.ok()
                    .with_context(|| format!("<address type='pci' {k}={v:?}> is not a number"))
            };
            let (d, b, s, f) = (
                field("domain")?,
                field("bus")?,
                field("slot")?,
                field("function")?,
            );
            if d > 0xffff || b > 0xff {
                bail!("<address type='pci' domain={d:#x} bus={b:#x}> is out of range");
            }
            let addr = PciAddr::new(d as u16, b as u8, s.min(0xff) as u8, f.min(0xff) as u8)
                .map_err(anyhow::Error::msg)?;
            net.vfs_pci.push(addr);
        }
    }
    if let Some(vlan) = elems(root, "vlan").first() {
        let tags = elems(*vlan, "tag");
        if tags.len() != 1 || vlan.attribute("trunk") == Some("yes") {
            bail!("a hostdev network takes one <vlan><tag id=…/></vlan>, not a trunk");
        }
        let id = tags[0].attribute("id").context("<tag> without id")?;
        net.vlan = Some(id.parse().with_context(|| format!("<tag id={id:?}>"))?);
    }
    Ok(())
}

fn elems<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    n.children()
        .filter(|c| c.is_element() && c.tag_name().name() == tag)
        .collect()
}

/// The `<forward mode='hostdev'>` element and `<vlan>` for export.
pub fn to_libvirt(net: &Network, s: &mut String) {
    let _ = writeln!(s, "  <forward mode='hostdev' managed='yes'>");
    if let Some(pf) = &net.pf {
        let _ = writeln!(s, "    <pf dev='{}'/>", pf.replace('\'', "&apos;"));
    }
    for a in &net.vfs_pci {
        let _ = writeln!(s, "    {}", a.libvirt_xml());
    }
    let _ = writeln!(s, "  </forward>");
    if let Some(v) = net.vlan {
        let _ = writeln!(s, "  <vlan>\n    <tag id='{v}'/>\n  </vlan>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{from_toml, parse, to_toml, xml};

    const PF_XML: &str = "<network>
  <name>passthrough</name>
  <forward mode='hostdev' managed='yes'>
    <pf dev='eth3'/>
  </forward>
</network>";

    const LIST_XML: &str = "<network>
  <name>pool</name>
  <forward mode='hostdev' managed='yes'>
    <address type='pci' domain='0x0000' bus='0x02' slot='0x10' function='0x1'/>
    <address type='pci' domain='0x0000' bus='0x02' slot='0x11' function='0x5'/>
  </forward>
  <vlan><tag id='42'/></vlan>
</network>";

    #[test]
    fn the_seeds_pf_pool_imports_like_the_toml_form() {
        let from_xml = parse(PF_XML, true).unwrap();
        let from_toml = parse(
            "name = \"passthrough\"\nmode = \"hostdev\"\npf = \"eth3\"\n",
            false,
        )
        .unwrap();
        assert_eq!(from_xml, from_toml);
        // Export and import again: the same definition.
        let back = parse(&xml::to_libvirt(&from_xml), true).unwrap();
        assert_eq!(back, from_xml);
        assert!(xml::to_libvirt(&from_xml).contains("<pf dev='eth3'/>"));
    }

    #[test]
    fn an_address_list_imports_like_the_toml_form() {
        let from_xml = parse(LIST_XML, true).unwrap();
        let t = "name = \"pool\"\nmode = \"hostdev\"\nvfs_pci = [\"0000:02:10.1\", \"0000:02:11.5\"]\nvlan = 42\n";
        let from_toml = parse(t, false).unwrap();
        assert_eq!(from_xml, from_toml);
        assert_eq!(parse(&to_toml(&from_xml), false).unwrap(), from_xml);
        let out = xml::to_libvirt(&from_xml);
        assert!(
            out.contains(
                "<address type='pci' domain='0x0000' bus='0x02' slot='0x11' function='0x5'/>"
            ),
            "{out}"
        );
        assert_eq!(parse(&out, true).unwrap(), from_xml);
    }

    #[test]
    fn libvirts_dumped_form_keeps_the_pf() {
        // net-dumpxml after a guest started lists the derived addresses too.
        let dumped = PF_XML.replace(
            "<pf dev='eth3'/>",
            "<pf dev='eth3'/><address type='pci' domain='0x0000' bus='0x02' slot='0x10' function='0x1'/>",
        );
        assert_eq!(parse(&dumped, true).unwrap(), parse(PF_XML, true).unwrap());
    }

    #[test]
    fn pci_addresses_are_checked() {
        let a: PciAddr = "0000:02:10.1".parse().unwrap();
        assert_eq!((a.domain, a.bus, a.slot, a.function), (0, 2, 0x10, 1));
        assert_eq!(a.to_string(), "0000:02:10.1");
        assert_eq!("02:10.1".parse::<PciAddr>().unwrap(), a);
        for bad in [
            "",
            "0000:02:10",
            "0000:02:20.1",
            "0000:02:10.8",
            "00000:02:10.1",
            "x:02:10.1",
            "0000:002:10.1",
            "0000:02:10.1 ",
        ] {
            let e = bad.parse::<PciAddr>().unwrap_err();
            assert!(e.contains("PCI"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_hostdev_definitions_are_refused_in_one_line() {
        let base = "name = \"p\"\nmode = \"hostdev\"\n";
        for (extra, want) in [
            ("", "needs `pf`"),
            ("pf = \"eth3\"\nvfs_pci = [\"0000:02:10.1\"]\n", "not both"),
            ("vfs_pci = [\"0000:02:10.1\", \"0000:02:10.1\"]\n", "twice"),
            ("vfs_pci = [\"0000:02:10.9\"]\n", "function"),
            (
                "vfs_pci = [\"0000:02:10.1\"]\nvfs = 4\n",
                "`vfs` needs `pf`",
            ),
            ("pf = \"eth3\"\nvfs = 0\n", "vfs = 0"),
            ("pf = \"eth3\"\nvlan = 0\n", "outside 1-4094"),
            ("pf = \"eth3\"\nvlan = 4095\n", "outside 1-4094"),
            (
                "pf = \"eth3\"\nbridge = \"br0\"\n",
                "`bridge` does not apply",
            ),
            (
                "pf = \"eth3\"\n[ipv4]\naddress = \"10.0.0.1/24\"\n",
                "`[ipv4]` does not apply",
            ),
            ("pf = \"a/b\"\n", "pf"),
        ] {
            let e = format!("{:#}", parse(&format!("{base}{extra}"), false).unwrap_err());
            assert!(e.contains(want), "{extra:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = parse(
            "name = \"n\"\nmode = \"nat\"\npf = \"eth3\"\n[ipv4]\naddress = \"10.0.0.1/24\"\n",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only applies to mode = \"hostdev\""), "{e}");
        assert!(from_toml("name = \"p\"\nmode = \"hostdev\"\nvlan = 70000\n").is_err());
        let e = xml::from_libvirt(&LIST_XML.replace("slot='0x10'", "slot='0x40'")).unwrap_err();
        assert!(e.to_string().contains("slot"), "{e}");
    }
}
