//! Sockets of paired screens by screen id, so revoking a screen closes its sockets at once.
//! On several nodes the node that revokes tells the others over Redis
//! (`Cluster::tell_screen_revoked`), and each closes its own. A message lost with Redis
//! away still leaves the screen's next renewal or REST call refused, and its socket closed
//! when its access token expires.

use actix::WeakRecipient;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// Tells a screen's socket it was revoked (handled in `src/ws/screens.rs`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Revoked;

#[derive(Default)]
pub struct ScreenSockets {
    by_screen: Mutex<HashMap<String, Vec<WeakRecipient<Revoked>>>>,
}

impl ScreenSockets {
    /// Remembers a screen's socket; sockets already gone are forgotten on the way.
    pub fn add(&self, screen_id: &str, socket: Recipient<Revoked>) {
        let Ok(mut by_screen) = self.by_screen.lock() else {
            return;
        };
        by_screen.retain(|_, sockets| {
            sockets.retain(|s| s.upgrade().is_some_and(|r| r.connected()));
            !sockets.is_empty()
        });
        by_screen
            .entry(screen_id.to_owned())
            .or_default()
            .push(socket.downgrade());
    }

    /// Closes every socket of the screen on this node; how many there were.
    pub fn revoke(&self, screen_id: &str) -> usize {
        let sockets = match self.by_screen.lock() {
            Ok(mut by_screen) => by_screen.remove(screen_id).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        sockets
            .iter()
            .filter_map(WeakRecipient::upgrade)
            .map(|socket| socket.do_send(Revoked))
            .count()
    }
}
