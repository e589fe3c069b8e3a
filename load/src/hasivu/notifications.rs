//! The notifications of a run against a hub the tool started: every outbox row the hub
//! committed (read from its database) against what the tool's sinks received, per channel.

use super::OwnSinks;
use super::plan::Notifications;
use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The outbox's channels, in the order the report shows them.
pub(super) const CHANNELS: [&str; 4] = ["email", "push", "sms", "in_app"];

/// One outbox row, as the hub's database has it.
#[derive(Debug, Clone, PartialEq, diesel::QueryableByName)]
struct OutboxRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    channel: String,
    /// `pending` (waiting, retrying or being sent), `sent`, `expired` (past its expiry, or
    /// its news no longer true), `skipped` (a fallback whose first channel delivered),
    /// `dead` (given up on).
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
    sent_at: Option<chrono::NaiveDateTime>,
}

/// What the hub still has to do: outbox rows waiting, and committed events whose notices are
/// not in the outbox yet (dispatch fans them out after the commit).
#[derive(Debug, Clone, Copy, diesel::QueryableByName)]
struct Waiting {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pending: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    awaiting_fan_out: i64,
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

/// The same counts as the hub's own outbox gauges (`outbox_pending`,
/// `outbox_events_awaiting_fan_out`).
const WAITING_SQL: &str = "SELECT \
     (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS pending, \
     (SELECT COUNT(*) FROM fan_out_queue) AS awaiting_fan_out";
const OUTBOX_SQL: &str = "SELECT id, channel, status, sent_at FROM outbox";
/// In-app messages delivered: an inbox row takes its outbox row's id.
const INBOX_SQL: &str = "SELECT i.id AS id FROM inbox_messages i \
     JOIN outbox o ON o.id = i.id WHERE o.channel = 'in_app'";

/// The hub's own database, read (never written) for what it committed.
enum HubDb {
    Sqlite(diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>),
    Postgres(Box<diesel_async::AsyncPgConnection>),
}

impl HubDb {
    async fn open(url: &str) -> anyhow::Result<HubDb> {
        use diesel_async::{AsyncConnection, SimpleAsyncConnection};
        Ok(match url.strip_prefix("sqlite://") {
            Some(path) => {
                let mut conn =
                    diesel_async::sync_connection_wrapper::SyncConnectionWrapper::establish(path)
                        .await
                        .with_context(|| format!("opening the hub's database {path}"))?;
                // The hub writes meanwhile: wait for its lock rather than fail.
                conn.batch_execute("PRAGMA busy_timeout = 5000;").await?;
                HubDb::Sqlite(conn)
            }
            None => HubDb::Postgres(Box::new(
                diesel_async::AsyncPgConnection::establish(url)
                    .await
                    .context("connecting to the hub's database")?,
            )),
        })
    }

    async fn load<T>(&mut self, sql: &'static str) -> anyhow::Result<Vec<T>>
    where
        T: diesel::QueryableByName<diesel::sqlite::Sqlite>
            + diesel::QueryableByName<diesel::pg::Pg>
            + Send
            + 'static,
    {
        use diesel_async::RunQueryDsl;
        Ok(match self {
            HubDb::Sqlite(conn) => diesel::sql_query(sql).load(conn).await?,
            HubDb::Postgres(conn) => diesel::sql_query(sql).load(&mut **conn).await?,
        })
    }

    async fn waiting(&mut self) -> anyhow::Result<Waiting> {
        self.load::<Waiting>(WAITING_SQL)
            .await?
            .first()
            .copied()
            .context("no counts")
    }
}

/// What reached the sinks: per channel, arrivals per outbox id (email by Message-ID, push by
/// the id it carries, in-app by the inbox row, which takes the outbox id); SMS by count
/// (Twilio's API carries no id of ours).
#[derive(Debug, Default)]
struct Received {
    by_id: HashMap<&'static str, HashMap<String, usize>>,
    sms: u64,
}

/// One channel's accounting: what the hub committed, by status at the snapshot, against what
/// its sink received.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub(super) struct ChannelCount {
    committed: u64,
    sent: u64,
    /// Dropped by rule: past its expiry, or its news no longer true (a meal's "ready" when it
    /// was handed over first).
    expired: u64,
    /// Dropped by rule: an SMS fallback whose push was delivered.
    skipped: u64,
    /// Dead-lettered: given up on.
    dead: u64,
    /// Still waiting, retrying or being sent at the snapshot.
    pending: u64,
    /// A status this tool does not know.
    other: u64,
    /// Distinct messages received (SMS: arrivals).
    received: u64,
    /// Messages received more than once; SMS, by count only: arrivals beyond those sent and
    /// pending (a lower bound).
    duplicates: u64,
    /// Recorded as sent, never received.
    sent_not_received: u64,
    /// Received, never committed (never for SMS: not known by id).
    received_not_committed: u64,
    /// The last send the hub recorded, in seconds after the end of the last phase (negative:
    /// before it).
    last_sent_after_end_secs: Option<f64>,
}

/// Every channel's accounting from the outbox's rows and what the sinks received; `end` is
/// the end of the last phase (UTC, as the hub records its times).
fn account(
    rows: &[OutboxRow],
    received: &Received,
    end: chrono::NaiveDateTime,
) -> Vec<(&'static str, ChannelCount)> {
    CHANNELS
        .iter()
        .map(|&channel| {
            let mut c = ChannelCount::default();
            let mine: Vec<&OutboxRow> = rows.iter().filter(|r| r.channel == channel).collect();
            let mut last: Option<chrono::NaiveDateTime> = None;
            for r in &mine {
                c.committed += 1;
                match r.status.as_str() {
                    "sent" => {
                        c.sent += 1;
                        last = last.max(r.sent_at);
                    }
                    "expired" => c.expired += 1,
                    "skipped" => c.skipped += 1,
                    "dead" => c.dead += 1,
                    "pending" => c.pending += 1,
                    _ => c.other += 1,
                }
            }
            c.last_sent_after_end_secs = last.map(|t| {
                (t - end)
                    .num_microseconds()
                    .map_or(f64::INFINITY, |us| us as f64 / 1e6)
            });
            match received.by_id.get(channel) {
                None if channel == "sms" => {
                    c.received = received.sms;
                    c.duplicates = received.sms.saturating_sub(c.sent + c.pending);
                    c.sent_not_received = c.sent.saturating_sub(received.sms);
                }
                by_id => {
                    let empty = HashMap::new();
                    let by_id = by_id.unwrap_or(&empty);
                    c.received = by_id.len() as u64;
                    c.duplicates = by_id.values().filter(|n| **n > 1).count() as u64;
                    c.sent_not_received = mine
                        .iter()
                        .filter(|r| r.status == "sent" && !by_id.contains_key(&r.id))
                        .count() as u64;
                    let ids: std::collections::HashSet<&str> =
                        mine.iter().map(|r| r.id.as_str()).collect();
                    c.received_not_committed =
                        by_id.keys().filter(|id| !ids.contains(id.as_str())).count() as u64;
                }
            }
            (channel, c)
        })
        .collect()
}

/// Met when everything committed was sent or dropped by rule (expired, skipped) by the
/// deadline, with nothing received twice, lost or unaccounted: what missed, if not.
pub(super) fn notifications_verdict(
    channels: &[(&str, ChannelCount)],
    awaiting_fan_out: u64,
) -> Value {
    let mut missed = Vec::new();
    if awaiting_fan_out > 0 {
        missed.push(format!(
            "{awaiting_fan_out} events' notices not yet in the outbox"
        ));
    }
    for (channel, c) in channels {
        for (n, what) in [
            (c.pending, "still pending"),
            (c.other, "in a status unknown to the tool"),
            (c.dead, "dead-lettered"),
            (c.duplicates, "received twice"),
            (c.sent_not_received, "sent but not received"),
            (c.received_not_committed, "received but never committed"),
        ] {
            if n > 0 {
                missed.push(format!("{n} {channel} {what}"));
            }
        }
    }
    json!({"met": missed.is_empty(), "missed": missed})
}

/// Waits until the hub has nothing left to send or `settings.within_secs` after `end` (the end
/// of the last phase), whichever comes first; then accounts every notification in the hub's
/// database against what its sinks received, per channel.
pub(super) async fn account_notifications(
    own: &OwnSinks<'_>,
    settings: &Notifications,
    end: Instant,
    end_utc: chrono::DateTime<chrono::Utc>,
) -> Value {
    let setup = json!({
        "accounted": true,
        "sink_delay_ms": own.delay_ms,
        "smtp_sessions": own.smtp_sessions,
        "provider_limits": own.limits,
        "within_secs": settings.within_secs,
        "end_of_last_phase": end_utc.to_rfc3339(),
    });
    let deadline = end + Duration::from_secs(settings.within_secs);
    let counted = async {
        let mut db = HubDb::open(own.database_url).await?;
        let settled = loop {
            let w = db.waiting().await?;
            if w.pending == 0 && w.awaiting_fan_out == 0 {
                break Some(Instant::now());
            }
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            actix_web::rt::time::sleep((deadline - now).min(Duration::from_millis(250))).await;
        };
        let waiting = db.waiting().await?;
        let rows = db.load::<OutboxRow>(OUTBOX_SQL).await?;
        let inbox = db.load::<Id>(INBOX_SQL).await?;
        anyhow::Ok((settled, waiting, rows, inbox))
    };
    let (settled, waiting, rows, inbox) = match counted.await {
        Ok(counted) => counted,
        Err(e) => {
            let mut report = setup;
            report["error"] = json!(format!("{e:#}"));
            report["verdict"] = json!({"met": false, "missed": [format!("not accounted: {e:#}")]});
            return report;
        }
    };
    // After the database: whatever it records as sent had reached its sink before.
    let times = |d: HashMap<String, Vec<chrono::DateTime<chrono::Utc>>>| {
        d.into_iter()
            .map(|(id, at)| (id, at.len()))
            .collect::<HashMap<_, _>>()
    };
    let mut received = Received {
        sms: own.sinks.providers.sms_count() as u64,
        ..Received::default()
    };
    received
        .by_id
        .insert("email", times(own.sinks.smtp.deliveries()));
    received
        .by_id
        .insert("push", times(own.sinks.providers.push_deliveries()));
    received
        .by_id
        .insert("in_app", inbox.into_iter().map(|i| (i.id, 1)).collect());
    let channels = account(&rows, &received, end_utc.naive_utc());
    let awaiting = u64::try_from(waiting.awaiting_fan_out).unwrap_or(0);
    let verdict = notifications_verdict(&channels, awaiting);
    let last = channels
        .iter()
        .filter_map(|(_, c)| c.last_sent_after_end_secs)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let mut report = setup;
    report["settled_after_end_secs"] =
        json!(settled.map(|t| t.saturating_duration_since(end).as_secs_f64()));
    report["last_sent_after_end_secs"] = json!(last);
    report["events_awaiting_fan_out"] = json!(awaiting);
    report["channels"] = Value::Object(
        channels
            .iter()
            .map(|(name, c)| (name.to_string(), json!(c)))
            .collect(),
    );
    report["verdict"] = verdict;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, channel: &str, status: &str, sent_ms: Option<i64>) -> OutboxRow {
        let end = end();
        OutboxRow {
            id: id.to_owned(),
            channel: channel.to_owned(),
            status: status.to_owned(),
            sent_at: sent_ms.map(|ms| end + chrono::Duration::milliseconds(ms)),
        }
    }

    fn end() -> chrono::NaiveDateTime {
        chrono::DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .unwrap()
            .naive_utc()
    }

    fn received(by_id: &[(&'static str, &[(&str, usize)])], sms: u64) -> Received {
        Received {
            by_id: by_id
                .iter()
                .map(|(channel, ids)| {
                    let ids = ids.iter().map(|(id, n)| (id.to_string(), *n)).collect();
                    (*channel, ids)
                })
                .collect(),
            sms,
        }
    }

    #[test]
    fn each_channel_counts_committed_against_received() {
        let rows = [
            row("e1", "email", "sent", Some(-2_000)),
            row("e2", "email", "sent", Some(1_500)),
            row("e3", "email", "pending", None),
            row("e4", "email", "dead", None),
            row("p1", "push", "sent", Some(250)),
            row("p2", "push", "expired", None),
            row("p3", "push", "sent", Some(100)),
            row("s1", "sms", "sent", Some(-10)),
            row("s2", "sms", "pending", None),
            row("s3", "sms", "skipped", None),
            row("i1", "in_app", "sent", Some(-5_000)),
            row("i2", "in_app", "odd", None),
        ];
        let got = received(
            &[
                // e1 twice; e3 on its way (received, not yet recorded sent); x never committed.
                ("email", &[("e1", 2), ("e2", 1), ("e3", 1), ("x", 1)]),
                // p3 recorded sent but never received.
                ("push", &[("p1", 1)]),
                ("in_app", &[("i1", 1)]),
            ],
            // One sent, one pending that may have arrived, one more: a duplicate.
            3,
        );
        let channels: HashMap<&str, ChannelCount> =
            account(&rows, &got, end()).into_iter().collect();
        let email = &channels["email"];
        assert_eq!(
            (email.committed, email.sent, email.pending, email.dead),
            (4, 2, 1, 1)
        );
        assert_eq!(
            (
                email.received,
                email.duplicates,
                email.sent_not_received,
                email.received_not_committed
            ),
            (4, 1, 0, 1)
        );
        assert_eq!(email.last_sent_after_end_secs, Some(1.5));
        let push = &channels["push"];
        assert_eq!((push.sent, push.expired, push.received), (2, 1, 1));
        assert_eq!((push.sent_not_received, push.duplicates), (1, 0));
        assert_eq!(push.last_sent_after_end_secs, Some(0.25));
        let sms = &channels["sms"];
        assert_eq!(
            (sms.sent, sms.pending, sms.skipped, sms.received),
            (1, 1, 1, 3)
        );
        assert_eq!((sms.duplicates, sms.sent_not_received), (1, 0));
        assert_eq!(sms.last_sent_after_end_secs, Some(-0.01));
        let in_app = &channels["in_app"];
        assert_eq!((in_app.sent, in_app.other, in_app.received), (1, 1, 1));
        // Nothing committed on a channel: all zero, no last send.
        let none = account(&[], &received(&[], 0), end());
        assert_eq!(none.len(), 4);
        assert!(none.iter().all(|(_, c)| *c == ChannelCount::default()));
    }

    #[test]
    fn notifications_are_met_only_when_nothing_waits_doubles_or_goes_missing() {
        let clean = ChannelCount {
            committed: 10,
            sent: 7,
            expired: 2,
            skipped: 1,
            received: 7,
            last_sent_after_end_secs: Some(0.4),
            ..ChannelCount::default()
        };
        let all = |c: &ChannelCount| -> Vec<(&str, ChannelCount)> {
            CHANNELS.iter().map(|ch| (*ch, c.clone())).collect()
        };
        // Expired and skipped are by rule: met.
        assert_eq!(notifications_verdict(&all(&clean), 0)["met"], true);
        // Events not fanned out yet are news still to send.
        let v = notifications_verdict(&all(&clean), 3);
        assert_eq!(v["met"], false);
        assert_eq!(v["missed"][0], "3 events' notices not yet in the outbox");
        for change in [
            |c: &mut ChannelCount| c.pending = 1,
            |c: &mut ChannelCount| c.duplicates = 1,
            |c: &mut ChannelCount| c.dead = 1,
            |c: &mut ChannelCount| c.sent_not_received = 1,
            |c: &mut ChannelCount| c.received_not_committed = 1,
            |c: &mut ChannelCount| c.other = 1,
        ] {
            let mut bad = clean.clone();
            change(&mut bad);
            let mut channels = all(&clean);
            channels[2].1 = bad;
            let v = notifications_verdict(&channels, 0);
            assert_eq!(v["met"], false, "{v}");
            assert_eq!(v["missed"].as_array().unwrap().len(), 1, "{v}");
            assert!(v["missed"][0].as_str().unwrap().contains(" sms "), "{v}");
        }
    }
}
