//! `netd metrics`: the daemon's Prometheus metrics, as a scraper sees them.

use crate::api::client::Client;
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {}

pub fn exec(_: &Args, client: &Client) -> Result<()> {
    print!("{}", client.get_text("/metrics")?);
    Ok(())
}
