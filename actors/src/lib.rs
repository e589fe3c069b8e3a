//! Tiffin's business: the domain rules as plain data and pure functions, and the actix
//! actors that own kitchen and order state. The world is reached only through the traits
//! in [`ports`] and [`bus`].

pub mod breaker;
pub mod bus;
pub mod dispatch;
pub mod domain;
pub mod kitchen;
pub mod notices;
pub mod order;
pub mod ports;
pub mod registry;
pub mod rfid;

pub use dispatch::{DeliveryPolicy, Dispatcher, Nudge, RateLimit, StopDispatch};
pub use kitchen::{
    CatchUp, Catchup, CounterClosed, Kitchen, LiveOrders, PlaceOrder, SnapshotReason, Subscribe,
    TakeSnapshot, TransitionOrder,
};
pub use registry::{CatchUpAll, KitchenFor, Observe, Registry};
