//! Rows written and read the same way on every table: many inserted at once (each backend its
//! own way), one inserted, one found by its key.

use super::{Db, DbError, PgConn, SqliteConn, models, schema};
use crate::with_conn;
use diesel_async::RunQueryDsl as _;

/// A new row's id: a UUIDv7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Rows per multi-row statement: PostgreSQL takes at most 65,535 parameters, and no row
/// written this way has more than 30 columns.
const ROWS_PER_INSERT: usize = 2000;

/// Inserting many rows of one table, each backend its own way: PostgreSQL in multi-row
/// statements; SQLite through diesel-async has no multi-row insert, and there a statement
/// costs microseconds in process, not a round trip.
pub(crate) trait InsertRows<Row> {
    async fn insert_rows(&mut self, rows: &[Row]) -> diesel::QueryResult<()>;
}

macro_rules! insert_rows {
    ($row:ty, $table:path) => {
        impl InsertRows<$row> for PgConn {
            async fn insert_rows(&mut self, rows: &[$row]) -> diesel::QueryResult<()> {
                for chunk in rows.chunks(ROWS_PER_INSERT) {
                    diesel::insert_into($table)
                        .values(chunk)
                        .execute(self)
                        .await?;
                }
                Ok(())
            }
        }
        insert_rows!(sqlite $row, $table);
    };
    (sqlite $row:ty, $table:path) => {
        impl InsertRows<$row> for SqliteConn {
            async fn insert_rows(&mut self, rows: &[$row]) -> diesel::QueryResult<()> {
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

insert_rows!(sqlite models::OutboxRow, schema::outbox::table);

/// PostgreSQL: outbox rows (a fan-out's) in one statement the connection keeps, whatever their
/// number: as multi-row VALUES each number of rows was a statement of its own, parsed and
/// planned afresh (2.5-3 ms for 30 rows in the intake benchmark; BENCHMARKS.md).
const INSERT_OUTBOX_PG: &str = "\
INSERT INTO outbox (id, school_id, event_seq, recipient_id, channel, template, address, locale, \
    payload, status, attempts, next_attempt_at, claimed_until, last_error, created_at, sent_at, \
    priority, expires_at, fallback_for, dedup_key, claimed_by) \
SELECT id, school_id, event_seq, recipient_id, channel, template, address, locale, payload, \
    status, attempts, next_attempt_at, claimed_until, last_error, created_at, sent_at, \
    priority, expires_at, fallback_for, dedup_key, claimed_by \
FROM json_populate_recordset(NULL::outbox, $1::json)";

/// PostgreSQL: outbox rows inserted on a shared connection, so that the fan-out sends them with
/// its other writes.
pub(crate) async fn insert_outbox_pg(
    conn: &PgConn,
    rows: &[models::OutboxRow],
) -> diesel::QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(rows)
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    super::kept(diesel::sql_query(INSERT_OUTBOX_PG).bind::<diesel::sql_types::Text, _>(json))
        .execute(&mut &*conn)
        .await?;
    Ok(())
}
insert_rows!(models::OrderRow, schema::orders::table);
insert_rows!(models::OrderItemRow, schema::order_items::table);
insert_rows!(models::OrderEventRow, schema::order_events::table);
insert_rows!(models::FanOutQueueRow, schema::fan_out_queue::table);
insert_rows!(models::SchoolRow, schema::schools::table);
insert_rows!(models::CounterRow, schema::counters::table);
insert_rows!(models::UserRow, schema::users::table);
insert_rows!(models::GuardianLinkRow, schema::guardian_links::table);
insert_rows!(models::MealRow, schema::meals::table);
insert_rows!(models::StationRow, schema::stations::table);
insert_rows!(models::RefreshTokenRow, schema::refresh_tokens::table);
insert_rows!(models::ServiceWindowRow, schema::service_windows::table);
insert_rows!(models::ReaderRow, schema::readers::table);
insert_rows!(models::CardRow, schema::rfid_cards::table);
insert_rows!(models::PickupCodeRow, schema::pickup_codes::table);
insert_rows!(models::ScreenRow, schema::screens::table);
insert_rows!(models::PairingRow, schema::screen_pairings::table);

/// Finding one row of a table by its key, on either backend.
pub(crate) trait FindRow<Row> {
    async fn find_row(&mut self, key: &str) -> diesel::QueryResult<Option<Row>>;
}

macro_rules! find_rows {
    ($row:ty, $table:path) => {
        $crate::on_both_connections!(impl FindRow<$row> {
            async fn find_row(&mut self, key: &str) -> diesel::QueryResult<Option<$row>> {
                use diesel::{OptionalExtension, QueryDsl, SelectableHelper};
                $table
                    .find(key)
                    .select(<$row>::as_select())
                    .first(self)
                    .await
                    .optional()
            }
        });
    };
}

find_rows!(models::SchoolRow, schema::schools::table);
find_rows!(models::UserRow, schema::users::table);
find_rows!(models::ReaderRow, schema::readers::table);
find_rows!(models::CardRow, schema::rfid_cards::table);
find_rows!(models::PickupCodeRow, schema::pickup_codes::table);
find_rows!(models::OutboxRow, schema::outbox::table);
find_rows!(models::ScreenRow, schema::screens::table);

/// One row of any table above by its key.
pub(crate) async fn find<Row>(db: &Db, key: &str) -> Result<Option<Row>, DbError>
where
    PgConn: FindRow<Row>,
    SqliteConn: FindRow<Row>,
{
    Ok(with_conn!(db, |conn| conn.find_row(key).await)?)
}

/// Inserts one row of any table given `insert_rows!` above.
pub(crate) async fn insert<Row>(db: &Db, row: &Row) -> Result<(), DbError>
where
    PgConn: InsertRows<Row>,
    SqliteConn: InsertRows<Row>,
{
    with_conn!(db, |conn| conn.insert_rows(std::slice::from_ref(row)).await)?;
    Ok(())
}
