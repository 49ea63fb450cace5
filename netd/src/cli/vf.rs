//! `netd vf ...`: SR-IOV VF pools (hostdev networks).

use super::output::{Format, OutputArgs, Table, opt, print_json};
use crate::api::client::Client;
use crate::api::wire::*;
use crate::sriov::{Mac, OwnerId, Vlan};
use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Every VF of the pool: PCI address, netdev, driver, state, owner, MAC, VLAN.
    List {
        name: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Hand a free VF to OWNER, set its MAC and VLAN through the PF, and
    /// print its PCI address as libvirt's <address type='pci' …/> takes it.
    ///
    /// Idempotent: an owner that already holds a VF gets the same VF again
    /// (so an orchestrator can retry safely), unless it asks for a different
    /// --mac or --vlan, which is refused. An owner gets back the VF it had
    /// last whenever that one is free. Without --mac, the MAC is derived
    /// from the network and owner names, the same after every host reboot.
    Acquire {
        name: String,
        /// Who holds the VF: usually the libvirt domain's UUID.
        #[arg(long)]
        owner: String,
        /// Unicast MAC for the VF (default: derived from network and owner).
        #[arg(long)]
        mac: Option<String>,
        /// VLAN id, 1-4094 (default: the network's `vlan`, else none).
        #[arg(long)]
        vlan: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Return OWNER's VF to the pool and clear its MAC and VLAN.
    Release {
        name: String,
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        out: OutputArgs,
    },
}

pub fn exec(c: &Command, client: &Client) -> Result<()> {
    let name = match c {
        Command::List { name, .. }
        | Command::Acquire { name, .. }
        | Command::Release { name, .. } => name,
    };
    crate::config::check_network_name(name)?;
    match c {
        Command::List { out, .. } => list(client, name, out.format),
        Command::Acquire {
            owner,
            mac,
            vlan,
            out,
            ..
        } => {
            // Checked here too, for a quick one-line error without a round trip.
            owner.parse::<OwnerId>().map_err(anyhow::Error::msg)?;
            let mac = mac
                .as_deref()
                .map(str::parse::<Mac>)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let vlan = vlan
                .as_deref()
                .map(str::parse::<Vlan>)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let r: VfRecord = client.post(
                &format!("/v1/networks/{name}/vfs/acquire"),
                &VfAcquireRequest {
                    owner: owner.clone(),
                    mac: mac.map(|m| m.to_string()),
                    vlan: vlan.map(|v| i64::from(v.get())),
                },
            )?;
            if out.format == Format::Json {
                return print_json(&r);
            }
            println!("{}", r.address_xml);
            Ok(())
        }
        Command::Release { owner, out, .. } => {
            owner.parse::<OwnerId>().map_err(anyhow::Error::msg)?;
            let r: VfRecord = client.post(
                &format!("/v1/networks/{name}/vfs/release"),
                &VfReleaseRequest {
                    owner: owner.clone(),
                },
            )?;
            if out.format == Format::Json {
                return print_json(&r);
            }
            println!("VF {} released by {owner}", r.pci);
            Ok(())
        }
    }
}

fn list(client: &Client, name: &str, f: Format) -> Result<()> {
    let vfs: Vec<VfRecord> = client.get(&format!("/v1/networks/{name}/vfs"))?;
    if f == Format::Json {
        return print_json(&vfs);
    }
    let mut t = Table::new(&[
        "PCI", "PF", "VF", "NETDEV", "DRIVER", "STATE", "OWNER", "MAC", "VLAN", "PROBLEM",
    ]);
    for v in vfs {
        t.row(vec![
            v.pci,
            opt(&v.pf),
            opt(&v.vf),
            opt(&v.netdev),
            opt(&v.driver),
            v.state,
            opt(&v.owner),
            opt(&v.mac),
            opt(&v.vlan),
            opt(&v.problem),
        ]);
    }
    t.print();
    Ok(())
}
