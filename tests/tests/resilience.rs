//! End to end: nothing is lost when the daemon or dnsmasq dies. Crash loop
//! of the daemon under live TCP streams, a graceful stop during DHCP, two
//! daemons on one state dir, dnsmasq killed or crashing on start, and torn
//! writes of the state files.
//! Topology: guest -> host (netd) -> router -> upstream.

use netd_tests::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GUEST_MAC: &str = "52:54:00:11:00:10";
const GUEST_IP: &str = "192.168.122.10";

const NAT_NET: &str = r#"
name = "default"
mode = "nat"
bridge = "virbr0"
[ipv4]
address = "192.168.122.1/24"
dhcp = { start = "192.168.122.100", end = "192.168.122.199" }
hosts = [{ mac = "52:54:00:11:00:10", ip = "192.168.122.10", name = "web" }]
[[forwards]]
proto = "tcp"
port = "8080"
to = "192.168.122.10:9000"
"#;

/// One TCP stream end. `send` writes random 32 KiB chunks every 10 ms
/// until the stop file exists, `recv` reads to EOF; `listen` accepts one
/// connection, `connect` makes one. Prints "BYTES SHA256" (to the result
/// file) at the end, so both ends can be compared.
const STREAM: &str = r#"
import hashlib, os, socket, sys, time
role, mode, addr, port, stop, out = sys.argv[1:7]
port = int(port)
if mode == 'listen':
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port))
    l.listen(1)
    open(out + '.ready', 'w').close()
    s, _ = l.accept()
else:
    s = socket.create_connection((addr, port), timeout=10)
s.settimeout(120)
h = hashlib.sha256()
n = 0
if role == 'send':
    while not os.path.exists(stop):
        d = os.urandom(32768)
        s.sendall(d)
        h.update(d)
        n += len(d)
        time.sleep(0.01)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
else:
    while True:
        d = s.recv(65536)
        if not d:
            break
        h.update(d)
        n += len(d)
s.close()
with open(out + '.tmp', 'w') as f:
    f.write('%d %s\n' % (n, h.hexdigest()))
os.rename(out + '.tmp', out)
"#;

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Starts one stream end in `ns`; its result lands in `out`.
fn stream(ns: &Ns, role: &str, mode: &str, addr: &str, port: u16, stop: &Path, out: &Path) {
    let port = port.to_string();
    let argv = [
        python(),
        "-c",
        STREAM,
        role,
        mode,
        addr,
        &port,
        stop.to_str().unwrap(),
        out.to_str().unwrap(),
    ];
    // Reaped by the namespace cleanup if the test fails half-way.
    std::mem::forget(ns.spawn(&argv));
    if mode == "listen" {
        let ready = PathBuf::from(format!("{}.ready", out.display()));
        assert!(
            wait_until(Duration::from_secs(10), || ready.exists()),
            "{role} listener on {addr}:{port} never came up"
        );
    }
}

/// (bytes, sha256) a stream end reported; waits for it.
fn result(out: &Path, timeout: Duration) -> (u64, String) {
    assert!(
        wait_until(timeout, || out.exists()),
        "no result in {} (stream stalled or broke)",
        out.display()
    );
    let text = fs::read_to_string(out).unwrap();
    let (n, sha) = text.trim().split_once(' ').unwrap();
    (n.parse().unwrap(), sha.to_string())
}

fn info(t: &Topology, name: &str) -> Value {
    t.netd_json(&["net", "info", name])
}

/// Pinned map name -> kernel id.
fn map_ids(t: &Topology) -> BTreeMap<String, u64> {
    let o = t.netd_bpf(&["maps", "-o", "json"]);
    assert!(o.success(), "{o}");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["id"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// (hook, interface) -> (pinned link id, program id) of every tcx hook.
fn links(t: &Topology) -> BTreeMap<(String, String), (u64, u64)> {
    let o = t.netd(&["status", "-o", "json"]);
    let v: Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o}"));
    v["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["hook"].as_str().unwrap().starts_with("cgroup"))
        .map(|p| {
            (
                (
                    p["hook"].as_str().unwrap().to_string(),
                    p["interface"].as_str().unwrap().to_string(),
                ),
                (p["link_id"].as_u64().unwrap(), p["id"].as_u64().unwrap()),
            )
        })
        .collect()
}

fn kill9(pid: u32) {
    // SAFETY: plain syscall on a pid this test owns.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// kill -9 of the daemon, waiting until it is gone.
fn crash_daemon(t: &mut Topology) {
    let pid = t.daemon_pid().expect("daemon running");
    kill9(pid);
    assert!(
        wait_until(Duration::from_secs(5), || !t.daemon_running()),
        "daemon {pid} survived SIGKILL"
    );
}

/// Pid of the `netd daemon` working on `state` (not one of `not`).
fn find_daemon(state: &Path, not: Option<u32>) -> Option<u32> {
    let want = state.to_string_lossy().into_owned();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is = args.iter().any(|a| a == "daemon") && args.contains(&want);
        (is && Some(pid) != not && process_running(pid)).then_some(pid)
    })
}

/// Starts the daemon and kill -9s it `delay` after it was spawned, while it
/// loads and adopts (or just after, if it was quicker). Leaves it dead.
/// Returns whether it died before it answered.
fn kill_during_startup(t: &mut Topology, delay: Duration) -> bool {
    let state = t.state_dir();
    let killer = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(pid) = find_daemon(&state, None) {
                std::thread::sleep(delay);
                kill9(pid);
                return Some(pid);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    let r = t.start_daemon();
    let pid = killer.join().unwrap().expect("daemon never appeared");
    if r.is_ok() {
        assert!(
            wait_until(Duration::from_secs(5), || !t.daemon_running()),
            "daemon {pid} survived SIGKILL"
        );
    }
    r.is_err()
}

fn nat_topology(name: &str) -> (Topology, Guest) {
    let mut t = Topology::new(name).expect("topology");
    t.start_daemon().expect("daemon");
    let def = t.write_file("default.toml", NAT_NET);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    let g = t.add_guest("virbr0", Some(GUEST_MAC)).expect("guest");
    assert_eq!(g.dhcp().expect("dhcp").to_string(), GUEST_IP);
    (t, g)
}

fn dnsmasq_pid(t: &Topology) -> u32 {
    info(t, "default")["dnsmasq_pid"]
        .as_u64()
        .expect("dnsmasq pid") as u32
}

#[test]
fn crash_loop_loses_no_byte_no_map_and_no_dnsmasq() {
    require_netd!();
    let t0 = Instant::now();
    let (mut t, g) = nat_topology("resilience_crash_loop");
    let ids = map_ids(&t);
    let dns = dnsmasq_pid(&t);
    let bridge = info(&t, "default")["bridge_ifindex"].as_u64();
    let hooks = links(&t);
    assert_eq!(hooks.len(), 4, "{hooks:?}");
    let dir = t.dir.join("streams");
    fs::create_dir_all(&dir).unwrap();
    let stop = dir.join("stop");
    let f = |n: &str| dir.join(n);

    // Upload: guest -> upstream through NAT.
    stream(
        &t.upstream,
        "recv",
        "listen",
        "0.0.0.0",
        7000,
        &stop,
        &f("up.recv"),
    );
    stream(
        &g.ns,
        "send",
        "connect",
        &UPSTREAM_IP.to_string(),
        7000,
        &stop,
        &f("up.send"),
    );
    // Download: a guest server, through the forward, to an upstream client.
    stream(
        &g.ns,
        "send",
        "listen",
        "0.0.0.0",
        9000,
        &stop,
        &f("down.send"),
    );
    stream(
        &t.upstream,
        "recv",
        "connect",
        &HOST_IP.to_string(),
        8080,
        &stop,
        &f("down.recv"),
    );
    std::thread::sleep(Duration::from_millis(500));

    let rounds = 20;
    let mut survived = 0;
    let mut mid_startup = 0;
    let mut before_ready = 0;
    for round in 0..rounds {
        // Kill at a different moment of each round: 100..580 ms after ready.
        std::thread::sleep(Duration::from_millis(100 + (round * 137) % 480));
        crash_daemon(&mut t);
        if round % 2 == 1 {
            // And every other round once more, while the next one starts
            // up and adopts: 0..400 ms after it was spawned.
            if kill_during_startup(&mut t, Duration::from_millis((round * 23) % 400)) {
                before_ready += 1;
            }
            mid_startup += 1;
        }
        t.start_daemon().expect("daemon after kill -9");
        let i = info(&t, "default");
        assert_eq!(i["active"], true, "round {round}: {i:#}");
        assert_eq!(i["degraded"], Value::Null, "round {round}: {i:#}");
        assert_eq!(i["bridge_ifindex"].as_u64(), bridge, "round {round}");
        assert_eq!(
            i["dnsmasq_pid"].as_u64(),
            Some(u64::from(dns)),
            "round {round}: dnsmasq was replaced"
        );
        assert_eq!(
            map_ids(&t),
            ids,
            "round {round}: a pinned map was recreated"
        );
        // Each daemon loads its own programs and swaps them into the same
        // pinned links: the link ids stay, the program ids change.
        let now = links(&t);
        for (hook, (link, prog)) in &hooks {
            let (l, p) = now
                .get(hook)
                .unwrap_or_else(|| panic!("round {round}: {hook:?} gone"));
            assert_eq!(
                l, link,
                "round {round}: {hook:?} was re-attached, not swapped"
            );
            assert_ne!(p, prog, "round {round}: {hook:?} runs the old program");
        }
        survived += 1;
    }
    fs::write(&stop, "").unwrap();
    let timeout = Duration::from_secs(30);
    let (up_sent, up_sent_sha) = result(&f("up.send"), timeout);
    let (up_got, up_got_sha) = result(&f("up.recv"), timeout);
    let (down_sent, down_sent_sha) = result(&f("down.send"), timeout);
    let (down_got, down_got_sha) = result(&f("down.recv"), timeout);
    eprintln!(
        "crash loop: {survived}/{rounds} rounds survived ({} kill -9s, {mid_startup} of them \
         during startup/adoption, {before_ready} before it answered) in {:.1}s; upload {up_got}/{up_sent} bytes, download \
         {down_got}/{down_sent} bytes, SHA-256 equal; {} pinned maps kept their ids, {} tcx \
         links theirs (new programs swapped in); dnsmasq pid {dns} throughout",
        rounds + mid_startup,
        t0.elapsed().as_secs_f64(),
        ids.len(),
        hooks.len()
    );
    assert!(
        up_sent > 1_000_000 && down_sent > 1_000_000,
        "streams barely ran"
    );
    assert_eq!(
        (up_got, &up_got_sha),
        (up_sent, &up_sent_sha),
        "upload damaged"
    );
    assert_eq!(
        (down_got, &down_got_sha),
        (down_sent, &down_sent_sha),
        "download damaged"
    );
    assert!(
        !t.daemon_log().contains("is degraded"),
        "{}",
        t.daemon_log()
    );
    // How far the daemons killed while starting got, from their logs.
    let log = t.daemon_log();
    let runs: Vec<&str> = log.split("=== harness: starting").skip(2).collect();
    let adopted = runs
        .iter()
        .filter(|r| r.contains("network default adopted"))
        .count();
    let dns_step = runs
        .iter()
        .filter(|r| r.contains("dnsmasq adopted") && !r.contains("network default adopted"))
        .count();
    eprintln!(
        "crash loop: {} daemon runs after the first: {adopted} finished adopting, \
         {dns_step} were killed inside the dnsmasq step, {} before it",
        runs.len(),
        runs.len() - adopted - dns_step
    );
}

#[test]
fn sigterm_leaves_dhcp_serving_and_a_renewal_succeeds_while_down() {
    require_netd!();
    let (mut t, g) = nat_topology("resilience_sigterm");
    let dns = dnsmasq_pid(&t);
    let echo = tcp_echo_server(&t.upstream, 7001);
    let st = t.stop_daemon().expect("exit status");
    assert!(st.success(), "daemon exit: {st}");
    assert!(t.daemon_log().contains("networks and dnsmasq stay up"));

    // The daemon is gone; dnsmasq and the datapath are not.
    assert!(
        process_running(dns),
        "dnsmasq {dns} stopped with the daemon"
    );
    let t1 = Instant::now();
    let ip = g
        .dhcp_args(&["-r", GUEST_IP])
        .expect("renewal while the daemon is down");
    assert_eq!(ip.to_string(), GUEST_IP);
    eprintln!(
        "renewal while the daemon was down: {ip} in {:.2}s",
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(
        tcp_request(&g.ns, UPSTREAM_IP, 7001, "still-nat").unwrap(),
        "still-nat"
    );
    drop(echo);

    // The next daemon adopts the same dnsmasq.
    t.start_daemon().expect("daemon");
    assert_eq!(dnsmasq_pid(&t), dns);

    // --stop-networks-on-exit: the opposite.
    t.stop_daemon();
    t.start_daemon_with(&["--stop-networks-on-exit"])
        .expect("daemon");
    assert_eq!(dnsmasq_pid(&t), dns);
    let st = t.stop_daemon().expect("exit status");
    assert!(st.success(), "daemon exit: {st}");
    assert!(
        wait_until(Duration::from_secs(5), || !process_running(dns)),
        "dnsmasq {dns} outlived --stop-networks-on-exit"
    );
    assert!(!t.host.ip(&["link", "show", "dev", "virbr0"]).success());
}

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_1() {
    require_netd!();
    let (mut t, _g) = nat_topology("resilience_two_daemons");
    let first = t.daemon_pid().unwrap();
    let s = t.dir.join("state").to_string_lossy().into_owned();
    let o = t.run_daemon_to_exit(&[], Duration::from_secs(20));
    assert_eq!(o.status, 1, "{o}");
    let want = format!("error: another netd daemon (pid {first}) holds {s}");
    assert_eq!(o.stderr.trim(), want, "{o}");
    // The first one is unaffected.
    assert!(t.daemon_running());
    let i = info(&t, "default");
    assert_eq!(i["active"], true);
    assert_eq!(i["degraded"], Value::Null);
    assert!(t.socket().exists());
}

#[test]
fn dnsmasq_killed_is_back_within_2s_and_the_guest_keeps_its_address() {
    require_netd!();
    let (t, g) = nat_topology("resilience_dnsmasq_kill");
    let old = dnsmasq_pid(&t);
    let t1 = Instant::now();
    kill9(old);
    let mut new = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let i = info(&t, "default");
            new = i["dnsmasq_pid"].as_u64().filter(|p| *p != u64::from(old));
            new.is_some() && i["dnsmasq_healthy"] == true
        }),
        "dnsmasq not back: {:#}",
        info(&t, "default")
    );
    let took = t1.elapsed();
    eprintln!(
        "dnsmasq {old} killed: back as {} after {:.2}s",
        new.unwrap(),
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(info(&t, "default")["dnsmasq_restarts"], 1);
    // Leases were kept: the guest renews the address it had.
    let ip = g.dhcp_args(&["-r", GUEST_IP]).expect("renewal");
    assert_eq!(ip.to_string(), GUEST_IP);
}

#[test]
fn dnsmasq_crashing_on_start_fails_status_and_backs_off() {
    require_netd!();
    let mut t = Topology::new("resilience_dnsmasq_crash").expect("topology");
    let (fake, flag, count) = crashing_dnsmasq(&t);
    t.start_daemon_env(&[], &[("NETD_DNSMASQ", fake.to_str().unwrap())])
        .expect("daemon");
    let def = t.write_file("default.toml", NAT_NET);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    let pid = dnsmasq_pid(&t);
    let launches = || {
        fs::read_to_string(&count)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(launches(), 1);

    fs::write(&flag, "").unwrap();
    kill9(pid);
    let t1 = Instant::now();
    let window = Duration::from_secs(12);
    let mut saw_fail = false;
    while t1.elapsed() < window {
        let o = t.netd(&["status"]);
        if o.status == 3
            && o.stdout.lines().any(|l| {
                l.starts_with("FAIL")
                    && l.contains("dnsmasq")
                    && l.contains("default")
                    && l.contains("simulated crash on start")
            })
        {
            saw_fail = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let restarts = launches() - 1;
    eprintln!("dnsmasq crashing on start: {restarts} restart attempts in {window:?}");
    assert!(saw_fail, "no FAIL line: {}", t.netd(&["status"]));
    // 0.5 s doubling: 4 in 12 s, and at most 7 in a minute.
    assert!(
        (2..=5).contains(&restarts),
        "{restarts} restarts in {window:?}"
    );
    let m = t.netd_ok(&["metrics"]);
    assert!(m.contains("netd_dnsmasq_up{network=\"default\"} 0"), "{m}");
    let i = info(&t, "default");
    assert_eq!(i["active"], true, "network torn down: {i:#}");
    assert_eq!(i["dnsmasq_restarts"].as_u64(), Some(restarts as u64));

    // Fixed: back at the next try, without anyone touching the network.
    fs::remove_file(&flag).unwrap();
    assert!(
        wait_until(
            Duration::from_secs(20),
            || info(&t, "default")["dnsmasq_healthy"] == true
        ),
        "{:#}",
        info(&t, "default")
    );
    let m = t.netd_ok(&["metrics"]);
    assert!(m.contains("netd_dnsmasq_up{network=\"default\"} 1"), "{m}");
}

#[test]
fn torn_writes_and_a_broken_file_leave_the_old_state() {
    require_netd!();
    let (mut t, g) = nat_topology("resilience_torn");
    let other = t.write_file(
        "other.toml",
        "name = \"other\"\nbridge = \"ndother0\"\n[ipv4]\naddress = \"10.77.0.1/24\"\n",
    );
    t.netd_ok(&["net", "define", other.to_str().unwrap()]);
    let before = info(&t, "default");
    let dns = dnsmasq_pid(&t);
    let mac = fs::read_to_string(t.state_dir().join("macs/default")).unwrap();
    crash_daemon(&mut t);

    // A kill between the temp write and the rename, for each state file.
    let nets = t.config_dir().join("networks");
    let temps = [
        nets.join("default.toml.tmp~"),
        nets.join("other.toml.tmp~"),
        t.state_dir().join("running.json.tmp~"),
        t.state_dir().join("macs/default.tmp~"),
    ];
    for p in &temps {
        fs::write(p, "name = \"def").unwrap();
    }
    // And a definition that does not parse.
    fs::write(nets.join("broken.toml"), "name = [unclosed\n").unwrap();

    t.start_daemon().expect("daemon");
    for p in &temps {
        assert!(!p.exists(), "{} left", p.display());
    }
    let after = info(&t, "default");
    assert_eq!(after["active"], true);
    assert_eq!(after["bridge_ifindex"], before["bridge_ifindex"]);
    assert_eq!(after["mac"], before["mac"]);
    assert_eq!(dnsmasq_pid(&t), dns);
    assert_eq!(
        fs::read_to_string(t.state_dir().join("macs/default")).unwrap(),
        mac
    );
    let list = t.netd_json(&["net", "list", "--all"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["default", "other"]);
    let aside: Vec<String> = fs::read_dir(&nets)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("broken.toml.bad-"))
        .collect();
    assert_eq!(aside.len(), 1, "broken.toml not moved aside");
    assert_eq!(
        fs::read_to_string(nets.join(&aside[0])).unwrap(),
        "name = [unclosed\n",
        "the bad file's content was changed"
    );
    assert!(
        t.daemon_log()
            .lines()
            .any(|l| l.contains("broken.toml") && l.contains(&aside[0])),
        "no log line names the bad file"
    );
    // Every state file is 0600.
    use std::os::unix::fs::PermissionsExt;
    for p in [
        nets.join("default.toml"),
        t.state_dir().join("running.json"),
        t.state_dir().join("macs/default"),
    ] {
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    g.ns.ping_ok("192.168.122.1");

    // A run record that does not parse: moved aside, nothing torn down.
    crash_daemon(&mut t);
    fs::write(t.state_dir().join("running.json"), "{\"networks\": {").unwrap();
    t.start_daemon().expect("daemon");
    assert!(
        fs::read_dir(t.state_dir()).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("running.json.bad-")),
        "running.json not moved aside"
    );
    assert!(t.host.ip(&["link", "show", "dev", "virbr0"]).success());
    g.ns.ping_ok("192.168.122.1");
}

/// A stand-in for dnsmasq that runs the real one until `flag` exists, then
/// fails at once the way dnsmasq does; every launch appends a line to
/// `count`. Test-only: the daemon finds it through `NETD_DNSMASQ`.
fn crashing_dnsmasq(t: &Topology) -> (PathBuf, PathBuf, PathBuf) {
    let flag = t.dir.join("crash");
    let count = t.dir.join("launches");
    let fake = t.dir.join("fake-dnsmasq");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho x >> {}\nif [ -e {} ]; then echo 'dnsmasq: simulated crash on start' >&2; exit 1; fi\nexec {} \"$@\"\n",
            count.display(),
            flag.display(),
            netd::dhcp::binary().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    (fake, flag, count)
}

#[test]
fn a_failed_adoption_step_degrades_the_network_and_never_tears_it_down() {
    require_netd!();
    let mut t = Topology::new("resilience_degraded").expect("topology");
    let (fake, flag, _count) = crashing_dnsmasq(&t);
    t.start_daemon_env(&[], &[("NETD_DNSMASQ", fake.to_str().unwrap())])
        .expect("daemon");
    let def = t.write_file("default.toml", NAT_NET);
    t.netd_ok(&["net", "define", def.to_str().unwrap()]);
    t.netd_ok(&["net", "start", "default"]);
    let g = t.add_guest("virbr0", Some(GUEST_MAC)).expect("guest");
    assert_eq!(g.dhcp().expect("dhcp").to_string(), GUEST_IP);
    let echo = tcp_echo_server(&t.upstream, 7002);
    let ifindex = info(&t, "default")["bridge_ifindex"].clone();
    let dns = dnsmasq_pid(&t);

    // The daemon dies, and so does dnsmasq, which cannot start again.
    crash_daemon(&mut t);
    kill9(dns);
    fs::write(&flag, "").unwrap();
    t.start_daemon().expect("daemon");

    let i = info(&t, "default");
    assert_eq!(i["active"], true, "{i:#}");
    assert_eq!(i["bridge_ifindex"], ifindex, "bridge recreated: {i:#}");
    let why = i["degraded"].as_str().expect("degraded").to_string();
    assert!(
        why.starts_with("dnsmasq: ") && why.contains("simulated crash on start"),
        "{why}"
    );
    let text = t.netd(&["net", "info", "default"]).stdout;
    assert!(
        text.contains("Degraded:") && text.contains("simulated crash"),
        "{text}"
    );
    let o = t.netd(&["status"]);
    assert_eq!(o.status, 3, "{o}");
    assert!(
        o.stdout.lines().any(|l| l.starts_with("FAIL")
            && l.contains("network")
            && l.contains("default")
            && l.contains("dnsmasq: ")
            && l.contains("simulated crash on start")),
        "{o}"
    );
    assert!(
        o.stdout
            .lines()
            .any(|l| l.contains("default") && l.contains("degraded")),
        "{o}"
    );
    let m = t.netd_ok(&["metrics"]);
    assert!(
        m.contains("netd_network_degraded{network=\"default\"} 1"),
        "{m}"
    );
    // What works kept working: NAT and the gateway.
    g.ns.ping_ok("192.168.122.1");
    assert_eq!(tcp_request(&g.ns, UPSTREAM_IP, 7002, "nat").unwrap(), "nat");
    drop(echo);

    // Retried with backoff; mended once dnsmasq can start.
    fs::remove_file(&flag).unwrap();
    let t1 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || info(&t, "default")["degraded"]
            == Value::Null),
        "{:#}",
        info(&t, "default")
    );
    eprintln!(
        "degraded network mended {:.1}s after the cause was removed",
        t1.elapsed().as_secs_f64()
    );
    assert!(info(&t, "default")["dnsmasq_healthy"] == true);
    let m = t.netd_ok(&["metrics"]);
    assert!(
        m.contains("netd_network_degraded{network=\"default\"} 0"),
        "{m}"
    );
    assert!(t.daemon_log().contains("network default recovered"));
    assert_eq!(
        g.dhcp_args(&["-r", GUEST_IP]).unwrap().to_string(),
        GUEST_IP
    );
}

// ---- upgrade in place: pinned maps of another layout -------------------------

/// bpf(2) with a zeroed 128-byte attr whose head is `head`.
fn bpf_call(cmd: libc::c_long, head: &[u8]) -> std::io::Result<i64> {
    let mut attr = [0u8; 128];
    attr[..head.len()].copy_from_slice(head);
    // SAFETY: attr is a valid bpf_attr prefix for the command.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn words(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// Pins a hash map "another build" made at `path`, with `n` entries.
fn pin_hash_map(path: &Path, key: u32, value: u32, max: u32, n: u8) {
    let head: Vec<u8> = [1u32, key, value, max, 0]
        .iter()
        .flat_map(|x| x.to_ne_bytes())
        .collect();
    let fd = bpf_call(0, &head).expect("BPF_MAP_CREATE") as u32;
    for i in 0..n {
        let k = vec![i + 1; key as usize];
        let v = vec![0x5a; value as usize];
        let head = [u64::from(fd), k.as_ptr() as u64, v.as_ptr() as u64, 0];
        bpf_call(2, &words(&head)).expect("BPF_MAP_UPDATE_ELEM");
    }
    let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    bpf_call(6, &words(&[p.as_ptr() as u64, u64::from(fd)])).expect("BPF_OBJ_PIN");
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn pinned_maps_of_another_layout_refuse_the_start_unless_migrated() {
    require_netd!();
    let mut t = Topology::new("resilience_upgrade").expect("topology");
    t.mount_bpffs().expect("bpffs");
    let maps = t.bpffs().join("maps");
    fs::create_dir_all(&maps).unwrap();
    let (fk, ft, up) = (
        std::mem::size_of::<netd_common::ForwardKey>() as u32,
        std::mem::size_of::<netd_common::ForwardTarget>() as u32,
        std::mem::size_of::<netd_common::Uplink>() as u32,
    );
    // Same entries, another size; and another value layout.
    pin_hash_map(&maps.join("NETD_FORWARDS"), fk, ft, 64, 3);
    pin_hash_map(
        &maps.join("NETD_UPLINKS"),
        4,
        up + 4,
        netd_common::MAX_UPLINKS,
        2,
    );

    let o = t.run_daemon_to_exit(&[], Duration::from_secs(30));
    assert_eq!(o.status, 1, "{o}");
    let err = o.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{o}");
    assert!(err.starts_with("error: "), "{o}");
    let fwd = format!(
        "NETD_FORWARDS (max_entries 64 -> {})",
        netd_common::FORWARD_MAX_ENTRIES
    );
    let upl = format!("NETD_UPLINKS (value_size {} -> {up})", up + 4);
    for want in [fwd.as_str(), upl.as_str(), "--migrate-maps"] {
        assert!(err.contains(want), "{want:?} missing: {err}");
    }
    // Refused before anything was loaded.
    assert!(!maps.join("NETD_NETWORKS").exists());

    t.start_daemon_with(&["--migrate-maps"]).expect("daemon");
    let log = t.daemon_log();
    assert!(
        log.contains(&format!("migrated map {fwd}: 3 entries kept, 0 dropped")),
        "{log}"
    );
    assert!(
        log.contains(&format!("migrated map {upl}: 0 entries kept, 2 dropped")),
        "{log}"
    );
    let described = |t: &Topology, name: &str| -> Value {
        let o = t.netd_bpf(&["maps", "-o", "json"]);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap()
    };
    let f = described(&t, "NETD_FORWARDS");
    assert_eq!(f["max_entries"], netd_common::FORWARD_MAX_ENTRIES);
    assert_eq!(f["entries"], 3);
    assert_eq!(described(&t, "NETD_UPLINKS")["value_size"], up);

    // The migrated maps are this build's now: a plain restart reuses them.
    let id = f["id"].clone();
    t.restart_daemon().expect("restart");
    assert_eq!(described(&t, "NETD_FORWARDS")["id"], id);
    assert_eq!(described(&t, "NETD_FORWARDS")["entries"], 3);

    // Another --forwards-max is another layout too: refused, then resized
    // by --migrate-maps with every forward kept.
    t.stop_daemon();
    let o = t.run_daemon_to_exit(&["--forwards-max", "256"], Duration::from_secs(30));
    assert_eq!(o.status, 1, "{o}");
    let want = format!(
        "NETD_FORWARDS (max_entries {} -> 256)",
        netd_common::FORWARD_MAX_ENTRIES
    );
    assert!(
        o.stderr.contains(&want) && o.stderr.contains("--migrate-maps"),
        "{o}"
    );
    assert_eq!(
        described(&t, "NETD_FORWARDS")["id"],
        id,
        "refused, yet changed"
    );
    t.start_daemon_with(&["--forwards-max", "256", "--migrate-maps"])
        .expect("daemon");
    let f = described(&t, "NETD_FORWARDS");
    assert_eq!(f["max_entries"], 256);
    assert_eq!(f["entries"], 3);
    assert!(
        t.daemon_log()
            .contains(&format!("migrated map {want}: 3 entries kept, 0 dropped")),
        "{}",
        t.daemon_log()
    );
}

#[test]
fn a_changed_dnsmasq_config_restarts_it_after_the_old_one_exited() {
    require_netd!();
    let (mut t, g) = nat_topology("resilience_conf_change");
    let old = dnsmasq_pid(&t);
    crash_daemon(&mut t);
    // What a new build renders differently: the range, as the next daemon
    // finds it in the run record.
    let run = t.state_dir().join("running.json");
    let mut rec: Value = serde_json::from_slice(&fs::read(&run).unwrap()).unwrap();
    rec["networks"]["default"]["definition"]["ipv4"]["dhcp"]["end"] = "192.168.122.150".into();
    fs::write(&run, serde_json::to_vec(&rec).unwrap()).unwrap();
    t.start_daemon().expect("daemon");
    let i = info(&t, "default");
    assert_eq!(i["degraded"], Value::Null, "{i:#}");
    let new = dnsmasq_pid(&t);
    assert_ne!(new, old, "dnsmasq kept the old config");
    assert!(!process_running(old), "the old dnsmasq {old} still runs");
    let log = t.daemon_log();
    assert!(
        log.contains("dnsmasq's config changed; restarting it"),
        "{log}"
    );
    assert!(!log.contains("Address already in use"), "{log}");
    let conf = fs::read_to_string(t.run_dir().join("dnsmasq/default.conf")).unwrap();
    assert!(conf.contains("192.168.122.150"), "{conf}");
    // The new one serves, with the old leases.
    assert_eq!(
        g.dhcp_args(&["-r", GUEST_IP]).unwrap().to_string(),
        GUEST_IP
    );
    // And an unchanged config is adopted as it runs.
    crash_daemon(&mut t);
    t.start_daemon().expect("daemon");
    assert_eq!(dnsmasq_pid(&t), new);
}
