//! A paired screen's socket closes at once when the screen is revoked
//! (`crate::screen_sockets` keeps them by screen id).

use super::Socket;
use crate::screen_sockets::Revoked;
use actix::prelude::*;
use actix_ws::CloseCode;

impl Handler<Revoked> for Socket {
    type Result = ();
    fn handle(&mut self, _: Revoked, ctx: &mut Self::Context) {
        self.close(CloseCode::Policy, "screen revoked", ctx);
    }
}
