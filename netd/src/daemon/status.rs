//! `netd status`: networks, attached programs, map fill, and doctor checks
//! (see doctor.rs).

use crate::api::wire::{ConntrackFill, MapFill, ProgramStatus, StatusResponse};
use crate::dataplane;
use anyhow::Result;
use netd_common::{dir as ctdir, nat_kind};

impl super::State {
    pub async fn status(&self, uptime_secs: u64) -> Result<StatusResponse> {
        let mut networks = Vec::new();
        for n in self.list(true) {
            networks.push(self.info(&n.name).await?);
        }
        let programs = self
            .dp
            .attached()
            .into_iter()
            .map(|l| ProgramStatus {
                id: l.program_id,
                position: match l.tcx_position {
                    Some((i, n)) => format!("tcx {i}/{n}"),
                    None if l.hook.starts_with("cgroup_") => "cgroup".into(),
                    // The interface is gone, or the kernel did not say.
                    None => "tcx ?".into(),
                },
                hook: l.hook,
                interface: l.interface,
                direction: l.direction,
                program: l.program,
                link_id: l.link_id,
                tcx_index: l.tcx_position.map(|p| p.0),
                tcx_count: l.tcx_position.map(|p| p.1),
            })
            .collect();
        let dir = self.dp.maps_dir();
        let maps: Vec<MapFill> = dataplane::maps::describe(&dir)
            .unwrap_or_default()
            .into_iter()
            .map(|m| MapFill {
                name: m.name,
                kind: m.kind,
                entries: m.entries,
                max_entries: m.max_entries,
            })
            .collect();
        let mut conntrack = ConntrackFill::default();
        if let Some(m) = maps.iter().find(|m| m.name == netd_common::maps::CONNTRACK) {
            conntrack.entries = m.entries;
            conntrack.max_entries = m.max_entries;
        }
        for (_, e) in dataplane::maps::ct_entries(&dir).unwrap_or_default() {
            if e.dir != ctdir::ORIGINAL {
                continue;
            }
            conntrack.connections += 1;
            match e.nat {
                nat_kind::SNAT => conntrack.snat += 1,
                nat_kind::DNAT => conntrack.dnat += 1,
                _ => {}
            }
        }
        Ok(StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs,
            networks,
            programs,
            maps,
            conntrack,
            checks: self.doctor().await,
        })
    }
}
