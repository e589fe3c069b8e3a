//! Starts one supervised kitchen actor per school on first use.

use super::kitchen::{Kitchen, KitchenGone};
use crate::bus::Bus;
use crate::domain::TimerPolicy;
use crate::ports::Store;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Registry {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    timers: TimerPolicy,
    kitchens: HashMap<String, Addr<Kitchen>>,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, timers: TimerPolicy) -> Registry {
        Registry {
            store,
            bus,
            timers,
            kitchens: HashMap::new(),
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

/// The kitchen actor of a school that exists (the caller has checked).
#[derive(Message)]
#[rtype(result = "Addr<Kitchen>")]
pub struct KitchenFor(pub String);

impl Handler<KitchenFor> for Registry {
    type Result = MessageResult<KitchenFor>;

    fn handle(&mut self, msg: KitchenFor, ctx: &mut Context<Self>) -> Self::Result {
        let (store, bus, timers) = (self.store.clone(), self.bus.clone(), self.timers);
        let gone = ctx.address().recipient();
        let school_id = msg.0;
        let addr = self
            .kitchens
            .entry(school_id.clone())
            .or_insert_with(|| {
                Supervisor::start(move |_| Kitchen::new(school_id, store, bus, Some(gone), timers))
            })
            .clone();
        MessageResult(addr)
    }
}

impl Handler<KitchenGone> for Registry {
    type Result = ();

    /// Dropping the address lets the supervisor stop instead of restarting forever.
    fn handle(&mut self, msg: KitchenGone, _: &mut Context<Self>) {
        self.kitchens.remove(&msg.0);
    }
}
