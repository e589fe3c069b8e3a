//! Notices to outbox rows: who hears of a notice about a student (with their addresses,
//! devices and choices), and one row per recipient and channel. Used by fan-out, the daily
//! digest and notices that are not kitchen events.

use super::schools::parse_time_of_day;
use super::{DieselStore, TxError};
use crate::db::models::*;
use crate::db::schema::*;
use crate::{on_both_connections, with_conn};
use chrono::Duration;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::HashSet;
use tiffin_actors::domain::Role;
use tiffin_actors::notices::{
    Audience, Channel, Kind, NotificationIntent, Preference, QuietHours, Recipient,
    first_attempt_delay, intents,
};
use tiffin_actors::ports::CommandError;

pub(super) type RecipientRow = (String, String, Option<String>, Option<String>, String);

/// The columns of a `RecipientRow`.
pub(super) const RECIPIENT: (
    users::id,
    users::display_name,
    users::email,
    users::phone,
    users::locale,
) = (
    users::id,
    users::display_name,
    users::email,
    users::phone,
    users::locale,
);

/// The columns of a stored preference: (user, kind, channel, enabled).
pub(super) const PREFERENCE: (
    notification_preferences::user_id,
    notification_preferences::event_kind,
    notification_preferences::channel,
    notification_preferences::enabled,
) = (
    notification_preferences::user_id,
    notification_preferences::event_kind,
    notification_preferences::channel,
    notification_preferences::enabled,
);

/// A user with the channels they can be reached on and their choices.
pub(super) fn recipient(
    (user_id, name, email, phone, locale): RecipientRow,
    with_push: &HashSet<String>,
    choices: &[(String, String, String, bool)],
) -> Recipient {
    let preferences = choices
        .iter()
        .filter(|(user, ..)| *user == user_id)
        .filter_map(|(_, kind, channel, enabled)| {
            Some(Preference {
                kind: Kind::parse(kind)?,
                channel: Channel::parse(channel)?,
                enabled: *enabled,
            })
        })
        .collect();
    Recipient {
        has_push: with_push.contains(&user_id),
        user_id,
        name,
        email,
        phone,
        locale,
        preferences,
    }
}

/// A school's name, time zone and quiet hours: what a notice needs of it.
pub(super) type SchoolNotice = (String, String, Option<String>, Option<String>);

/// What a notice about a student reads, inside a transaction on either backend.
trait NoticeReads {
    /// Who a notice about a student of a school goes to (`notices::Audience`), with their
    /// addresses, devices and preferences; only active people.
    async fn audience(
        &mut self,
        school_id: &str,
        student_id: &str,
        audience: Audience,
    ) -> QueryResult<Vec<Recipient>>;

    /// A school's `SchoolNotice`.
    async fn school_notice(&mut self, school_id: &str) -> QueryResult<SchoolNotice>;
}

on_both_connections!(impl NoticeReads {
    async fn audience(
        &mut self,
        school_id: &str,
        student_id: &str,
        audience: Audience,
    ) -> QueryResult<Vec<Recipient>> {
        let person = RECIPIENT;
        let mut people: Vec<RecipientRow> = Vec::new();
        if audience == Audience::Family {
            people.extend(
                users::table
                    .find(student_id)
                    .filter(users::active.eq(true))
                    .select(person)
                    .load::<RecipientRow>(&mut *self)
                    .await?,
            );
        }
        if matches!(audience, Audience::Family | Audience::Guardians) {
            people.extend(
                guardian_links::table
                    .inner_join(users::table.on(users::id.eq(guardian_links::guardian_id)))
                    .filter(guardian_links::student_id.eq(student_id))
                    .filter(users::active.eq(true))
                    .order(users::id.asc())
                    .select(person)
                    .load::<RecipientRow>(&mut *self)
                    .await?,
            );
        }
        if audience == Audience::Kitchen {
            people.extend(
                users::table
                    .filter(users::school_id.eq(school_id))
                    .filter(users::role.eq(Role::KitchenStaff.as_str()))
                    .filter(users::active.eq(true))
                    .order(users::id.asc())
                    .select(person)
                    .load::<RecipientRow>(&mut *self)
                    .await?,
            );
        }
        let ids: Vec<&str> = people.iter().map(|p| p.0.as_str()).collect();
        let with_push: HashSet<String> = device_tokens::table
            .filter(device_tokens::user_id.eq_any(&ids))
            .filter(device_tokens::active.eq(true))
            .select(device_tokens::user_id)
            .load::<String>(&mut *self)
            .await?
            .into_iter()
            .collect();
        let choices: Vec<(String, String, String, bool)> = notification_preferences::table
            .filter(notification_preferences::user_id.eq_any(&ids))
            .select(PREFERENCE)
            .load(&mut *self)
            .await?;
        Ok(people
            .into_iter()
            .map(|p| recipient(p, &with_push, &choices))
            .collect())
    }

    async fn school_notice(&mut self, school_id: &str) -> QueryResult<SchoolNotice> {
        schools::table
            .find(school_id)
            .select((
                schools::name,
                schools::time_zone,
                schools::quiet_hours_start,
                schools::quiet_hours_end,
            ))
            .first(self)
            .await
    }
});

/// A notice's template data as JSON text: an object, which each message's payload extends
/// with its own fields. Spliced as text, an event's order is not parsed and written again for
/// each of its messages (that churn was a tenth of the hub's time in a rush of orders).
pub(super) struct NoticeData(String);

impl NoticeData {
    pub(super) fn of(data: &serde_json::Value) -> NoticeData {
        NoticeData(data.to_string())
    }

    /// `{"order": <order>}`, the order given as JSON text.
    pub(super) fn order(order: &str) -> NoticeData {
        NoticeData(format!("{{\"order\":{order}}}"))
    }

    /// The data with `fields` added, as strings, after its own (read back, a later key wins).
    fn payload(&self, fields: &[(&str, &str)]) -> String {
        let open = self.0.trim_end().strip_suffix('}').unwrap_or(&self.0);
        let mut text = String::with_capacity(self.0.len() + 96);
        text.push_str(open);
        let mut first = open.trim_end().ends_with('{');
        for (key, value) in fields {
            if !std::mem::take(&mut first) {
                text.push(',');
            }
            text.push_str(&serde_json::Value::from(*key).to_string());
            text.push(':');
            text.push_str(&serde_json::Value::from(*value).to_string());
        }
        text.push('}');
        text
    }
}

/// One outbox row per intent, keyed by (event, recipient, channel) in the table; the payload is
/// `data` with the school, its time zone and the recipient's name. Low-priority rows wait out
/// quiet hours; an SMS fallback waits behind its recipient's push row.
#[allow(clippy::too_many_arguments)]
pub(super) fn outbox_rows(
    kind: Kind,
    intents: Vec<NotificationIntent>,
    audience: &[&Recipient],
    data: &NoticeData,
    (school_id, seq): (&str, i64),
    (school_name, time_zone, quiet_start, quiet_end): &SchoolNotice,
    at: NaiveDateTime,
    sms_fallback_after: Duration,
) -> Vec<OutboxRow> {
    let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::UTC);
    let local_now = at.and_utc().with_timezone(&tz).time();
    let quiet = quiet_start
        .as_deref()
        .and_then(parse_time_of_day)
        .zip(quiet_end.as_deref().and_then(parse_time_of_day))
        .map(|(start, end)| QuietHours { start, end });
    let rule = kind.rule();
    let mut rows: Vec<(NotificationIntent, OutboxRow)> = intents
        .into_iter()
        .map(|intent| {
            let name = audience
                .iter()
                .find(|r| r.user_id == intent.recipient_id)
                .map_or(String::new(), |r| r.name.clone());
            let payload = data.payload(&[
                ("school_name", school_name),
                ("time_zone", tz.name()),
                ("recipient_name", &name),
            ]);
            let due =
                at + first_attempt_delay(&intent, quiet.as_ref(), local_now, sms_fallback_after);
            let row = OutboxRow {
                id: uuid::Uuid::now_v7().to_string(),
                school_id: school_id.to_owned(),
                event_seq: seq,
                recipient_id: intent.recipient_id.clone(),
                channel: intent.channel.as_str().to_owned(),
                template: kind.as_str().to_owned(),
                address: intent.address.clone(),
                locale: intent.locale.clone(),
                payload,
                status: "pending".into(),
                attempts: 0,
                next_attempt_at: due,
                claimed_until: None,
                last_error: None,
                created_at: at,
                sent_at: None,
                priority: intent.priority.rank(),
                expires_at: Some(due + Duration::seconds(rule.expires_after_secs)),
                fallback_for: None,
                dedup_key: None,
                claimed_by: None,
            };
            (intent, row)
        })
        .collect();
    let push_rows: Vec<(String, String)> = rows
        .iter()
        .filter(|(i, _)| i.channel == Channel::Push)
        .map(|(i, r)| (i.recipient_id.clone(), r.id.clone()))
        .collect();
    for (intent, row) in &mut rows {
        if intent.fallback {
            row.fallback_for = push_rows
                .iter()
                .find(|(recipient, _)| *recipient == intent.recipient_id)
                .map(|(_, id)| id.clone());
        }
    }
    rows.into_iter().map(|(_, row)| row).collect()
}

impl DieselStore {
    /// Queues a notice about a student that is not a kitchen event (a lost card in use, a
    /// one-time pickup code) for the rule's audience, in one transaction; keyed by the school's
    /// next notice number (outbox keys -1, -2, …).
    pub async fn record_notice(
        &self,
        school_id: &str,
        student_id: &str,
        kind: Kind,
        data: serde_json::Value,
    ) -> Result<(), CommandError> {
        let fallback = self.sms_fallback_after;
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                let notice: i64 = diesel::update(schools::table.find(school_id))
                    .set(schools::notice_seq.eq(schools::notice_seq + 1))
                    .returning(schools::notice_seq)
                    .get_result(conn)
                    .await?;
                let school = conn.school_notice(school_id).await?;
                let people = conn
                    .audience(school_id, student_id, kind.rule().audience)
                    .await?;
                let audience: Vec<&Recipient> = people.iter().collect();
                for row in outbox_rows(
                    kind,
                    intents(kind, &audience),
                    &audience,
                    &NoticeData::of(&data),
                    (school_id, -notice),
                    &school,
                    at,
                    fallback,
                ) {
                    diesel::insert_into(outbox::table)
                        .values(&row)
                        .execute(conn)
                        .await?;
                }
                Ok::<_, TxError>(())
            })
            .await)?;
        self.wake_dispatch(super::Wake::Messages);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::NoticeData;
    use serde_json::{Value, json};

    #[test]
    fn a_payload_is_the_data_with_its_messages_fields() {
        let order = r#"{"id": "o1", "student_id": "s1", "items": [{"meal": "Pasta"}]}"#;
        let payload = NoticeData::order(order)
            .payload(&[("school_name", "Elm \"North\""), ("time_zone", "UTC")]);
        let read: Value = serde_json::from_str(&payload).unwrap();
        let order: Value = serde_json::from_str(order).unwrap();
        assert_eq!(
            read,
            json!({"order": order, "school_name": "Elm \"North\"", "time_zone": "UTC"})
        );
        let empty = NoticeData::of(&json!({})).payload(&[("recipient_name", "Ana")]);
        assert_eq!(
            serde_json::from_str::<Value>(&empty).unwrap(),
            json!({"recipient_name": "Ana"})
        );
        let named =
            NoticeData::of(&json!({"school_name": "old"})).payload(&[("school_name", "new")]);
        assert_eq!(
            serde_json::from_str::<Value>(&named).unwrap(),
            json!({"school_name": "new"})
        );
    }
}
