//! One-line errors for failed netlink requests.

use std::{fmt, io};

/// A failed netlink request: what netd was doing, and why the kernel (or the
/// netlink library) refused. Displays as one line, e.g.
/// `creating bridge netd0: File exists (os error 17)`.
///
/// It has no `source()`, so `{:#}` on an `anyhow::Error` holding it does not
/// repeat the cause; use [`errno_of`] to test for a particular errno.
#[derive(Debug)]
pub struct NetlinkError {
    what: String,
    errno: Option<i32>,
    detail: String,
}

impl NetlinkError {
    pub(crate) fn new(what: impl Into<String>, err: rtnetlink::Error) -> Self {
        let what = what.into();
        match err {
            rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => {
                let errno = msg.raw_code().abs();
                NetlinkError {
                    what,
                    errno: Some(errno),
                    detail: io::Error::from_raw_os_error(errno).to_string(),
                }
            }
            other => NetlinkError {
                what,
                errno: None,
                detail: other.to_string(),
            },
        }
    }

    pub(crate) fn io(what: impl Into<String>, err: io::Error) -> Self {
        NetlinkError {
            what: what.into(),
            errno: err.raw_os_error(),
            detail: err.to_string(),
        }
    }

    /// The errno the kernel answered with, if the failure was a netlink
    /// error message (or an OS error opening the socket).
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.detail)
    }
}

impl std::error::Error for NetlinkError {}

/// The errno behind an error from this module (or any `io::Error` in its
/// chain), e.g. `Some(libc::EEXIST)`.
pub fn errno_of(err: &anyhow::Error) -> Option<i32> {
    err.chain().find_map(|e| {
        if let Some(nl) = e.downcast_ref::<NetlinkError>() {
            nl.errno()
        } else if let Some(io) = e.downcast_ref::<io::Error>() {
            io.raw_os_error()
        } else {
            None
        }
    })
}

/// Whether a netlink request failed with this errno.
pub(crate) fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(msg) if msg.raw_code().abs() == errno)
}

/// `map_err` adapter: `.map_err(nl(format!("creating bridge {name}")))?`.
pub(crate) fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> anyhow::Error {
    let what = what.into();
    move |err| anyhow::Error::new(NetlinkError::new(what, err))
}

/// Like [`nl`], but builds the description only on failure.
pub(crate) fn nl_lazy(
    what: impl FnOnce() -> String,
) -> impl FnOnce(rtnetlink::Error) -> anyhow::Error {
    move |err| anyhow::Error::new(NetlinkError::new(what(), err))
}
