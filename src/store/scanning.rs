//! What a scan needs from the store on its hot path: the reader that signed it (remembered
//! while this node hears of reader changes) and its claim with its facts (claimed in batches, one round trip a batch on
//! PostgreSQL).

use super::DieselStore;
use super::scan_claims::{ClaimedScan, ScanToClaim};
use crate::db::DbError;
use crate::db::models::ReaderRow;
use crate::group_commit::GroupCommit;
use chrono::NaiveDateTime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Scans claimed in one batch at most.
pub(super) const CLAIM_BATCH: usize = 64;

/// How long a reader's row is trusted without reading it again while this node hears of
/// every reader change (alone, or subscribed to the node bus). A reader signs every scan, and
/// at a quiet counter's pace (a scan every second or two) a shorter memory cost a round trip
/// a scan. The bound covers a change whose message was lost: a key rotated through another
/// node stops working here within this long (at once through this one).
const READER_TRUSTED_FOR: Duration = Duration::from_secs(15);

/// The memory while changes may go unheard (the node bus away).
const READER_FRESH_FOR: Duration = Duration::from_secs(1);

/// Rows of readers kept at most (a district's readers fit many times over).
const MAX_READERS: usize = 20_000;

pub(super) type ScanClaims = GroupCommit<ScanToClaim, Result<ClaimedScan, DbError>>;

/// Readers' rows as last read on this node, with when, and whether changes made through
/// other nodes are heard.
#[derive(Default)]
pub(super) struct ReaderCache {
    rows: Mutex<HashMap<String, (Instant, ReaderRow)>>,
    changes_heard: AtomicBool,
    /// Sightings of online readers not yet stored, with the first of each.
    unsaved_sightings: Mutex<HashMap<String, NaiveDateTime>>,
}

impl ReaderCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, ReaderRow)>> {
        // Only whole rows go in or out: a panic elsewhere cannot leave one torn.
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn memory(&self) -> Duration {
        if self.changes_heard.load(Ordering::Acquire) {
            READER_TRUSTED_FOR
        } else {
            READER_FRESH_FOR
        }
    }

    fn fresh(&self, id: &str) -> Option<ReaderRow> {
        let memory = self.memory();
        let cached = self.lock();
        let (read_at, row) = cached.get(id)?;
        (read_at.elapsed() < memory).then(|| row.clone())
    }

    fn keep(&self, row: &ReaderRow, read_at: Instant) {
        let memory = self.memory();
        let mut cached = self.lock();
        if cached.len() >= MAX_READERS {
            cached.retain(|_, (at, _)| at.elapsed() < memory);
        }
        cached.insert(row.id.clone(), (read_at, row.clone()));
    }

    fn hear_changes(&self, heard: bool) {
        // Rows read before hearing began may have missed a change told meanwhile.
        if !self.changes_heard.swap(heard, Ordering::AcqRel) && heard {
            self.lock().clear();
        }
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn seen(&self, id: &str, at: NaiveDateTime) {
        if let Some((_, row)) = self.lock().get_mut(id) {
            row.last_seen_at = Some(at);
        }
    }

    fn sightings(&self) -> std::sync::MutexGuard<'_, HashMap<String, NaiveDateTime>> {
        self.unsaved_sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl DieselStore {
    /// Whether every change to a reader made through another node reaches this node (it runs
    /// alone, or the node bus is up): its readers' rows are then trusted for longer.
    pub fn hear_reader_changes(&self, heard: bool) {
        self.readers.hear_changes(heard);
    }

    /// A reader changed through another node: read it afresh on its next request.
    pub fn reader_changed(&self, id: &str) {
        self.readers.forget(id);
    }

    /// The reader `id`, as remembered (see `READER_TRUSTED_FOR`) or read now.
    pub async fn reader(&self, id: &str) -> Result<Option<ReaderRow>, DbError> {
        if let Some(row) = self.readers.fresh(id) {
            return Ok(Some(row));
        }
        self.reader_afresh(id).await
    }

    /// The reader `id` as stored now, remembered from here on.
    pub async fn reader_afresh(&self, id: &str) -> Result<Option<ReaderRow>, DbError> {
        // Stamped before the read: a change committed during it is read again sooner.
        let asked = Instant::now();
        let row = super::readers::reader(&self.db, id).await?;
        if let Some(row) = &row {
            self.readers.keep(row, asked);
        }
        Ok(row)
    }

    /// Records that the reader was seen now, at once (a reader coming online shows so on
    /// the screens without waiting for the next save).
    pub async fn reader_seen(&self, id: &str) -> Result<(), DbError> {
        let at = super::readers::reader_seen(&self.db, id).await?;
        self.readers.seen(id, at);
        Ok(())
    }

    /// Notes that an online reader was seen now; stored by the next `save_readers_seen`.
    pub fn note_reader_seen(&self, id: &str) {
        let at = crate::db::models::now();
        self.readers.seen(id, at);
        self.readers.sightings().entry(id.to_owned()).or_insert(at);
    }

    /// Stores the noted sightings in one statement, each reader seen at its first noted
    /// sighting's time or later (never earlier than it was). Returns how many readers.
    pub async fn save_readers_seen(&self) -> Result<usize, DbError> {
        let noted = std::mem::take(&mut *self.readers.sightings());
        let Some(earliest) = noted.values().min().copied() else {
            return Ok(0);
        };
        let ids: Vec<&str> = noted.keys().map(String::as_str).collect();
        if let Err(e) = super::readers::readers_seen(&self.db, &ids, earliest).await {
            // Kept for the next save, behind any sighting noted meanwhile.
            let mut sightings = self.readers.sightings();
            for (id, at) in noted {
                sightings.entry(id).or_insert(at);
            }
            return Err(e);
        }
        Ok(ids.len())
    }

    /// A new key version for a reader: the old secret stops working at once on this node.
    pub async fn rotate_reader_key(
        &self,
        id: &str,
        key_version: i32,
        secret_hash: &str,
    ) -> Result<(), DbError> {
        let rotated =
            super::readers::rotate_reader_key(&self.db, id, key_version, secret_hash).await;
        self.readers.forget(id);
        rotated
    }

    /// Claims a new scan and reads what deciding it needs, in a batch with the scans that
    /// queued meanwhile.
    pub async fn claim_scan(&self, scan: ScanToClaim) -> Result<ClaimedScan, DbError> {
        let db = &self.db;
        self.scan_claims
            .submit(scan, |batch| async move {
                match super::scan_claims::claim_scans_with_facts(db, &batch).await {
                    Ok(claimed) => claimed.into_iter().map(Ok).collect(),
                    Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
                }
            })
            .await
            .unwrap_or_else(|| {
                Err(DbError::Unavailable(
                    "the scan's batch was abandoned".into(),
                ))
            })
    }
}
