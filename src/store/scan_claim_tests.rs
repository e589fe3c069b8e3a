//! Scans claimed together get each its own facts, on both backends: its claim, its first
//! decided scan near it, its card and its holder's orders, never another scan's. And a
//! reader's row, remembered briefly, is read afresh once rotated; its sightings are stored
//! together.

use super::DieselStore;
use super::scan_claims::ScanToClaim;
use super::scans::SCAN_PENDING;
use crate::db::models::{CardRow, ReaderRow, ScanRow, now};
use crate::db::schema::{readers, scans};
use crate::db::test_support::on_both_backends;
use crate::db::test_support::{School, new_order, school};
use crate::db::{Db, DbError};
use crate::with_conn;
use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tiffin_actors::ports::Placed;

/// A school with a counter and a reader at it.
async fn school_with_reader(db: &Db, name: &str) -> (School, ReaderRow) {
    let s = school(db, name).await;
    crate::db::test_support::counters(db, &s, 1).await;
    let counter = super::counters::counters(db, &s.id).await.unwrap()[0]
        .id
        .clone();
    let row = ReaderRow {
        id: crate::db::new_id(),
        school_id: s.id.clone(),
        counter_id: counter,
        name: "Till".into(),
        secret_hash: "h1".into(),
        last_seen_at: None,
        created_at: now(),
        key_version: 1,
        active: true,
    };
    crate::db::insert(db, &row).await.unwrap();
    (s, row)
}

async fn card_of(db: &Db, s: &School, uid: &str) {
    let row = CardRow {
        id: crate::db::new_id(),
        school_id: s.id.clone(),
        student_id: s.student.clone(),
        card_uid: uid.into(),
        status: "active".into(),
        created_at: now(),
        updated_at: now(),
    };
    crate::db::insert(db, &row).await.unwrap();
}

fn scan(reader: &ReaderRow, seq: i64, uid: &str, read_at: NaiveDateTime) -> ScanRow {
    ScanRow {
        id: crate::db::new_id(),
        school_id: reader.school_id.clone(),
        reader_id: reader.id.clone(),
        seq,
        card_uid: uid.into(),
        verdict: SCAN_PENDING.into(),
        answer: None,
        order_id: None,
        student_id: None,
        first_scan_id: None,
        read_at,
        received_at: read_at,
        took_us: None,
        claimed_by: Some("node".into()),
        claimed_at: Some(read_at),
        attempt: 1,
    }
}

async fn insert_scan(db: &Db, row: &ScanRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(scans::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

async fn pending(db: &Db) -> Result<i64, DbError> {
    Ok(with_conn!(db, |conn| scans::table
        .filter(scans::verdict.eq(SCAN_PENDING))
        .count()
        .get_result(conn)
        .await)?)
}

async fn deactivate(db: &Db, reader_id: &str) -> Result<(), DbError> {
    activate(db, reader_id, false).await
}

async fn activate(db: &Db, reader_id: &str, active: bool) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::update(readers::table.find(reader_id))
        .set(readers::active.eq(active))
        .execute(conn)
        .await)?;
    Ok(())
}

async fn placed_order(store: &DieselStore, s: &School) -> String {
    match store.insert_orders(vec![new_order(s)]).await.pop() {
        Some(Ok(Placed::New(event))) => event.order_id,
        other => panic!("expected a new order, got {other:?}"),
    }
}

async fn a_batch_gives_each_scan_its_own_facts(db: Db) {
    let (a, reader_a) = school_with_reader(&db, "A").await;
    let (b, reader_b) = school_with_reader(&db, "B").await;
    card_of(&db, &a, "CARD-A").await;
    card_of(&db, &b, "CARD-B").await;
    let store = DieselStore::new(db.clone(), 120);
    let order_a = placed_order(&store, &a).await;
    let order_b = placed_order(&store, &b).await;
    let at = now();
    // Decided a second ago at A's reader; a retry of seq 7 finds its claim taken.
    let mut decided = scan(&reader_a, 1, "CARD-A", at - TimeDelta::seconds(1));
    decided.verdict = "accepted".into();
    let taken = scan(&reader_a, 7, "CARD-A", at - TimeDelta::hours(1));
    insert_scan(&db, &decided).await.unwrap();
    insert_scan(&db, &taken).await.unwrap();
    let window = TimeDelta::seconds(3);
    let batch = vec![
        scan(&reader_a, 2, "CARD-A", at),
        scan(&reader_a, 3, "CARD-A", at + TimeDelta::minutes(5)),
        scan(&reader_b, 1, "CARD-B", at),
        scan(&reader_a, 7, "CARD-A", at),
        scan(&reader_a, 4, "NO-SUCH-CARD", at),
        // B's card at A's reader: the holder has no orders at A.
        scan(&reader_a, 5, "CARD-B", at),
    ]
    .into_iter()
    .map(|row| ScanToClaim { row, window })
    .collect::<Vec<_>>();
    let claimed = super::scan_claims::claim_scans_with_facts(&db, &batch)
        .await
        .unwrap();
    assert_eq!(claimed.len(), batch.len());
    let orders_of = |i: usize| -> Vec<String> {
        claimed[i]
            .orders
            .iter()
            .map(|snapshot| {
                let order: serde_json::Value = serde_json::from_str(snapshot).unwrap();
                order["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let claims: Vec<bool> = claimed.iter().map(|c| c.claimed).collect();
    assert_eq!(claims, [true, true, true, false, true, true]);
    let firsts: Vec<Option<&str>> = claimed
        .iter()
        .map(|c| c.first.as_ref().map(|f| f.id.as_str()))
        .collect();
    assert_eq!(
        firsts,
        [
            Some(decided.id.as_str()),
            None,
            None,
            Some(decided.id.as_str()),
            None,
            None
        ],
        "only scans of the decided one's card at its reader within the window are debounced"
    );
    let cards: Vec<Option<&str>> = claimed
        .iter()
        .map(|c| c.card.as_ref().map(|c| c.card_uid.as_str()))
        .collect();
    assert_eq!(
        cards,
        [
            Some("CARD-A"),
            Some("CARD-A"),
            Some("CARD-B"),
            Some("CARD-A"),
            None,
            Some("CARD-B")
        ]
    );
    assert_eq!(orders_of(0), orders_of(1));
    assert_eq!(orders_of(1), [order_a]);
    assert_eq!(orders_of(2), [order_b]);
    assert!(orders_of(4).is_empty());
    assert!(
        orders_of(5).is_empty(),
        "another school's orders are not this reader's"
    );
    // Claimed means written, pending, once.
    assert_eq!(
        pending(&db).await.unwrap(),
        6,
        "five claims of the batch and the one taken before"
    );
}

on_both_backends!(
    a_batch_of_scans_gives_each_its_own_facts_on_sqlite,
    a_batch_of_scans_gives_each_its_own_facts_on_postgres,
    a_batch_gives_each_scan_its_own_facts
);

async fn a_rotated_reader_is_read_afresh(db: Db) {
    let (_, reader) = school_with_reader(&db, "A").await;
    let store = DieselStore::new(db.clone(), 120);
    assert_eq!(
        store.reader(&reader.id).await.unwrap().unwrap().key_version,
        1
    );
    store.rotate_reader_key(&reader.id, 2, "h2").await.unwrap();
    let now_read = store.reader(&reader.id).await.unwrap().unwrap();
    assert_eq!(
        (now_read.key_version, now_read.secret_hash.as_str()),
        (2, "h2")
    );
    // Changed elsewhere (another node) while this node is not told of reader changes (the
    // bus away): seen here once the remembered row is a second old.
    deactivate(&db, &reader.id).await.unwrap();
    let waited = std::time::Instant::now();
    while store.reader(&reader.id).await.unwrap().unwrap().active {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(3),
            "a reader deactivated elsewhere is still active here"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Told of changes: the row is remembered past a second, until a change is told.
    activate(&db, &reader.id, true).await.unwrap();
    store.hear_reader_changes(true);
    assert!(
        store.reader(&reader.id).await.unwrap().unwrap().active,
        "hearing begins with every remembered row read afresh"
    );
    deactivate(&db, &reader.id).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert!(
        store.reader(&reader.id).await.unwrap().unwrap().active,
        "while changes are told, an untold change is not read a second later"
    );
    store.reader_changed(&reader.id);
    assert!(
        !store.reader(&reader.id).await.unwrap().unwrap().active,
        "a told change is read at once"
    );
}

on_both_backends!(
    a_rotated_reader_is_read_afresh_on_sqlite,
    a_rotated_reader_is_read_afresh_on_postgres,
    a_rotated_reader_is_read_afresh
);

/// An online reader's sightings wait in memory and are stored together, never as earlier
/// than they were and never over a later sighting stored meanwhile.
async fn sightings_are_stored_together(db: Db) {
    let (_, one) = school_with_reader(&db, "A").await;
    let (_, two) = school_with_reader(&db, "B").await;
    let store = DieselStore::new(db.clone(), 120);
    let stored = |id: String| {
        let db = db.clone();
        async move {
            super::readers::reader(&db, &id)
                .await
                .unwrap()
                .unwrap()
                .last_seen_at
        }
    };
    let before = now();
    store.reader(&one.id).await.unwrap();
    store.note_reader_seen(&one.id);
    store.note_reader_seen(&two.id);
    assert_eq!(stored(one.id.clone()).await, None, "noted, not yet stored");
    assert!(
        store.reader(&one.id).await.unwrap().unwrap().last_seen_at >= Some(before),
        "this node's remembered row has the sighting at once"
    );
    assert_eq!(store.save_readers_seen().await.unwrap(), 2);
    for id in [&one.id, &two.id] {
        let at = stored(id.clone()).await.expect("stored by the save");
        assert!(
            at >= before && at <= now(),
            "{at} outside the sightings' time"
        );
    }
    assert_eq!(store.save_readers_seen().await.unwrap(), 0, "nothing left");

    // A sighting noted, then the reader seen and stored at once (another request, another
    // node): the save does not move it back.
    store.note_reader_seen(&one.id);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store.reader_seen(&one.id).await.unwrap();
    let latest = stored(one.id.clone()).await;
    store.save_readers_seen().await.unwrap();
    assert_eq!(stored(one.id.clone()).await, latest);
}

on_both_backends!(
    sightings_are_stored_together_on_sqlite,
    sightings_are_stored_together_on_postgres,
    sightings_are_stored_together
);
