//! `netd-bench helper ...`: the small traffic tools the benchmark runs
//! inside its namespaces (`ip netns exec NS netd-bench helper ...`).
//! Each prints one JSON line with its result on stdout; the long-running
//! ones print `ready` first, once their socket is bound. Every helper arms
//! `alarm(2)` so that none outlives its run, whatever happens to the parent.
//!
//!   udp-send   --dst IP:PORT --secs S [--size 64] [--batch 64]
//!   udp-recv   --port P --secs S [--idle-ms 400]
//!   server     --port P --mode close|echo [--threads 2] --secs S
//!   conn       --dst IP:PORT --secs S [--threads 2]
//!   rr         --dst IP:PORT --secs S [--size 64]
//!   time       -- CMD ARGS...   (wall time of one command, measured in the namespace)

use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: &[String]) -> Result<Args> {
        let mut m = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let Some(k) = k.strip_prefix("--") else {
                bail!("unexpected argument {k:?}")
            };
            let v = it.next().with_context(|| format!("--{k} needs a value"))?;
            m.insert(k.to_string(), v.clone());
        }
        Ok(Args(m))
    }
    fn get<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> Result<T> {
        match self.0.get(k) {
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("bad value for --{k}: {v:?}")),
            None => default.with_context(|| format!("--{k} is required")),
        }
    }
    fn secs(&self) -> Result<Duration> {
        Ok(Duration::from_secs_f64(self.get::<f64>("secs", None)?))
    }
}

/// Terminates the process (SIGALRM's default action) `secs` from now.
fn arm_alarm(secs: f64) {
    // SAFETY: plain syscall.
    unsafe { libc::alarm(secs.ceil() as u32) };
}

fn ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

fn emit(v: serde_json::Value) {
    println!("{v}");
    let _ = std::io::stdout().flush();
}

pub fn run(args: &[String]) -> Result<()> {
    let (cmd, rest) = args.split_first().context("bench-helper needs a command")?;
    if cmd == "time" {
        return time(rest);
    }
    let a = Args::parse(rest)?;
    match cmd.as_str() {
        "udp-send" => udp_send(&a),
        "udp-recv" => udp_recv(&a),
        "server" => server(&a),
        "conn" => conn(&a),
        "rr" => rr(&a),
        _ => bail!("unknown bench-helper command {cmd:?}"),
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) {
    // SAFETY: a valid socket and a pointer to a live int.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        );
    }
}

/// Blasts `size`-byte datagrams at `dst` with sendmmsg, `batch` per call,
/// for `secs`. One socket: one flow.
fn udp_send(a: &Args) -> Result<()> {
    let dst: SocketAddr = a.get("dst", None)?;
    let secs = a.secs()?;
    let size: usize = a.get("size", Some(64))?;
    let batch: usize = a.get("batch", Some(64))?;
    arm_alarm(secs.as_secs_f64() + 10.0);
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(dst)?;
    let fd = sock.as_raw_fd();
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
    let payload = vec![0x5au8; size];
    let mut iov: Vec<libc::iovec> = (0..batch)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: size,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..batch)
        .map(|i| {
            // SAFETY: mmsghdr is plain data; zero is a valid empty header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov[i];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let (mut sent, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + secs;
    while Instant::now() < end {
        // SAFETY: msgs and the iovecs they point to outlive the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), batch as u32, 0) };
        if n < 0 {
            errors += 1;
            match errno() {
                libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED | libc::EINTR => continue,
                e => bail!("sendmmsg: {}", std::io::Error::from_raw_os_error(e)),
            }
        }
        sent += n as u64;
    }
    emit(json!({ "sent": sent, "errors": errors, "secs": start.elapsed().as_secs_f64() }));
    Ok(())
}

/// Counts datagrams on `port` until `idle-ms` pass without one (after the
/// first) or `secs` pass. The rate is over the span from the first
/// datagram to the last.
fn udp_recv(a: &Args) -> Result<()> {
    let port: u16 = a.get("port", None)?;
    let secs = a.secs()?;
    let idle = Duration::from_millis(a.get("idle-ms", Some(400))?);
    arm_alarm(secs.as_secs_f64() + 5.0);
    let sock = UdpSocket::bind(("0.0.0.0", port))?;
    let fd = sock.as_raw_fd();
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|i| {
            // SAFETY: plain data, zero is valid.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov[i];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    ready();
    let deadline = Instant::now() + secs;
    let (mut count, mut first, mut last) = (0u64, None::<Instant>, Instant::now());
    loop {
        let now = Instant::now();
        if now >= deadline || (first.is_some() && now.duration_since(last) > idle) {
            break;
        }
        // SAFETY: the buffers outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let t = Instant::now();
        if first.is_none() {
            first = Some(t);
        }
        last = t;
        count += n as u64;
    }
    let span = first
        .map(|f| last.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    let pps = if span > 0.0 {
        count.saturating_sub(1) as f64 / span
    } else {
        0.0
    };
    emit(json!({ "received": count, "span": span, "pps": pps }));
    Ok(())
}

fn listener(port: u16) -> Result<TcpListener> {
    // SAFETY: plain socket calls on a fresh fd; the fd is handed to TcpListener.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = port.to_be();
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            bail!("bind :{port}: {e}");
        }
        if libc::listen(fd, 4096) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            bail!("listen: {e}");
        }
        Ok(TcpListener::from_raw_fd(fd))
    }
}

/// A TCP server. `close`: read a request, answer it, close first (the
/// server keeps TIME_WAIT, so clients never run out of ports). `echo`:
/// echo everything back until the client closes.
fn server(a: &Args) -> Result<()> {
    let port: u16 = a.get("port", None)?;
    let mode: String = a.get("mode", None)?;
    let threads: usize = a.get("threads", Some(2))?;
    arm_alarm(a.secs()?.as_secs_f64());
    let l = listener(port)?;
    ready();
    let echo = match mode.as_str() {
        "close" => false,
        "echo" => true,
        _ => bail!("--mode close|echo"),
    };
    let mut hs = Vec::new();
    for _ in 0..threads {
        let l = l.try_clone()?;
        hs.push(std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                if echo {
                    std::thread::spawn(move || {
                        let _ = c.set_nodelay(true);
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 || c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                } else {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 64];
                    if c.read(&mut buf).is_ok_and(|n| n > 0) {
                        let _ = c.write_all(&buf);
                    }
                }
            }
        }));
    }
    for h in hs {
        let _ = h.join();
    }
    Ok(())
}

/// Short connections: connect, send 64 bytes, read the answer until the
/// server closes, close. `threads` loops in parallel for `secs`.
fn conn(a: &Args) -> Result<()> {
    let dst: SocketAddr = a.get("dst", None)?;
    let secs = a.secs()?;
    let threads: usize = a.get("threads", Some(2))?;
    arm_alarm(secs.as_secs_f64() + 10.0);
    let start = Instant::now();
    let end = start + secs;
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut fail) = (0u64, 0u64);
                let req = [0x42u8; 64];
                let mut buf = [0u8; 128];
                while Instant::now() < end {
                    let r = (|| -> std::io::Result<()> {
                        let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(1))?;
                        c.set_read_timeout(Some(Duration::from_secs(1)))?;
                        c.write_all(&req)?;
                        let mut got = 0;
                        loop {
                            let n = c.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        if got == req.len() {
                            Ok(())
                        } else {
                            Err(std::io::Error::other("short answer"))
                        }
                    })();
                    match r {
                        Ok(()) => ok += 1,
                        Err(_) => {
                            fail += 1;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                (ok, fail)
            })
        })
        .collect();
    let (mut ok, mut fail) = (0, 0);
    for h in hs {
        let (o, f) = h.join().unwrap_or((0, 0));
        ok += o;
        fail += f;
    }
    let secs = start.elapsed().as_secs_f64();
    emit(json!({ "ok": ok, "fail": fail, "secs": secs, "rate": ok as f64 / secs }));
    Ok(())
}

/// Request-response on one connection: `size` bytes out, the same back,
/// one at a time, for `secs`. Reports percentiles of the round trip.
fn rr(a: &Args) -> Result<()> {
    let dst: SocketAddr = a.get("dst", None)?;
    let secs = a.secs()?;
    let size: usize = a.get("size", Some(64))?;
    arm_alarm(secs.as_secs_f64() + 10.0);
    let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let req = vec![0x33u8; size];
    let mut buf = vec![0u8; size];
    let mut samples: Vec<u64> = Vec::with_capacity(1 << 20);
    // A few round trips first: ARP, conntrack and caches settle.
    for _ in 0..100 {
        c.write_all(&req)?;
        c.read_exact(&mut buf)?;
    }
    let start = Instant::now();
    let end = start + secs;
    while Instant::now() < end && samples.len() < 50_000_000 {
        let t = Instant::now();
        c.write_all(&req)?;
        c.read_exact(&mut buf)?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let pct = |p: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i] as f64 / 1000.0
    };
    emit(json!({
        "count": samples.len(),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "rate": samples.len() as f64 / start.elapsed().as_secs_f64(),
    }));
    Ok(())
}

/// Runs a command and reports its wall time, measured here (inside the
/// namespace) so `ip netns exec`'s own start-up is not counted.
fn time(argv: &[String]) -> Result<()> {
    let argv = match argv.first().map(String::as_str) {
        Some("--") => &argv[1..],
        _ => argv,
    };
    let (cmd, args) = argv.split_first().context("time: no command")?;
    arm_alarm(300.0);
    let t = Instant::now();
    let out = std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    emit(json!({
        "secs": secs,
        "status": out.status.code().unwrap_or(-1),
        "stderr": stderr.lines().take(5).collect::<Vec<_>>().join("\n"),
    }));
    Ok(())
}
