//! A running network has two definitions, like virsh's: the live one it
//! runs with (in its run record) and the persistent one it starts with next
//! time (the file in the config dir). `net define` changes the persistent
//! one only; live edits change both unless told `--live` or `--config`.
//! Each edit is one journal record per side it changes (see journal.rs).

use super::State;
use super::journal::{self, COMPACT_BYTES, Edit};
use crate::config::{self, Network};
use crate::dhcp;
use anyhow::{Result, anyhow, bail};
use std::net::Ipv4Addr;

/// Which definitions an edit changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// The running one and the persistent one, whichever exist.
    #[default]
    Both,
    /// Only the running one (`--live`): gone at the next stop.
    Live,
    /// Only the persistent one (`--config`): used from the next start.
    Config,
}

impl Scope {
    /// From the `--live` / `--config` flags (the API's `live` and `config` query).
    pub fn from_flags(live: bool, config: bool) -> Result<Scope> {
        Ok(match (live, config) {
            (true, true) => bail!("--live and --config exclude each other"),
            (true, false) => Scope::Live,
            (false, true) => Scope::Config,
            (false, false) => Scope::Both,
        })
    }
}

/// Whether two definitions differ in what a start would build (autostart
/// is a property of the persistent definition only).
pub fn differs(live: &Network, persistent: &Network) -> bool {
    let mut p = persistent.clone();
    p.autostart = live.autostart;
    p != *live
}

impl State {
    /// (persistent, live): which sides of `name` an edit in `scope` changes.
    pub(super) fn edit_sides(&self, name: &str, scope: Scope) -> Result<(bool, bool)> {
        let running = self.running.contains_key(name);
        let persistent = self.defs.contains_key(name);
        if !running && !persistent {
            bail!("network {name:?} is not defined");
        }
        Ok(match scope {
            Scope::Both => (persistent, running),
            Scope::Live if !running => {
                bail!("network {name:?} is not running: --live changes only a running network")
            }
            Scope::Live => (false, true),
            Scope::Config if !persistent => {
                bail!("network {name:?} is transient: it has no persistent definition (--config)")
            }
            Scope::Config => (true, false),
        })
    }

    /// Copies of the definitions an edit changes.
    pub(super) fn sides(&self, name: &str, persistent: bool, live: bool) -> Vec<Network> {
        let mut out = Vec::new();
        if persistent && let Some(d) = self.defs.get(name) {
            out.push(d.clone());
        }
        if live && let Some(r) = self.running.get(name) {
            out.push(r.record.definition.clone());
        }
        out
    }

    /// Journals an edit already checked (and applied to the kernel) on each
    /// side, then applies it in memory ([`Edit::apply_checked`]). A journal past [`COMPACT_BYTES`] is
    /// folded into a full save.
    pub(super) fn record_edit(
        &mut self,
        name: &str,
        edit: &Edit,
        persistent: bool,
        live: bool,
    ) -> Result<()> {
        // Each side is changed in memory right after its record is on disk,
        // so memory never claims what a restart would not find.
        if persistent {
            let size = journal::append(&self.store.journal_path(name), edit)?;
            if let Some(d) = self.defs.get_mut(name) {
                edit.apply_checked(d);
                if size > COMPACT_BYTES
                    && let Err(e) = self.store.save_definition(d)
                {
                    tracing::warn!("network {name}: compacting its journal: {e:#}");
                }
            }
        }
        if live {
            let size = journal::append(&self.store.live_journal_path(name), edit).map_err(|e| {
                if persistent {
                    e.context("the persistent definition was changed, the running one not")
                } else {
                    e
                }
            })?;
            if let Some(r) = self.running.get_mut(name) {
                edit.apply_checked(&mut r.record.definition);
                if size > COMPACT_BYTES {
                    self.save_running();
                }
            }
        }
        Ok(())
    }

    /// Adds or removes a DHCP host entry. Applied to a running dnsmasq with
    /// SIGHUP, so it keeps running and no guest loses its lease.
    pub fn update_host(
        &mut self,
        name: &str,
        add: bool,
        host: config::Host,
        scope: Scope,
    ) -> Result<()> {
        let mac = host.mac.clone();
        let ip: Ipv4Addr = host.ip;
        let (persistent, live) = self.edit_sides(name, scope)?;
        let sides = self.sides(name, persistent, live);
        let edit = if add {
            Edit::AddHost {
                host: config::Host {
                    mac: mac.clone(),
                    ip,
                    name: host.name,
                },
            }
        } else {
            Edit::RemoveHost {
                mac: mac.clone(),
                ip,
            }
        };
        let mut found = false;
        let mut changed_live = None;
        for (i, side) in sides.iter().enumerate() {
            let v4 = side
                .ipv4
                .as_ref()
                .ok_or_else(|| anyhow!("network {name:?} has no IPv4 subnet"))?;
            let has = |h: &config::Host| h.mac == mac && h.ip == ip;
            if add && v4.hosts.iter().any(|h| h.mac == mac || h.ip == ip) {
                bail!("a host entry with MAC {mac} or IP {ip} already exists");
            }
            found |= v4.hosts.iter().any(has);
            let mut after = side.clone();
            edit.apply(&mut after);
            config::validate(&after)?;
            if live && i + 1 == sides.len() {
                changed_live = Some(after);
            }
        }
        if !add && !found {
            bail!("no host entry with MAC {mac} and IP {ip}");
        }
        let paths = dhcp::paths(&self.paths.run_dir, &self.paths.state_dir, name);
        let apply_hosts = |state: &State, net: &Network| -> Result<()> {
            dhcp::write_host_files(net, &paths)?;
            if let Some(d) = state.running.get(name).and_then(|r| r.dnsmasq.as_ref()) {
                d.reload()?;
            }
            Ok(())
        };
        let before = self.running.get(name).map(|r| r.record.definition.clone());
        // dnsmasq goes back to the entries the running definition has.
        let undo = |state: &State| {
            if let Some(old) = &before {
                let _ = apply_hosts(state, old);
            }
        };
        if let Some(net) = &changed_live
            && let Err(e) = apply_hosts(self, net)
        {
            undo(self);
            return Err(e);
        }
        if let Err(e) = self.record_edit(name, &edit, persistent, live) {
            if changed_live.is_some() {
                undo(self);
            }
            return Err(e);
        }
        // Strict networks: a host entry binds its MAC/IP from the first packet.
        if let Some(net) = &changed_live
            && net.strict
            && let Some(idx) = self.running.get(name).map(|r| r.record.bridge_ifindex)
        {
            self.sync_bindings(name, net, idx)?;
        }
        Ok(())
    }

    /// Whether a running network's persistent definition differs from the
    /// one it runs with (a `net define` or `--config` edit waits for the
    /// next start).
    pub fn pending_changes(&self, name: &str) -> bool {
        match (self.running.get(name), self.defs.get(name)) {
            (Some(r), Some(d)) => differs(&r.record.definition, d),
            _ => false,
        }
    }

    /// The definition as TOML or libvirt XML: the live one, or with
    /// `inactive` the persistent one (what the next start uses).
    pub fn dump(&self, name: &str, xml: bool, inactive: bool) -> Result<String> {
        let net = if inactive {
            self.defs.get(name).ok_or_else(|| {
                if self.running.contains_key(name) {
                    anyhow!("network {name:?} is transient: it has no persistent definition")
                } else {
                    anyhow!("network {name:?} is not defined")
                }
            })?
        } else {
            self.definition(name)
                .ok_or_else(|| anyhow!("network {name:?} is not defined"))?
        };
        Ok(if xml {
            config::xml::to_libvirt(net)
        } else {
            config::to_toml(net)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_flags() {
        assert_eq!(Scope::from_flags(false, false).unwrap(), Scope::Both);
        assert_eq!(Scope::from_flags(true, false).unwrap(), Scope::Live);
        assert_eq!(Scope::from_flags(false, true).unwrap(), Scope::Config);
        let e = Scope::from_flags(true, true).unwrap_err();
        assert_eq!(e.to_string(), "--live and --config exclude each other");
    }

    #[test]
    fn autostart_alone_is_not_a_pending_change() {
        let live =
            config::from_toml("name = \"n\"\nmode = \"nat\"\n[ipv4]\naddress = \"10.1.0.1/24\"\n")
                .unwrap();
        let mut p = live.clone();
        p.autostart = true;
        assert!(!differs(&live, &p));
        p.mtu = Some(1400);
        assert!(differs(&live, &p));
    }
}
