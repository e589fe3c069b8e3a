pub mod dispatch;
pub mod kitchen;
pub mod order;
pub mod registry;
