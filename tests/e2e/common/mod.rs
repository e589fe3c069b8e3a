//! What the feature modules share: a real hub process, databases of their own, a real SMTP
//! server, loopback push and SMS providers, and the API calls most tests make.

#![allow(dead_code)]

mod chrome;
mod db;
mod fixture;
mod http;
mod hub;
mod providers;
mod readers;
mod reading;
mod screens;
mod servers;
mod smtp;
mod sockets;

pub use awc::ws;
pub use chrome::*;
pub use db::*;
pub use fixture::*;
pub use futures_util::{SinkExt, StreamExt};
pub use http::*;
pub use hub::*;
pub use providers::*;
pub use readers::*;
pub use reading::*;
pub use screens::*;
pub use serde_json::{Value, json};
pub use servers::*;
pub use smtp::*;
pub use sockets::*;
pub use std::time::Duration;
