//! Black-box tests: the real `tiffin` binary on a loopback port, real SQLite and PostgreSQL
//! databases, a real SMTP server and a real WebSocket client. One module per feature.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod browser;
mod cli;
mod concurrency;
mod crashes;
mod digest;
mod edge;
mod layout;
mod load_report;
mod load_roster;
mod nodes;
mod notifications;
mod orders;
mod pickup;
mod providers;
mod realtime;
mod resilience;
mod rfid;
mod roster;
mod rush_kills;
mod screens;
mod sign_in;
mod stations;
mod waves;
