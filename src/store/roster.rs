//! The roster import's store: a bundle's rows are staged in temporary tables of the import's
//! transaction (multi-row statements on PostgreSQL), then checked and applied set-wise
//! (`roster_sql.rs`), so a bundle of a million people is never held in memory and applies
//! all or nothing. What the rows are and how they are read is in `src/roster/`.

use super::roster_sql::{self as sql, Dialect};
use crate::db::{Db, DbError};
use crate::on_both_connections;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use serde::Serialize;
use utoipa::ToSchema;

/// A bad line of a bundle: the file, its line (1 is the header) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

/// What an import did (or, in a dry run, would do) to one kind of thing. For links,
/// `deactivated` counts links removed: a link has no history to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub deactivated: u64,
    pub unchanged: u64,
}

/// An import's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Report {
    /// OneRoster version of the bundle (`1.1` or `1.2`).
    pub version: String,
    /// `bulk` (people missing are deactivated) or `delta` (only the rows given apply).
    pub mode: String,
    /// Nothing was written.
    pub dry_run: bool,
    pub schools: Counts,
    pub students: Counts,
    pub guardians: Counts,
    pub links: Counts,
    pub cards: Counts,
    /// People of other roles (teachers, ...) or, in an import for one school, of other schools.
    pub skipped: u64,
}

/// Why a bundle was refused: nothing of it was applied.
#[derive(Debug)]
pub enum Refusal {
    /// Not a bundle: not a zip or folder, no manifest, an unreadable file.
    Unreadable(String),
    /// Bad lines, each with its file, line and reason (at most `MAX_PROBLEMS`; `more` says
    /// there were others).
    Invalid {
        problems: Vec<Problem>,
        more: bool,
    },
    Db(DbError),
}

/// Bad lines listed at most: a bundle broken throughout says so without a gigabyte answer.
pub const MAX_PROBLEMS: usize = 1000;

/// What the bundle's manifest says.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub version: String,
    /// The users file is a bulk export (everyone): people missing are deactivated.
    pub bulk: bool,
    /// allergies.csv is in the bundle: in a bulk bundle, people it does not list have none.
    pub has_allergies: bool,
}

/// What the reader hands the store, in order: the manifest first, then each file's rows in
/// chunks, problems as found; `Done` last.
#[derive(Debug)]
pub enum Staged {
    Manifest(Manifest),
    Orgs(Vec<OrgStage>),
    Users(Vec<UserStage>),
    Agents(Vec<AgentStage>),
    Roles(Vec<RoleStage>),
    Cards(Vec<CardStage>),
    Allergies(Vec<AllergyStage>),
    Problem(Problem),
    Unreadable(String),
    /// `rows` of `file` read so far (for a progress bar).
    Read {
        file: &'static str,
        rows: u64,
    },
}

/// What an import is asked to do besides the bundle.
#[derive(Debug, Clone)]
pub struct Scope {
    pub dry_run: bool,
    /// Only this school's people (a school admin's import): its Tiffin id.
    pub school: Option<String>,
    /// Time zone of schools the bundle creates (OneRoster has none).
    pub time_zone: String,
}

diesel::table! {
    roster_orgs (line) {
        line -> BigInt,
        sourced_id -> Text,
        name -> Text,
        school_id -> Text,
        phone_region -> Text,
    }
}

diesel::table! {
    roster_users (line) {
        line -> BigInt,
        sourced_id -> Text,
        role -> Nullable<Text>,
        relationship -> Nullable<Text>,
        display_name -> Text,
        email -> Nullable<Text>,
        phone -> Nullable<Text>,
        org -> Nullable<Text>,
        active -> Bool,
        deleted -> Bool,
        problem -> Nullable<Text>,
        new_id -> Text,
        school_id -> Nullable<Text>,
    }
}

diesel::table! {
    roster_agents (n) {
        n -> BigInt,
        line -> BigInt,
        from_sid -> Text,
        to_sid -> Text,
    }
}

diesel::table! {
    roster_roles (line) {
        line -> BigInt,
        user_sid -> Text,
        role -> Text,
        relationship -> Nullable<Text>,
        org -> Nullable<Text>,
        is_primary -> Bool,
    }
}

diesel::table! {
    roster_cards (line) {
        line -> BigInt,
        sourced_id -> Text,
        card_uid -> Text,
        new_id -> Text,
    }
}

diesel::table! {
    roster_allergies (line) {
        line -> BigInt,
        sourced_id -> Text,
        allergies -> Text,
    }
}

/// An org of type school.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = roster_orgs)]
pub struct OrgStage {
    pub line: i64,
    pub sourced_id: String,
    pub name: String,
    /// Its Tiffin id: the existing school's, or a new one's.
    pub school_id: String,
    pub phone_region: String,
}

/// A person. `role` is `student`, `guardian` or `other` (not imported); `None` until roles.csv
/// names it (OneRoster 1.2). `problem` is what is wrong with the row if the person is
/// imported (a teacher's bad phone number refuses nothing).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = roster_users)]
pub struct UserStage {
    pub line: i64,
    pub sourced_id: String,
    pub role: Option<String>,
    pub relationship: Option<String>,
    pub display_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub org: Option<String>,
    pub active: bool,
    pub deleted: bool,
    pub problem: Option<String>,
    pub new_id: String,
    /// The Tiffin id of `org` when the reader knows it (a school of orgs.csv or imported
    /// before); otherwise resolved after staging (1.2's roles.csv, a guardian's students).
    pub school_id: Option<String>,
}

/// One sourcedId of a person's agentSourcedIds.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = roster_agents)]
pub struct AgentStage {
    pub n: i64,
    pub line: i64,
    pub from_sid: String,
    pub to_sid: String,
}

/// A role of roles.csv (OneRoster 1.2) Tiffin imports.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = roster_roles)]
pub struct RoleStage {
    pub line: i64,
    pub user_sid: String,
    pub role: String,
    pub relationship: Option<String>,
    pub org: Option<String>,
    pub is_primary: bool,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = roster_cards)]
pub struct CardStage {
    pub line: i64,
    pub sourced_id: String,
    pub card_uid: String,
    pub new_id: String,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = roster_allergies)]
pub struct AllergyStage {
    pub line: i64,
    pub sourced_id: String,
    /// Sorted, comma-separated, lower case (as `users.allergies`).
    pub allergies: String,
}

/// The transaction's outcome short of a commit.
enum Stop {
    Refused(Refusal),
    DryRun(Box<Report>),
}

impl From<diesel::result::Error> for Stop {
    fn from(e: diesel::result::Error) -> Stop {
        Stop::Refused(Refusal::Db(e.into()))
    }
}

/// Stages rows of one table: on PostgreSQL one statement a chunk with one array per column
/// (`unnest`), a dozen parameters however long the chunk (a multi-row VALUES has one per
/// field, and PostgreSQL parses and binds each); on SQLite one statement a row (in process:
/// microseconds, and diesel-async has no multi-row insert there).
trait StageRows<Row> {
    async fn stage(&mut self, rows: &[Row]) -> QueryResult<()>;
}

macro_rules! stage_rows {
    ($row:ty, $table:path, $name:literal, [$($col:ident: $st:ty = $pg:literal),+ $(,)?]) => {
        impl StageRows<$row> for crate::db::PgConn {
            async fn stage(&mut self, rows: &[$row]) -> QueryResult<()> {
                if rows.is_empty() {
                    return Ok(());
                }
                let columns = [$(stringify!($col)),+];
                let arrays: Vec<String> = [$($pg),+]
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("${}::{t}[]", i + 1))
                    .collect();
                let sql = format!(
                    "INSERT INTO {} ({}) SELECT * FROM unnest({})",
                    $name,
                    columns.join(", "),
                    arrays.join(", ")
                );
                diesel::sql_query(sql)
                    $(.bind::<diesel::sql_types::Array<$st>, _>(
                        rows.iter().map(|r| &r.$col).collect::<Vec<_>>()
                    ))+
                    .execute(self)
                    .await?;
                Ok(())
            }
        }
        impl StageRows<$row> for crate::db::SqliteConn {
            async fn stage(&mut self, rows: &[$row]) -> QueryResult<()> {
                for row in rows {
                    diesel::insert_into($table)
                        .values(row)
                        .execute(self)
                        .await?;
                }
                Ok(())
            }
        }
    };
}

stage_rows!(OrgStage, roster_orgs::table, "roster_orgs", [
    line: BigInt = "bigint", sourced_id: Text = "text", name: Text = "text",
    school_id: Text = "text", phone_region: Text = "text",
]);
stage_rows!(UserStage, roster_users::table, "roster_users", [
    line: BigInt = "bigint", sourced_id: Text = "text", role: Nullable<Text> = "text",
    relationship: Nullable<Text> = "text", display_name: Text = "text",
    email: Nullable<Text> = "text", phone: Nullable<Text> = "text", org: Nullable<Text> = "text",
    active: Bool = "boolean", deleted: Bool = "boolean", problem: Nullable<Text> = "text",
    new_id: Text = "text", school_id: Nullable<Text> = "text",
]);
stage_rows!(AgentStage, roster_agents::table, "roster_agents", [
    n: BigInt = "bigint", line: BigInt = "bigint", from_sid: Text = "text", to_sid: Text = "text",
]);
stage_rows!(RoleStage, roster_roles::table, "roster_roles", [
    line: BigInt = "bigint", user_sid: Text = "text", role: Text = "text",
    relationship: Nullable<Text> = "text", org: Nullable<Text> = "text",
    is_primary: Bool = "boolean",
]);
stage_rows!(CardStage, roster_cards::table, "roster_cards", [
    line: BigInt = "bigint", sourced_id: Text = "text", card_uid: Text = "text",
    new_id: Text = "text",
]);
stage_rows!(AllergyStage, roster_allergies::table, "roster_allergies", [
    line: BigInt = "bigint", sourced_id: Text = "text", allergies: Text = "text",
]);

#[derive(QueryableByName)]
struct LineReason {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    line: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    reason: String,
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct PerKind {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    students: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    guardians: i64,
}

/// The import's transaction, one body for both backends.
trait RosterImport {
    async fn import(
        &mut self,
        rows: &mut tokio::sync::mpsc::Receiver<Staged>,
        scope: &Scope,
        progress: &(dyn Fn(&Staged) + Sync),
    ) -> Result<Report, Stop>;
    async fn count(&mut self, query: &str) -> QueryResult<u64>;
    async fn problems(&mut self, manifest: &Manifest, into: &mut Vec<Problem>) -> QueryResult<()>;
    async fn apply(&mut self, manifest: &Manifest, scope: &Scope) -> QueryResult<Report>;
}

on_both_connections!(impl RosterImport {
    async fn import(
        &mut self,
        rows: &mut tokio::sync::mpsc::Receiver<Staged>,
        scope: &Scope,
        progress: &(dyn Fn(&Staged) + Sync),
    ) -> Result<Report, Stop> {
        if Self::PG {
            self.batch_execute(sql::PG_IMPORT_SETTINGS).await?;
        }
        self.batch_execute(sql::CREATE_STAGING).await?;
        let mut manifest = None;
        let mut problems = Vec::new();
        let mut more = false;
        while let Some(staged) = rows.recv().await {
            progress(&staged);
            match staged {
                Staged::Manifest(m) => manifest = Some(m),
                Staged::Orgs(r) => self.stage(&r).await?,
                Staged::Users(r) => self.stage(&r).await?,
                Staged::Agents(r) => self.stage(&r).await?,
                Staged::Roles(r) => self.stage(&r).await?,
                Staged::Cards(r) => self.stage(&r).await?,
                Staged::Allergies(r) => self.stage(&r).await?,
                Staged::Problem(p) if problems.len() < MAX_PROBLEMS => problems.push(p),
                Staged::Problem(_) => more = true,
                Staged::Unreadable(why) => return Err(Stop::Refused(Refusal::Unreadable(why))),
                Staged::Read { .. } => {}
            }
        }
        let manifest = manifest.ok_or_else(|| {
            Stop::Refused(Refusal::Unreadable("the bundle has no manifest.csv".into()))
        })?;
        self.batch_execute(&sql::index_and_resolve(Self::PG, manifest.bulk)).await?;
        if self.count(sql::GUARDIANS_WITHOUT_SCHOOL).await? > 0 {
            self.batch_execute(sql::guardian_schools(Self::PG)).await?;
        }
        let unlisted = sql::unlisted_allergies(manifest.bulk, manifest.has_allergies);
        self.batch_execute(&sql::mark_changed(Self::PG, unlisted)).await?;
        self.problems(&manifest, &mut problems).await?;
        if !problems.is_empty() {
            more |= problems.len() > MAX_PROBLEMS;
            problems.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            problems.truncate(MAX_PROBLEMS);
            return Err(Stop::Refused(Refusal::Invalid { problems, more }));
        }
        let report = self.apply(&manifest, scope).await?;
        if scope.dry_run {
            return Err(Stop::DryRun(Box::new(report)));
        }
        if Self::PG {
            self.batch_execute(crate::db::facts_epoch::MOVE_FACTS_EPOCH)
                .await?;
        }
        self.batch_execute(sql::DROP_STAGING).await?;
        Ok(report)
    }

    async fn count(&mut self, query: &str) -> QueryResult<u64> {
        let n: Number = diesel::sql_query(query).get_result(self).await?;
        Ok(u64::try_from(n.n).unwrap_or(0))
    }

    async fn problems(&mut self, manifest: &Manifest, into: &mut Vec<Problem>) -> QueryResult<()> {
        for (file, query) in super::roster_checks::checks(manifest.bulk, MAX_PROBLEMS + 1) {
            let found: Vec<LineReason> = diesel::sql_query(query).load(self).await?;
            into.extend(found.into_iter().map(|f| Problem {
                file: file.to_owned(),
                line: u64::try_from(f.line).unwrap_or(0),
                reason: f.reason,
            }));
        }
        Ok(())
    }

    async fn apply(&mut self, manifest: &Manifest, scope: &Scope) -> QueryResult<Report> {
        let at = sql::Stamp::now(Self::PG);
        let mut skipped = 0;
        if let Some(school) = &scope.school {
            for (query, people) in sql::narrow_to_school(school) {
                let n = self.execute_counted(&query).await?;
                if people {
                    skipped += n;
                }
            }
        }
        skipped += self.execute_counted(sql::DROP_OTHERS).await?;
        if Self::PG {
            self.batch_execute(&sql::lock_people(manifest.bulk, scope.school.as_deref()))
                .await?;
        }
        let mut report = Report {
            version: manifest.version.clone(),
            mode: if manifest.bulk { "bulk" } else { "delta" }.to_owned(),
            dry_run: scope.dry_run,
            schools: Counts::default(),
            students: Counts::default(),
            guardians: Counts::default(),
            links: Counts::default(),
            cards: Counts::default(),
            skipped,
        };
        let staged = self.count(sql::STAGED_ORGS).await?;
        let (created, updated) = (
            self.execute_counted(&sql::create_schools(&at, &scope.time_zone)).await?,
            self.execute_counted(&sql::update_schools(&at)).await?,
        );
        report.schools = Counts { created, updated, deactivated: 0, unchanged: staged.saturating_sub(created + updated) };
        let unlisted = sql::unlisted_allergies(manifest.bulk, manifest.has_allergies);
        for kind in ["student", "guardian"] {
            let staged = self.count(&sql::staged_people(kind)).await?;
            let created = self.execute_counted(&sql::create_people(&at, kind, unlisted)).await?;
            let updated = self.execute_counted(&sql::update_people(&at, kind, unlisted)).await?;
            let deactivated = self.execute_counted(&sql::delete_people(&at, kind)).await?;
            let counts = Counts { created, updated, deactivated, unchanged: staged.saturating_sub(created + updated) };
            if kind == "student" { report.students = counts } else { report.guardians = counts }
        }
        if manifest.bulk {
            let school = scope.school.as_deref();
            let (students, guardians) = if Self::PG {
                let gone: PerKind = diesel::sql_query(sql::deactivate_missing_per_kind(&at, school))
                    .get_result(self)
                    .await?;
                (u64::try_from(gone.students).unwrap_or(0), u64::try_from(gone.guardians).unwrap_or(0))
            } else {
                (
                    self.execute_counted(&sql::deactivate_missing(&at, &["student"], school)).await?,
                    self.execute_counted(&sql::deactivate_missing(&at, &["guardian"], school)).await?,
                )
            };
            report.students.deactivated += students;
            report.guardians.deactivated += guardians;
        }
        if Self::PG {
            // The links and cards join people by sourcedId: plan them on what was written.
            self.batch_execute("ANALYZE users").await?;
        }
        self.batch_execute(&sql::resolve_links(Self::PG)).await?;
        let staged = self.count(sql::STAGED_PAIRS).await?;
        let deactivated = self.execute_counted(sql::UNLINK_MISSING).await?;
        let updated = self.execute_counted(sql::RELINK).await?;
        let created = self.execute_counted(&sql::link(&at)).await?;
        report.links = Counts { created, updated, deactivated, unchanged: staged.saturating_sub(created + updated) };
        let staged = self.count(sql::STAGED_CARDS).await?;
        let deactivated = self.execute_counted(&sql::replace_cards(&at)).await?;
        let created = self.execute_counted(&sql::create_cards(&at)).await?;
        report.cards = Counts { created, updated: 0, deactivated, unchanged: staged.saturating_sub(created) };
        if Self::PG {
            // Where autovacuum is off, the hub's own plans would see the tables as before.
            self.batch_execute("ANALYZE guardian_links, rfid_cards").await?;
        }
        Ok(report)
    }
});

/// Runs a statement and counts the rows it touched.
trait ExecuteCounted {
    async fn execute_counted(&mut self, query: &str) -> QueryResult<u64>;
}

on_both_connections!(impl ExecuteCounted {
    async fn execute_counted(&mut self, query: &str) -> QueryResult<u64> {
        let n = diesel::sql_query(query).execute(self).await?;
        Ok(n as u64)
    }
});

/// Imports what `rows` stages, in one transaction: the report, or why nothing was applied.
/// A dry run rolls back after counting.
pub async fn import(
    db: &Db,
    rows: &mut tokio::sync::mpsc::Receiver<Staged>,
    scope: &Scope,
    progress: &(dyn Fn(&Staged) + Sync),
) -> Result<Report, Refusal> {
    let outcome: Result<Result<Report, Stop>, DbError> = async {
        Ok(crate::with_conn!(db, |conn| {
            conn.transaction(async |conn| conn.import(rows, scope, progress).await)
                .await
        }))
    }
    .await;
    match outcome {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(Stop::DryRun(report))) => Ok(*report),
        Ok(Err(Stop::Refused(refusal))) => Err(refusal),
        Err(e) => Err(Refusal::Db(e)),
    }
}

/// Existing schools a bundle may name: sourcedId to (Tiffin id, phone region).
pub async fn imported_schools(
    db: &Db,
) -> Result<std::collections::HashMap<String, (String, String)>, DbError> {
    use crate::db::schema::schools;
    let rows: Vec<(Option<String>, String, String)> = crate::with_conn!(db, |conn| schools::table
        .filter(schools::sourced_id.is_not_null())
        .select((schools::sourced_id, schools::id, schools::phone_region))
        .load(conn)
        .await)?;
    Ok(rows
        .into_iter()
        .filter_map(|(sid, id, region)| sid.map(|sid| (sid, (id, region))))
        .collect())
}

/// The sourcedId of a school, if it was imported.
pub async fn sourced_id_of_school(db: &Db, school_id: &str) -> Result<Option<String>, DbError> {
    use crate::db::schema::schools;
    let sid: Option<Option<String>> = crate::with_conn!(db, |conn| schools::table
        .find(school_id)
        .select(schools::sourced_id)
        .first(conn)
        .await
        .optional())?;
    Ok(sid.flatten())
}
