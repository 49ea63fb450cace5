//! `netd leases NAME`.

use super::output::{Format, OutputArgs, Table, print_json};
use crate::api::client::Client;
use crate::dhcp::Lease;
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    name: String,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn exec(a: &Args, client: &Client) -> Result<()> {
    crate::config::check_network_name(&a.name)?;
    let leases: Vec<Lease> = client.get(&format!("/v1/networks/{}/leases", a.name))?;
    if a.out.format == Format::Json {
        return print_json(&leases);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut t = Table::new(&["MAC", "IP", "HOSTNAME", "EXPIRES IN"]);
    for l in leases {
        let expires = if l.expiry == 0 {
            "never".to_string()
        } else {
            format!("{}s", l.expiry.saturating_sub(now))
        };
        t.row(vec![
            l.mac,
            l.ip.to_string(),
            l.hostname.unwrap_or_else(|| "-".into()),
            expires,
        ]);
    }
    t.print();
    Ok(())
}
