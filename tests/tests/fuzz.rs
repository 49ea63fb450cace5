//! Stable-Rust fuzzing of every parser input reaches: the TOML definition
//! parser, the libvirt XML importer, the checked value types (the validation
//! layer) and the API's request-body decoding. A seeded corpus-mutation loop
//! (byte flips, inserts of hostile tokens, splices, deep nesting, growth past
//! the size limits) runs each target for a bounded time.
//!
//! Invariants, for every input:
//! - no panic (caught per input), no stack overflow (each target runs on a
//!   2 MiB thread, the size of a tokio worker's stack: an overflow aborts the
//!   test), no hang (each input must finish within `SLOW`);
//! - every refusal is one line;
//! - every accepted input round-trips (TOML out and back is equal; XML
//!   import, TOML out and back is equal; a value's text parses to itself;
//!   an accepted body re-encodes to the same JSON) and renders dnsmasq files
//!   the writer accepts (no line break inside a value).
//!
//! Knobs (environment): NETD_FUZZ_SECS (total seconds over the four
//! targets, default 40), NETD_FUZZ_SEED (default: from the clock; printed,
//! so a failure can be replayed), NETD_FUZZ_TARGETS (comma list, default
//! "toml,xml,types,api"). A failing input is written to
//! $TMPDIR/netd-fuzz-failures/ and its path printed; add it to
//! tests/fuzz/corpus/ once fixed.

use netd::api::server::{decode, decode_forward_add};
use netd::api::wire::{AutostartRequest, DefineRequest, ForwardRequest, HostRequest};
use netd::config::{self, DnsName, Duid, HostName, IfName, LeaseTime, Mac, PortRange, Target};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An input that takes longer than this is a hang (debug build, shared CPU).
const SLOW: Duration = Duration::from_secs(5);
/// Inputs grow up to a little past the definition size limit, so the limit
/// itself is exercised.
const MAX_INPUT: usize = config::MAX_DEFINITION_BYTES + 4096;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: small, fast, reproducible from the seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const TOKENS: &[&str] = &[
    "\n",
    "\0",
    "#",
    "\\",
    "\r\n",
    "&#10;",
    "&#0;",
    "&amp;",
    "conf-script=/tmp/x.sh",
    "a/#\nconf-script=/tmp/x.sh\n#",
    "\"",
    "'",
    "<",
    ">",
    "]]>",
    "<!--",
    "-->",
    "<![CDATA[x]]>",
    "<!DOCTYPE a [<!ENTITY e \"eeeeeeeeee\">]>",
    "&e;",
    "-",
    "..",
    "/",
    ":",
    "0",
    "65535",
    "65536",
    " 81",
    "+81",
    "4294967296",
    "ff:ff:ff:ff:ff:ff",
    "01:00:5e:00:00:01",
    "::",
    "0.0.0.0",
    "255.255.255.255",
    "/0",
    "/33",
    "/129",
    "\u{202e}",
    "é",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "[[forwards]]",
    "[ipv4]",
    "[dns]",
    "{",
    "}",
    "[",
    "]",
    "=",
    ",",
    "null",
    "true",
    "1e999",
    "-1",
    "<ip address='10.0.0.1' prefix='8'/>",
    "<host mac='52:54:00:00:00:01' ip='10.0.0.2' name='x'/>",
    "\"forwards\":[",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(6) {
        match rng.below(10) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            1 | 2 => {
                let i = rng.below(b.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                b.splice(i..i, t.iter().copied());
            }
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = rng.below((b.len() - i).min(64) + 1);
                b.drain(i..i + n);
            }
            4 if !b.is_empty() => {
                // Repeat a slice: growth, duplicate keys and elements.
                let i = rng.below(b.len());
                let n = 1 + rng.below((b.len() - i).min(256));
                let times = if rng.chance(20) {
                    1 + rng.below(5000)
                } else {
                    1 + rng.below(4)
                };
                let piece = b[i..i + n].repeat(times);
                b.splice(i..i, piece);
            }
            5 => {
                // Splice a piece of another input.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let s = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - s).min(512));
                    let i = rng.below(b.len() + 1);
                    b.splice(i..i, other[s..s + n].iter().copied());
                }
            }
            6 => {
                // Replace the inside of a quoted value with a token.
                let quotes: Vec<usize> = b
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == b'"' || **c == b'\'')
                    .map(|(i, _)| i)
                    .collect();
                if quotes.len() >= 2 {
                    let q = rng.below(quotes.len() - 1);
                    let (s, e) = (quotes[q] + 1, quotes[q + 1]);
                    let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                    b.splice(s..e, t.iter().copied());
                }
            }
            7 if rng.chance(4) => {
                // Deep nesting, up to far past any limit.
                let n = if rng.chance(4) {
                    10_000 + rng.below(90_000)
                } else {
                    1 + rng.below(64)
                };
                let (open, close): (&[u8], &[u8]) = match rng.below(4) {
                    0 => (b"<a>", b"</a>"),
                    1 => (b"[", b"]"),
                    2 => (b"{\"a\":", b"}"),
                    _ => (b"a = { b = ", b"}"),
                };
                let i = rng.below(b.len() + 1);
                let mut mid = open.repeat(n);
                mid.extend(close.repeat(n));
                b.splice(i..i, mid);
            }
            8 if rng.chance(50) => {
                // Past the size limit.
                let fill = b"# padding padding padding\n".repeat(MAX_INPUT / 26 + 1);
                b.extend_from_slice(&fill);
            }
            _ => {}
        }
    }
    b.truncate(MAX_INPUT);
    b
}

fn one_line(e: &str) -> bool {
    !e.contains(['\n', '\r', '\0'])
}

/// The dnsmasq files an accepted definition produces: the writer refuses a
/// NUL or CR, and a value with a line break shows up as a NUL.
fn check_dnsmasq_files(net: &config::Network) -> Result<(), String> {
    let p = netd::dhcp::paths(
        Path::new("/run/netd"),
        Path::new("/var/lib/netd"),
        &net.name,
    );
    let bridge = net
        .bridge
        .as_ref()
        .map(|b| b.to_string())
        .unwrap_or("netd0".into());
    for (what, text) in [
        ("conf", netd::dhcp::render_conf(net, &bridge, &p)),
        ("hostsfile", netd::dhcp::render_hostsfile(net)),
        ("hostsfile6", netd::dhcp::render_hostsfile6(net)),
        ("addnhosts", netd::dhcp::render_addnhosts(net)),
    ] {
        if text.contains(['\0', '\r']) {
            return Err(format!(
                "accepted definition renders a bad {what} line: {text:?}"
            ));
        }
        if text
            .lines()
            .any(|l| l.starts_with("conf-script") || l.starts_with("dhcp-script"))
        {
            return Err(format!(
                "accepted definition reaches dnsmasq's {what} with a script line"
            ));
        }
    }
    Ok(())
}

fn target_toml(input: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(input);
    match config::parse(&text, false) {
        Ok(net) => {
            let back = config::parse(&config::to_toml(&net), false)
                .map_err(|e| format!("accepted, but its TOML does not parse back: {e:#}"))?;
            if back != net {
                return Err(format!("TOML round trip changed it: {net:?} -> {back:?}"));
            }
            check_dnsmasq_files(&net)?;
            Ok(true)
        }
        Err(e) => {
            let e = format!("{e:#}");
            one_line(&e)
                .then_some(false)
                .ok_or(format!("multi-line refusal: {e:?}"))
        }
    }
}

fn target_xml(input: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(input);
    match config::parse(&text, true) {
        Ok(net) => {
            let back = config::parse(&config::to_toml(&net), false)
                .map_err(|e| format!("accepted XML, but its TOML does not parse: {e:#}"))?;
            if back != net {
                return Err(format!(
                    "XML -> TOML round trip changed it: {net:?} -> {back:?}"
                ));
            }
            let again = config::parse(&config::xml::to_libvirt(&net), true)
                .map_err(|e| format!("accepted XML, but its export does not parse: {e:#}"))?;
            // libvirt spells lease times its own way ("1d" comes back as
            // 24 hours): compare those by length.
            let lease = |n: &config::Network| {
                n.ipv4
                    .as_ref()
                    .and_then(|v| v.dhcp.as_ref())
                    .map(|d| d.lease.as_ref().map(|l| l.secs()))
            };
            let strip = |n: &config::Network| {
                let mut v4 = n.ipv4.clone();
                if let Some(d) = v4.as_mut().and_then(|v| v.dhcp.as_mut()) {
                    d.lease = None;
                }
                v4
            };
            if again.name != net.name
                || strip(&again) != strip(&net)
                || lease(&again) != lease(&net)
                || again.mode != net.mode
            {
                return Err(format!("XML export lost fields: {net:?} -> {again:?}"));
            }
            check_dnsmasq_files(&net)?;
            Ok(true)
        }
        Err(e) => {
            let e = format!("{e:#}");
            one_line(&e)
                .then_some(false)
                .ok_or(format!("multi-line refusal: {e:?}"))
        }
    }
}

/// One checked type: an accepted value prints as text that parses to
/// itself and holds nothing a config line could trip on.
fn check_type<T>(s: &str) -> Result<bool, String>
where
    T: std::str::FromStr<Err = String> + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    match s.parse::<T>() {
        Ok(v) => {
            let text = v.to_string();
            if text.contains(|c: char| c.is_control() || c.is_whitespace() || c == '#' || c == '\\')
            {
                return Err(format!(
                    "{} accepted {s:?} as {text:?}",
                    std::any::type_name::<T>()
                ));
            }
            match text.parse::<T>() {
                Ok(w) if w == v => Ok(true),
                other => Err(format!("{text:?} does not parse back: {other:?}")),
            }
        }
        Err(e) => one_line(&e)
            .then_some(false)
            .ok_or(format!("multi-line refusal: {e:?}")),
    }
}

fn target_types(input: &[u8]) -> Result<bool, String> {
    let s = String::from_utf8_lossy(input);
    // Short pieces too: whole files are rarely near a valid value.
    let piece: String = s.chars().take(300).collect();
    let mut any = false;
    for v in [
        piece.as_str(),
        piece.trim(),
        piece.split(['\n', ' ', '"']).nth(1).unwrap_or(""),
    ] {
        any |= check_type::<DnsName>(v)?;
        any |= check_type::<HostName>(v)?;
        any |= check_type::<Duid>(v)?;
        any |= check_type::<Mac>(v)?;
        any |= check_type::<IfName>(v)?;
        any |= check_type::<LeaseTime>(v)?;
        any |= check_type::<PortRange>(v)?;
        any |= check_type::<Target>(v)?;
        if let Err(e) = config::check_network_name(v) {
            let e = format!("{e:#}");
            if !one_line(&e) {
                return Err(format!("multi-line refusal: {e:?}"));
            }
        }
    }
    Ok(any)
}

fn body<T>(input: &[u8]) -> Result<bool, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    match decode::<T>(input) {
        Ok(v) => {
            let json = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
            let again: T = decode(&json).map_err(|e| format!("re-encoded body refused: {e}"))?;
            if serde_json::to_value(&again).ok() != serde_json::to_value(&v).ok() {
                return Err("body round trip changed it".into());
            }
            Ok(true)
        }
        Err(e) => one_line(&e)
            .then_some(false)
            .ok_or(format!("multi-line refusal: {e:?}")),
    }
}

fn target_api(input: &[u8]) -> Result<bool, String> {
    let mut any = body::<HostRequest>(input)?;
    any |= body::<ForwardRequest>(input)?;
    any |= body::<DefineRequest>(input)?;
    any |= body::<AutostartRequest>(input)?;
    match decode_forward_add(input) {
        Ok(_) => any = true,
        Err(e) if !one_line(&e) => return Err(format!("multi-line refusal: {e:?}")),
        Err(_) => {}
    }
    // A define body goes on to the definition parser.
    if let Ok(d) = decode::<DefineRequest>(input)
        && let Err(e) = config::parse(&d.text, d.xml)
    {
        let e = format!("{e:#}");
        if !one_line(&e) {
            return Err(format!("multi-line refusal: {e:?}"));
        }
    }
    Ok(any)
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// Seeds: the examples (as the docs show them) and tests/fuzz/corpus/KIND.
fn seeds(kind: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut dirs = vec![corpus_dir().join(kind)];
    if kind != "api" {
        dirs.push(examples);
    }
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for p in files {
            let wanted = match kind {
                "toml" => p.extension().is_some_and(|e| e == "toml"),
                "xml" => p.extension().is_some_and(|e| e == "xml"),
                _ => true,
            };
            if wanted && let Ok(b) = std::fs::read(&p) {
                out.push(b);
            }
        }
    }
    if kind == "types" {
        out.extend(seeds("toml"));
    }
    assert!(!out.is_empty(), "no seeds for {kind}");
    out
}

struct Outcome {
    inputs: u64,
    accepted: u64,
    failures: Vec<PathBuf>,
    slowest: Duration,
}

/// A fuzz target: Ok(true) accepted, Ok(false) refused properly, Err a
/// broken invariant.
type FuzzTarget = fn(&[u8]) -> Result<bool, String>;

fn run_target(kind: &'static str, f: FuzzTarget, seed: u64, budget: Duration) -> Outcome {
    let corpus = seeds(kind);
    let mut rng = Rng(seed
        ^ kind.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
        | 1);
    let fail_dir = std::env::temp_dir().join("netd-fuzz-failures");
    let mut out = Outcome {
        inputs: 0,
        accepted: 0,
        failures: vec![],
        slowest: Duration::ZERO,
    };
    let start = Instant::now();
    // Every seed as it is first, then mutants.
    let mut i = 0usize;
    while start.elapsed() < budget || i < corpus.len() {
        let input = if i < corpus.len() {
            corpus[i].clone()
        } else {
            let base = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, &corpus, base)
        };
        i += 1;
        let t = Instant::now();
        let r = std::panic::catch_unwind(|| f(&input));
        let took = t.elapsed();
        out.slowest = out.slowest.max(took);
        out.inputs += 1;
        let problem = match r {
            Ok(Ok(accepted)) => {
                out.accepted += u64::from(accepted);
                (took > SLOW).then(|| format!("took {took:?}"))
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some("panicked".to_string()),
        };
        if let Some(p) = problem {
            let _ = std::fs::create_dir_all(&fail_dir);
            let path = fail_dir.join(format!("{kind}-{seed}-{}", out.inputs));
            let _ = std::fs::write(&path, &input);
            eprintln!("fuzz {kind}: {}: {p}", path.display());
            out.failures.push(path);
            if out.failures.len() >= 10 {
                break;
            }
        }
    }
    out
}

#[test]
fn fuzz_parsers_and_decoders() {
    let secs: f64 = std::env::var("NETD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40.0);
    let seed: u64 = std::env::var("NETD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let wanted = std::env::var("NETD_FUZZ_TARGETS").unwrap_or("toml,xml,types,api".into());
    let targets: Vec<(&'static str, FuzzTarget)> = [
        ("toml", target_toml as FuzzTarget),
        ("xml", target_xml),
        ("types", target_types),
        ("api", target_api),
    ]
    .into_iter()
    .filter(|(k, _)| wanted.split(',').any(|w| w.trim() == *k))
    .collect();
    assert!(!targets.is_empty(), "NETD_FUZZ_TARGETS names no target");
    let budget = Duration::from_secs_f64(secs / targets.len() as f64);
    eprintln!(
        "fuzz: seed {seed} (NETD_FUZZ_SEED={seed} replays), {secs} s over {} targets",
        targets.len()
    );
    let mut failed = Vec::new();
    for (kind, f) in targets {
        // A tokio worker's stack: what the daemon parses on.
        let out = std::thread::Builder::new()
            .name(format!("fuzz-{kind}"))
            .stack_size(2 << 20)
            .spawn(move || run_target(kind, f, seed, budget))
            .unwrap()
            .join()
            .expect("fuzz thread");
        eprintln!(
            "fuzz {kind}: {} inputs, {} accepted, {} refused, {} failures, slowest {:?}",
            out.inputs,
            out.accepted,
            out.inputs - out.accepted - out.failures.len() as u64,
            out.failures.len(),
            out.slowest
        );
        failed.extend(out.failures);
    }
    assert!(
        failed.is_empty(),
        "failing inputs (seed {seed}): {failed:?}"
    );
}
