//! `netd status`: networks, attached programs, map fill, and doctor checks.

use crate::api::wire::{Check, MapFill, ProgramStatus, StatusResponse};
use crate::dataplane::{self, Hook};
use anyhow::Result;

impl super::State {
    pub async fn status(&self, uptime_secs: u64) -> Result<StatusResponse> {
        let mut networks = Vec::new();
        for name in self.running.keys() {
            networks.push(self.info(name).await?);
        }
        let mut programs = Vec::new();
        for run in self.running.values() {
            for hook in [Hook::BridgeIngress, Hook::BridgeEgress] {
                if dataplane::link_pin_path(&self.paths.bpffs, hook, &run.record.bridge).exists() {
                    programs.push(ProgramStatus {
                        id: self.dp.program_id(hook),
                        hook: hook.as_str().into(),
                        interface: run.record.bridge.clone(),
                        direction: hook.direction().into(),
                        position: "tcx".into(),
                    });
                }
            }
        }
        let maps = dataplane::maps::fill_levels(&self.dp.maps_dir())
            .unwrap_or_default()
            .into_iter()
            .map(|(name, entries, max_entries)| MapFill { name, entries, max_entries })
            .collect();
        Ok(StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs,
            networks,
            programs,
            maps,
            checks: self.doctor(),
        })
    }

    fn doctor(&self) -> Vec<Check> {
        let mut out = Vec::new();
        let bpffs_ok = dataplane::is_bpffs(&self.paths.bpffs);
        out.push(check(
            bpffs_ok,
            "bpffs",
            if bpffs_ok {
                "maps are pinned on a bpf filesystem".into()
            } else {
                format!("{} is not on bpffs: mount -t bpf bpf /sys/fs/bpf", self.paths.bpffs.display())
            },
        ));
        for run in self.running.values() {
            if let Some(d) = &run.dnsmasq {
                let ok = d.healthy();
                out.push(check(
                    ok,
                    "dnsmasq",
                    if ok {
                        format!("{}: dnsmasq running (pid {})", run.record.definition.name, d.pid().unwrap_or(0))
                    } else {
                        format!("{}: dnsmasq is down and being restarted; see the daemon log", run.record.definition.name)
                    },
                ));
            }
        }
        out
    }
}

fn check(ok: bool, name: &str, message: String) -> Check {
    Check { level: if ok { "OK" } else { "FAIL" }.into(), name: name.into(), message }
}
