//! Tiffin's business: the domain rules as plain data and pure functions, and the actix
//! actors that own kitchen and order state. The world is reached only through the traits
//! in [`ports`] and [`bus`].

// The rules: plain data and pure functions.
pub mod breaker;
pub mod domain;
pub mod notices;
pub mod rfid;

// The actors, each with its messages beside it.
pub mod dispatch;
pub mod kitchen;
pub mod order;
pub mod registry;

// How the actors reach the world.
pub mod bus;
pub mod ports;

pub use dispatch::{DeliveryPolicy, Dispatcher, EventsCommitted, Nudge, RateLimit, StopDispatch};
pub use kitchen::{
    CatchUp, Catchup, CounterClosed, ItemDoneOrder, Kitchen, LiveOrders, PlaceOrder,
    SnapshotReason, Subscribe, TakeSnapshot, TransitionOrder,
};
pub use registry::{CatchUpAll, KitchenFor, Kitchens, Observe, Registry};
