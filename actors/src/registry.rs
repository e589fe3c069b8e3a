//! Starts one supervised kitchen actor per school on first use.

use crate::bus::Bus;
use crate::domain::orders::KitchenEvent;
use crate::domain::timers::TimerPolicy;
use crate::kitchen::{CatchUp, Kitchen, KitchenGone, Observed};
use crate::ports::Store;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

pub struct Registry {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    timers: TimerPolicy,
    /// Written only here; read by handlers on other threads too.
    kitchens: Kitchens,
}

/// The kitchens a registry has started, read from any thread: a handler finds its school's
/// kitchen without a message to the registry's thread and back (one hop fewer for every
/// order, transition and scan).
#[derive(Clone, Default)]
pub struct Kitchens(Arc<RwLock<HashMap<String, Addr<Kitchen>>>>);

impl Kitchens {
    /// The kitchen of `school_id`, started by `registry` if it is not running yet.
    pub async fn of(
        &self,
        registry: &Addr<Registry>,
        school_id: &str,
    ) -> Result<Addr<Kitchen>, MailboxError> {
        let known = self
            .read()
            .get(school_id)
            .filter(|kitchen| kitchen.connected())
            .cloned();
        match known {
            Some(kitchen) => Ok(kitchen),
            None => registry.send(KitchenFor(school_id.to_owned())).await,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Addr<Kitchen>>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Addr<Kitchen>>> {
        // Only whole entries go in or out: a panic elsewhere cannot leave the map torn.
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, timers: TimerPolicy) -> Registry {
        Registry {
            store,
            bus,
            timers,
            kitchens: Kitchens::default(),
        }
    }

    /// The kitchens this registry starts, as they start and stop.
    pub fn kitchens(&self) -> Kitchens {
        self.kitchens.clone()
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
            .write()
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
        self.kitchens.write().remove(&msg.0);
    }
}

/// An event another node committed: for this node's kitchen of that school, if it runs here
/// (one that starts later loads it from the store).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observe(pub KitchenEvent);

impl Handler<Observe> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Observe, _: &mut Context<Self>) {
        if let Some(kitchen) = self.kitchens.read().get(&msg.0.school_id) {
            kitchen.do_send(Observed(msg.0));
        }
    }
}

/// Every kitchen here reads what other nodes committed meanwhile (the bus between nodes was
/// away).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CatchUpAll;

impl Handler<CatchUpAll> for Registry {
    type Result = ();

    fn handle(&mut self, _: CatchUpAll, _: &mut Context<Self>) {
        for kitchen in self.kitchens.read().values() {
            kitchen.do_send(CatchUp);
        }
    }
}
