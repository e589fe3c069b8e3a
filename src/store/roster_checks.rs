//! The roster import's cross-file checks: each answers the bad lines of one file, on both
//! backends (as `roster_sql.rs`).

use super::roster_sql::IMPORTED;

/// The cross-file checks: (file, query answering `line` and `reason`), each listing at most
/// `limit` lines. A delta's rows may name people imported before.
pub fn checks(bulk: bool, limit: usize) -> Vec<(&'static str, String)> {
    let known_before = |sid: &str, extra: &str| {
        if bulk {
            "FALSE".to_owned()
        } else {
            format!(
                "EXISTS (SELECT 1 FROM users u WHERE u.sourced_id = {sid} AND u.active {extra})"
            )
        }
    };
    // A row as its person is now cannot take someone else's email or phone (both unique):
    // only the changed rows are looked up.
    let taken = |column: &str| {
        format!(
            "SELECT s.line AS line, '{column} ' || s.{column} || ' belongs to someone else' AS reason \
             FROM roster_changed c JOIN roster_users s ON s.line = c.line \
             JOIN users u ON u.{column} = s.{column} WHERE s.{IMPORTED} AND u.sourced_id IS DISTINCT FROM s.sourced_id"
        )
    };
    let twice = |column: &str, filter: &str| {
        format!(
            "SELECT line AS line, '{column} ' || {column} || ' is on more than one line' AS reason \
             FROM roster_users WHERE {filter} AND {column} IN (SELECT {column} FROM roster_users \
             WHERE {filter} GROUP BY {column} HAVING COUNT(*) > 1)"
        )
    };
    let imported_with = |column: &str| format!("{IMPORTED} AND {column} IS NOT NULL");
    let mut out = vec![
        (
            "orgs.csv",
            "SELECT line AS line, 'sourcedId ' || sourced_id || ' is on more than one line' AS reason \
             FROM roster_orgs WHERE sourced_id IN (SELECT sourced_id FROM roster_orgs \
             GROUP BY sourced_id HAVING COUNT(*) > 1)"
                .to_owned(),
        ),
        ("users.csv", twice("sourced_id", "TRUE").replace("'sourced_id ", "'sourcedId ")),
        (
            "users.csv",
            format!("SELECT line AS line, problem AS reason FROM roster_users WHERE {IMPORTED} AND problem IS NOT NULL"),
        ),
        ("users.csv", twice("email", &imported_with("email"))),
        ("users.csv", twice("phone", &imported_with("phone"))),
        ("users.csv", taken("email")),
        ("users.csv", taken("phone")),
        (
            "users.csv",
            format!(
                "SELECT line AS line, 'a ' || role || ' of no school: ' || CASE WHEN role = 'student' \
                 THEN 'name a school of orgs.csv (or imported before) in its orgs' ELSE 'name a school \
                 in its orgs or link a student' END AS reason FROM roster_users \
                 WHERE {IMPORTED} AND school_id IS NULL"
            ),
        ),
        (
            "users.csv",
            "SELECT e.line AS line, 'agentSourcedIds names ' || e.to_sid || ', who is not in the bundle' \
             AS reason FROM roster_agent_ends e WHERE e.to_kind IS NULL \
             AND NOT EXISTS (SELECT 1 FROM roster_users s WHERE s.sourced_id = e.to_sid)"
                .to_owned(),
        ),
        (
            "users.csv",
            "SELECT line AS line, 'agentSourcedIds names ' || to_sid || ', also a ' || to_kind \
             AS reason FROM roster_agent_ends WHERE from_kind = to_kind"
                .to_owned(),
        ),
        (
            "roles.csv",
            format!(
                "SELECT r.line AS line, 'userSourcedId ' || r.user_sid || ' is not in users.csv' AS reason \
                 FROM roster_roles r WHERE NOT EXISTS (SELECT 1 FROM roster_users s \
                 WHERE s.sourced_id = r.user_sid) AND NOT {}",
                known_before("r.user_sid", "")
            ),
        ),
        (
            "cards.csv",
            format!(
                "SELECT c.line AS line, 'sourcedId ' || c.sourced_id || ' is not a student of the bundle' \
                 AS reason FROM roster_cards c WHERE NOT EXISTS (SELECT 1 FROM roster_users s \
                 WHERE s.sourced_id = c.sourced_id AND s.role = 'student' AND NOT s.deleted) AND NOT {}",
                known_before("c.sourced_id", "AND u.role = 'student'")
            ),
        ),
        (
            "cards.csv",
            "SELECT line AS line, 'cardUid ' || card_uid || ' is on more than one line' AS reason \
             FROM roster_cards WHERE card_uid IN (SELECT card_uid FROM roster_cards \
             GROUP BY card_uid HAVING COUNT(*) > 1)"
                .to_owned(),
        ),
        (
            "cards.csv",
            "SELECT c.line AS line, 'cardUid ' || c.card_uid || ' is another student''s card' AS reason \
             FROM roster_cards c JOIN rfid_cards r ON r.card_uid = c.card_uid \
             JOIN users u ON u.id = r.student_id WHERE u.sourced_id IS DISTINCT FROM c.sourced_id"
                .to_owned(),
        ),
        (
            "allergies.csv",
            format!(
                "SELECT a.line AS line, 'sourcedId ' || a.sourced_id || ' is not a person of the bundle' \
                 AS reason FROM roster_allergies a WHERE NOT EXISTS (SELECT 1 FROM roster_users s \
                 WHERE s.sourced_id = a.sourced_id AND s.{IMPORTED}) AND NOT {}",
                known_before("a.sourced_id", "")
            ),
        ),
        (
            "allergies.csv",
            "SELECT line AS line, 'sourcedId ' || sourced_id || ' is on more than one line' AS reason \
             FROM roster_allergies WHERE sourced_id IN (SELECT sourced_id FROM roster_allergies \
             GROUP BY sourced_id HAVING COUNT(*) > 1)"
                .to_owned(),
        ),
    ];
    for (_, query) in &mut out {
        query.push_str(&format!(" ORDER BY 1 LIMIT {limit}"));
    }
    out
}
