//! Runs a real supervised dnsmasq in a private network namespace (root only).
//!
//! Only a dedicated thread enters the new netns (`unshare(CLONE_NEWNET)` moves just the
//! calling thread); everything it spawns inherits it, so the host's network is never touched.

use super::*;
use crate::config::{Host, Network, from_toml};
use anyhow::{Context, Result, bail, ensure};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn udhcpc() -> Option<&'static str> {
    ["/usr/sbin/udhcpc", "/sbin/udhcpc", "/usr/bin/udhcpc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Asks for a lease on `b` with udhcpc (which only talks; `-s /bin/true` configures nothing).
async fn lease_on_b(udhcpc: &str) -> Result<()> {
    let out = tokio::process::Command::new(udhcpc)
        .args([
            "-i",
            "b",
            "-n",
            "-q",
            "-t",
            "4",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "udhcpc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn in_netns(dir: &Path) -> Result<()> {
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    // `ip link add a …` would read "a" as "address": always say name/dev.
    ip(&["link", "set", "dev", "lo", "up"])?;
    ip(&[
        "link", "add", "name", "a", "type", "veth", "peer", "name", "b",
    ])?;
    ip(&["addr", "add", "10.99.0.1/24", "dev", "a"])?;
    ip(&["link", "set", "dev", "a", "up"])?;
    ip(&[
        "link",
        "set",
        "dev",
        "b",
        "address",
        "52:54:00:6f:78:f3",
        "up",
    ])?;

    let mut net: Network = from_toml(
        r#"
name = "t"
[ipv4]
address = "10.99.0.1/24"
dhcp = { start = "10.99.0.100", end = "10.99.0.199" }
hosts = [{ mac = "52:54:00:6f:78:f3", ip = "10.99.0.222", name = "web" }]
[dns]
domain = "t.netd"
"#,
    )?;
    let paths = paths(&dir.join("run"), &dir.join("state"), "t");
    write_files(&net, "a", &paths)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let d = Dnsmasq::start("t", &paths.conf).await?;
        let p1 = d.pid().context("no pid after start")?;
        ensure!(d.healthy() && d.restarts() == 0, "{d:?}");
        ensure!(
            paths.leasefile.exists(),
            "dnsmasq did not create the lease file"
        );

        let dhcp = udhcpc();
        if let Some(u) = dhcp {
            lease_on_b(u).await?;
            let leases = read_leases(&paths.leasefile)?;
            let l = leases
                .iter()
                .find(|l| l.mac == "52:54:00:6f:78:f3")
                .context("no lease")?;
            ensure!(l.ip.to_string() == "10.99.0.222", "{leases:?}");
            ensure!(l.hostname.as_deref() == Some("web"), "{leases:?}");
        } else {
            eprintln!("no udhcpc: not asking for leases");
        }

        // Live add-host: rewrite the host file, SIGHUP, same process.
        net.ipv4.as_mut().unwrap().hosts.push(Host {
            mac: "52:54:00:00:00:02".parse().unwrap(),
            ip: "10.99.0.223".parse()?,
            name: Some("db".parse().unwrap()),
        });
        write_host_files(&net, &paths)?;
        d.reload()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        ensure!(
            d.pid() == Some(p1) && d.healthy(),
            "reload changed the process: {d:?}"
        );
        if let Some(u) = dhcp {
            // The new host's address proves dnsmasq (as nobody) reread the 0644 file.
            ip(&["link", "set", "dev", "b", "address", "52:54:00:00:00:02"])?;
            lease_on_b(u).await?;
            let leases = read_leases(&paths.leasefile)?;
            let l = leases
                .iter()
                .find(|l| l.mac == "52:54:00:00:00:02")
                .context("no lease")?;
            ensure!(l.ip.to_string() == "10.99.0.223", "{leases:?}");
        }

        // A second instance on the same addresses fails with dnsmasq's own one-line reason.
        let other = dir.join("other.conf");
        std::fs::copy(&paths.conf, &other)?;
        let e = Dnsmasq::start("t2", &other)
            .await
            .expect_err("second dnsmasq started");
        let msg = e.to_string();
        ensure!(
            msg.contains("Address already in use") && !msg.contains('\n'),
            "{msg:?}"
        );

        // Killed behind our back: restarted with a new pid after ~1s.
        unsafe { libc::kill(p1 as libc::pid_t, libc::SIGKILL) };
        let p2 = wait_for("restart", 6, || d.pid().filter(|p| *p != p1)).await?;
        ensure!(d.restarts() == 1, "{d:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        ensure!(d.healthy() && d.pid() == Some(p2), "{d:?}");

        let t0 = Instant::now();
        d.stop().await?;
        ensure!(!alive(p2), "dnsmasq {p2} still there after stop");
        ensure!(
            t0.elapsed() < Duration::from_secs(3),
            "SIGTERM was not enough"
        );
        ensure!(!alive(p1));
        Ok(())
    })
}

#[test]
fn supervised_dnsmasq_in_a_private_netns() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping supervised_dnsmasq_in_a_private_netns: needs root");
        return;
    }
    if !binary().exists() {
        eprintln!("skipping supervised_dnsmasq_in_a_private_netns: no dnsmasq");
        return;
    }
    let dir = std::env::temp_dir().join(format!("netd-dhcp-netns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // dnsmasq rereads host files as nobody: the temp folder must be searchable.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = dir.clone();
    let res = std::thread::spawn(move || in_netns(&d)).join();
    let _ = std::fs::remove_dir_all(&dir);
    match res {
        Ok(r) => r.unwrap(),
        Err(p) => std::panic::resume_unwind(p),
    }
}
