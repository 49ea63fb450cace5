//! Value types that cannot hold a bad value. Each one is built only through
//! its checking constructor (`FromStr`, and serde's `try_from = "String"`),
//! so whatever door a value came in by — TOML, libvirt XML, API JSON, a CLI
//! flag or a live edit — it passed the same check before it can reach the
//! disk, the kernel or dnsmasq's files. The messages are one line and quote
//! the value with `{:?}`, so a control character shows as an escape.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Defines a string newtype: serde through `try_from`/`into` String,
/// `Display`, `Deref<Target = str>`, and `FromStr` via `check`.
macro_rules! checked_string {
    ($(#[$m:meta])* $name:ident, $check:path) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $check(s).map($name)
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, o: &str) -> bool {
                self.0 == o
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, o: &&str) -> bool {
                self.0 == *o
            }
        }
    };
}

/// RFC 1123 / RFC 1035 limits.
const LABEL_MAX: usize = 63;
const NAME_MAX: usize = 253;

fn check_dns_name(s: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{s:?} is not a valid DNS name: {why}"));
    if s.is_empty() {
        return bad("it is empty");
    }
    if s.len() > NAME_MAX {
        return bad("longer than 253 bytes");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > LABEL_MAX {
            return bad("a label is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("labels are letters, digits and '-'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(s.to_string())
}

checked_string!(
    /// A DNS name: RFC 1123 labels of letters, digits and inner '-', each
    /// 1-63 bytes, at most 253 in all, no trailing dot.
    DnsName,
    check_dns_name
);

fn check_host_name(s: &str) -> Result<String, String> {
    let n = check_dns_name(s).map_err(|e| e.replace("DNS name", "host name"))?;
    if n.len() > LABEL_MAX {
        return Err(format!(
            "{s:?} is not a valid host name: longer than 63 bytes"
        ));
    }
    Ok(n)
}

checked_string!(
    /// A DHCP host name: a DNS name of at most 63 bytes (dnsmasq and DHCP
    /// option 12 both stop there).
    HostName,
    check_host_name
);

fn check_duid(s: &str) -> Result<String, String> {
    // A DUID is 2 bytes of type and up to 128 of data (RFC 8415 11.1).
    let parts: Vec<&str> = s.split(':').collect();
    // libvirt writes bytes without their leading zero ("0:3:0:1:..."), so
    // one or two digits each; stored as two, lower case.
    let ok = (2..=130).contains(&parts.len())
        && parts
            .iter()
            .all(|p| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(format!(
            "{s:?} is not a valid DUID: 2 to 130 hex bytes separated by ':'"
        ));
    }
    Ok(parts
        .iter()
        .map(|p| format!("{:0>2}", p.to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(":"))
}

checked_string!(
    /// A DHCPv6 client DUID, as lower-case hex bytes joined by ':'.
    Duid,
    check_duid
);

fn check_mac(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(format!("invalid MAC address {s:?}"));
    }
    let s = s.to_ascii_lowercase();
    let first = u8::from_str_radix(&s[..2], 16).expect("checked hex");
    if first & 1 == 1 {
        return Err(format!("MAC address {s:?} is a multicast address"));
    }
    if s == "00:00:00:00:00:00" {
        return Err(format!("MAC address {s:?} is all zeros"));
    }
    Ok(s)
}

checked_string!(
    /// A unicast Ethernet address, lower case.
    Mac,
    check_mac
);

impl Mac {
    pub fn bytes(&self) -> [u8; 6] {
        let mut out = [0u8; 6];
        for (i, p) in self.0.split(':').enumerate() {
            out[i] = u8::from_str_radix(p, 16).expect("checked hex");
        }
        out
    }
}

/// Linux's IFNAMSIZ less the terminating NUL.
pub const IFNAME_MAX: usize = 15;

fn check_ifname(s: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{s:?} is not a valid interface name: {why}"));
    if s.is_empty() {
        return bad("it is empty");
    }
    if s.len() > IFNAME_MAX {
        return bad("longer than 15 bytes");
    }
    if s == "." || s == ".." {
        return bad("'.' and '..' are not names");
    }
    if s.starts_with('-') {
        return bad("it starts with '-'");
    }
    // The kernel refuses '/', ':' and whitespace, and a NUL cuts a name
    // short there. Names also reach dnsmasq's config (`interface=`), where
    // '#' and '\' mean something: so the portable set, and nothing else.
    if s.chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("it must not contain '/', ':', whitespace or control characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("letters, digits, '-', '_' and '.' only");
    }
    Ok(s.to_string())
}

checked_string!(
    /// A Linux interface name: 1-15 bytes of letters, digits, '-', '_' and
    /// '.', no leading '-'.
    IfName,
    check_ifname
);

fn check_lease(s: &str) -> Result<String, String> {
    let num = s.strip_suffix(['s', 'm', 'h', 'd']).unwrap_or(s);
    let ok = s == "infinite"
        || (!num.is_empty()
            && num.len() <= 9
            && num.bytes().all(|b| b.is_ascii_digit())
            && num.parse::<u32>().is_ok_and(|v| v > 0));
    if !ok {
        return Err(format!(
            "lease time {s:?} must be like 3600, 30m, 1h, 1d or infinite"
        ));
    }
    Ok(s.to_string())
}

checked_string!(
    /// A DHCP lease time: seconds, or a number with s/m/h/d, or "infinite".
    LeaseTime,
    check_lease
);

impl LeaseTime {
    /// The lease in seconds; None for "infinite".
    pub fn secs(&self) -> Option<u64> {
        let t = self.as_str();
        if t == "infinite" {
            return None;
        }
        let (num, mul) = match t.as_bytes()[t.len() - 1] {
            b's' => (&t[..t.len() - 1], 1),
            b'm' => (&t[..t.len() - 1], 60),
            b'h' => (&t[..t.len() - 1], 3600),
            b'd' => (&t[..t.len() - 1], 86400),
            _ => (t, 1),
        };
        num.parse::<u64>().ok().map(|n| n * mul)
    }
}

/// A port number given as decimal digits only: " 81", "+81", "081x" are
/// refused, and so is 0.
pub fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {s:?}: digits only, 1-65535"));
    }
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a usable port".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("invalid port {s:?}: digits only, 1-65535")),
    }
}

/// An inclusive port range; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (start, end) = match s.split_once('-') {
            Some((a, b)) => (parse_port(a)?, parse_port(b)?),
            None => (parse_port(s)?, parse_port(s)?),
        };
        if start > end {
            return Err(format!("port range {s:?} is reversed"));
        }
        Ok(PortRange { start, end })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// A forward's target: "IP", "IP:PORT" or "IP:PORT-PORT". Where the address
/// may lie (inside the subnet, not its network, broadcast or gateway
/// address) depends on the network, so `validate_forward` checks that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Target {
    pub ip: std::net::Ipv4Addr,
    pub ports: Option<PortRange>,
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, ports) = match s.split_once(':') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip = std::net::Ipv4Addr::from_str(ip)
            .map_err(|_| format!("invalid forward target address {ip:?}"))?;
        let ports = ports.map(PortRange::from_str).transpose()?;
        Ok(Target { ip, ports })
    }
}

impl TryFrom<String> for Target {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        t.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ports {
            Some(p) => write!(f, "{}:{p}", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in ["a", "default.netd", "x-1.example", "A9", &"a".repeat(63)] {
            assert!(good.parse::<DnsName>().is_ok(), "{good}");
        }
        let long = ["a".repeat(63).as_str(); 4].join(".") + ".ab";
        assert!(long.len() > 253);
        for bad in [
            "",
            "a/#\nconf-script=/tmp/x.sh\n#",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "a b",
            "a\0b",
            "a#b",
            "a\\b",
            "a_b",
            &"a".repeat(64),
            &long,
        ] {
            let e = bad.parse::<DnsName>().unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn host_names_stop_at_63() {
        assert!("web".parse::<HostName>().is_ok());
        assert!("web.lan".parse::<HostName>().is_ok());
        let e = format!("{}.b", "a".repeat(62))
            .parse::<HostName>()
            .unwrap_err();
        assert!(e.contains("host name"), "{e}");
    }

    #[test]
    fn duids_macs_ifnames() {
        assert_eq!("00:01:AB".parse::<Duid>().unwrap().as_str(), "00:01:ab");
        assert_eq!("0:3:0:1".parse::<Duid>().unwrap().as_str(), "00:03:00:01");
        for bad in ["", "00", "000:01", "00:01\n", "00:0g", "00::01"] {
            assert!(bad.parse::<Duid>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "52:54:00:AA:bb:01".parse::<Mac>().unwrap().bytes(),
            [0x52, 0x54, 0, 0xaa, 0xbb, 1]
        );
        for bad in [
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "52:54:00:aa:bb",
            "52-54-00-aa-bb-01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        for bad in [
            "a\0b",
            "a/b",
            "-a",
            "a\nb",
            "a b",
            "a:b",
            "",
            ".",
            "sixteen-bytes-xx",
        ] {
            assert!(bad.parse::<IfName>().is_err(), "{bad:?}");
        }
        assert!("virbr0".parse::<IfName>().is_ok());
    }

    #[test]
    fn ports_are_digits_only() {
        for bad in [
            " 81", "81 ", "+81", "0", "65536", "8a", "", "-", "1-", "90-80", "1--2",
        ] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
        assert_eq!("80-90".parse::<PortRange>().unwrap().len(), 11);
        assert_eq!(
            "10.0.0.2:80-90".parse::<Target>().unwrap().to_string(),
            "10.0.0.2:80-90"
        );
        assert!("10.0.0.2: 80".parse::<Target>().is_err());
    }

    #[test]
    fn leases() {
        for good in ["1h", "3600", "30m", "infinite", "2d", "60s"] {
            assert!(good.parse::<LeaseTime>().is_ok(), "{good}");
        }
        for bad in ["", "0", "h", "1h\n", "1 h", "-1", "1x", "9999999999"] {
            assert!(bad.parse::<LeaseTime>().is_err(), "{bad:?}");
        }
    }
}
