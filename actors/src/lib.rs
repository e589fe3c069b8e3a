//! Tiffin's business: the domain rules as plain data and pure functions, and the actix
//! actors that own kitchen and order state. The world is reached only through the traits
//! in [`ports`] and [`bus`].

pub mod actors;
pub mod breaker;
pub mod bus;
pub mod domain;
pub mod notices;
pub mod ports;
pub mod rfid;

pub use actors::dispatch::{DeliveryPolicy, Dispatcher, Nudge, RateLimit, StopDispatch};
pub use actors::kitchen::{
    CatchUp, Catchup, CounterClosed, Kitchen, LiveOrders, PlaceOrder, SnapshotReason, Subscribe,
    TakeSnapshot, TransitionOrder,
};
pub use actors::registry::{CatchUpAll, KitchenFor, Observe, Registry};
