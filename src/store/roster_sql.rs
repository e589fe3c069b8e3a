//! The roster import's statements: staging tables and the set-wise writes (the cross-file
//! checks are in `roster_checks.rs`). One text for both backends: PostgreSQL and the
//! bundled SQLite (3.39 or later) both take `UPDATE ... FROM`, `IS DISTINCT FROM` and
//! temporary tables. Values spliced into the text are ours (ids, times, roles), quoted by
//! [`quote`]; nothing from a bundle is.

/// The one difference between the backends these statements meet.
pub trait Dialect {
    const PG: bool;
}

impl Dialect for crate::db::PgConn {
    const PG: bool = true;
}

impl Dialect for crate::db::SqliteConn {
    const PG: bool = false;
}

/// A string literal.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The import's time as a literal of a `TIMESTAMP` column: PostgreSQL needs the type said
/// (a text does not convert on its own), SQLite stores the text diesel writes.
pub struct Stamp(String);

impl Stamp {
    pub fn now(pg: bool) -> Stamp {
        let text = quote(
            &crate::db::models::now()
                .format("%Y-%m-%d %H:%M:%S%.6f")
                .to_string(),
        );
        Stamp(if pg {
            format!("CAST({text} AS TIMESTAMP)")
        } else {
            text
        })
    }
}

/// The import's settings on PostgreSQL, for its transaction only. Its sorts, hashes and
/// indexes over millions of staged rows in memory rather than in temporary files (the agent
/// ids' two ends, 4M rows joined with the 3M people twice, spilled in batches at 256 MB), and
/// no JIT: each statement runs once, and compiling it with LLVM's optimizations cost more
/// than it saved. It moves the facts epoch once, as it ends
/// (`db::facts_epoch::MOVE_FACTS_EPOCH`), not at each statement.
pub const PG_IMPORT_SETTINGS: &str = "SET LOCAL work_mem = '384MB'; \
    SET LOCAL maintenance_work_mem = '256MB'; SET LOCAL jit = off; \
    SET LOCAL tiffin.facts_moved_once = on;";

pub const CREATE_STAGING: &str = "
DROP VIEW IF EXISTS roster_ends; DROP TABLE IF EXISTS roster_orgs; DROP TABLE IF EXISTS roster_users;
DROP TABLE IF EXISTS roster_agents; DROP TABLE IF EXISTS roster_roles;
DROP TABLE IF EXISTS roster_cards; DROP TABLE IF EXISTS roster_allergies;
DROP TABLE IF EXISTS roster_ends_before; DROP TABLE IF EXISTS roster_pairs;
DROP TABLE IF EXISTS roster_changed; DROP TABLE IF EXISTS roster_links;
DROP TABLE IF EXISTS roster_agent_ends;
CREATE TEMP TABLE roster_orgs (line BIGINT NOT NULL, sourced_id TEXT NOT NULL,
    name TEXT NOT NULL, school_id TEXT NOT NULL, phone_region TEXT NOT NULL);
CREATE TEMP TABLE roster_users (line BIGINT NOT NULL, sourced_id TEXT NOT NULL, role TEXT,
    relationship TEXT, display_name TEXT NOT NULL, email TEXT, phone TEXT, org TEXT,
    active BOOLEAN NOT NULL, deleted BOOLEAN NOT NULL, problem TEXT, new_id TEXT NOT NULL,
    school_id TEXT, allergies TEXT);
CREATE TEMP TABLE roster_agents (n BIGINT NOT NULL, line BIGINT NOT NULL,
    from_sid TEXT NOT NULL, to_sid TEXT NOT NULL);
CREATE TEMP TABLE roster_roles (line BIGINT NOT NULL, user_sid TEXT NOT NULL,
    role TEXT NOT NULL, relationship TEXT, org TEXT, is_primary BOOLEAN NOT NULL);
CREATE TEMP TABLE roster_cards (line BIGINT NOT NULL, sourced_id TEXT NOT NULL,
    card_uid TEXT NOT NULL, new_id TEXT NOT NULL);
CREATE TEMP TABLE roster_allergies (line BIGINT NOT NULL, sourced_id TEXT NOT NULL,
    allergies TEXT NOT NULL);
CREATE TEMP TABLE roster_ends_before (sourced_id TEXT NOT NULL, kind TEXT NOT NULL,
    relationship TEXT);
-- The people links may name: the bundle's (read where they are staged, not copied), and in
-- a delta people imported before.
CREATE TEMP VIEW roster_ends AS
    SELECT sourced_id, role AS kind, relationship FROM roster_users
    WHERE role <> 'other' AND NOT deleted
    UNION ALL SELECT sourced_id, kind, relationship FROM roster_ends_before;
CREATE TEMP TABLE roster_pairs (guardian_sid TEXT NOT NULL, student_sid TEXT NOT NULL,
    relationship TEXT);
";

pub const DROP_STAGING: &str = "
DROP VIEW roster_ends;
DROP TABLE roster_orgs; DROP TABLE roster_users; DROP TABLE roster_agents;
DROP TABLE roster_roles; DROP TABLE roster_cards; DROP TABLE roster_allergies;
DROP TABLE roster_ends_before; DROP TABLE roster_pairs;
DROP TABLE roster_changed; DROP TABLE roster_links; DROP TABLE roster_agent_ends;
";

/// After staging: indexes (built once, not row by row), then each person's role, school and
/// links resolved from what the files say together.
pub fn index_and_resolve(pg: bool, bulk: bool) -> String {
    // The people's and cards' sourcedIds are only ever looked up by equality: on PostgreSQL a
    // hash index, built without sorting 3M texts by the database's collation (a B-tree of a
    // district's people took 19.5 s where a hash index took 5.2; SQLite has only B-trees).
    let by_sid = if pg {
        "USING hash (sourced_id)"
    } else {
        "(sourced_id)"
    };
    let mut s = format!(
        "
CREATE INDEX roster_orgs_sid ON roster_orgs (sourced_id);
CREATE INDEX roster_users_sid ON roster_users {by_sid};
CREATE INDEX roster_roles_user ON roster_roles (user_sid);
CREATE INDEX roster_cards_sid ON roster_cards {by_sid};
CREATE INDEX roster_allergies_sid ON roster_allergies (sourced_id);
"
    );
    if !pg {
        // SQLite joins by index or not at all: the cards are matched by cardUid (`replace_cards`).
        s.push_str("CREATE INDEX roster_cards_uid ON roster_cards (card_uid);\n");
    }
    if pg {
        // Temporary tables are never analysed by autovacuum.
        s.push_str("ANALYZE roster_orgs, roster_users, roster_agents, roster_roles, roster_cards, roster_allergies;\n");
    }
    s.push_str(
        "
UPDATE roster_users SET
    role = (SELECT r.role FROM roster_roles r WHERE r.user_sid = roster_users.sourced_id
            ORDER BY r.is_primary DESC, r.line LIMIT 1),
    relationship = (SELECT r.relationship FROM roster_roles r
            WHERE r.user_sid = roster_users.sourced_id ORDER BY r.is_primary DESC, r.line LIMIT 1),
    org = COALESCE(org, (SELECT r.org FROM roster_roles r
            WHERE r.user_sid = roster_users.sourced_id ORDER BY r.is_primary DESC, r.line LIMIT 1))
WHERE role IS NULL;
UPDATE roster_users SET role = 'other' WHERE role IS NULL;
UPDATE roster_users SET school_id = COALESCE(
    (SELECT o.school_id FROM roster_orgs o WHERE o.sourced_id = roster_users.org),
    (SELECT s.id FROM schools s WHERE s.sourced_id = roster_users.org))
WHERE role <> 'other' AND org IS NOT NULL AND school_id IS NULL;
",
    );
    if !bulk {
        // A delta's links may name people imported before.
        s.push_str(
            "
CREATE INDEX roster_agents_to ON roster_agents (to_sid);
INSERT INTO roster_ends_before (sourced_id, kind, relationship)
    SELECT u.sourced_id, u.role, NULL FROM users u
    WHERE u.sourced_id IN (SELECT to_sid FROM roster_agents) AND u.active
      AND u.role IN ('student', 'guardian')
      AND NOT EXISTS (SELECT 1 FROM roster_users s WHERE s.sourced_id = u.sourced_id);
",
        );
    }
    s.push_str(
        "
CREATE INDEX roster_ends_before_sid ON roster_ends_before (sourced_id);
-- Each agent id's two ends, in one pass: the pairs and the checks of agentSourcedIds read
-- this (each joined the 4M agent ids with the 3M people again).
CREATE TEMP TABLE roster_agent_ends AS SELECT a.line AS line, a.to_sid AS to_sid,
        f.kind AS from_kind, t.kind AS to_kind,
        CASE WHEN f.kind = 'guardian' THEN f.sourced_id ELSE t.sourced_id END AS guardian_sid,
        CASE WHEN f.kind = 'student' THEN f.sourced_id ELSE t.sourced_id END AS student_sid,
        CASE WHEN f.kind = 'guardian' THEN f.relationship ELSE t.relationship END AS relationship
    FROM roster_agents a
    JOIN roster_ends f ON f.sourced_id = a.from_sid
    LEFT JOIN roster_ends t ON t.sourced_id = a.to_sid;
INSERT INTO roster_pairs (guardian_sid, student_sid, relationship)
    SELECT DISTINCT guardian_sid, student_sid, relationship FROM roster_agent_ends
    WHERE from_kind <> to_kind;
",
    );
    // Only the people allergies.csv lists: the others' (none, or as they are) is
    // `unlisted_allergies`, said where the people are written.
    s.push_str(
        "UPDATE roster_users SET allergies = a.allergies FROM roster_allergies a \
         WHERE a.sourced_id = roster_users.sourced_id;\n",
    );
    s
}

/// Guardians whose own orgs name no school: [`guardian_schools`] runs only when there are any.
pub const GUARDIANS_WITHOUT_SCHOOL: &str =
    "SELECT COUNT(*) AS n FROM roster_users WHERE role = 'guardian' AND school_id IS NULL";

/// A guardian without a school of their own takes their first linked student's (by line),
/// else the one they were imported with before. PostgreSQL joins all pairs once; SQLite joins
/// by index or not at all, so it looks each guardian up.
pub fn guardian_schools(pg: bool) -> &'static str {
    if pg {
        "
UPDATE roster_users SET school_id = g.school_id FROM (
    SELECT DISTINCT ON (p.guardian_sid) p.guardian_sid AS sourced_id, st.school_id AS school_id
    FROM roster_pairs p JOIN roster_users st ON st.sourced_id = p.student_sid
    JOIN roster_users gu ON gu.sourced_id = p.guardian_sid
    WHERE gu.role = 'guardian' AND gu.school_id IS NULL AND st.school_id IS NOT NULL
    ORDER BY p.guardian_sid, st.line) g
WHERE roster_users.sourced_id = g.sourced_id AND roster_users.role = 'guardian'
  AND roster_users.school_id IS NULL;
UPDATE roster_users SET school_id = u.school_id FROM users u
WHERE u.sourced_id = roster_users.sourced_id AND roster_users.role = 'guardian'
  AND roster_users.school_id IS NULL;
"
    } else {
        "
CREATE INDEX roster_pairs_guardian ON roster_pairs (guardian_sid);
UPDATE roster_users SET school_id = COALESCE(
    (SELECT st.school_id FROM roster_pairs p JOIN roster_users st ON st.sourced_id = p.student_sid
     WHERE p.guardian_sid = roster_users.sourced_id AND st.school_id IS NOT NULL
     ORDER BY st.line LIMIT 1),
    (SELECT u.school_id FROM users u WHERE u.sourced_id = roster_users.sourced_id))
WHERE role = 'guardian' AND school_id IS NULL;
"
    }
}

/// The allergies of people allergies.csv does not list: none in a bulk bundle that has the
/// file, otherwise as they are (NULL).
pub fn unlisted_allergies(bulk: bool, has_allergies: bool) -> &'static str {
    if bulk && has_allergies { "''" } else { "NULL" }
}

pub(super) const IMPORTED: &str = "role IN ('student', 'guardian') AND NOT deleted";

/// An import for one school: everything of other schools set aside; each statement with
/// whether what it removes counts as skipped people.
pub fn narrow_to_school(school: &str) -> Vec<(String, bool)> {
    let s = quote(school);
    let in_scope = |sid: &str| {
        format!(
            "(EXISTS (SELECT 1 FROM roster_users s WHERE s.sourced_id = {sid}) OR EXISTS \
             (SELECT 1 FROM users u WHERE u.sourced_id = {sid} AND u.school_id = {s}))"
        )
    };
    vec![
        (
            format!(
                "DELETE FROM roster_users WHERE role <> 'other' AND school_id IS DISTINCT FROM {s}"
            ),
            true,
        ),
        (
            format!("DELETE FROM roster_orgs WHERE school_id <> {s}"),
            false,
        ),
        (
            format!(
                "DELETE FROM roster_pairs WHERE NOT {} OR NOT {}",
                in_scope("roster_pairs.student_sid"),
                in_scope("roster_pairs.guardian_sid")
            ),
            false,
        ),
        (
            format!(
                "DELETE FROM roster_cards WHERE NOT {}",
                in_scope("roster_cards.sourced_id")
            ),
            false,
        ),
    ]
}

pub const DROP_OTHERS: &str = "DELETE FROM roster_users WHERE role = 'other'";

pub const STAGED_ORGS: &str = "SELECT COUNT(*) AS n FROM roster_orgs";

pub fn create_schools(at: &Stamp, time_zone: &str) -> String {
    format!(
        "INSERT INTO schools (id, name, time_zone, event_seq, created_at, updated_at, notice_seq, \
         phone_region, sourced_id) SELECT o.school_id, o.name, {tz}, 0, {at}, {at}, 0, o.phone_region, \
         o.sourced_id FROM roster_orgs o WHERE NOT EXISTS (SELECT 1 FROM schools s \
         WHERE s.sourced_id = o.sourced_id)",
        tz = quote(time_zone),
        at = at.0
    )
}

pub fn update_schools(at: &Stamp) -> String {
    format!(
        "UPDATE schools SET name = o.name, updated_at = {at} FROM roster_orgs o \
         WHERE schools.sourced_id = o.sourced_id AND schools.name IS DISTINCT FROM o.name",
        at = at.0
    )
}

pub fn staged_people(kind: &str) -> String {
    format!(
        "SELECT COUNT(*) AS n FROM roster_users WHERE role = {} AND NOT deleted",
        quote(kind)
    )
}

/// The new people of `kind`: the lines [`mark_changed`] found no person for.
pub fn create_people(at: &Stamp, kind: &str, unlisted_allergies: &str) -> String {
    format!(
        "INSERT INTO users (id, school_id, role, display_name, email, phone, password_hash, \
         allergies, locale, active, created_at, updated_at, inbox_seq, sourced_id) \
         SELECT s.new_id, s.school_id, s.role, s.display_name, s.email, s.phone, NULL, \
         COALESCE(s.allergies, {unlisted_allergies}, ''), 'en', s.active, {at}, {at}, 0, s.sourced_id \
         FROM roster_changed c JOIN roster_users s ON s.line = c.line \
         WHERE c.user_id IS NULL AND s.role = {kind} AND NOT s.deleted",
        at = at.0,
        kind = quote(kind)
    )
}

/// Whether staged row `s` would change its person `users` (`unlisted_allergies` as in
/// [`unlisted_allergies`]): the one test of both [`mark_changed`] and [`update_people`].
fn differs(unlisted_allergies: &str) -> String {
    let allergies = format!("COALESCE(s.allergies, {unlisted_allergies})");
    format!(
        "(users.school_id IS DISTINCT FROM s.school_id OR users.role IS DISTINCT FROM s.role \
         OR users.display_name IS DISTINCT FROM s.display_name \
         OR users.email IS DISTINCT FROM s.email OR users.phone IS DISTINCT FROM s.phone \
         OR users.active IS DISTINCT FROM s.active \
         OR ({allergies} IS NOT NULL AND users.allergies IS DISTINCT FROM {allergies}))"
    )
}

/// After resolving: the staged people compared with `users` once. `roster_changed` holds the
/// lines of people who are new (`user_id` NULL) or would change; the checks and writes of
/// people read only those, where a re-import of a district would join millions of rows to
/// `users` again in each.
pub fn mark_changed(pg: bool, unlisted_allergies: &str) -> String {
    let mut s = format!(
        "CREATE TEMP TABLE roster_changed AS SELECT s.line AS line, users.id AS user_id \
         FROM roster_users s LEFT JOIN users ON users.sourced_id = s.sourced_id \
         WHERE s.{IMPORTED} AND (users.id IS NULL OR {});\n\
         CREATE INDEX roster_changed_line ON roster_changed (line);\n",
        differs(unlisted_allergies)
    );
    if pg {
        s.push_str("ANALYZE roster_changed;\n");
    }
    s
}

/// People of `kind` who change (the test again: `roster_changed` is a filter, not the word).
pub fn update_people(at: &Stamp, kind: &str, unlisted_allergies: &str) -> String {
    let allergies = format!("COALESCE(s.allergies, {unlisted_allergies})");
    format!(
        "UPDATE users SET school_id = s.school_id, role = s.role, display_name = s.display_name, \
         email = s.email, phone = s.phone, allergies = COALESCE({allergies}, users.allergies), \
         active = s.active, updated_at = {at} FROM roster_changed c JOIN roster_users s \
         ON s.line = c.line WHERE users.id = c.user_id AND s.role = {kind} AND NOT s.deleted \
         AND {differs}",
        at = at.0,
        kind = quote(kind),
        differs = differs(unlisted_allergies)
    )
}

/// A delta's `tobedeleted` rows.
pub fn delete_people(at: &Stamp, kind: &str) -> String {
    format!(
        "UPDATE users SET active = FALSE, updated_at = {at} WHERE {deleted}",
        at = at.0,
        deleted = deleted_people(&[kind])
    )
}

/// Which `users` a delta's `tobedeleted` rows deactivate (of `kinds`).
fn deleted_people(kinds: &[&str]) -> String {
    format!(
        "users.sourced_id IN (SELECT s.sourced_id FROM roster_users s WHERE s.deleted) \
         AND users.role IN ({kinds}) AND users.active",
        kinds = roles(kinds)
    )
}

/// `kinds` as a list of SQL literals.
fn roles(kinds: &[&str]) -> String {
    kinds
        .iter()
        .map(|k| quote(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bulk bundle's missing people of `kinds` (imported before, not made by hand):
/// deactivated, so their orders keep their history.
pub fn deactivate_missing(at: &Stamp, kinds: &[&str], school: Option<&str>) -> String {
    format!(
        "UPDATE users SET active = FALSE, updated_at = {at} WHERE {missing}",
        at = at.0,
        missing = missing_people(kinds, school)
    )
}

/// Which `users` a bulk bundle leaves out (of `kinds`, in `school` if one).
fn missing_people(kinds: &[&str], school: Option<&str>) -> String {
    let school = school
        .map(|s| format!(" AND users.school_id = {}", quote(s)))
        .unwrap_or_default();
    format!(
        "users.sourced_id IS NOT NULL AND users.role IN ({kinds}) AND users.active{school} \
         AND NOT EXISTS (SELECT 1 FROM roster_users s WHERE s.sourced_id = users.sourced_id)",
        kinds = roles(kinds)
    )
}

/// PostgreSQL: every existing person the import may write, locked in key order before the
/// first is written. In-app groups lock their users in key order too (`store::inbox`), so an
/// import beside a fan-out waits for it (or it for the import) instead of deadlocking, which
/// the import's statements one kind after another, each in its plan's order, could.
pub fn lock_people(bulk: bool, school: Option<&str>) -> String {
    const KINDS: [&str; 2] = ["student", "guardian"];
    let mut people = vec![
        "SELECT c.user_id FROM roster_changed c JOIN roster_users s ON s.line = c.line \
         WHERE c.user_id IS NOT NULL"
            .to_owned(),
        format!(
            "SELECT users.id FROM users WHERE {}",
            deleted_people(&KINDS)
        ),
    ];
    if bulk {
        let missing = missing_people(&KINDS, school);
        people.push(format!("SELECT users.id FROM users WHERE {missing}"));
    }
    format!(
        "SELECT 1 FROM users WHERE users.id IN ({}) ORDER BY users.id FOR UPDATE",
        people.join(" UNION ALL ")
    )
}

/// PostgreSQL: both kinds' missing people in one pass over `users` (answers `students` and
/// `guardians`); SQLite has no statement that writes inside `WITH`.
pub fn deactivate_missing_per_kind(at: &Stamp, school: Option<&str>) -> String {
    format!(
        "WITH gone AS ({} RETURNING users.role) SELECT \
         COUNT(*) FILTER (WHERE role = 'student') AS students, \
         COUNT(*) FILTER (WHERE role = 'guardian') AS guardians FROM gone",
        deactivate_missing(at, &["student", "guardian"], school)
    )
}

pub const STAGED_PAIRS: &str = "SELECT COUNT(*) AS n FROM roster_pairs";

/// After the people are written: each pair's two ids and its link as it is (if any), looked
/// up once for the three statements of links (each joined the pairs to `users` twice, and the
/// relink and the new links each joined them to `guardian_links` again).
pub fn resolve_links(pg: bool) -> String {
    let mut s = String::from(
        "CREATE TEMP TABLE roster_links AS SELECT g.id AS guardian_id, st.id AS student_id, \
         p.relationship AS relationship, l.guardian_id IS NOT NULL AS linked, \
         l.relationship AS linked_relationship FROM roster_pairs p \
         JOIN users g ON g.sourced_id = p.guardian_sid \
         JOIN users st ON st.sourced_id = p.student_sid \
         LEFT JOIN guardian_links l ON l.guardian_id = g.id AND l.student_id = st.id;\n",
    );
    if pg {
        s.push_str("ANALYZE roster_links;\n");
    } else {
        // SQLite joins by index or not at all.
        s.push_str("CREATE INDEX roster_links_ids ON roster_links (guardian_id, student_id);\n");
    }
    s
}

/// Links between imported people whose student is in the bundle that the bundle no longer
/// has: a student's row (or, in a bulk bundle, everyone's) says who their guardians are now.
/// A delta's guardian row alone removes nothing.
pub const UNLINK_MISSING: &str = "
DELETE FROM guardian_links
WHERE student_id IN (SELECT u.id FROM users u JOIN roster_users s ON s.sourced_id = u.sourced_id
                     WHERE s.role = 'student' AND NOT s.deleted)
  AND guardian_id IN (SELECT id FROM users WHERE sourced_id IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM roster_links r
                  WHERE r.guardian_id = guardian_links.guardian_id
                    AND r.student_id = guardian_links.student_id)";

pub const RELINK: &str = "
UPDATE guardian_links SET relationship = r.relationship
FROM roster_links r
WHERE r.linked AND r.relationship IS NOT NULL
  AND r.linked_relationship IS DISTINCT FROM r.relationship
  AND guardian_links.guardian_id = r.guardian_id AND guardian_links.student_id = r.student_id";

/// New links in the order of their guardians' ids (time-ordered, so the order they were
/// written in): each link's two foreign-key checks then read and lock people's rows page
/// after page, where the pairs' own order (by sourcedId) sent them all over a table larger
/// than the buffer cache.
pub fn link(at: &Stamp) -> String {
    format!(
        "INSERT INTO guardian_links (guardian_id, student_id, relationship, created_at) \
         SELECT r.guardian_id, r.student_id, COALESCE(r.relationship, 'guardian'), {at} \
         FROM roster_links r WHERE NOT r.linked ORDER BY r.guardian_id, r.student_id",
        at = at.0
    )
}

pub const STAGED_CARDS: &str = "SELECT COUNT(*) AS n FROM roster_cards";

/// A student's active cards cards.csv no longer lists are replaced. A card cards.csv lists is
/// its student's (the checks refuse a cardUid of another student's), so a card is listed when
/// its cardUid is: the cards are matched by cardUid first, and only the few left over are
/// looked up by student, where matching each by student and cardUid joined all 1.2M
/// staged cards to `users` twice.
pub fn replace_cards(at: &Stamp) -> String {
    format!(
        "UPDATE rfid_cards SET status = 'replaced', updated_at = {at} WHERE status = 'active' \
         AND NOT EXISTS (SELECT 1 FROM roster_cards c WHERE c.card_uid = rfid_cards.card_uid) \
         AND EXISTS (SELECT 1 FROM users u JOIN roster_cards c ON c.sourced_id = u.sourced_id \
         WHERE u.id = rfid_cards.student_id)",
        at = at.0
    )
}

pub fn create_cards(at: &Stamp) -> String {
    format!(
        "INSERT INTO rfid_cards (id, school_id, student_id, card_uid, status, created_at, updated_at) \
         SELECT c.new_id, u.school_id, u.id, c.card_uid, 'active', {at}, {at} FROM roster_cards c \
         JOIN users u ON u.sourced_id = c.sourced_id \
         WHERE NOT EXISTS (SELECT 1 FROM rfid_cards r WHERE r.card_uid = c.card_uid)",
        at = at.0
    )
}
