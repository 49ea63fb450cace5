//! dnsmasq's lease file.

use anyhow::{Context, Result};
use std::net::IpAddr;
use std::path::Path;

/// One lease from dnsmasq's lease file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Lease {
    /// Unix seconds; 0 = infinite.
    pub expiry: u64,
    /// Client MAC. For a DHCPv6 lease it is taken from the client's DUID when that embeds an
    /// Ethernet address (DUID-LLT, DUID-LL), and is empty otherwise.
    pub mac: String,
    pub ip: IpAddr,
    pub hostname: Option<String>,
    /// DHCPv4 client id, or the DUID of a DHCPv6 client.
    pub client_id: Option<String>,
}

fn opt(field: &str) -> Option<String> {
    (field != "*" && !field.is_empty()).then(|| field.to_string())
}

/// The Ethernet address inside a DUID-LLT (type 1) or DUID-LL (type 3) with hardware type 1.
pub fn mac_from_duid(duid: &str) -> Option<String> {
    let bytes: Vec<u8> = duid
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let mac = match bytes.as_slice() {
        [0, 1, 0, 1, _, _, _, _, mac @ ..] if mac.len() == 6 => mac,
        [0, 3, 0, 1, mac @ ..] if mac.len() == 6 => mac,
        _ => return None,
    };
    Some(
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Parses one line; None for the `duid` line and anything malformed.
///
/// IPv4: `expiry mac ip hostname clientid`. IPv6: `expiry iaid ip hostname duid`, where the
/// IAID is decimal, prefixed `T` for a temporary address.
fn parse_line(line: &str) -> Option<Lease> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 3 || f[0] == "duid" {
        return None;
    }
    let expiry: u64 = f[0].parse().ok()?;
    let ip: IpAddr = f[2].parse().ok()?;
    let hostname = f.get(3).and_then(|h| opt(h));
    let client_id = f.get(4).and_then(|c| opt(c));
    let mac = match ip {
        IpAddr::V4(_) => f[1].to_ascii_lowercase(),
        IpAddr::V6(_) => {
            // The second field is an IAID, not a MAC.
            let iaid = f[1].strip_prefix('T').unwrap_or(f[1]);
            iaid.parse::<u32>().ok()?;
            client_id
                .as_deref()
                .and_then(mac_from_duid)
                .unwrap_or_default()
        }
    };
    Some(Lease {
        expiry,
        mac,
        ip,
        hostname,
        client_id,
    })
}

/// Parses dnsmasq's lease file. A missing file is an empty list; malformed lines are skipped.
pub fn read_leases(path: &Path) -> Result<Vec<Lease>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(parse_leases(&text))
}

/// Parses the text of a lease file.
pub fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|l| {
            let lease = parse_line(l);
            if lease.is_none() && !l.trim().is_empty() && !l.starts_with("duid ") {
                tracing::debug!("skipping lease line {l:?}");
            }
            lease
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1796036262 52:54:00:00:00:02 10.99.0.28 guest2 01:52:54:00:00:00:02
0 52:54:00:6F:78:F3 192.168.122.222 * *
1796036258 52:54:00:00:00:01 10.99.0.5 h1 *
duid 00:01:00:01:32:a0:05:11:52:54:00:00:00:01
1796036300 1234567 fd00:122::10 six 00:01:00:01:2a:3b:4c:5d:52:54:00:00:00:09
1796036301 T42 fd00:122::11 * 00:02:00:00:ab:11:01:02:03:04
garbage line
";

    #[test]
    fn parses_v4_duid_and_v6_lines() {
        let dir = std::env::temp_dir().join(format!("netd-dhcp-leases-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.leases");
        assert_eq!(read_leases(&path).unwrap(), vec![], "missing file is empty");
        std::fs::write(&path, SAMPLE).unwrap();
        let l = read_leases(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(l.len(), 5, "{l:#?}");
        assert_eq!(
            l[0],
            Lease {
                expiry: 1796036262,
                mac: "52:54:00:00:00:02".into(),
                ip: "10.99.0.28".parse().unwrap(),
                hostname: Some("guest2".into()),
                client_id: Some("01:52:54:00:00:00:02".into()),
            }
        );
        assert_eq!(l[1].expiry, 0);
        assert_eq!(l[1].mac, "52:54:00:6f:78:f3");
        assert_eq!(
            (l[1].hostname.as_deref(), l[1].client_id.as_deref()),
            (None, None)
        );
        assert_eq!(l[2].client_id, None);
        assert_eq!(
            l[3],
            Lease {
                expiry: 1796036300,
                mac: "52:54:00:00:00:09".into(),
                ip: "fd00:122::10".parse().unwrap(),
                hostname: Some("six".into()),
                client_id: Some("00:01:00:01:2a:3b:4c:5d:52:54:00:00:00:09".into()),
            }
        );
        assert_eq!(l[4].mac, "", "DUID-EN has no MAC");
        assert_eq!(l[4].hostname, None);
        assert!(l[4].ip.is_ipv6());
    }

    #[test]
    fn duid_macs() {
        assert_eq!(
            mac_from_duid("00:03:00:01:52:54:00:aa:bb:cc").as_deref(),
            Some("52:54:00:aa:bb:cc")
        );
        assert_eq!(
            mac_from_duid("00:01:00:06:01:02:03:04:52:54:00:aa:bb:cc"),
            None,
            "not ethernet"
        );
        assert_eq!(mac_from_duid("zz"), None);
    }
}
