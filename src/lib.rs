//! The Tiffin server: configuration, persistence, the HTTP and WebSocket edge, notification
//! providers and the wiring around the actors of `tiffin-actors`.

pub mod api;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod contact;
pub mod db;
#[cfg(test)]
mod dispatch_tests;
pub mod error;
pub mod group_commit;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod pages;
pub mod rfid;
pub mod roster;
pub mod screen_sockets;
pub mod seed;
pub mod server;
pub mod state;
pub mod store;
#[cfg(test)]
mod supervision_tests;
pub mod ws;
