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

pub fn exec(a: &Args, client: &Client) -> Result<()> {
    let s: StatusResponse = client.get("/v1/status")?;
    if a.out.format == Format::Json {
        return print_json(&s);
    }
    println!("netd {} up {}s", s.version, s.uptime_secs);
    println!();
    let mut t = Table::new(&["NETWORK", "MODE", "BRIDGE", "DNSMASQ", "UPLINK", "MASQUERADE"]);
    for n in &s.networks {
        let dns = match n.dnsmasq_pid {
            Some(p) => format!("pid {p}, {} restarts", n.dnsmasq_restarts),
            None => "-".into(),
        };
        t.row(vec![n.name.clone(), n.mode.clone(), opt(&n.bridge), dns, opt(&n.uplink), opt(&n.masquerade_address)]);
    }
    t.print();
    println!();
    let mut t = Table::new(&["PROGRAM ID", "HOOK", "INTERFACE", "DIRECTION", "ATTACH"]);
    for p in &s.programs {
        t.row(vec![opt(&p.id), p.hook.clone(), p.interface.clone(), p.direction.clone(), p.position.clone()]);
    }
    t.print();
    println!();
    let mut t = Table::new(&["MAP", "ENTRIES", "MAX"]);
    for m in &s.maps {
        t.row(vec![m.name.clone(), m.entries.to_string(), m.max_entries.to_string()]);
    }
    t.print();
    println!();
    for c in &s.checks {
        println!("{:<4} {:<10} {}", c.level, c.name, c.message);
    }
    Ok(())
}
