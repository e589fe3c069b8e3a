//! RFID readers at the pickup counters: signed requests, and scans turned into verdicts. Each
//! scan is claimed by (reader, seq) before it is decided, so a retry or an offline replay gets
//! the first verdict; a hand-over is a version-guarded pickup through the kitchen, so two
//! readers never hand one meal over twice. Every scan is recorded with how long it took.

mod alerts;
mod codes;
mod hand_over;
mod scan;
mod signing;
mod sweep;

pub use codes::{CODE_ATTEMPTS, issue_code, verify_code};
pub use scan::{ScanAnswer, ScanIn, normalise_uid, scan, scan_stage, validate_scan};
pub use signing::{
    READER_HEADER, SEEN_SAVED_EVERY, SIGNATURE_HEADER, SeenSignatures, TIMESTAMP_HEADER,
    authenticate_reader, reader_master_key, reader_secret, secret_fingerprint,
};
pub use sweep::{SWEEP_EVERY, settle, sweep_claims};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::db::Db;
use crate::db::models::now;
use crate::limits::Limits;
use crate::store::DieselStore;
use actix::Addr;
use chrono::{NaiveDateTime, TimeDelta};
use tiffin_actors::Registry;
use tiffin_actors::bus::Bus;

/// The parts of the hub RFID works with, lent by the caller (the HTTP edge): RFID does not
/// depend on the app's state.
pub struct Hub<'a> {
    pub config: &'a Config,
    pub db: &'a Db,
    pub store: &'a DieselStore,
    pub registry: &'a Addr<Registry>,
    pub kitchens: &'a tiffin_actors::Kitchens,
    pub bus: &'a dyn Bus,
    /// This node's link to the others: signatures seen are shared through it.
    pub cluster: Option<&'a Cluster>,
    pub limits: &'a Limits,
    /// What reader secrets derive from.
    pub reader_key: &'a [u8],
    pub seen_signatures: &'a SeenSignatures,
}

/// A scan's claim not decided within this long is dead (its node died, or hangs): settled by
/// the sweeper (or a retry), and its decider can no longer commit a hand-over.
pub const CLAIM_LEASE: TimeDelta = TimeDelta::seconds(10);

/// Whether a reader has been heard from recently.
pub fn online(last_seen: Option<NaiveDateTime>, offline_after_secs: i64) -> bool {
    last_seen.is_some_and(|t| now() - t <= TimeDelta::seconds(offline_after_secs))
}
