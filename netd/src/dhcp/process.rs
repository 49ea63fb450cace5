//! A supervised dnsmasq process that outlives the daemon.
//!
//! dnsmasq daemonizes itself, as under libvirt: the process we run (the
//! launcher) exits once the server is up, with status 0, or with dnsmasq's
//! own one-line reason on stderr when it cannot start. So a start is
//! synchronous and its error exact, and the server is never our child: a
//! daemon that exits or is killed leaves it serving DHCP and DNS, and the
//! next daemon adopts it through its pid file (checked against
//! `/proc/PID/cmdline`, which must name our config file).
//!
//! A supervisor task polls the process; one that died is restarted with
//! backoff (0.5 s doubling to 30 s, reset after a minute of running), and
//! the last error is kept for `netd status` and the metrics.

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// First restart delay; doubles per failed restart up to [`BACKOFF_MAX`].
/// Together they cap a crash loop at 7 restarts in its first minute.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// How often the supervisor looks at the process.
const POLL: Duration = Duration::from_millis(250);
/// How long the launcher may take to report.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(3);
/// dnsmasq logs every DHCP exchange to its file; past this size the
/// supervisor empties it (dnsmasq appends, so it just carries on).
const LOG_MAX: u64 = 1 << 20;

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

/// `NAME.conf` -> `NAME.<ext>` beside it.
fn sibling(conf: &Path, ext: &str) -> PathBuf {
    conf.with_extension(ext)
}

/// Where dnsmasq writes its pid (beside its config).
pub fn pid_file(conf: &Path) -> PathBuf {
    sibling(conf, "pid")
}

/// Where dnsmasq logs (beside its config).
pub fn log_file(conf: &Path) -> PathBuf {
    sibling(conf, "log")
}

/// A copy of the config the running dnsmasq was started with.
fn applied_file(conf: &Path) -> PathBuf {
    sibling(conf, "applied")
}

/// What the launcher said on stderr (beside the config).
fn start_err_file(conf: &Path) -> PathBuf {
    sibling(conf, "start-err")
}

fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    pid > 0 && unsafe { libc::kill(pid, sig) } == 0
}

/// A process's state letter and start time (clock ticks after boot, which
/// tells a reused pid from the process we looked at), from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = s.rsplit_once(')')?.1.split_whitespace();
    let state = f.next()?.chars().next()?;
    // Field 22 of the whole line; the 20th after the state.
    let start = f.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is a live (not zombie) dnsmasq running `conf`. Pids are
/// reused, so the command line must name our config file; a daemonized
/// dnsmasq that died stays a zombie until its parent (init) reaps it, and a
/// zombie has an empty command line.
pub fn serves(pid: u32, conf: &Path) -> bool {
    if pid == 0 || proc_stat(pid).is_none_or(|(st, _)| st == 'Z' || st == 'X') {
        return false;
    }
    let want = conf_arg(conf);
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| a == want.as_bytes()))
        .unwrap_or(false)
}

/// Waits (up to `limit`) until the process that was `pid` at `start` has
/// exited completely: a zombie, or gone. An exiting process loses its
/// command line before it closes its files, so "no longer serves" is not
/// yet "its sockets are free"; a successor must wait for this.
async fn wait_exited(pid: u32, start: u64, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        match proc_stat(pid) {
            None => return true,
            Some((st, s)) if st == 'Z' || st == 'X' || s != start => return true,
            _ if t0.elapsed() >= limit => return false,
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn read_pid_file(conf: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file(conf))
        .ok()?
        .trim()
        .parse()
        .ok()
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

/// SIGTERM, up to [`STOP_GRACE`] for it to exit, then SIGKILL; returns once
/// the process is gone (a zombie counts as gone: its sockets are closed).
async fn terminate(pid: u32, conf: &Path) -> Result<()> {
    let Some((_, start)) = proc_stat(pid).filter(|_| serves(pid, conf)) else {
        return Ok(());
    };
    signal(pid, libc::SIGTERM);
    if wait_exited(pid, start, STOP_GRACE).await {
        return Ok(());
    }
    signal(pid, libc::SIGKILL);
    if wait_exited(pid, start, STOP_GRACE).await {
        return Ok(());
    }
    bail!("dnsmasq {pid} does not exit")
}

/// Ends every dnsmasq that runs `conf` (one left by an earlier daemon whose
/// record was lost, say) and waits for each to exit: it would hold the
/// addresses and make a new one fail.
async fn stop_others(conf: &Path) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    let pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| serves(*pid, conf))
        .collect();
    for pid in pids {
        tracing::warn!(
            "stopping dnsmasq {pid}, left running with {}",
            conf.display()
        );
        if let Err(e) = terminate(pid, conf).await {
            tracing::warn!("{e:#}");
        }
    }
}

/// Runs the launcher and waits for it: Ok(pid of the server) once dnsmasq
/// is up, else its own reason (one line).
async fn launch(conf: &Path) -> Result<u32> {
    let bin = binary();
    let pidf = pid_file(conf);
    let _ = std::fs::remove_file(&pidf);
    let errf = start_err_file(conf);
    // A file, not a pipe: the daemonized server may keep stderr open.
    let err =
        std::fs::File::create(&errf).with_context(|| format!("creating {}", errf.display()))?;
    let mut child = Command::new(&bin)
        .arg(conf_arg(conf))
        .arg(format!("--pid-file={}", pidf.display()))
        .arg(format!("--log-facility={}", log_file(conf).display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        // Own process group and session (dnsmasq calls setsid itself): a
        // Ctrl-C meant for the daemon never reaches it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let status = match tokio::time::timeout(START_TIMEOUT, child.wait()).await {
        Ok(s) => s.context("waiting for dnsmasq")?,
        Err(_) => {
            let _ = child.kill().await;
            bail!("dnsmasq did not finish starting within {START_TIMEOUT:?}");
        }
    };
    let said = std::fs::read_to_string(&errf)
        .unwrap_or_default()
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.strip_prefix("dnsmasq: ").unwrap_or(l).to_string());
    let _ = std::fs::remove_file(&errf);
    if !status.success() {
        return Err(match said {
            Some(line) => anyhow!("{line}"),
            None => anyhow!("dnsmasq exited while starting ({status})"),
        });
    }
    let pid = read_pid_file(conf)
        .ok_or_else(|| anyhow!("dnsmasq started but wrote no pid to {}", pidf.display()))?;
    // What it runs, so a later daemon can tell whether the config on disk
    // changed since (even if it was written by a daemon killed right after).
    if let Err(e) = std::fs::copy(conf, applied_file(conf)) {
        tracing::warn!("recording {}: {e}", applied_file(conf).display());
    }
    if !serves(pid, conf) {
        bail!(
            "dnsmasq {pid} exited right after starting{}",
            said.map(|s| format!(": {s}")).unwrap_or_default()
        );
    }
    Ok(pid)
}

#[derive(Default)]
struct Shared {
    /// Current pid; 0 while none runs.
    pid: AtomicU32,
    restarts: AtomicU64,
    /// Why it is down, while it is (dnsmasq's last line, or how it ended).
    last_error: Mutex<Option<String>>,
    /// When the next restart is due, while waiting for it.
    next_try: Mutex<Option<Instant>>,
}

/// A supervised dnsmasq for one network. Dropping the handle leaves dnsmasq
/// running (it outlives the daemon by design); [`Dnsmasq::stop`] ends it.
pub struct Dnsmasq {
    net: String,
    conf: PathBuf,
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
            .field("last_error", &self.last_error())
            .finish()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // Only the supervisor goes; the server keeps serving.
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Dnsmasq {
    /// Starts dnsmasq on `conf` (stopping any other dnsmasq still running
    /// it, and waiting for that one to exit first), and returns once it
    /// serves. The error is dnsmasq's own reason, in one line.
    pub async fn start(net_name: &str, conf: &Path) -> Result<Dnsmasq> {
        if !conf.is_file() {
            bail!("dnsmasq config {} does not exist", conf.display());
        }
        stop_others(conf).await;
        // One run's log at a time: the file does not grow across restarts.
        let _ = std::fs::remove_file(log_file(conf));
        let pid = launch(conf).await?;
        tracing::info!(network = %net_name, pid, "dnsmasq started");
        Ok(Self::supervise(net_name, conf, pid))
    }

    /// Stops every dnsmasq running `conf` and waits for each to exit (for a
    /// network torn down while we held no handle on its dnsmasq).
    pub async fn stop_all(conf: &Path) {
        stop_others(conf).await;
    }

    /// Takes over the dnsmasq a previous daemon left running on `conf`, if
    /// its pid file names a live dnsmasq whose command line has our config.
    pub fn adopt(net_name: &str, conf: &Path) -> Option<Dnsmasq> {
        let pid = read_pid_file(conf)?;
        if !serves(pid, conf) {
            return None;
        }
        tracing::info!(network = %net_name, pid, "dnsmasq adopted");
        Some(Self::supervise(net_name, conf, pid))
    }

    fn supervise(net_name: &str, conf: &Path, pid: u32) -> Dnsmasq {
        let shared = Arc::new(Shared::default());
        shared.pid.store(pid, Ordering::SeqCst);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(
            net_name.to_string(),
            conf.to_path_buf(),
            shared.clone(),
            pid,
            stop_rx,
        ));
        Dnsmasq {
            net: net_name.to_string(),
            conf: conf.to_path_buf(),
            shared,
            stop_tx: Some(stop_tx),
            task: Some(task),
        }
    }

    /// The current pid (it changes after a restart); None while waiting to restart.
    pub fn pid(&self) -> Option<u32> {
        Some(self.shared.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    /// How many times dnsmasq was restarted (tried) after exiting on its own.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// Whether dnsmasq is serving right now.
    pub fn healthy(&self) -> bool {
        self.pid().is_some_and(|p| serves(p, &self.conf))
    }

    /// Whether dnsmasq runs the config now on disk (else it must restart).
    pub fn config_current(&self) -> bool {
        match (
            std::fs::read(&self.conf),
            std::fs::read(applied_file(&self.conf)),
        ) {
            (Ok(now), Ok(then)) => now == then,
            _ => false,
        }
    }

    /// While down: why (the last thing dnsmasq said, or how it ended).
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().unwrap().clone()
    }

    /// While down: how long until the next restart.
    pub fn next_try_in(&self) -> Option<Duration> {
        self.shared
            .next_try
            .lock()
            .unwrap()
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// SIGHUP: dnsmasq rereads dhcp-hostsfile and addn-hosts (and /etc/hosts) without
    /// restarting, so leases and running guests are not disturbed.
    pub fn reload(&self) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("dnsmasq for {} is not running", self.net))?;
        // A dnsmasq started a moment ago may not have its handler yet, and SIGHUP's default
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

    /// Ends supervision, then dnsmasq: SIGTERM, up to 3 s, SIGKILL. Returns
    /// once it has exited, so a successor can bind the same addresses.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let r = match self.pid() {
            Some(pid) => terminate(pid, &self.conf).await,
            None => Ok(()),
        };
        // Any other copy on our config (one started while we looked away).
        stop_others(&self.conf).await;
        if r.is_ok() {
            tracing::info!(network = %self.net, "dnsmasq stopped");
            remove_runtime_files(&self.conf);
        }
        r
    }
}

/// The restart delay after `delay`: doubled, up to [`BACKOFF_MAX`].
fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(BACKOFF_MAX)
}

async fn supervise(
    net: String,
    conf: PathBuf,
    shared: Arc<Shared>,
    mut pid: u32,
    mut stop_rx: oneshot::Receiver<()>,
) {
    let mut delay = BACKOFF_MIN;
    let mut since = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut stop_rx => return,
        }
        let start = proc_stat(pid).map(|(_, s)| s);
        if serves(pid, &conf) {
            trim_log(&conf);
            continue;
        }
        shared.pid.store(0, Ordering::SeqCst);
        // Dying, maybe not dead: its sockets must be closed before a new one binds.
        if let Some(start) = start {
            wait_exited(pid, start, STOP_GRACE).await;
        }
        if since.elapsed() >= STABLE_RUN {
            delay = BACKOFF_MIN;
        }
        let why = match last_log_line(&conf) {
            Some(l) => format!("dnsmasq {pid} exited unexpectedly; its last log line: {l}"),
            None => format!("dnsmasq {pid} exited unexpectedly"),
        };
        tracing::warn!(network = %net, "{why}; restarting in {delay:?}");
        *shared.last_error.lock().unwrap() = Some(why);
        loop {
            *shared.next_try.lock().unwrap() = Some(Instant::now() + delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut stop_rx => return,
            }
            delay = next_delay(delay);
            shared.restarts.fetch_add(1, Ordering::SeqCst);
            match launch(&conf).await {
                Ok(p) => {
                    pid = p;
                    since = Instant::now();
                    shared.pid.store(pid, Ordering::SeqCst);
                    *shared.last_error.lock().unwrap() = None;
                    *shared.next_try.lock().unwrap() = None;
                    tracing::info!(network = %net, pid, "dnsmasq restarted");
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        network = %net,
                        "cannot restart dnsmasq: {e:#}; retrying in {delay:?}"
                    );
                    *shared.last_error.lock().unwrap() = Some(format!("{e:#}"));
                }
            }
        }
    }
}

/// Empties dnsmasq's log file once it is over [`LOG_MAX`].
fn trim_log(conf: &Path) {
    let p = log_file(conf);
    if std::fs::metadata(&p).is_ok_and(|m| m.len() > LOG_MAX)
        && let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p)
    {
        let _ = f.set_len(0);
    }
}

/// The last line dnsmasq wrote to its log, without its "date dnsmasq[pid]:" prefix.
fn last_log_line(conf: &Path) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(log_file(conf)).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = String::new();
    f.read_to_string(&mut tail).ok()?;
    let line = tail.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(match line.split_once("]: ") {
        Some((_, msg)) => msg.to_string(),
        None => line.to_string(),
    })
}

/// Removes the pid and log files dnsmasq leaves beside `conf` (network
/// teardown, after dnsmasq is stopped or never started).
pub fn remove_runtime_files(conf: &Path) {
    for f in [
        pid_file(conf),
        log_file(conf),
        start_err_file(conf),
        applied_file(conf),
    ] {
        let _ = std::fs::remove_file(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dnsmasq that fails every start is tried at most 10 times a minute,
    /// in any minute of the loop (not only the first).
    #[test]
    fn a_crash_loop_restarts_at_most_10_times_a_minute() {
        let mut at = Vec::new();
        let (mut t, mut delay) = (Duration::ZERO, BACKOFF_MIN);
        while t < Duration::from_secs(600) {
            t += delay;
            at.push(t);
            delay = next_delay(delay);
        }
        for (i, start) in at.iter().enumerate() {
            let in_minute = at[i..]
                .iter()
                .take_while(|x| **x < *start + Duration::from_secs(60))
                .count();
            assert!(
                in_minute <= 10,
                "{in_minute} restarts in the minute from {start:?}"
            );
        }
        // The first one comes quickly: a killed dnsmasq is back within 2 s
        // (delay + one poll + its start-up).
        assert!(BACKOFF_MIN + POLL < Duration::from_secs(1));
    }
}
