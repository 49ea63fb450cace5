//! The control API: HTTP+JSON on the daemon's unix socket.

pub mod client;
pub mod server;
pub mod wire;
