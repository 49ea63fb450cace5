//! Link, address and route notifications (`ip monitor link address route`).

use anyhow::Result;
use futures::StreamExt;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage, route::RouteHeader};
use rtnetlink::{MulticastGroup, packet_core::NetlinkPayload, sys::AsyncSocket};
use tokio::sync::mpsc;

use super::{Netlink, error::NetlinkError};

/// A change in the kernel's network state. Events carry only what changed;
/// read the current state back through [`Netlink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// An IPv4 or IPv6 address was added to or removed from the link.
    AddressChanged { index: u32 },
    /// The link is gone (deleted, or moved to another namespace).
    LinkRemoved { index: u32 },
    /// The link was created or changed (flags, MTU, master, carrier …).
    LinkChanged { index: u32 },
    /// An IPv4 route of the main table was added or removed.
    RouteChanged,
}

/// How many events may wait for the receiver before the reader task waits.
const CHANNEL_DEPTH: usize = 1024;
/// Socket receive buffer asked for, to make kernel-side overruns rare.
const RCVBUF: usize = 4 << 20;

/// Subscribes to RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR and
/// RTNLGRP_IPV4_ROUTE of the caller's network namespace and yields events
/// until the receiver is dropped (then the socket is closed).
///
/// If the kernel drops notifications (socket buffer overrun), the stream
/// resynchronises: `LinkChanged` and `AddressChanged` for every existing link,
/// then `RouteChanged`. Links removed during the overrun get no event.
pub async fn subscribe() -> Result<mpsc::Receiver<LinkEvent>> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
    ];
    let (mut conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)
        .map_err(|e| NetlinkError::io("subscribing to link, address and route events", e))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = conn.socket_mut().socket_ref().set_rx_buf_sz(RCVBUF);
    // For resynchronising after an overrun; opened now, in this namespace.
    let query = Netlink::connect().await?;
    let conn_task = tokio::spawn(conn);

    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        'run: loop {
            let msg = tokio::select! {
                _ = tx.closed() => break,
                msg = messages.next() => msg,
            };
            let Some((msg, _)) = msg else { break };
            let events = match msg.payload {
                NetlinkPayload::InnerMessage(m) => event_of(&m).into_iter().collect(),
                NetlinkPayload::Overrun(_) => resync(&query).await,
                _ => Vec::new(),
            };
            for ev in events {
                if tx.send(ev).await.is_err() {
                    break 'run;
                }
            }
        }
        conn_task.abort();
    });
    Ok(rx)
}

fn event_of(m: &RouteNetlinkMessage) -> Option<LinkEvent> {
    match m {
        RouteNetlinkMessage::NewLink(l) => Some(LinkEvent::LinkChanged {
            index: l.header.index,
        }),
        RouteNetlinkMessage::DelLink(l) => Some(LinkEvent::LinkRemoved {
            index: l.header.index,
        }),
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            Some(LinkEvent::AddressChanged {
                index: a.header.index,
            })
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r)
            if r.header.address_family == AddressFamily::Inet
                && r.header.table == RouteHeader::RT_TABLE_MAIN =>
        {
            Some(LinkEvent::RouteChanged)
        }
        _ => None,
    }
}

async fn resync(query: &Netlink) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    match query.links().await {
        Ok(links) => {
            for l in &links {
                events.push(LinkEvent::LinkChanged { index: l.index });
                events.push(LinkEvent::AddressChanged { index: l.index });
            }
        }
        Err(e) => tracing::warn!("resynchronising after a netlink overrun: {e}"),
    }
    events.push(LinkEvent::RouteChanged);
    events
}
