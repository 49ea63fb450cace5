//! Keeps the datapath's view of uplinks current from rtnetlink events.

use super::Daemon;
use std::sync::Arc;

pub async fn watch(daemon: Arc<Daemon>) {
    let mut events = match crate::link::subscribe().await {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!("cannot watch links and addresses: {e:#}");
            return;
        }
    };
    while let Some(ev) = events.recv().await {
        let mut state = daemon.state.lock().await;
        state.on_link_event(&ev).await;
    }
}

impl super::State {
    pub async fn on_link_event(&mut self, _ev: &crate::link::LinkEvent) {}
}
