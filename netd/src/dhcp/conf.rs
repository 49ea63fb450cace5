//! dnsmasq configuration and host files for one network.

use crate::config::{Mode, Network, mask4};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Lease time used when a range does not name one.
pub const DEFAULT_LEASE: &str = "1h";

/// Where one network's dnsmasq files live.
#[derive(Clone, Debug)]
pub struct DhcpPaths {
    /// `<run_dir>/dnsmasq/NAME.conf`
    pub conf: PathBuf,
    /// `<run_dir>/dnsmasq/NAME.hostsfile` (IPv4 `dhcp-host` lines)
    pub hostsfile: PathBuf,
    /// `<run_dir>/dnsmasq/NAME.addnhosts` (extra DNS records)
    pub addnhosts: PathBuf,
    /// `<state_dir>/leases/NAME.leases`
    pub leasefile: PathBuf,
    /// `<run_dir>/dnsmasq/NAME.hostsfile6` (DHCPv6 `dhcp-host` lines)
    pub hostsfile6: PathBuf,
}

/// conf, hostsfile, hostsfile6 and addnhosts under `<run_dir>/dnsmasq/NAME.*`;
/// leasefile at `<state_dir>/leases/NAME.leases`.
pub fn paths(run_dir: &Path, state_dir: &Path, net_name: &str) -> DhcpPaths {
    let dir = run_dir.join("dnsmasq");
    DhcpPaths {
        conf: dir.join(format!("{net_name}.conf")),
        hostsfile: dir.join(format!("{net_name}.hostsfile")),
        addnhosts: dir.join(format!("{net_name}.addnhosts")),
        leasefile: state_dir.join("leases").join(format!("{net_name}.leases")),
        hostsfile6: dir.join(format!("{net_name}.hostsfile6")),
    }
}

/// dnsmasq's spelling of a configured lease time ("1h", "30m", "3600", "infinite").
fn lease_time(lease: Option<&str>) -> String {
    match lease {
        None => DEFAULT_LEASE.to_string(),
        // dnsmasq takes plain seconds; it has no 's' suffix of its own in older versions.
        Some(l) => l.strip_suffix('s').unwrap_or(l).to_string(),
    }
}

fn v6_network(addr: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    };
    Ipv6Addr::from(u128::from(addr) & mask)
}

/// The dnsmasq config for one network on `bridge`.
///
/// No `pid-file` line: dnsmasq runs in the foreground under [`super::Dnsmasq`], which also
/// disables the compiled-in pid file on the command line. No `user=` line either: dnsmasq drops
/// privileges, which is why the files it rereads on SIGHUP are written world-readable.
pub fn render_conf(net: &Network, bridge: &str, paths: &DhcpPaths) -> String {
    let mut c = String::new();
    let mut line = |s: String| push_line(&mut c, &s);
    line(format!(
        "# Written by netd for network {}; changes are overwritten.",
        net.name
    ));
    line("strict-order".into());
    line("except-interface=lo".into());
    line("bind-dynamic".into());
    line(format!("interface={bridge}"));

    let dns = net.dns.clone().unwrap_or_default();
    let dns_enabled = net.dns.as_ref().is_none_or(|d| d.enable);
    if !dns_enabled {
        line("port=0".into());
    }
    if let Some(domain) = dns.domain.as_deref() {
        line(format!("domain={domain}"));
        line(format!("local=/{domain}/"));
        line("expand-hosts".into());
    }

    let mut v4_dhcp = false;
    let mut lease_max: u64 = 0;
    if let Some(v4) = &net.ipv4
        && let Ok((gw, prefix)) = v4.parsed()
    {
        let netmask = Ipv4Addr::from(mask4(prefix));
        if let Some(d) = &v4.dhcp {
            let lease = lease_time(d.lease.as_deref());
            line(format!(
                "dhcp-range={},{},{netmask},{lease}",
                d.start, d.end
            ));
            let (s, e) = (u32::from(d.start), u32::from(d.end));
            lease_max += u64::from(e.saturating_sub(s)) + 1;
            // Fixed hosts outside the dynamic range still take a lease each.
            lease_max += v4
                .hosts
                .iter()
                .filter(|h| !(s..=e).contains(&u32::from(h.ip)))
                .count() as u64;
            v4_dhcp = true;
        } else if !v4.hosts.is_empty() {
            // Fixed hosts only: serve them and nobody else.
            let network = Ipv4Addr::from(u32::from(gw) & mask4(prefix));
            line(format!(
                "dhcp-range={network},static,{netmask},{DEFAULT_LEASE}"
            ));
            lease_max += v4.hosts.len() as u64;
            v4_dhcp = true;
        }
        if v4_dhcp {
            if let Some(mtu) = net.mtu {
                line(format!("dhcp-option=option:mtu,{mtu}"));
            }
            if net.mode == Mode::Isolated {
                // An isolated network routes nowhere: hand out no default route.
                line("dhcp-option=3".into());
            }
        }
    }

    let mut v6_any = false;
    if let Some(v6) = &net.ipv6
        && let Ok((addr, prefix)) = v6.parsed()
    {
        let network = v6_network(addr, prefix);
        if let Some(d) = &v6.dhcp {
            let lease = lease_time(d.lease.as_deref());
            let mode = if v6.slaac { "slaac," } else { "" };
            line(format!(
                "dhcp-range={},{},{mode}{prefix},{lease}",
                d.start, d.end
            ));
            let size = u128::from(d.end).saturating_sub(u128::from(d.start)) + 1;
            lease_max += u64::try_from(size)
                .unwrap_or(u64::MAX)
                .min(u64::from(u32::MAX));
            lease_max += v6.hosts.len() as u64;
            v6_any = true;
        } else if v6.slaac {
            let mode = if v6.hosts.is_empty() {
                "ra-only"
            } else {
                "static,slaac"
            };
            line(format!("dhcp-range={network},{mode},{prefix}"));
            lease_max += v6.hosts.len() as u64;
            v6_any = true;
        } else if !v6.hosts.is_empty() {
            line(format!(
                "dhcp-range={network},static,{prefix},{DEFAULT_LEASE}"
            ));
            lease_max += v6.hosts.len() as u64;
            v6_any = true;
        }
        if v6_any {
            line("enable-ra".into());
            if net.mode == Mode::Isolated {
                // Advertise the prefix but not a default route.
                line(format!("ra-param={bridge},0,0"));
            }
        }
    }

    if v4_dhcp || v6_any {
        line(format!(
            "dhcp-lease-max={}",
            lease_max.clamp(1, i32::MAX as u64)
        ));
    }
    if v4_dhcp {
        line("dhcp-no-override".into());
        line("dhcp-authoritative".into());
    }
    line(format!("dhcp-leasefile={}", paths.leasefile.display()));
    line(format!("dhcp-hostsfile={}", paths.hostsfile.display()));
    line(format!("dhcp-hostsfile={}", paths.hostsfile6.display()));
    line(format!("addn-hosts={}", paths.addnhosts.display()));
    c
}

/// Every value in these files comes from a checked type (`config::types`),
/// so none holds a line break. As a last line of defence, a line that does
/// anyway is replaced by a NUL, which [`write_atomic`] refuses to write.
fn push_line(out: &mut String, line: &str) {
    if line.contains(['\n', '\r', '\0']) {
        out.push('\0');
    } else {
        out.push_str(line);
    }
    out.push('\n');
}

/// dhcp-hostsfile lines: "mac,ip[,name]" one per IPv4 host.
pub fn render_hostsfile(net: &Network) -> String {
    let mut s = String::new();
    for h in net.ipv4_dhcp_hosts() {
        let mut l = format!("{},{}", h.mac, h.ip);
        if let Some(n) = &h.name {
            let _ = write!(l, ",{n}");
        }
        push_line(&mut s, &l);
    }
    s
}

/// dhcp-hostsfile lines for DHCPv6: "id:DUID,[ip][,name]" one per IPv6 host.
pub fn render_hostsfile6(net: &Network) -> String {
    let mut s = String::new();
    for h in net.ipv6.iter().flat_map(|v| v.hosts.iter()) {
        let mut l = format!("id:{},[{}]", h.duid, h.ip);
        if let Some(n) = &h.name {
            let _ = write!(l, ",{n}");
        }
        push_line(&mut s, &l);
    }
    s
}

/// addn-hosts lines from dns.hosts: "ip name1 name2".
pub fn render_addnhosts(net: &Network) -> String {
    let mut s = String::new();
    for h in net.dns.iter().flat_map(|d| d.hosts.iter()) {
        if h.names.is_empty() {
            continue;
        }
        let names: Vec<&str> = h.names.iter().map(|n| n.as_str()).collect();
        push_line(&mut s, &format!("{} {}", h.ip, names.join(" ")));
    }
    s
}

/// Creates `dir` (and missing parents) with mode 0755 and makes `dir` itself 0755.
fn make_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", dir.display()))
}

/// dnsmasq reads its host files after dropping root (and again on SIGHUP), so every folder
/// above them must be searchable by others. netd makes the folders it creates so; a folder
/// above them that is not is refused, naming the folder and the mode it needs: a dnsmasq
/// that cannot read its host files would hand static hosts dynamic addresses, silently.
fn check_searchable(dir: &Path) -> Result<()> {
    for d in dir.ancestors() {
        let Ok(m) = std::fs::metadata(d) else {
            continue;
        };
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "dnsmasq cannot read its files in {}: {} has mode {mode:o} and needs o+x (mode {:o}), as dnsmasq drops root",
                dir.display(),
                d.display(),
                mode | 0o001
            );
        }
    }
    Ok(())
}

/// Writes `text` to `path` atomically (temp file in the same folder, then rename), mode 0644.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if text.contains(['\0', '\r']) {
        anyhow::bail!("refusing to write {path:?}: a value holds a line break or NUL");
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        // The umask may have narrowed the mode given to open.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `text` to `path` unless it already holds exactly that. True when it wrote.
fn write_if_changed(path: &Path, text: &str) -> Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(old) if old == text => {
            // Same content; still make sure the mode lets dnsmasq read it.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
            Ok(false)
        }
        _ => write_atomic(path, text).map(|()| true),
    }
}

fn prepare_dirs(paths: &DhcpPaths) -> Result<()> {
    for p in [
        &paths.conf,
        &paths.hostsfile,
        &paths.hostsfile6,
        &paths.addnhosts,
    ] {
        if let Some(d) = p.parent() {
            make_dir(d)?;
        }
    }
    if let Some(d) = paths.leasefile.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(d)
            .with_context(|| format!("cannot create {}", d.display()))?;
    }
    if let Some(d) = paths.hostsfile.parent() {
        check_searchable(d)?;
    }
    Ok(())
}

/// What a running dnsmasq needs after [`sync_files`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// Nothing changed on disk.
    Unchanged,
    /// Only host files changed: [`super::Dnsmasq::reload`] (SIGHUP) is enough.
    Reload,
    /// The config changed: dnsmasq must be restarted to see it.
    Restart,
}

/// Writes whichever of the network's files differ from what is on disk and says what a
/// running dnsmasq needs to pick them up.
pub fn sync_files(net: &Network, bridge: &str, paths: &DhcpPaths) -> Result<Apply> {
    prepare_dirs(paths)?;
    let hosts = write_host_files_inner(net, paths)?;
    let conf = write_if_changed(&paths.conf, &render_conf(net, bridge, paths))?;
    Ok(if conf {
        Apply::Restart
    } else if hosts {
        Apply::Reload
    } else {
        Apply::Unchanged
    })
}

/// Writes all files for the network (creating dirs, atomically via rename).
pub fn write_files(net: &Network, bridge: &str, paths: &DhcpPaths) -> Result<()> {
    sync_files(net, bridge, paths).map(|_| ())
}

fn write_host_files_inner(net: &Network, paths: &DhcpPaths) -> Result<bool> {
    let a = write_if_changed(&paths.hostsfile, &render_hostsfile(net))?;
    let b = write_if_changed(&paths.hostsfile6, &render_hostsfile6(net))?;
    let c = write_if_changed(&paths.addnhosts, &render_addnhosts(net))?;
    Ok(a || b || c)
}

/// Rewrites the host files only (for live add-host/remove-host); follow with
/// [`super::Dnsmasq::reload`].
pub fn write_host_files(net: &Network, paths: &DhcpPaths) -> Result<()> {
    prepare_dirs(paths)?;
    write_host_files_inner(net, paths).map(|_| ())
}

/// Removes conf and host files (leasefile is kept unless `forget_leases`). Missing files are fine.
pub fn remove_files(paths: &DhcpPaths, forget_leases: bool) -> Result<()> {
    let mut files = vec![
        &paths.conf,
        &paths.hostsfile,
        &paths.hostsfile6,
        &paths.addnhosts,
    ];
    if forget_leases {
        files.push(&paths.leasefile);
    }
    for f in files {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", f.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml;

    /// The libvirt default network, as in the config tests.
    pub(crate) fn default_net() -> Network {
        from_toml(
            r#"
name = "default"
mode = "nat"
bridge = "virbr0"
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.2", end = "192.168.122.254" }
hosts = [{ mac = "52:54:00:6F:78:F3", ip = "192.168.122.222", name = "web" }]
[dns]
domain = "default.netd"
hosts = [{ ip = "192.168.122.5", names = ["db", "db.lan"] }, { ip = "fd00::5", names = ["v6"] }]
"#,
        )
        .unwrap()
    }

    fn p() -> DhcpPaths {
        paths(
            Path::new("/run/netd"),
            Path::new("/var/lib/netd"),
            "default",
        )
    }

    fn lines(c: &str) -> Vec<&str> {
        c.lines().collect()
    }

    #[test]
    fn a_folder_dnsmasq_cannot_pass_is_refused_by_name() {
        let top = std::env::temp_dir().join(format!("netd-conf-0700-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let run = top.join("private").join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
        let private = top.join("private");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let p = paths(&run, &top.join("state"), "default");
        let err = write_files(&default_net(), "virbr0", &p).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "dnsmasq cannot read its files in {}: {} has mode 700 and needs o+x (mode 701), as dnsmasq drops root",
                run.join("dnsmasq").display(),
                private.display()
            )
        );
        assert!(!p.conf.exists() && !p.hostsfile.exists());
        // Searchable: written, the folder netd made 0755 and the files 0644.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        write_files(&default_net(), "virbr0", &p).unwrap();
        let mode = |q: &Path| std::fs::metadata(q).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&run.join("dnsmasq")), 0o755);
        assert_eq!(mode(&p.hostsfile), 0o644);
        let _ = std::fs::remove_dir_all(&top);
    }

    #[test]
    fn paths_follow_the_layout() {
        let p = p();
        assert_eq!(p.conf, Path::new("/run/netd/dnsmasq/default.conf"));
        assert_eq!(
            p.hostsfile,
            Path::new("/run/netd/dnsmasq/default.hostsfile")
        );
        assert_eq!(
            p.hostsfile6,
            Path::new("/run/netd/dnsmasq/default.hostsfile6")
        );
        assert_eq!(
            p.addnhosts,
            Path::new("/run/netd/dnsmasq/default.addnhosts")
        );
        assert_eq!(
            p.leasefile,
            Path::new("/var/lib/netd/leases/default.leases")
        );
    }

    #[test]
    fn conf_for_the_default_network_has_every_line() {
        let c = render_conf(&default_net(), "virbr0", &p());
        let l = lines(&c);
        for want in [
            "strict-order",
            "except-interface=lo",
            "bind-dynamic",
            "interface=virbr0",
            "dhcp-range=192.168.122.2,192.168.122.254,255.255.255.0,1h",
            "dhcp-lease-max=253",
            "dhcp-no-override",
            "dhcp-authoritative",
            "dhcp-leasefile=/var/lib/netd/leases/default.leases",
            "dhcp-hostsfile=/run/netd/dnsmasq/default.hostsfile",
            "dhcp-hostsfile=/run/netd/dnsmasq/default.hostsfile6",
            "addn-hosts=/run/netd/dnsmasq/default.addnhosts",
            "domain=default.netd",
            "local=/default.netd/",
            "expand-hosts",
        ] {
            assert!(l.contains(&want), "missing {want:?} in:\n{c}");
        }
        for absent in [
            "pid-file",
            "user=",
            "port=",
            "enable-ra",
            "dhcp-option",
            "ra-param",
        ] {
            assert!(!c.contains(absent), "unexpected {absent:?} in:\n{c}");
        }
    }

    #[test]
    fn conf_options() {
        let mut n = default_net();
        n.mtu = Some(1400);
        n.dns.as_mut().unwrap().enable = false;
        n.ipv4.as_mut().unwrap().dhcp.as_mut().unwrap().lease = Some("infinite".parse().unwrap());
        let c = render_conf(&n, "br0", &p());
        let l = lines(&c);
        assert!(l.contains(&"port=0"), "{c}");
        assert!(l.contains(&"dhcp-option=option:mtu,1400"), "{c}");
        assert!(
            l.contains(&"dhcp-range=192.168.122.2,192.168.122.254,255.255.255.0,infinite"),
            "{c}"
        );
        assert!(l.contains(&"interface=br0"), "{c}");

        // No domain: no domain lines.
        n.dns = None;
        let c = render_conf(&n, "br0", &p());
        assert!(
            !c.contains("domain=") && !c.contains("local=") && !c.contains("expand-hosts"),
            "{c}"
        );
        assert!(!c.contains("port=0"), "dns defaults to enabled: {c}");

        // Isolated: no default route.
        n.mode = Mode::Isolated;
        let c = render_conf(&n, "br0", &p());
        assert!(lines(&c).contains(&"dhcp-option=3"), "{c}");
    }

    #[test]
    fn static_only_and_dns_only() {
        let mut n = default_net();
        n.ipv4.as_mut().unwrap().dhcp = None;
        let c = render_conf(&n, "virbr0", &p());
        let l = lines(&c);
        assert!(
            l.contains(&"dhcp-range=192.168.122.0,static,255.255.255.0,1h"),
            "{c}"
        );
        assert!(l.contains(&"dhcp-lease-max=1"), "{c}");
        n.ipv4.as_mut().unwrap().hosts.clear();
        let c = render_conf(&n, "virbr0", &p());
        assert!(
            !c.contains("dhcp-range")
                && !c.contains("dhcp-lease-max")
                && !c.contains("dhcp-authoritative"),
            "{c}"
        );
        assert!(c.contains("interface=virbr0"), "{c}");
    }

    #[test]
    fn ipv6_lines() {
        let mut n: Network = from_toml(
            r#"
name = "six"
[ipv6]
address = "fd00:122::1/64"
slaac = true
"#,
        )
        .unwrap();
        let c = render_conf(&n, "netd0", &p());
        let l = lines(&c);
        assert!(l.contains(&"enable-ra"), "{c}");
        assert!(l.contains(&"dhcp-range=fd00:122::,ra-only,64"), "{c}");
        assert!(!c.contains("dhcp-authoritative"), "{c}");

        let v6 = n.ipv6.as_mut().unwrap();
        v6.dhcp = Some(crate::config::Dhcp6 {
            start: "fd00:122::100".parse().unwrap(),
            end: "fd00:122::1ff".parse().unwrap(),
            lease: Some("2h".parse().unwrap()),
        });
        v6.hosts.push(crate::config::Host6 {
            duid: "00:01:00:01:2A:3B:4C:5D:52:54:00:00:00:01".parse().unwrap(),
            ip: "fd00:122::10".parse().unwrap(),
            name: Some("six".parse().unwrap()),
        });
        let c = render_conf(&n, "netd0", &p());
        assert!(
            lines(&c).contains(&"dhcp-range=fd00:122::100,fd00:122::1ff,slaac,64,2h"),
            "{c}"
        );
        assert!(lines(&c).contains(&"dhcp-lease-max=257"), "{c}");
        n.ipv6.as_mut().unwrap().slaac = false;
        let c = render_conf(&n, "netd0", &p());
        assert!(
            lines(&c).contains(&"dhcp-range=fd00:122::100,fd00:122::1ff,64,2h"),
            "{c}"
        );
        assert!(lines(&c).contains(&"enable-ra"), "{c}");
        assert_eq!(
            render_hostsfile6(&n),
            "id:00:01:00:01:2a:3b:4c:5d:52:54:00:00:00:01,[fd00:122::10],six\n"
        );
    }

    #[test]
    fn host_files() {
        let mut n = default_net();
        assert_eq!(
            render_hostsfile(&n),
            "52:54:00:6f:78:f3,192.168.122.222,web\n"
        );
        n.ipv4.as_mut().unwrap().hosts.push(crate::config::Host {
            mac: "52:54:00:00:00:02".parse().unwrap(),
            ip: "192.168.122.3".parse().unwrap(),
            name: None,
        });
        assert_eq!(
            render_hostsfile(&n),
            "52:54:00:6f:78:f3,192.168.122.222,web\n52:54:00:00:00:02,192.168.122.3\n"
        );
        assert_eq!(render_hostsfile6(&n), "");
        assert_eq!(
            render_addnhosts(&n),
            "192.168.122.5 db db.lan\nfd00::5 v6\n"
        );
    }

    #[test]
    fn files_are_written_readable_and_removed() {
        let dir = std::env::temp_dir().join(format!("netd-dhcp-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = paths(&dir.join("run"), &dir.join("state"), "default");
        let mut n = default_net();
        assert_eq!(sync_files(&n, "virbr0", &p).unwrap(), Apply::Restart);
        assert_eq!(sync_files(&n, "virbr0", &p).unwrap(), Apply::Unchanged);
        for f in [&p.conf, &p.hostsfile, &p.hostsfile6, &p.addnhosts] {
            let m = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o644, "{}", f.display());
        }
        let m = std::fs::metadata(p.conf.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, 0o755);
        assert!(p.leasefile.parent().unwrap().is_dir());
        assert_eq!(
            std::fs::read_to_string(&p.hostsfile).unwrap(),
            render_hostsfile(&n)
        );

        n.ipv4.as_mut().unwrap().hosts.clear();
        assert_eq!(sync_files(&n, "virbr0", &p).unwrap(), Apply::Reload);
        assert_eq!(std::fs::read_to_string(&p.hostsfile).unwrap(), "");
        n.mtu = Some(9000);
        assert_eq!(sync_files(&n, "virbr0", &p).unwrap(), Apply::Restart);

        std::fs::write(&p.leasefile, "").unwrap();
        remove_files(&p, false).unwrap();
        assert!(
            !p.conf.exists()
                && !p.hostsfile.exists()
                && !p.addnhosts.exists()
                && !p.hostsfile6.exists()
        );
        assert!(p.leasefile.exists());
        remove_files(&p, true).unwrap();
        assert!(!p.leasefile.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dnsmasq_accepts_the_generated_conf() {
        let bin = super::super::process::binary();
        if !bin.exists() {
            eprintln!("skipping: no dnsmasq at {}", bin.display());
            return;
        }
        let dir = std::env::temp_dir().join(format!("netd-dhcp-syntax-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = paths(&dir.join("run"), &dir.join("state"), "default");
        let mut n = default_net();
        n.mtu = Some(1400);
        n.mode = Mode::Isolated;
        n.ipv6 = Some(crate::config::Ipv6 {
            address: "fd00:122::1/64".parse().unwrap(),
            slaac: true,
            dhcp: Some(crate::config::Dhcp6 {
                start: "fd00:122::100".parse().unwrap(),
                end: "fd00:122::1ff".parse().unwrap(),
                lease: None,
            }),
            hosts: vec![],
            nat: false,
        });
        write_files(&n, "virbr0", &p).unwrap();
        let out = std::process::Command::new(&bin)
            .arg("--test")
            .arg(format!("--conf-file={}", p.conf.display()))
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
