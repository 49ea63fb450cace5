//! Tests against the kernel. Each runs in a thread of its own that first
//! moves itself (only itself) into a fresh network namespace with
//! unshare(CLONE_NEWNET), so the machine's own namespace is never touched.
//! They need root and are skipped otherwise.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use tokio::sync::mpsc;

use super::*;

/// Runs `f` on a current-thread tokio runtime in a thread that is alone in a
/// new, empty network namespace (with `lo` up).
fn in_netns<F, Fut>(name: &str, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>>,
{
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {name}: needs root (network namespaces)");
        return;
    }
    let res = std::thread::spawn(move || -> Result<Option<()>> {
        // SAFETY: unshare only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EPERM) {
                return Ok(None);
            }
            bail!("unshare(CLONE_NEWNET): {err}");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let nl = Netlink::connect().await?;
            let lo = nl
                .link_by_name("lo")
                .await?
                .context("no lo in the new netns")?;
            nl.set_up(lo.index).await?;
            f().await
        })?;
        Ok(Some(()))
    })
    .join()
    .expect("test thread panicked");
    match res {
        Ok(Some(())) => {}
        Ok(None) => eprintln!("skipping {name}: unshare(CLONE_NEWNET) not permitted"),
        Err(e) => panic!("{name}: {e:#}"),
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn spec(name: &str) -> BridgeSpec {
    BridgeSpec {
        name: name.to_string(),
        mac: MAC,
        mtu: Some(1400),
        stp: true,
        forward_delay_secs: 4,
    }
}

async fn next_matching(rx: &mut mpsc::Receiver<LinkEvent>, want: &LinkEvent) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if &ev == want => return Ok(()),
            Ok(Some(_)) => continue,
            Ok(None) => bail!("event stream ended while waiting for {want:?}"),
            Err(_) => bail!("no {want:?} within 5s"),
        }
    }
}

#[test]
fn bridge_create_read_delete() {
    in_netns("bridge_create_read_delete", || async {
        let nl = Netlink::connect().await?;
        let idx = nl.create_bridge(&spec("netdt0")).await?;

        let l = nl.link_by_name("netdt0").await?.context("bridge missing")?;
        assert_eq!(l.index, idx);
        assert_eq!(l.name, "netdt0");
        assert_eq!(l.mac, Some(MAC));
        assert_eq!(l.mtu, 1400);
        assert!(l.is_bridge);
        assert!(l.up);
        assert_eq!(l.master, None);
        let by_index = nl.link_by_index(idx).await?.context("by index")?;
        assert_eq!(by_index.name, "netdt0");
        assert!(
            nl.links()
                .await?
                .iter()
                .any(|l| l.index == idx && l.is_bridge)
        );
        let lo = nl.link_by_name("lo").await?.context("lo")?;
        assert!(!lo.is_bridge);
        assert!(nl.bridge_settings(lo.index).await?.is_none());

        // STP, forward delay and nf_call_* read back through IFLA_BR_*.
        // (/sys/class/net shows the namespace sysfs was mounted in, i.e. the
        // host's, which is why none of this goes through sysfs.)
        let s = nl.bridge_settings(idx).await?.context("bridge settings")?;
        assert_eq!(s.stp, Some(true));
        assert_eq!(s.forward_delay_cs, Some(400));
        for (what, v) in [
            ("nf_call_iptables", s.nf_call_iptables),
            ("nf_call_ip6tables", s.nf_call_ip6tables),
            ("nf_call_arptables", s.nf_call_arptables),
        ] {
            match v {
                Some(on) => assert!(!on, "{what} is on"),
                None => eprintln!("kernel does not report {what}"),
            }
        }

        let other = nl
            .create_bridge(&BridgeSpec {
                name: "netdt1".into(),
                mac: [0x52, 0x54, 0, 0, 0, 1],
                mtu: None,
                stp: false,
                forward_delay_secs: 0,
            })
            .await?;
        let s = nl.bridge_settings(other).await?.context("settings")?;
        assert_eq!(s.stp, Some(false));
        assert_eq!(s.forward_delay_cs, Some(0));
        assert_eq!(nl.link_by_index(other).await?.context("netdt1")?.mtu, 1500);
        // STP turned on and off again on a live bridge.
        nl.set_bridge_stp(other, "netdt1", true).await?;
        let s = nl.bridge_settings(other).await?.context("settings")?;
        assert_eq!(s.stp, Some(true));
        nl.set_bridge_stp(other, "netdt1", false).await?;
        let s = nl.bridge_settings(other).await?.context("settings")?;
        assert_eq!(s.stp, Some(false));
        let err = nl
            .set_bridge_stp(999_999, "netdt9", true)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").starts_with("setting STP on "), "{err:#}");

        // Creating it again fails with one readable line.
        let err = nl.create_bridge(&spec("netdt0")).await.unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "creating bridge netdt0: File exists (os error 17)"
        );
        assert_eq!(errno_of(&err), Some(libc::EEXIST));

        assert_eq!(ifindex_of("netdt0"), Some(idx));
        assert_eq!(ifname_of(idx).as_deref(), Some("netdt0"));
        assert_eq!(ifindex_of("lo"), Some(lo.index));

        nl.delete_link(idx).await?;
        assert!(nl.link_by_name("netdt0").await?.is_none());
        assert!(nl.link_by_index(idx).await?.is_none());
        assert!(nl.bridge_settings(idx).await?.is_none());
        nl.delete_link(idx).await?; // already gone
        nl.delete_link(999_999).await?;
        assert!(nl.link_by_name("no-such-link").await?.is_none());
        assert!(nl.link_by_name("a-name-far-too-long").await?.is_none());
        assert_eq!(ifindex_of("netdt0"), None);

        let err = nl.set_up(999_999).await.unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "setting link 999999 up: No such device (os error 19)"
        );
        Ok(())
    });
}

#[test]
fn ports_and_master() {
    in_netns("ports_and_master", || async {
        let nl = Netlink::connect().await?;
        let br = nl.create_bridge(&spec("netdt0")).await?;
        // A veth pair stands in for a guest's tap.
        let veth = rtnetlink::LinkVeth::new("vt0", "vt1").build();
        nl.handle.link().add(veth).execute().await?;
        let port = nl.link_by_name("vt0").await?.context("vt0")?.index;
        nl.set_master(port, br).await?;
        assert_eq!(
            nl.link_by_index(port).await?.context("vt0")?.master,
            Some(br)
        );
        // The MTU was chosen explicitly, so adding a port leaves it alone.
        assert_eq!(nl.link_by_index(br).await?.context("br")?.mtu, 1400);
        nl.set_nomaster(port).await?;
        assert_eq!(nl.link_by_index(port).await?.context("vt0")?.master, None);
        nl.set_master(port, br).await?;
        // Deleting the bridge releases the port.
        nl.delete_link(br).await?;
        assert_eq!(nl.link_by_index(port).await?.context("vt0")?.master, None);
        Ok(())
    });
}

#[test]
fn addresses_v4_v6() {
    in_netns("addresses_v4_v6", || async {
        let nl = Netlink::connect().await?;
        let idx = nl.create_bridge(&spec("netdt0")).await?;
        let v4: IpAddr = "10.1.2.1".parse()?;
        let v4b: IpAddr = "10.1.2.2".parse()?;
        let v6: IpAddr = "fd00:1::1".parse()?;
        assert_eq!(nl.primary_ipv4(idx).await?, None);
        nl.add_address(idx, v4, 24).await?;
        nl.add_address(idx, v4b, 24).await?; // becomes secondary
        nl.add_address(idx, v6, 64).await?;

        let addrs = nl.addresses(Some(idx)).await?;
        for (addr, prefix) in [(v4, 24), (v4b, 24), (v6, 64)] {
            assert!(
                addrs.contains(&AddrInfo {
                    index: idx,
                    addr,
                    prefix
                }),
                "{addr}/{prefix} missing from {addrs:?}"
            );
        }
        assert!(addrs.iter().all(|a| a.index == idx));
        let all = nl.addresses(None).await?;
        assert!(
            all.iter()
                .any(|a| a.addr == IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert!(all.iter().any(|a| a.addr == v6));
        assert_eq!(nl.primary_ipv4(idx).await?, Some("10.1.2.1".parse()?));

        // NODAD: usable at once, even on a bridge without ports (no carrier).
        std::net::UdpSocket::bind((Ipv6Addr::from([0xfd00, 1, 0, 0, 0, 0, 0, 1]), 0))
            .context("binding to the new IPv6 address")?;

        let err = nl.add_address(idx, v4, 24).await.unwrap_err();
        assert_eq!(errno_of(&err), Some(libc::EEXIST), "{err:#}");
        assert!(nl.add_address(idx, v4, 33).await.is_err());

        nl.del_address(idx, v4b, 24).await?;
        nl.del_address(idx, v4b, 24).await?; // already gone
        nl.del_address(idx, v6, 64).await?;
        let addrs = nl.addresses(Some(idx)).await?;
        assert!(
            !addrs.iter().any(|a| a.addr == v4b || a.addr == v6),
            "{addrs:?}"
        );
        Ok(())
    });
}

#[test]
fn routes() {
    in_netns("routes", || async {
        let nl = Netlink::connect().await?;
        let idx = nl.create_bridge(&spec("netdt0")).await?;
        nl.add_address(idx, "10.1.2.1".parse()?, 24).await?;
        assert_eq!(nl.default_route_v4().await?, None);

        let connected = Route4 {
            dst: "10.1.2.0".parse()?,
            prefix: 24,
            oif: Some(idx),
            gateway: None,
        };
        let routes = nl.routes_v4().await?;
        assert!(routes.contains(&connected), "{routes:?}");
        // Local-table routes (10.1.2.1, 127.0.0.0/8 …) are not listed.
        assert!(
            routes.iter().all(|r| r.dst != Ipv4Addr::new(10, 1, 2, 1)),
            "{routes:?}"
        );

        let gw: Ipv4Addr = "10.1.2.254".parse()?;
        nl.add_route_v4(Ipv4Addr::UNSPECIFIED, 0, Some(gw), None)
            .await?;
        // Host bits are cleared.
        nl.add_route_v4("10.9.1.1".parse()?, 16, None, Some(idx))
            .await?;
        nl.add_route_v4("10.10.0.0".parse()?, 16, Some(gw), Some(idx))
            .await?;

        let default = nl.default_route_v4().await?.context("no default route")?;
        assert_eq!(
            default,
            Route4 {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
                oif: Some(idx),
                gateway: Some(gw)
            }
        );
        let routes = nl.routes_v4().await?;
        for want in [
            Route4 {
                dst: "10.9.0.0".parse()?,
                prefix: 16,
                oif: Some(idx),
                gateway: None,
            },
            Route4 {
                dst: "10.10.0.0".parse()?,
                prefix: 16,
                oif: Some(idx),
                gateway: Some(gw),
            },
            default,
        ] {
            assert!(routes.contains(&want), "{want:?} missing from {routes:?}");
        }

        let err = nl
            .add_route_v4("10.9.0.0".parse()?, 16, None, Some(idx))
            .await
            .unwrap_err();
        assert_eq!(errno_of(&err), Some(libc::EEXIST), "{err:#}");
        assert!(format!("{err:#}").starts_with("adding route 10.9.0.0/16 dev netdt0 ("));
        assert!(
            nl.add_route_v4("10.9.0.0".parse()?, 16, None, None)
                .await
                .is_err()
        );

        nl.del_route_v4("10.9.0.0".parse()?, 16, None, Some(idx))
            .await?;
        nl.del_route_v4("10.9.0.0".parse()?, 16, None, Some(idx))
            .await?; // gone
        nl.del_route_v4(Ipv4Addr::UNSPECIFIED, 0, Some(gw), None)
            .await?;
        assert_eq!(nl.default_route_v4().await?, None);
        let routes = nl.routes_v4().await?;
        assert!(!routes.iter().any(|r| r.dst == Ipv4Addr::new(10, 9, 0, 0)));

        // Deleting the bridge takes its routes along.
        nl.delete_link(idx).await?;
        assert!(nl.routes_v4().await?.iter().all(|r| r.oif != Some(idx)));
        Ok(())
    });
}

#[test]
fn events() {
    in_netns("events", || async {
        let mut rx = subscribe().await?;
        let nl = Netlink::connect().await?;
        let idx = nl.create_bridge(&spec("netdt0")).await?;
        next_matching(&mut rx, &LinkEvent::LinkChanged { index: idx }).await?;
        nl.add_address(idx, "10.1.2.1".parse()?, 24).await?;
        next_matching(&mut rx, &LinkEvent::AddressChanged { index: idx }).await?;
        nl.add_address(idx, "fd00:1::1".parse()?, 64).await?;
        next_matching(&mut rx, &LinkEvent::AddressChanged { index: idx }).await?;
        nl.add_route_v4("10.9.0.0".parse()?, 16, None, Some(idx))
            .await?;
        next_matching(&mut rx, &LinkEvent::RouteChanged).await?;
        nl.delete_link(idx).await?;
        next_matching(&mut rx, &LinkEvent::LinkRemoved { index: idx }).await?;
        drop(rx);
        // The reader task ends with the receiver; give it a turn.
        tokio::task::yield_now().await;
        Ok(())
    });
}

#[test]
fn forwarding_sysctls_are_netns_local() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping forwarding_sysctls_are_netns_local: needs root");
        return;
    }
    // Read in this (the host's) namespace before and after.
    let host_v4 = sysctl("ipv4/ip_forward").unwrap();
    let host_v6 = sysctl("ipv6/conf/all/forwarding").ok();
    // End on the opposite of the host's value, so a leak would show.
    let end = host_v4 != "1";
    in_netns("forwarding_sysctls_are_netns_local", move || async move {
        for on in [end, !end, end] {
            set_ipv4_forwarding(on)?;
            ensure!(sysctl("ipv4/ip_forward")? == if on { "1" } else { "0" });
            set_ipv6_forwarding(on)?;
            ensure!(sysctl("ipv6/conf/all/forwarding")? == if on { "1" } else { "0" });
        }
        set_sysctl("ipv4/conf/lo/rp_filter", "2")?;
        ensure!(sysctl("ipv4/conf/lo/rp_filter")? == "2");
        let err = set_sysctl("ipv4/no_such_knob", "1").unwrap_err();
        ensure!(
            format!("{err:#}").starts_with("writing \"1\" to /proc/sys/net/ipv4/no_such_knob: "),
            "{err:#}"
        );
        Ok(())
    });
    assert_eq!(sysctl("ipv4/ip_forward").unwrap(), host_v4);
    assert_eq!(sysctl("ipv6/conf/all/forwarding").ok(), host_v6);
}

/// The VF message really reaches the kernel: a veth parses it (every
/// attribute is well formed) and answers EOPNOTSUPP because it has no VFs,
/// while a VF MAC attribute cut short is refused at parsing (EINVAL/ERANGE).
#[test]
fn vf_message_is_parsed_by_the_kernel() {
    in_netns("vf_message_is_parsed_by_the_kernel", || async {
        let o = std::process::Command::new("ip")
            .args(["link", "add", "pf0", "type", "veth", "peer", "name", "pf0p"])
            .status()?;
        ensure!(o.success(), "ip link add veth failed");
        let nl = Netlink::connect().await?;
        let pf = nl.link_by_name("pf0").await?.context("no pf0")?;
        let c = VfConfig {
            pf_index: pf.index,
            vf: 0,
            mac: MAC,
            vlan: 42,
        };
        let e = nl.set_vf(&c).await.unwrap_err();
        ensure!(
            errno_of(&e) == Some(libc::EOPNOTSUPP),
            "well-formed VF message: {e:#}"
        );
        ensure!(e.to_string().contains("setting VF 0 of pf0"), "{e}");

        // The same request with IFLA_VF_MAC 8 bytes long instead of 36.
        use netlink_packet_route::{
            RouteNetlinkMessage,
            link::{LinkVfInfo, VfInfo},
        };
        use rtnetlink::packet_core::{DefaultNla, NetlinkPayload};
        let mut msg = super::vf::vf_config_message(&c);
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(m)) = &mut msg.payload {
            m.attributes = vec![LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![
                VfInfo::Other(DefaultNla::new(1, vec![0; 8])),
            ])])];
        }
        msg.finalize();
        let e = nl
            .send_raw_setlink(msg, || "truncated VF MAC".into())
            .await
            .unwrap_err();
        let errno = errno_of(&e);
        ensure!(
            errno == Some(libc::EINVAL) || errno == Some(libc::ERANGE),
            "truncated VF message: {e:#}"
        );
        // A PF index that does not exist: ENODEV, not a parse error.
        let gone = VfConfig {
            pf_index: 999_999,
            ..c
        };
        let e = nl.set_vf(&gone).await.unwrap_err();
        ensure!(errno_of(&e) == Some(libc::ENODEV), "{e:#}");
        Ok(())
    });
}
