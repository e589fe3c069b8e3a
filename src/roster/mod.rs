//! Importing a district's roster: a OneRoster 1.1 or 1.2 CSV bundle (a folder or a zip) of
//! schools (orgs.csv), students and their parents, guardians and relatives (users.csv, 1.2's
//! roles.csv) and the links between them (agentSourcedIds), plus two files of Tiffin's own:
//! cards.csv (`sourcedId,cardUid`) and allergies.csv (`sourcedId,allergens`).
//!
//! `parse` reads the bundle record by record on a thread of its own, `validate` checks each
//! line, `plan` says what an import may touch, and the store (`store::roster`) stages the rows
//! and applies them set-wise in one transaction: a bundle applies whole or not at all.
//! Imports are idempotent by sourcedId; people are never deleted, only deactivated.

pub mod cli;
#[cfg(test)]
mod import_lock_tests;
pub mod parse;
pub mod plan;
pub mod validate;

pub use crate::store::roster::{Counts, Problem, Refusal, Report, Staged};
pub use parse::Source;
pub use plan::Options;

use crate::db::Db;

/// Chunks in flight between the reader and the database.
const IN_FLIGHT: usize = 4;

/// Imports a bundle; `progress` hears of every chunk read.
pub async fn import(
    db: &Db,
    source: Source,
    options: &Options,
    progress: &(dyn Fn(&Staged) + Sync),
) -> Result<Report, Refusal> {
    let (scope, known) = plan::prepare(db, options).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let reader = std::thread::Builder::new()
        .name("roster-reader".into())
        .spawn(move || parse::read_bundle(&source, &known, &tx))
        .map_err(|e| Refusal::Unreadable(format!("cannot start the reader: {e}")))?;
    let outcome = crate::store::roster::import(db, &mut rx, &scope, progress).await;
    // A refusal mid-way drops the receiver: the reader stops at its next chunk.
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    outcome
}
