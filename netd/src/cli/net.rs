//! `netd net ...`: the network lifecycle.

use super::output::{Format, OutputArgs, Table, opt, print_json};
use crate::api::client::Client;
use crate::api::wire::*;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Store a definition (TOML or libvirt XML) without starting it.
    Define {
        file: PathBuf,
    },
    /// Start a transient network from a file; it is forgotten when stopped.
    Create {
        file: PathBuf,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
        /// Hostdev networks: release every held VF instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Remove a stored definition (a running network keeps running).
    Undefine {
        name: String,
    },
    /// Start the network when the daemon starts.
    Autostart {
        name: String,
        #[arg(long)]
        disable: bool,
    },
    List {
        /// Include inactive networks.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    Info {
        name: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Print the definition, as TOML or libvirt XML.
    Dump {
        name: String,
        #[arg(long)]
        xml: bool,
        /// The persistent definition (what the next start uses) instead of
        /// the running one.
        #[arg(long)]
        inactive: bool,
    },
    /// Live changes to a running or stored network.
    Update {
        name: String,
        #[command(subcommand)]
        change: Update,
    },
}

#[derive(clap::Subcommand)]
pub enum Update {
    AddHost(HostArgs),
    RemoveHost(HostArgs),
}

#[derive(clap::Args)]
pub struct HostArgs {
    #[arg(long)]
    mac: String,
    #[arg(long)]
    ip: std::net::Ipv4Addr,
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    scope: super::forward::ScopeArgs,
}

impl Command {
    /// The network a command names, if any.
    fn name(&self) -> Option<&str> {
        match self {
            Command::Start { name }
            | Command::Stop { name, .. }
            | Command::Undefine { name }
            | Command::Autostart { name, .. }
            | Command::Info { name, .. }
            | Command::Dump { name, .. }
            | Command::Update { name, .. } => Some(name),
            Command::Define { .. } | Command::Create { .. } | Command::List { .. } => None,
        }
    }
}

pub fn exec(c: &Command, client: &Client) -> Result<()> {
    // A name no network can have ("a/b", "has space") would otherwise make
    // a broken request path and an unhelpful "daemon answered 404".
    if let Some(name) = c.name() {
        crate::config::check_network_name(name)?;
    }
    match c {
        Command::Define { file } => define(client, file, false),
        Command::Create { file } => define(client, file, true),
        Command::Start { name } => action(client, name, "start", "started"),
        Command::Stop { name, force } => {
            let r: StopResponse =
                client.post_empty(&format!("/v1/networks/{name}/stop?force={force}"))?;
            if r.released_vfs > 0 {
                println!("network {name} stopped; released {} VFs", r.released_vfs);
            } else {
                println!("network {name} stopped");
            }
            Ok(())
        }
        Command::Undefine { name } => {
            let _: NameResponse = client.delete(&format!("/v1/networks/{name}"))?;
            println!("network {name} undefined");
            Ok(())
        }
        Command::Autostart { name, disable } => {
            let _: NameResponse = client.post(
                &format!("/v1/networks/{name}/autostart"),
                &AutostartRequest { enable: !disable },
            )?;
            println!(
                "network {name} autostart {}",
                if *disable { "disabled" } else { "enabled" }
            );
            Ok(())
        }
        Command::List { all, out } => list(client, *all, out.format),
        Command::Info { name, out } => info(client, name, out.format),
        Command::Dump {
            name,
            xml,
            inactive,
        } => {
            let d: DumpResponse = client.get(&format!(
                "/v1/networks/{name}/dump?xml={xml}&inactive={inactive}"
            ))?;
            print!("{}", d.text);
            Ok(())
        }
        Command::Update { name, change } => {
            let (add, h) = match change {
                Update::AddHost(h) => (true, h),
                Update::RemoveHost(h) => (false, h),
            };
            let req = HostRequest {
                add,
                mac: h.mac.parse().map_err(|e| anyhow::anyhow!("--mac: {e}"))?,
                ip: h.ip,
                name: h
                    .name
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--name: {e}"))?,
            };
            let _: NameResponse = client.post(
                &format!("/v1/networks/{name}/hosts{}", h.scope.query()),
                &req,
            )?;
            println!("network {name} updated");
            Ok(())
        }
    }
}

fn define(client: &Client, file: &std::path::Path, transient: bool) -> Result<()> {
    // Read with the daemon's size limit: a 100 MB file is refused here,
    // before it is read, sent or parsed.
    let text = crate::config::read_definition(file)?;
    let xml = crate::config::is_xml(file, &text);
    let r: NameResponse = client.post(
        "/v1/networks",
        &DefineRequest {
            text,
            xml,
            transient,
        },
    )?;
    println!(
        "network {} {}",
        r.name,
        if transient { "created" } else { "defined" }
    );
    Ok(())
}

fn action(client: &Client, name: &str, verb: &str, done: &str) -> Result<()> {
    let _: NameResponse = client.post_empty(&format!("/v1/networks/{name}/{verb}"))?;
    println!("network {name} {done}");
    Ok(())
}

fn list(client: &Client, all: bool, f: Format) -> Result<()> {
    let nets: Vec<NetworkSummary> = client.get(&format!("/v1/networks?all={all}"))?;
    if f == Format::Json {
        return print_json(&nets);
    }
    let mut t = Table::new(&["NAME", "MODE", "STATE", "AUTOSTART", "PERSISTENT", "BRIDGE"]);
    for n in nets {
        t.row(vec![
            n.name,
            n.mode,
            if n.active { "active" } else { "inactive" }.into(),
            yes_no(n.autostart),
            yes_no(n.persistent),
            opt(&n.bridge),
        ]);
    }
    t.print();
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn info(client: &Client, name: &str, f: Format) -> Result<()> {
    let i: NetworkInfo = client.get(&format!("/v1/networks/{name}"))?;
    if f == Format::Json {
        return print_json(&i);
    }
    print!("{}", render_info(&i));
    Ok(())
}

pub fn render_info(i: &NetworkInfo) -> String {
    let rows = [
        ("Name", i.name.clone()),
        ("Mode", i.mode.clone()),
        ("State", if i.active { "active" } else { "inactive" }.into()),
        ("Autostart", yes_no(i.autostart)),
        ("Persistent", yes_no(i.persistent)),
        ("Bridge", opt(&i.bridge)),
        ("Bridge MAC", opt(&i.mac)),
        ("IPv4", opt(&i.ipv4)),
        ("IPv6", opt(&i.ipv6)),
        ("DHCP range", opt(&i.dhcp_range)),
        ("Uplink", opt(&i.uplink)),
        ("Masquerade as", opt(&i.masquerade_address)),
        ("dnsmasq pid", opt(&i.dnsmasq_pid)),
        ("dnsmasq restarts", i.dnsmasq_restarts.to_string()),
        ("Pending changes", yes_no(i.pending_changes)),
    ];
    let mut s = String::new();
    for (k, v) in rows {
        s.push_str(&format!("{:<17} {v}\n", format!("{k}:")));
    }
    if let Some(p) = &i.vf_pool {
        s.push_str(&format!("{:<17} {}\n", "PF:", opt(&p.pf)));
        s.push_str(&format!(
            "{:<17} {} total, {} free, {} held, {} missing\n",
            "VF pool:", p.total, p.free, p.held, p.missing
        ));
        s.push_str(&format!("{:<17} {}\n", "Connections:", p.held));
        if let Some(why) = &p.problem {
            s.push_str(&format!("{:<17} {why}\n", "Pool problem:"));
        }
    }
    if let Some(why) = &i.degraded {
        s.push_str(&format!("{:<17} {why}\n", "Degraded:"));
    }
    if !i.masquerade_ports.is_empty() {
        let per: Vec<String> = i
            .masquerade_ports
            .iter()
            .map(|m| format!("{} {} of {}", m.proto, m.left, m.size))
            .collect();
        s.push_str(&format!(
            "{:<17} {} left after forwards (forwards must leave {})\n",
            "Masquerade ports:",
            per.join(", "),
            i.masquerade_ports[0].min_free
        ));
    }
    if let Some(t) = &i.nat_timeouts {
        s.push_str(&format!(
            "{:<17} udp {}s (refreshed by {}), tcp established {}s, tcp handshake {}s, tcp closing {}s ({})\n",
            "Timeouts:",
            t.udp,
            if t.udp_refresh == "both" {
                "both directions"
            } else {
                "the guest's packets"
            },
            t.tcp_established,
            t.tcp_handshake,
            t.tcp_closing,
            if t.own { "[nat.timeouts]" } else { "defaults" }
        ));
    }
    for n in &i.notes {
        s.push_str(&format!("Note:             {n}\n"));
    }
    s
}
