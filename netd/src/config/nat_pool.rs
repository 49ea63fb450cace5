//! The masquerade pool against port forwards: both take ports of the same
//! masquerade address, so a forward can starve the masquerade (a UDP
//! forward of 1024-65535 leaves outbound UDP no port at all). A forward is
//! refused when it would leave a NAT network fewer than its
//! `nat.min_free_ports` masquerade ports for its protocol.

use super::model::{Forward, Mode, Network, Proto};
use anyhow::{Result, bail};

/// `nat.min_free_ports` when unset.
pub const DEFAULT_MIN_FREE_PORTS: u32 = 1024;

/// Whether forward `f` takes ports from the masquerade pool of `net`: a
/// forward on every uplink address does, and so does one on a given
/// address unless `net` masquerades to another fixed address (a network
/// masquerading to its uplink's address may be using that very one).
fn shares_address(net: &Network, f: &Forward) -> bool {
    match (f.address, net.nat.as_ref().and_then(|n| n.address)) {
        (Some(fa), Some(na)) => fa == na,
        _ => true,
    }
}

/// The ports of `net`'s masquerade range left to `proto` after `forwards`:
/// (left, size of the range).
pub fn ports_left<'a>(
    net: &Network,
    proto: Proto,
    forwards: impl IntoIterator<Item = &'a Forward>,
) -> (u32, u32) {
    let (lo, hi) = net.nat_ports();
    let size = u32::from(hi) - u32::from(lo) + 1;
    // A bitmap of the range: 10,000 one-port forwards cost 10,000 steps.
    let mut taken = vec![false; size as usize];
    let mut count = 0;
    for f in forwards {
        if f.proto != proto || !shares_address(net, f) {
            continue;
        }
        let r = f.port;
        for p in r.start.max(lo)..=r.end.min(hi) {
            let slot = &mut taken[usize::from(p - lo)];
            if !*slot {
                *slot = true;
                count += 1;
            }
        }
    }
    (size - count, size)
}

/// Refuses `new` forwards when, with them, some NAT network of `networks`
/// (every network, with the forwards they have now) would have fewer than
/// its `nat.min_free_ports` masquerade ports for a protocol, and fewer than
/// it has now. One line saying how many would be left and how to change it.
pub fn check_masquerade_pool(networks: &[&Network], new: &[Forward]) -> Result<()> {
    let before: Vec<&Forward> = networks.iter().flat_map(|n| &n.forwards).collect();
    for net in networks.iter().filter(|n| n.mode == Mode::Nat) {
        let min = net
            .nat
            .as_ref()
            .and_then(|n| n.min_free_ports)
            .unwrap_or(DEFAULT_MIN_FREE_PORTS);
        let (lo, hi) = net.nat_ports();
        for proto in [Proto::Tcp, Proto::Udp] {
            // The new forwards of this protocol that take ports of the pool.
            let takers: Vec<&Forward> = new
                .iter()
                .filter(|f| f.proto == proto && shares_address(net, f))
                .filter(|f| f.port.start <= hi && f.port.end >= lo)
                .collect();
            let Some(first) = takers.first() else {
                continue;
            };
            let (had, size) = ports_left(net, proto, before.iter().copied());
            let (left, _) = ports_left(net, proto, before.iter().copied().chain(new));
            if left < min && left < had {
                let which = match takers.len() {
                    1 => format!("forward of port {}", first.port),
                    n => format!("forwards of port {} and {} more", first.port, n - 1),
                };
                bail!(
                    "{} {which} would leave network {:?} {left} of its {size} masquerade ports ({lo}-{hi}) for {}, fewer than nat.min_free_ports = {min}; forward fewer ports, widen [nat] ports, or lower min_free_ports in the [nat] section of {:?}",
                    proto.as_str(),
                    net.name,
                    proto.as_str(),
                    net.name,
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml;

    fn net(name: &str, nat: &str) -> Network {
        from_toml(&format!(
            "name = {name:?}\nmode = \"nat\"\n[ipv4]\naddress = \"192.168.50.1/24\"\n{nat}"
        ))
        .unwrap()
    }

    fn fwd(proto: Proto, port: &str, address: Option<&str>) -> Forward {
        Forward {
            proto,
            port: port.parse().unwrap(),
            to: "192.168.50.10".parse().unwrap(),
            address: address.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn forward_everything_is_refused_with_the_count() {
        let n = net("default", "");
        let e = check_masquerade_pool(&[&n], &[fwd(Proto::Udp, "1024-65535", None)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "udp forward of port 1024-65535 would leave network \"default\" 0 of its 64512 masquerade ports (1024-65535) for udp, fewer than nat.min_free_ports = 1024; forward fewer ports, widen [nat] ports, or lower min_free_ports in the [nat] section of \"default\""
        );
        // Exactly the minimum left is fine; one port more is not.
        assert!(check_masquerade_pool(&[&n], &[fwd(Proto::Udp, "2048-65535", None)]).is_ok());
        let e = check_masquerade_pool(&[&n], &[fwd(Proto::Udp, "2047-65535", None)]).unwrap_err();
        assert!(e.to_string().contains(" 1023 of its 64512 "), "{e}");
        // TCP is another pool; ports below the range are not the pool's.
        assert!(check_masquerade_pool(&[&n], &[fwd(Proto::Tcp, "2048-65535", None)]).is_ok());
        assert!(check_masquerade_pool(&[&n], &[fwd(Proto::Udp, "1-1023", None)]).is_ok());
        // A batch is judged whole.
        let batch = [
            fwd(Proto::Udp, "1024-30000", None),
            fwd(Proto::Udp, "30001-65000", None),
        ];
        let e = check_masquerade_pool(&[&n], &batch)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("udp forwards of port 1024-30000 and 1 more would leave network \"default\" 535 of its 64512 "),
            "{e}"
        );
    }

    #[test]
    fn existing_forwards_and_other_networks_count() {
        let mut a = net("a", "");
        a.forwards.push(fwd(Proto::Udp, "1024-40000", None));
        let b = net("b", "[nat]\nports = \"60000-65535\"\nmin_free_ports = 10");
        // 25535 left to a after its forward; 24600 more leaves 935.
        let e = check_masquerade_pool(&[&a, &b], &[fwd(Proto::Udp, "40001-64600", None)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("network \"a\" 935 of its 64512"), "{e}");
        // b (5536 ports, minimum 10) is starved by a forward of a's that
        // leaves a itself plenty.
        let e = check_masquerade_pool(&[&a, &b], &[fwd(Proto::Udp, "60000-65530", None)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("network \"b\" 5 of its 5536"), "{e}");
        assert!(check_masquerade_pool(&[&a, &b], &[fwd(Proto::Udp, "60000-65525", None)]).is_ok());
        // Lowered to 0, a refuses nothing of its own.
        a.nat = Some(crate::config::Nat {
            min_free_ports: Some(0),
            ..Default::default()
        });
        assert!(check_masquerade_pool(&[&a], &[fwd(Proto::Udp, "40001-65535", None)]).is_ok());
    }

    #[test]
    fn fixed_masquerade_addresses_keep_their_pools_apart() {
        let n = net("n", "[nat]\naddress = \"198.51.100.7\"");
        // A forward on another address takes nothing from n's pool.
        let other = fwd(Proto::Udp, "1024-65535", Some("198.51.100.8"));
        assert!(check_masquerade_pool(&[&n], &[other]).is_ok());
        let same = fwd(Proto::Udp, "1024-65535", Some("198.51.100.7"));
        assert!(check_masquerade_pool(&[&n], &[same]).is_err());
        assert_eq!(
            ports_left(&n, Proto::Udp, &[fwd(Proto::Udp, "1000-1100", None)]),
            (64512 - 77, 64512)
        );
    }

    #[test]
    fn a_network_already_below_its_minimum_may_take_forwards_elsewhere() {
        // A 16-port range is below 1024 from the start: forwards outside
        // it change nothing and are accepted; one inside it is refused.
        let n = net("small", "[nat]\nports = \"3000-3015\"");
        assert!(check_masquerade_pool(&[&n], &[fwd(Proto::Udp, "8080", None)]).is_ok());
        let e = check_masquerade_pool(&[&n], &[fwd(Proto::Udp, "3000", None)]).unwrap_err();
        assert!(e.to_string().contains("15 of its 16"), "{e}");
    }

    #[test]
    fn mapping_and_filtering_parse_to_datapath_flags() {
        use crate::config::Nat;
        use netd_common::net_flags::{ADF, EIF, EIM};
        let flags = |nat: &str| Nat::behaviour_flags(net("n", nat).nat.as_ref());
        // RFC 4787 defaults: endpoint-independent mapping, address-port-
        // dependent filtering.
        assert_eq!(flags(""), EIM);
        assert_eq!(
            flags("[nat]\nfiltering = \"endpoint-independent\""),
            EIM | EIF
        );
        assert_eq!(flags("[nat]\nfiltering = \"address-dependent\""), EIM | ADF);
        assert_eq!(flags("[nat]\nmapping = \"address-port-dependent\""), 0);
        assert_eq!(
            flags("[nat]\nmapping = \"address-port-dependent\"\nclamp_mss = true"),
            netd_common::net_flags::CLAMP_MSS
        );
        let bad = crate::config::parse(
            "name = \"n\"\nmode = \"nat\"\n[ipv4]\naddress = \"192.168.50.1/24\"\n[nat]\nmapping = \"address-port-dependent\"\nfiltering = \"endpoint-independent\"\n",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("needs nat.mapping = \"endpoint-independent\""),
            "{bad}"
        );
        let typo = crate::config::parse(
            "name = \"n\"\nmode = \"nat\"\n[ipv4]\naddress = \"192.168.50.1/24\"\n[nat]\nmapping = \"full-cone\"\n",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("endpoint-independent"), "{typo}");
        let parse = |nat: &str| {
            crate::config::parse(
                &format!(
                    "name = \"n\"\nmode = \"nat\"\n[ipv4]\naddress = \"192.168.50.1/24\"\n[nat]\n{nat}\n"
                ),
                false,
            )
        };
        assert!(parse("max_ports_per_guest = 64").is_ok());
        let e = parse("max_ports_per_guest = 64\nmapping = \"address-port-dependent\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs nat.mapping"), "{e}");
        assert!(parse("max_ports_per_guest = 0").is_err());
        assert!(parse("max_flows_per_guest = 0").is_err());
        assert!(parse("log = \"mappings\"\nlog_file = \"/var/log/netd-nat.log\"").is_ok());
        let e = parse("log_file = \"/var/log/netd-nat.log\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs nat.log"), "{e}");
        let e = parse("log = \"mappings\"\nlog_file = \"nat.log\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
        assert!(parse("log = \"flows\"").is_err());
    }

    #[test]
    fn timeouts_are_checked_against_the_rfc_minimums() {
        let parse = |t: &str| {
            crate::config::parse(
                &format!(
                    "name = \"n\"\nmode = \"nat\"\n[ipv4]\naddress = \"192.168.50.1/24\"\n[nat.timeouts]\n{t}\n"
                ),
                false,
            )
        };
        let n = parse("udp = 300\ntcp_transitory = 240").unwrap();
        let t = n.nat.unwrap().timeouts.unwrap().datapath();
        assert_eq!(
            (t.udp, t.tcp_established, t.tcp_transitory),
            (300, 21600, 240)
        );
        let e = parse("udp = 119").unwrap_err().to_string();
        assert_eq!(
            e,
            "nat.timeouts.udp = 119 is below the 120 s RFC 4787/5382 ask for"
        );
        assert!(parse("tcp_established = 7439").is_err());
        assert!(parse("tcp_transitory = 239").is_err());
        assert!(parse("tcp_transitory = 65536").is_err());
        assert!(parse("tcp_established = 7440").is_ok());
        assert!(parse("icmp = 30").is_err(), "unknown keys are refused");
        // Only UDP set: TCP stays on the global timeouts.
        let n = parse("udp = 150").unwrap();
        let t = n.nat.unwrap().timeouts.unwrap().datapath();
        assert_eq!((t.udp, t.tcp_established, t.tcp_transitory), (150, 0, 0));
    }
}
