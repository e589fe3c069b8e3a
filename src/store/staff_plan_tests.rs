//! Staff's lists of a school keep to an index by school under a prepared statement's generic
//! plan: without one, each list read the whole district's scans or cards.

use super::plan_tests::generic_plan;
use crate::db::models::{CardRow, ScanRow};
use crate::db::test_support::{pg_admin, pg_database};
use diesel::prelude::*;

#[tokio::test]
async fn a_schools_latest_scans_are_read_backwards_by_school() {
    let (name, _db) = pg_database().await;
    let scans = "SET session_replication_role = replica; \
        INSERT INTO scans (id, school_id, reader_id, seq, card_uid, verdict, read_at, \
            received_at, attempt) \
        SELECT 'c' || g, 's' || (g % 50), 'r', g, 'CARD' || g, 'accepted', now(), \
            now() - g * interval '1 second', 1 FROM generate_series(1, 20000) AS g";
    let latest = super::scans::recent_scans_query!("s7", 50_i64);
    let plan = generic_plan(&name, scans, &latest, "'s7', 50").await;
    assert!(
        plan.contains("Index Scan Backward using scans_recent_by_school"),
        "{plan}"
    );
    assert!(!plan.contains("Sort"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

#[tokio::test]
async fn a_schools_cards_are_read_by_school() {
    let (name, _db) = pg_database().await;
    let cards = "SET session_replication_role = replica; \
        INSERT INTO rfid_cards (id, school_id, student_id, card_uid, status, created_at, \
            updated_at) \
        SELECT 'c' || g, 's' || (g % 50), 'u' || g, 'CARD' || g, 'active', now(), now() \
        FROM generate_series(1, 20000) AS g";
    let of_school = super::cards::school_cards_query!("s7");
    let plan = generic_plan(&name, cards, &of_school, "'s7'").await;
    assert!(plan.contains("rfid_cards_by_school"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}
