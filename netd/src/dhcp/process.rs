//! A supervised dnsmasq process.

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// First restart delay; doubles per consecutive failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// dnsmasq must still be alive this long after spawn...
const START_ALIVE: Duration = Duration::from_millis(300);
/// ...and have logged "started" or be alive this long.
const START_SURVIVE: Duration = Duration::from_millis(500);
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The dnsmasq binary: `$NETD_DNSMASQ`, else the usual sbin locations, else `dnsmasq` on PATH.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NETD_DNSMASQ").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    [
        "/usr/sbin/dnsmasq",
        "/sbin/dnsmasq",
        "/usr/local/sbin/dnsmasq",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("dnsmasq"))
}

fn conf_arg(conf: &Path) -> String {
    format!("--conf-file={}", conf.display())
}

/// One spawned dnsmasq process and its stderr forwarder.
struct Run {
    child: Child,
    pid: u32,
    spawned: Instant,
    stderr_task: JoinHandle<()>,
    last_line: Arc<Mutex<Option<String>>>,
    started: Arc<AtomicBool>,
}

impl Run {
    fn spawn(net: &str, conf: &Path) -> Result<Run> {
        let bin = binary();
        let mut child = Command::new(&bin)
            .arg("--keep-in-foreground")
            .arg(conf_arg(conf))
            .arg("--log-facility=-")
            // No value: no pid file (the compiled-in default would be /var/run/dnsmasq.pid).
            .arg("--pid-file")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Own process group: a Ctrl-C meant for the daemon does not reach dnsmasq.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("dnsmasq exited at once"))?;
        let last_line = Arc::new(Mutex::new(None));
        let started = Arc::new(AtomicBool::new(false));
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_task = tokio::spawn({
            let net = net.to_string();
            let last_line = last_line.clone();
            let started = started.clone();
            async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    tracing::debug!(network = %net, "{line}");
                    if line.contains("started, version") {
                        started.store(true, Ordering::Relaxed);
                    }
                    *last_line.lock().unwrap() = Some(line.to_string());
                }
            }
        });
        Ok(Run {
            child,
            pid,
            spawned: Instant::now(),
            stderr_task,
            last_line,
            started,
        })
    }

    /// After the process exited: the last thing it said on stderr.
    async fn last_words(&mut self) -> Option<String> {
        // Normally at EOF already; a grandchild could hold the pipe open, so do not wait long.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.stderr_task).await;
        self.last_line.lock().unwrap().clone()
    }

    /// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL.
    async fn terminate(&mut self) {
        signal(self.pid, libc::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.stderr_task).await;
    }
}

fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    pid > 0 && unsafe { libc::kill(pid, sig) } == 0
}

/// Whether `pid` has installed its SIGHUP handler (`SigCgt` in /proc), if that can be told.
fn catches_sighup(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))?
        .trim();
    let mask = u64::from_str_radix(hex, 16).ok()?;
    Some(mask & (1 << (libc::SIGHUP - 1)) != 0)
}

/// Ends any dnsmasq left running with this conf by an earlier netd (one that crashed, say):
/// it would hold the addresses and make the new one fail.
async fn kill_stale(conf: &Path) {
    let want = conf_arg(conf);
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
        let is_dnsmasq = args
            .next()
            .is_some_and(|a0| a0.rsplit('/').next() == Some("dnsmasq"));
        if !is_dnsmasq || !args.any(|a| a == want) {
            continue;
        }
        let ppid = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        if ppid == Some(me) {
            tracing::warn!(
                "dnsmasq {pid} already runs {} for this netd",
                conf.display()
            );
            continue;
        }
        tracing::warn!(
            "stopping stale dnsmasq {pid} left running with {}",
            conf.display()
        );
        signal(pid, libc::SIGTERM);
        let t0 = Instant::now();
        while signal(pid, 0) && t0.elapsed() < STOP_GRACE {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if signal(pid, 0) {
            signal(pid, libc::SIGKILL);
        }
    }
}

struct Shared {
    /// Current pid; 0 while none runs.
    pid: AtomicU32,
    restarts: AtomicU64,
}

/// A supervised dnsmasq for one network. Dropping it stops dnsmasq in the background
/// (the same way as [`Dnsmasq::stop`]); if the runtime goes away first, `kill_on_drop` kills it.
pub struct Dnsmasq {
    net: String,
    shared: Arc<Shared>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Dnsmasq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dnsmasq")
            .field("net", &self.net)
            .field("pid", &self.pid())
            .field("restarts", &self.restarts())
            .finish()
    }
}

impl Dnsmasq {
    /// Starts `dnsmasq --keep-in-foreground --conf-file=CONF --log-facility=-` and waits until it
    /// is up: alive [`START_ALIVE`] after spawn and either logged "started" or alive
    /// [`START_SURVIVE`]. If it exits first, the error is its last stderr line.
    pub async fn start(net_name: &str, conf: &Path) -> Result<Dnsmasq> {
        if !conf.is_file() {
            bail!("dnsmasq config {} does not exist", conf.display());
        }
        kill_stale(conf).await;
        let mut run = Run::spawn(net_name, conf)?;
        loop {
            let up = run.spawned.elapsed();
            if up >= START_ALIVE && (run.started.load(Ordering::Relaxed) || up >= START_SURVIVE) {
                break;
            }
            tokio::select! {
                status = run.child.wait() => {
                    let status = status.context("waiting for dnsmasq")?;
                    return Err(match run.last_words().await {
                        Some(line) => anyhow!("{line}"),
                        None => anyhow!("dnsmasq exited while starting ({status})"),
                    });
                }
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            }
        }
        tracing::info!(network = %net_name, pid = run.pid, "dnsmasq started");
        let shared = Arc::new(Shared {
            pid: AtomicU32::new(run.pid),
            restarts: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(
            net_name.to_string(),
            conf.to_path_buf(),
            shared.clone(),
            run,
            stop_rx,
        ));
        Ok(Dnsmasq {
            net: net_name.to_string(),
            shared,
            stop_tx: Some(stop_tx),
            task: Some(task),
        })
    }

    /// The current pid (it changes after a restart); None while waiting to restart.
    pub fn pid(&self) -> Option<u32> {
        Some(self.shared.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    /// How many times dnsmasq was restarted after exiting on its own.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// Whether dnsmasq is running right now.
    pub fn healthy(&self) -> bool {
        self.pid().is_some_and(|p| signal(p, 0))
    }

    /// SIGHUP: dnsmasq rereads dhcp-hostsfile and addn-hosts (and /etc/hosts) without
    /// restarting, so leases and running guests are not disturbed.
    pub fn reload(&self) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("dnsmasq for {} is not running", self.net))?;
        // A dnsmasq restarted a moment ago may not have its handler yet, and SIGHUP's default
        // action would kill it. This only ever waits in that window.
        for _ in 0..50 {
            if catches_sighup(pid) != Some(false) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !signal(pid, libc::SIGHUP) {
            bail!(
                "cannot signal dnsmasq {pid} for {}: {}",
                self.net,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// SIGTERM, wait up to 3s, then SIGKILL; the supervisor ends, so it is not restarted.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .map_err(|e| anyhow!("dnsmasq supervisor for {} failed: {e}", self.net))?;
        }
        Ok(())
    }
}

async fn supervise(
    net: String,
    conf: PathBuf,
    shared: Arc<Shared>,
    mut run: Run,
    mut stop_rx: oneshot::Receiver<()>,
) {
    let mut delay = BACKOFF_MIN;
    loop {
        // Running: wait for it to exit, or for stop (or the handle being dropped).
        let status = tokio::select! {
            status = run.child.wait() => status,
            _ = &mut stop_rx => {
                run.terminate().await;
                shared.pid.store(0, Ordering::SeqCst);
                tracing::info!(network = %net, pid = run.pid, "dnsmasq stopped");
                return;
            }
        };
        shared.pid.store(0, Ordering::SeqCst);
        let said = run.last_words().await.unwrap_or_default();
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        if run.spawned.elapsed() >= STABLE_RUN {
            delay = BACKOFF_MIN;
        }
        tracing::warn!(
            network = %net, pid = run.pid,
            "dnsmasq exited unexpectedly ({status}): {said}; restarting in {}s",
            delay.as_secs()
        );
        // Waiting to restart: sleep with backoff, give up on stop.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut stop_rx => return,
            }
            delay = (delay * 2).min(BACKOFF_MAX);
            shared.restarts.fetch_add(1, Ordering::SeqCst);
            match Run::spawn(&net, &conf) {
                Ok(r) => {
                    run = r;
                    shared.pid.store(run.pid, Ordering::SeqCst);
                    tracing::info!(network = %net, pid = run.pid, "dnsmasq restarted");
                    break;
                }
                Err(e) => tracing::warn!(
                    network = %net,
                    "cannot restart dnsmasq: {e:#}; retrying in {}s",
                    delay.as_secs()
                ),
            }
        }
    }
}
