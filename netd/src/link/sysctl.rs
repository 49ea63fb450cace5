//! Kernel network settings under /proc/sys/net, and interface name/index
//! lookups. Not netlink, but about links all the same.
//!
//! /proc/sys/net shows the network namespace of the thread that opens the
//! file, and if_nametoindex/if_indextoname ask through a socket opened by the
//! calling thread, so all of these act on the caller's network namespace.

use std::{ffi::CString, path::PathBuf};

use anyhow::{Context, Result, bail};

const PROC_SYS_NET: &str = "/proc/sys/net";

fn sysctl_path(path_under_proc_sys_net: &str) -> Result<PathBuf> {
    let rel = path_under_proc_sys_net.trim_start_matches('/');
    let rel = rel.strip_prefix("proc/sys/net/").unwrap_or(rel);
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!(
            "invalid sysctl path {path_under_proc_sys_net:?} (expected e.g. \"ipv4/ip_forward\")"
        );
    }
    Ok(PathBuf::from(PROC_SYS_NET).join(rel))
}

/// Writes `value` to /proc/sys/net/`path_under_proc_sys_net`
/// (e.g. `set_sysctl("ipv6/conf/netd0/accept_ra", "0")`).
pub fn set_sysctl(path_under_proc_sys_net: &str, value: &str) -> Result<()> {
    let path = sysctl_path(path_under_proc_sys_net)?;
    std::fs::write(&path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// Reads /proc/sys/net/`path_under_proc_sys_net`, trimmed.
pub fn sysctl(path_under_proc_sys_net: &str) -> Result<String> {
    let path = sysctl_path(path_under_proc_sys_net)?;
    let s =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(s.trim().to_string())
}

/// net.ipv4.ip_forward.
pub fn set_ipv4_forwarding(on: bool) -> Result<()> {
    set_sysctl("ipv4/ip_forward", if on { "1" } else { "0" })
}

/// net.ipv6.conf.all.forwarding (the kernel propagates it to every interface).
pub fn set_ipv6_forwarding(on: bool) -> Result<()> {
    set_sysctl("ipv6/conf/all/forwarding", if on { "1" } else { "0" })
}

/// if_indextoname(3).
pub fn ifname_of(index: u32) -> Option<String> {
    if index == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// if_nametoindex(3).
pub fn ifindex_of(name: &str) -> Option<u32> {
    if name.is_empty() || name.len() >= libc::IF_NAMESIZE {
        return None;
    }
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE),
/// which BPF programs compare with bpf_get_netns_cookie().
pub fn netns_cookie() -> anyhow::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err.into());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("ipv4/ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("/proc/sys/net/ipv6/conf/all/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv6/conf/all/forwarding")
        );
        assert!(sysctl_path("").is_err());
        assert!(sysctl_path("ipv4/../../kernel/hostname").is_err());
        assert!(sysctl_path("ipv4//ip_forward").is_err());
    }

    #[test]
    fn bad_names() {
        assert_eq!(ifindex_of(""), None);
        assert_eq!(ifindex_of("a-name-far-too-long-for-linux"), None);
        assert_eq!(ifindex_of("nul\0name"), None);
        assert_eq!(ifname_of(0), None);
    }
}
