//! `netd status`.

use super::output::{Format, OutputArgs, Table, opt, print_json};
use crate::api::client::Client;
use crate::api::wire::StatusResponse;
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    out: OutputArgs,
}

fn percent(entries: u64, max: u32) -> String {
    if max == 0 {
        return "-".into();
    }
    format!("{:.1}%", entries as f64 * 100.0 / f64::from(max))
}

pub fn exec(a: &Args, client: &Client) -> Result<()> {
    let s: StatusResponse = client.get("/v1/status")?;
    if a.out.format == Format::Json {
        return print_json(&s);
    }
    println!("netd {} up {}s", s.version, s.uptime_secs);
    println!();
    let mut t = Table::new(&[
        "NETWORK",
        "MODE",
        "STATE",
        "BRIDGE",
        "DNSMASQ",
        "UPLINK",
        "MASQUERADE",
    ]);
    for n in &s.networks {
        let dns = match (n.dnsmasq_pid, n.dnsmasq_healthy) {
            (Some(p), Some(true)) => format!("pid {p}, running, {} restarts", n.dnsmasq_restarts),
            (_, Some(false)) => format!("down, {} restarts", n.dnsmasq_restarts),
            (Some(p), None) => format!("pid {p}"),
            (None, _) => "-".into(),
        };
        let (state, uplink, masq) = if n.active {
            ("active", opt(&n.uplink), opt(&n.masquerade_address))
        } else {
            ("inactive", "-".into(), "-".into())
        };
        t.row(vec![
            n.name.clone(),
            n.mode.clone(),
            state.into(),
            opt(&n.bridge),
            dns,
            uplink,
            masq,
        ]);
    }
    t.print();
    println!();
    let pools: Vec<_> = s
        .networks
        .iter()
        .filter_map(|n| Some((n, n.vf_pool.as_ref()?)))
        .collect();
    if !pools.is_empty() {
        let mut t = Table::new(&[
            "VF POOL", "PF", "TOTAL", "FREE", "HELD", "MISSING", "PROBLEM",
        ]);
        for (n, p) in pools {
            t.row(vec![
                n.name.clone(),
                opt(&p.pf),
                p.total.to_string(),
                p.free.to_string(),
                p.held.to_string(),
                p.missing.to_string(),
                opt(&p.problem),
            ]);
        }
        t.print();
        println!();
    }
    let mut t = Table::new(&[
        "PROG ID",
        "HOOK",
        "INTERFACE",
        "POSITION",
        "LINK ID",
        "PROGRAM",
    ]);
    for p in &s.programs {
        t.row(vec![
            opt(&p.id),
            p.hook.clone(),
            p.interface.clone(),
            p.position.clone(),
            opt(&p.link_id),
            p.program.clone(),
        ]);
    }
    t.print();
    println!();
    let c = &s.conntrack;
    println!(
        "conntrack: {} of {} entries ({}), {} connections: {} masqueraded, {} forwarded",
        c.entries,
        c.max_entries,
        percent(c.entries, c.max_entries),
        c.connections,
        c.snat,
        c.dnat
    );
    println!();
    let mut t = Table::new(&["MAP", "TYPE", "ENTRIES", "MAX", "FILL"]);
    for m in &s.maps {
        // Arrays have every slot, always: a fill level says nothing there.
        let fill = if m.kind.contains("Array") {
            "-".into()
        } else {
            percent(m.entries, m.max_entries)
        };
        t.row(vec![
            m.name.clone(),
            m.kind.clone(),
            m.entries.to_string(),
            m.max_entries.to_string(),
            fill,
        ]);
    }
    t.print();
    println!();
    let w = s.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &s.checks {
        println!("{:<4}  {:<w$}  {}", c.level, c.name, c.message);
    }
    Ok(())
}
