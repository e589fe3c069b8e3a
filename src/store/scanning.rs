//! What a scan needs from the store on its hot path: the reader that signed it (remembered
//! for a second) and its claim with its facts (claimed in batches, one round trip a batch on
//! PostgreSQL).

use super::DieselStore;
use super::scan_claims::{ClaimedScan, ScanToClaim};
use crate::db::DbError;
use crate::db::models::ReaderRow;
use crate::group_commit::GroupCommit;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Scans claimed in one batch at most.
pub(super) const CLAIM_BATCH: usize = 64;

/// How long a reader's row is trusted without reading it again. A reader signs every scan,
/// so reading its row each time cost a round trip a scan; a key rotated or a reader
/// deactivated through another node is seen here within this long (at once through this one).
const READER_FRESH_FOR: Duration = Duration::from_secs(1);

/// Rows of readers kept at most (a district's readers fit many times over).
const MAX_READERS: usize = 20_000;

pub(super) type ScanClaims = GroupCommit<ScanToClaim, Result<ClaimedScan, DbError>>;

/// Readers' rows as last read on this node, with when.
#[derive(Default)]
pub(super) struct ReaderCache(Mutex<HashMap<String, (Instant, ReaderRow)>>);

impl ReaderCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, ReaderRow)>> {
        // Only whole rows go in or out: a panic elsewhere cannot leave one torn.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh(&self, id: &str) -> Option<ReaderRow> {
        let cached = self.lock();
        let (read_at, row) = cached.get(id)?;
        (read_at.elapsed() < READER_FRESH_FOR).then(|| row.clone())
    }

    fn keep(&self, row: &ReaderRow, read_at: Instant) {
        let mut cached = self.lock();
        if cached.len() >= MAX_READERS {
            cached.retain(|_, (at, _)| at.elapsed() < READER_FRESH_FOR);
        }
        cached.insert(row.id.clone(), (read_at, row.clone()));
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn seen(&self, id: &str, at: chrono::NaiveDateTime) {
        if let Some((_, row)) = self.lock().get_mut(id) {
            row.last_seen_at = Some(at);
        }
    }
}

impl DieselStore {
    /// The reader `id`, as read at most `READER_FRESH_FOR` ago.
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

    /// Records that the reader was seen now.
    pub async fn reader_seen(&self, id: &str) -> Result<(), DbError> {
        let at = super::readers::reader_seen(&self.db, id).await?;
        self.readers.seen(id, at);
        Ok(())
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
