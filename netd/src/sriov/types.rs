//! The values a VF request carries, checked once when they enter (API body,
//! CLI flag) so nothing behind them sees a malformed one.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Whoever holds a VF: usually a libvirt domain UUID. Printable, no
/// whitespace or control characters, at most [`OwnerId::MAX_LEN`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerId(String);

impl OwnerId {
    pub const MAX_LEN: usize = 128;
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OwnerId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("owner ID must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!(
                "owner ID is {} bytes long; at most {} are allowed",
                s.len(),
                Self::MAX_LEN
            ));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "owner ID {s:?} must not contain whitespace or control characters"
            ));
        }
        Ok(OwnerId(s.to_string()))
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unicast Ethernet address a VF can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let b = crate::config::mac_bytes(s)?;
        if b[0] & 1 == 1 {
            return Err(format!(
                "MAC address {s} is multicast; a VF needs a unicast one"
            ));
        }
        if b == [0; 6] {
            return Err("MAC address 00:00:00:00:00:00 is not usable".into());
        }
        Ok(Mac(b))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.map(|b| format!("{b:02x}")).join(":"))
    }
}

/// An 802.1Q VLAN id, 1-4094.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vlan(u16);

impl Vlan {
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<i64> for Vlan {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        match u16::try_from(v) {
            Ok(v) if crate::config::hostdev::VLAN_RANGE.contains(&v) => Ok(Vlan(v)),
            _ => Err(format!("VLAN {v} is outside 1-4094")),
        }
    }
}

impl FromStr for Vlan {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("VLAN {s:?} is not a number in 1-4094"))?;
        Vlan::try_from(v)
    }
}

impl fmt::Display for Vlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_string!(OwnerId);
serde_as_string!(Mac);

impl Serialize for Vlan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Vlan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vlan::try_from(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The MAC an owner gets when it asks for none: 52:54:00 (the KVM prefix)
/// and three bytes of a fixed hash of the pool and owner names, so it is the
/// same after every host reboot and on every netd version. The hash is
/// FNV-1a (64 bit) followed by MurmurHash3's fmix64 finalizer: FNV alone
/// barely changes its low bytes when only the last character differs
/// (guest1, guest2 …), which would make near-identical MACs.
pub fn derived_mac(pool: &str, owner: &OwnerId) -> Mac {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pool.bytes().chain([0]).chain(owner.as_str().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let x = h.to_be_bytes();
    Mac([0x52, 0x54, 0x00, x[5], x[6], x[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids() {
        assert!(
            "6f1c3f6a-8a0e-4a43-9d61-2b2f2c9e7c11"
                .parse::<OwnerId>()
                .is_ok()
        );
        assert!("guest-1".parse::<OwnerId>().is_ok());
        for bad in [
            "",
            "has space",
            "tab\there",
            "nl\n",
            "bell\u{7}",
            &"x".repeat(129),
        ] {
            assert!(bad.parse::<OwnerId>().is_err(), "{bad:?} accepted");
        }
        assert!("x".repeat(128).parse::<OwnerId>().is_ok());
    }

    #[test]
    fn macs_and_vlans() {
        assert_eq!(
            "52:54:00:AA:bb:01".parse::<Mac>().unwrap().to_string(),
            "52:54:00:aa:bb:01"
        );
        for bad in [
            "52:54:00:aa:bb",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "zz:54:00:aa:bb:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert_eq!("1".parse::<Vlan>().unwrap().get(), 1);
        assert_eq!("4094".parse::<Vlan>().unwrap().get(), 4094);
        for bad in ["0", "4095", "-1", "70000", "ten"] {
            let e = bad.parse::<Vlan>().unwrap_err();
            assert!(e.contains("1-4094"), "{bad}: {e}");
        }
        assert!(serde_json::from_str::<Vlan>("4095").is_err());
    }

    #[test]
    fn derived_macs_are_fixed_and_differ() {
        let g1: OwnerId = "guest1".parse().unwrap();
        let g2: OwnerId = "guest2".parse().unwrap();
        let a = derived_mac("passthrough", &g1);
        // Fixed values (computed by an independent Python version): they
        // must never change between netd versions.
        assert_eq!(a.to_string(), "52:54:00:01:1a:81");
        assert_eq!(
            derived_mac("passthrough", &g2).to_string(),
            "52:54:00:99:39:5d"
        );
        assert_eq!(a, derived_mac("passthrough", &g1));
        assert_ne!(a, derived_mac("passthrough", &g2));
        assert_ne!(a, derived_mac("other", &g1));
        // Near-identical owners spread out: 5000 sequential names, at most
        // a couple of birthday collisions in 2^24.
        let macs: std::collections::HashSet<Mac> = (0..5000)
            .map(|i| derived_mac("pool", &format!("vm-{i}").parse().unwrap()))
            .collect();
        assert!(macs.len() >= 4995, "{} distinct", macs.len());
    }
}
