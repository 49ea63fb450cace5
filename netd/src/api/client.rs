//! A small blocking HTTP/1.1 client over the unix socket. The CLI makes one
//! request per run, so a full HTTP stack would only add start-up time.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Serialize, de::DeserializeOwned};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request("GET", path, None::<&()>)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.request("POST", path, Some(body))
    }

    /// A POST whose meaning is all in the path (start, stop).
    pub fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request("POST", path, None::<&()>)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request("DELETE", path, None::<&()>)
    }

    pub fn delete_with<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.request("DELETE", path, Some(body))
    }

    /// Returns the raw body (for /metrics).
    pub fn get_text(&self, path: &str) -> Result<String> {
        let (status, body) = self.round_trip("GET", path, None)?;
        check_status(status, &body)?;
        Ok(body)
    }

    fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let (status, text) = self.round_trip(method, path, body.as_deref())?;
        check_status(status, &text)?;
        serde_json::from_str(&text).with_context(|| format!("bad response from daemon: {text}"))
    }

    fn round_trip(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<(u16, String)> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return anyhow!(
                    "permission denied on {} ({} needed)",
                    self.socket.display(),
                    who_may_connect(&self.socket)
                );
            }
            anyhow!(
                "cannot reach the daemon at {}: {e} (is `netd daemon` running?)",
                self.socket.display()
            )
        })?;
        // Starting a network waits for dnsmasq; leave room for that.
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: netd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        if let Err(e) = s.read_to_end(&mut raw) {
            // A reset after the full response arrived is just the close.
            if raw.is_empty() {
                return Err(e.into());
            }
        }
        parse_response(&raw)
    }
}

/// "root", or "root or group NAME" when the socket is group-writable (the
/// daemon's `--socket-group`).
fn who_may_connect(socket: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(socket) else {
        return "root".into();
    };
    if m.mode() & 0o060 != 0o060 || m.gid() == 0 {
        return "root".into();
    }
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives its use.
    let rc = unsafe { libc::getgrgid_r(m.gid(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    let name = if rc == 0 && !out.is_null() {
        // SAFETY: getgrgid_r filled gr_name with a NUL-terminated string in buf.
        unsafe { std::ffi::CStr::from_ptr(grp.gr_name) }
            .to_string_lossy()
            .into_owned()
    } else {
        m.gid().to_string()
    };
    format!("root or group {name}")
}

fn check_status(status: u16, body: &str) -> Result<()> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    match serde_json::from_str::<super::wire::ErrorBody>(body) {
        Ok(e) => bail!("{}", e.error),
        Err(_) => bail!("daemon answered {status}: {}", body.trim()),
    }
}

fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("truncated response from daemon"))?;
    let head = std::str::from_utf8(&raw[..split])?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line from daemon"))?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok((status, String::from_utf8(body)?))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol])?.trim(), 16)?;
        b = &b[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..n).ok_or_else(|| anyhow!("short chunk"))?);
        b = b.get(n + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (200, "{}"));
        let (s, b) =
            parse_response(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((s, b.as_str()), (404, "abcde"));
    }
}
