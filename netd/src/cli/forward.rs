//! `netd forward ...`: live port forwards, persisted in the definition.

use super::output::{Format, OutputArgs, Table, print_json};
use crate::api::client::Client;
use crate::api::wire::{ForwardAdd, ForwardRequest, NameResponse};
use crate::config::Proto;
use crate::daemon::ForwardInfo;
use anyhow::Result;
use std::net::Ipv4Addr;

/// `--live` / `--config`: which definitions of a running network a live
/// edit changes (default both; a stopped network has only the persistent one).
#[derive(clap::Args, Clone, Copy, Default)]
pub struct ScopeArgs {
    /// Change only the running definition (gone at the next stop).
    #[arg(long, conflicts_with = "config")]
    pub live: bool,
    /// Change only the persistent definition (used from the next start).
    #[arg(long)]
    pub config: bool,
}

impl ScopeArgs {
    /// The query string the API takes for these flags.
    pub fn query(self) -> &'static str {
        match (self.live, self.config) {
            (true, _) => "?live=true",
            (false, true) => "?config=true",
            _ => "",
        }
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Forward host port(s) to a guest.
    Add {
        name: String,
        #[arg(long, value_parser = parse_proto)]
        proto: Proto,
        /// A port or a range: 8080, 8000-8010.
        #[arg(long)]
        port: String,
        /// IP, IP:PORT or IP:PORT-PORT (a range as long as --port's).
        #[arg(long)]
        to: String,
        /// Host address (default: every address of the network's uplinks).
        #[arg(long)]
        address: Option<Ipv4Addr>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Add many forwards at once, all or none, from a TOML file of
    /// `[[forwards]]` tables (the definition's own format).
    Import {
        name: String,
        file: std::path::PathBuf,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Stop forwarding; open connections carry on until they close.
    Remove {
        name: String,
        #[arg(long, value_parser = parse_proto)]
        proto: Proto,
        #[arg(long)]
        port: String,
        #[arg(long)]
        address: Option<Ipv4Addr>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    List {
        name: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    s.parse()
}

pub fn exec(c: &Command, client: &Client) -> Result<()> {
    match c {
        Command::Add {
            name,
            proto,
            port,
            to,
            address,
            scope,
        } => {
            let req = ForwardRequest {
                proto: *proto,
                port: port.parse().map_err(|e| anyhow::anyhow!("--port: {e}"))?,
                to: Some(to.parse().map_err(|e| anyhow::anyhow!("--to: {e}"))?),
                address: *address,
            };
            let _: NameResponse = client.post(
                &format!("/v1/networks/{name}/forwards{}", scope.query()),
                &req,
            )?;
            println!("{} {port} -> {to} added to {name}", proto.as_str());
            Ok(())
        }
        Command::Import { name, file, scope } => import(client, name, file, *scope),
        Command::Remove {
            name,
            proto,
            port,
            address,
            scope,
        } => {
            let req = ForwardRequest {
                proto: *proto,
                port: port.parse().map_err(|e| anyhow::anyhow!("--port: {e}"))?,
                to: None,
                address: *address,
            };
            let _: NameResponse = client.delete_with(
                &format!("/v1/networks/{name}/forwards{}", scope.query()),
                &req,
            )?;
            println!("{} {port} removed from {name}", proto.as_str());
            Ok(())
        }
        Command::List { name, out } => {
            let path = match name {
                Some(n) => format!("/v1/networks/{n}/forwards"),
                None => "/v1/forwards".into(),
            };
            let rows: Vec<ForwardInfo> = client.get(&path)?;
            if out.format == Format::Json {
                return print_json(&rows);
            }
            let mut t = Table::new(&["NETWORK", "PROTO", "PORT", "TO", "ADDRESS", "INSTALLED ON"]);
            for r in rows {
                let on = r
                    .installed_on
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                t.row(vec![
                    r.network,
                    r.proto,
                    r.port,
                    r.to,
                    r.address
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "uplinks".into()),
                    if on.is_empty() { "-".into() } else { on },
                ]);
            }
            t.print();
            Ok(())
        }
    }
}

fn import(client: &Client, name: &str, file: &std::path::Path, scope: ScopeArgs) -> Result<()> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        forwards: Vec<crate::config::Forward>,
    }
    let text = crate::config::read_definition(file)?;
    let f: File = crate::config::from_toml_as(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
    let n = f.forwards.len();
    let forwards = f
        .forwards
        .into_iter()
        .map(|f| ForwardRequest {
            proto: f.proto,
            port: f.port,
            to: Some(f.to),
            address: f.address,
        })
        .collect();
    let _: NameResponse = client.post(
        &format!("/v1/networks/{name}/forwards{}", scope.query()),
        &ForwardAdd::Batch { forwards },
    )?;
    println!("{n} forwards added to {name}");
    Ok(())
}
