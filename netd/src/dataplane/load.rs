//! Loads the BPF object with its maps pinned under `<bpffs>/maps`, and
//! attaches programs with tcx. Links are pinned under `<bpffs>/links`, so the
//! datapath keeps running while the daemon restarts, and a restart swaps in
//! the new program atomically instead of detaching.

use super::BPF_OBJECT;
use anyhow::{Context, Result, anyhow};
use aya::maps::ProgramArray;
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions, TcAttachType},
};
use aya::{Ebpf, EbpfLoader};
use netd_common::progs;
use std::path::{Path, PathBuf};

/// Where a program hangs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    BridgeIngress,
    BridgeEgress,
    UplinkIngress,
    UplinkEgress,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::BridgeIngress,
        Hook::BridgeEgress,
        Hook::UplinkIngress,
        Hook::UplinkEgress,
    ];

    fn program(self) -> &'static str {
        match self {
            Hook::BridgeIngress => progs::BRIDGE_INGRESS,
            Hook::BridgeEgress => progs::BRIDGE_EGRESS,
            Hook::UplinkIngress => progs::UPLINK_INGRESS,
            Hook::UplinkEgress => progs::UPLINK_EGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::BridgeIngress | Hook::UplinkIngress => TcAttachType::Ingress,
            Hook::BridgeEgress | Hook::UplinkEgress => TcAttachType::Egress,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::BridgeIngress => "bridge_ingress",
            Hook::BridgeEgress => "bridge_egress",
            Hook::UplinkIngress => "uplink_ingress",
            Hook::UplinkEgress => "uplink_egress",
        }
    }

    pub fn direction(self) -> &'static str {
        match self.attach_type() {
            TcAttachType::Ingress => "ingress",
            _ => "egress",
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    bpffs: PathBuf,
    /// Where the host-local forward programs hang, once attached.
    cgroup: Option<PathBuf>,
    // Owns the log map; dropping it would close the map under the programs.
    _logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Dataplane {
    /// Loads every program, creating or reusing the pinned maps.
    pub fn load(bpffs: &Path, bpf_log: bool) -> Result<Self> {
        Self::load_sized(bpffs, bpf_log, netd_common::FORWARD_MAX_ENTRIES)
    }

    /// [`Dataplane::load`], with the forward maps sized for `forwards_max`
    /// entries. A pinned map is reused as it is (its entries are live
    /// forwards), so a new size applies once the pinned maps are gone.
    pub fn load_sized(bpffs: &Path, bpf_log: bool, forwards_max: u32) -> Result<Self> {
        ensure_bpffs(bpffs)?;
        let maps_dir = bpffs.join("maps");
        std::fs::create_dir_all(&maps_dir)?;
        std::fs::create_dir_all(bpffs.join("links"))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(netd_common::maps::FORWARDS, forwards_max)
            .map_max_entries(netd_common::maps::FORWARDS_REV, forwards_max)
            .load(BPF_OBJECT)
            .context("loading the BPF object")?;
        if let Ok((_, max)) = super::maps::forward_fill(&maps_dir)
            && max != forwards_max
        {
            tracing::warn!(
                "the pinned forward map holds {max} entries, not --forwards-max {forwards_max}: \
                 it is reused as it is; the new size applies once it is unpinned"
            );
        }
        let logger = if bpf_log {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!("BPF logging unavailable: {e}");
                    None
                }
            }
        } else {
            None
        };
        for hook in Hook::ALL {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(hook.program())
                .ok_or_else(|| anyhow!("program {} missing from the object", hook.program()))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifying {}", hook.program()))?;
        }
        // Second stages, reached by tail call from the hooks above.
        for (slot, name) in TAIL_PROGS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
            let fd = prog.fd()?.try_clone()?;
            let mut tails: ProgramArray<_> = ProgramArray::try_from(
                ebpf.map_mut(netd_common::maps::TAILS)
                    .ok_or_else(|| anyhow!("tail-call map missing from the object"))?,
            )?;
            tails.set(slot, &fd, 0)?;
        }
        for name in SOCK_ADDR_PROGS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        let dp = Dataplane {
            ebpf,
            bpffs: bpffs.to_path_buf(),
            cgroup: None,
            _logger: logger,
        };
        super::maps::init_settings(&dp.maps_dir())?;
        Ok(dp)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.bpffs.join("maps")
    }

    fn link_pin(&self, hook: Hook, ifname: &str) -> PathBuf {
        link_pin_path(&self.bpffs, hook, ifname)
    }

    /// Attaches `hook`'s program to `ifname`, or swaps it into the link a
    /// previous daemon left pinned.
    pub fn attach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        let pin = self.link_pin(hook, ifname);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(hook.program())
            .ok_or_else(|| anyhow!("program {} not loaded", hook.program()))?
            .try_into()?;
        let id = match PinnedLink::from_pin(&pin) {
            Ok(pinned) => {
                let fd: FdLink = pinned.unpin().context("unpinning old link")?;
                let link = SchedClassifierLink::try_from(fd)?;
                prog.attach_to_link(link)
                    .with_context(|| format!("replacing {} on {ifname}", hook.as_str()))?
            }
            Err(_) => prog
                .attach_with_options(
                    ifname,
                    hook.attach_type(),
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .with_context(|| format!("attaching {} to {ifname}", hook.as_str()))?,
        };
        let link = prog.take_link(id)?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e| anyhow!("tcx link expected: {e}"))?;
        // The pinned link keeps the program attached after the FdLink drops.
        fd.pin(&pin)
            .with_context(|| format!("pinning link at {}", pin.display()))?;
        Ok(())
    }

    /// Hooks the host-local forward programs onto a cgroup (v2 folder).
    /// Links from an earlier daemon are replaced.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for name in SOCK_ADDR_PROGS {
            let pin = self.bpffs.join("links").join(format!("cgroup:{name}"));
            if let Ok(old) = PinnedLink::from_pin(&pin) {
                drop(old.unpin());
            }
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} not loaded"))?
                .try_into()?;
            let id = prog
                // A link-based attach always coexists with other programs; the
                // kernel refuses the multi flag on links.
                .attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
            let fd: FdLink = prog
                .take_link(id)?
                .try_into()
                .map_err(|e| anyhow!("cgroup link: {e}"))?;
            fd.pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        self.cgroup = Some(cgroup.to_path_buf());
        Ok(())
    }

    /// Detaches `hook` from `ifname`. Absent links are fine: the interface
    /// may have gone already.
    pub fn detach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        detach_pinned(&self.bpffs, hook, ifname)
    }

    /// The kernel's program id for a hook (for status output).
    pub fn program_id(&self, hook: Hook) -> Option<u32> {
        let p: &SchedClassifier = self.ebpf.program(hook.program())?.try_into().ok()?;
        p.info().ok().map(|i| i.id())
    }

    /// Every link pinned under `<bpffs>/links`, as the kernel reports it.
    pub fn attached(&self) -> Vec<AttachedLink> {
        attached_links(&self.bpffs, self.cgroup.as_deref())
    }
}

/// One program netd hung somewhere, read back from its pinned link.
#[derive(Clone, Debug)]
pub struct AttachedLink {
    /// bridge_ingress … uplink_egress, or cgroup_connect4 and friends.
    pub hook: String,
    /// The interface, or the cgroup folder.
    pub interface: String,
    /// ingress/egress for tcx; connect4/sendmsg4/recvmsg4 for cgroup hooks.
    pub direction: String,
    pub program: String,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// tcx only: our program's place in the interface's chain for that
    /// direction (1 runs first) and how many programs the chain has.
    pub tcx_position: Option<(u32, u32)>,
}

/// Reads the pinned links back: file names say where each one hangs
/// (`IFNAME:hook`, or `cgroup:PROGRAM`), the kernel says which program runs
/// and, for tcx, where it sits among other users' programs.
pub fn attached_links(bpffs: &Path, cgroup: Option<&Path>) -> Vec<AttachedLink> {
    let Ok(rd) = std::fs::read_dir(bpffs.join("links")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let info = PinnedLink::from_pin(e.path())
            .ok()
            .and_then(|p| FdLink::from(p).info().ok());
        let (link_id, program_id) = (
            info.as_ref().map(|i| i.id()),
            info.as_ref().map(|i| i.program_id()),
        );
        if let Some(prog) = file.strip_prefix("cgroup:") {
            let what = prog.strip_prefix("netd_").unwrap_or(prog);
            out.push(AttachedLink {
                hook: format!("cgroup_{what}"),
                interface: cgroup
                    .map(|c| c.display().to_string())
                    .unwrap_or_else(|| "cgroup".into()),
                direction: what.into(),
                program: prog.into(),
                link_id,
                program_id,
                tcx_position: None,
            });
            continue;
        }
        let Some((ifname, hook)) = file.rsplit_once(':') else {
            continue;
        };
        let Some(hook) = Hook::ALL.into_iter().find(|h| h.as_str() == hook) else {
            continue;
        };
        let ifname = ifname.replace(':', ".");
        let tcx_position = program_id.and_then(|id| {
            let (_, progs) = SchedClassifier::query_tcx(&ifname, hook.attach_type()).ok()?;
            let at = progs.iter().position(|p| p.id() == id)?;
            Some((at as u32 + 1, progs.len() as u32))
        });
        out.push(AttachedLink {
            hook: hook.as_str().into(),
            interface: ifname,
            direction: hook.direction().into(),
            program: hook.program().into(),
            link_id,
            program_id,
            tcx_position,
        });
    }
    // tcx hooks in packet order (bridges first), then the cgroup hooks.
    let rank = |l: &AttachedLink| {
        let hook = Hook::ALL
            .iter()
            .position(|h| h.as_str() == l.hook)
            .unwrap_or(Hook::ALL.len());
        (
            l.hook.starts_with("cgroup_"),
            hook / 2,
            l.interface.clone(),
            hook,
            l.hook.clone(),
        )
    };
    out.sort_by_key(rank);
    out
}

/// bpffs refuses names with dots (they are reserved for its own files), and
/// interface names may have them (eth0.100); ':' is never in an ifname.
impl Dataplane {
    /// Runs a program once over `packet` with BPF_PROG_TEST_RUN, as if it
    /// arrived on `ifindex` (resolved in the calling thread's netns).
    /// Returns the verdict and the packet as the program left it.
    pub fn test_run(&self, hook: Hook, ifindex: u32, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (rc, out, _) = self.test_run_repeat(hook, ifindex, packet, 1)?;
        Ok((rc, out))
    }

    /// Like `test_run`, `repeat` times; also returns the kernel's mean time
    /// per run.
    pub fn test_run_repeat(
        &self,
        hook: Hook,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        self.test_run_program(hook.program(), ifindex, packet, repeat)
    }

    /// Every tc program by name: the hooks' and the second stages they
    /// tail-call (which tests also run on their own).
    pub const TC_PROGRAMS: [&'static str; 9] = [
        progs::BRIDGE_INGRESS,
        progs::BRIDGE_EGRESS,
        progs::UPLINK_INGRESS,
        progs::UPLINK_EGRESS,
        progs::BRIDGE_NEW_FLOW,
        progs::UPLINK_NEW_FLOW,
        progs::NAT66,
        progs::BRIDGE_IPV6,
        progs::UPLINK_IPV6,
    ];

    /// [`Self::test_run_repeat`] for any tc program, by name.
    pub fn test_run_program(
        &self,
        name: &str,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} not loaded"))?
            .try_into()?;
        // struct __sk_buff up to and including `ifindex` (offset 40); the
        // kernel accepts a prefix and only lets a few fields be set.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        };
        let r = prog.test_run(opts)?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out, r.duration))
    }
}

const TAIL_PROGS: [(u32, &str); 5] = [
    (netd_common::tail::BRIDGE_NEW_FLOW, progs::BRIDGE_NEW_FLOW),
    (netd_common::tail::UPLINK_NEW_FLOW, progs::UPLINK_NEW_FLOW),
    (netd_common::tail::NAT66, progs::NAT66),
    (netd_common::tail::BRIDGE_IPV6, progs::BRIDGE_IPV6),
    (netd_common::tail::UPLINK_IPV6, progs::UPLINK_IPV6),
];

const SOCK_ADDR_PROGS: [&str; 3] = [progs::CONNECT4, progs::SENDMSG4, progs::RECVMSG4];

pub fn link_pin_path(bpffs: &Path, hook: Hook, ifname: &str) -> PathBuf {
    bpffs
        .join("links")
        .join(format!("{}:{}", ifname.replace('.', ":"), hook.as_str()))
}

/// Removes a pinned link; dropping the last reference detaches it.
pub fn detach_pinned(bpffs: &Path, hook: Hook, ifname: &str) -> Result<()> {
    let pin = link_pin_path(bpffs, hook, ifname);
    match PinnedLink::from_pin(&pin) {
        Ok(p) => {
            p.unpin()
                .with_context(|| format!("unpinning {}", pin.display()))?;
            Ok(())
        }
        Err(_) if !pin.exists() => Ok(()),
        Err(e) => Err(anyhow!("opening {}: {e}", pin.display())),
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes sure `dir` lives on a bpffs; mounts /sys/fs/bpf if that is missing.
fn ensure_bpffs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).ok();
    if is_bpffs(dir) {
        return Ok(());
    }
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && !is_bpffs(sys) {
        let src = c"bpf";
        let target = std::ffi::CString::new("/sys/fs/bpf")?;
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(anyhow!(
                "mounting bpffs on /sys/fs/bpf: {}",
                std::io::Error::last_os_error()
            ));
        }
        std::fs::create_dir_all(dir)?;
        return Ok(());
    }
    Err(anyhow!(
        "{} is not on a bpf filesystem (mount -t bpf bpf DIR)",
        dir.display()
    ))
}

pub fn is_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}
