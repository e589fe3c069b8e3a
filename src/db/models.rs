//! Row types, one per table, shared by both backends.

use super::schema::*;
use chrono::NaiveDateTime;
use diesel::prelude::*;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = schools, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct SchoolRow {
    pub id: String,
    pub name: String,
    pub time_zone: String,
    pub event_seq: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub quiet_hours_start: Option<String>,
    pub quiet_hours_end: Option<String>,
    pub notice_seq: i64,
    /// Phone numbers written without a country code are read as this country's.
    pub phone_region: String,
    /// The daily digest's school-local "HH:MM"; `None`: the hub's `digest.at`.
    pub digest_at: Option<String>,
    /// The last school day whose digests were queued.
    pub digest_done_on: Option<String>,
    /// An order becomes ready by itself once every station has done its items.
    pub ready_when_stations_done: bool,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = counters, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct CounterRow {
    pub id: String,
    pub school_id: String,
    pub number: i32,
    pub name: String,
    pub is_open: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct UserRow {
    pub id: String,
    pub school_id: Option<String>,
    pub role: String,
    pub display_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub password_hash: Option<String>,
    pub allergies: String,
    pub locale: String,
    pub active: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = guardian_links, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct GuardianLinkRow {
    pub guardian_id: String,
    pub student_id: String,
    pub relationship: String,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = refresh_tokens, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct RefreshTokenRow {
    pub id: String,
    pub user_id: String,
    pub token_hash: String,
    pub family_id: String,
    pub expires_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = screens, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ScreenRow {
    pub id: String,
    pub school_id: String,
    pub name: String,
    pub kind: String,
    pub refresh_hash: Option<String>,
    pub previous_refresh_hash: Option<String>,
    pub refresh_expires_at: NaiveDateTime,
    pub paired_by: String,
    pub paired_at: NaiveDateTime,
    pub last_seen_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    /// The station a station screen shows.
    pub station_id: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = screen_pairings, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct PairingRow {
    pub id: String,
    pub code_hash: String,
    pub secret_hash: String,
    pub expires_at: NaiveDateTime,
    pub screen_id: Option<String>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = meals, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct MealRow {
    pub id: String,
    pub school_id: String,
    pub name: String,
    pub price_cents: i64,
    pub allergens: String,
    pub available: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// Where it is made; its items show on that station's screen.
    pub station_id: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = stations, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct StationRow {
    pub id: String,
    pub school_id: String,
    pub name: String,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct OrderRow {
    pub id: String,
    pub school_id: String,
    pub student_id: String,
    pub placed_by: String,
    pub state: String,
    pub version: i64,
    pub total_cents: i64,
    pub counter_id: Option<String>,
    pub pickup_code: Option<String>,
    pub idempotency_key: Option<String>,
    pub request_fingerprint: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub pickup_day: Option<String>,
    pub window_id: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = service_windows, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ServiceWindowRow {
    pub id: String,
    pub school_id: String,
    pub name: String,
    pub starts_at: String,
    pub ends_at: String,
    pub order_cutoff_minutes: i32,
    pub cancel_deadline_minutes: i32,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = order_items, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct OrderItemRow {
    pub order_id: String,
    pub line: i32,
    pub meal_id: String,
    pub meal_name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = order_events, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct OrderEventRow {
    pub school_id: String,
    pub seq: i64,
    pub order_id: String,
    pub version: i64,
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub actor_id: Option<String>,
    pub reason: Option<String>,
    pub snapshot: String,
    pub created_at: NaiveDateTime,
    /// The notice to fan out (`notices::Kind`), if the event makes one.
    pub notice: Option<String>,
    /// Someone who needs no news of their own act.
    pub notice_skip: Option<String>,
}

/// An event with news, waiting for its fan-out.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = fan_out_queue, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct FanOutQueueRow {
    pub created_at: NaiveDateTime,
    pub school_id: String,
    pub seq: i64,
}

impl OrderEventRow {
    /// Its place in the fan-out's queue, if it makes a notice.
    pub fn queued(&self) -> Option<FanOutQueueRow> {
        self.notice.as_ref().map(|_| FanOutQueueRow {
            created_at: self.created_at,
            school_id: self.school_id.clone(),
            seq: self.seq,
        })
    }
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct OutboxRow {
    pub id: String,
    pub school_id: String,
    pub event_seq: i64,
    pub recipient_id: String,
    pub channel: String,
    pub template: String,
    pub address: String,
    pub locale: String,
    pub payload: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: NaiveDateTime,
    pub claimed_until: Option<NaiveDateTime>,
    pub last_error: Option<String>,
    pub created_at: NaiveDateTime,
    pub sent_at: Option<NaiveDateTime>,
    /// `notices::Priority::rank`.
    pub priority: i32,
    pub expires_at: Option<NaiveDateTime>,
    pub fallback_for: Option<String>,
    /// Set where a message must exist once whoever queues it (the daily digest).
    pub dedup_key: Option<String>,
    /// The node whose dispatcher holds its lease (`claimed_until`).
    pub claimed_by: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = device_tokens, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct DeviceTokenRow {
    pub id: String,
    pub user_id: String,
    /// `android`, `ios` or `web`.
    pub platform: String,
    pub token: String,
    pub active: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = notification_preferences, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct PreferenceRow {
    pub user_id: String,
    pub event_kind: String,
    pub channel: String,
    pub enabled: bool,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = readers, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ReaderRow {
    pub id: String,
    pub school_id: String,
    pub counter_id: String,
    pub name: String,
    /// SHA-256 of the derived secret: tells a stale key version apart, reveals nothing.
    pub secret_hash: String,
    pub last_seen_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub key_version: i32,
    pub active: bool,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = rfid_cards, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct CardRow {
    pub id: String,
    pub school_id: String,
    pub student_id: String,
    pub card_uid: String,
    /// `active`, `blocked`, `lost` or `replaced`.
    pub status: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = scans, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ScanRow {
    pub id: String,
    pub school_id: String,
    pub reader_id: String,
    pub seq: i64,
    pub card_uid: String,
    pub verdict: String,
    pub answer: Option<String>,
    pub order_id: Option<String>,
    pub student_id: Option<String>,
    pub first_scan_id: Option<String>,
    pub read_at: NaiveDateTime,
    pub received_at: NaiveDateTime,
    pub took_us: Option<i64>,
    /// The node deciding it, and since when (its lease).
    pub claimed_by: Option<String>,
    pub claimed_at: Option<NaiveDateTime>,
    /// Which claim of it: a take-over counts up, and fences out the one before.
    pub attempt: i32,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = pickup_codes, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct PickupCodeRow {
    pub id: String,
    pub school_id: String,
    pub student_id: String,
    pub counter_id: String,
    pub code_mac: String,
    /// `active`, `used` or `locked`.
    pub status: String,
    pub attempts: i32,
    pub requested_by: String,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub used_at: Option<NaiveDateTime>,
}

pub fn now() -> NaiveDateTime {
    // Microseconds: what both backends keep, so a value reads back as written.
    let t = chrono::Utc::now().naive_utc();
    t.with_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

use chrono::Timelike;
