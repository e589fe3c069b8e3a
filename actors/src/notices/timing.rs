//! When a message goes: the evening digest, quiet hours, and the wait behind push.

use super::recipients::NotificationIntent;
use super::rules::Priority;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};

/// The school day whose digest is due at school-local time `now`, if any: due from `at` until
/// the day ends, unless `done` (the last day whose digests were queued) is that day already.
/// A day whose whole evening the hub missed is not caught up the next day: by then it is old
/// news, and the next evening's digest comes as usual.
pub fn digest_due(now: NaiveDateTime, at: NaiveTime, done: Option<NaiveDate>) -> Option<NaiveDate> {
    let today = now.date();
    (now.time() >= at && done.is_none_or(|d| d < today)).then_some(today)
}

/// A school's quiet hours, in its local time; `start > end` spans midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    /// How long a message arriving at local time `now` waits for quiet hours to end.
    pub fn wait_at(&self, now: NaiveTime) -> Option<TimeDelta> {
        let (start, end) = (self.start, self.end);
        let quiet = if start <= end {
            start <= now && now < end
        } else {
            now >= start || now < end
        };
        if !quiet {
            return None;
        }
        let wait = end - now;
        Some(if wait < TimeDelta::zero() {
            wait + TimeDelta::days(1)
        } else {
            wait
        })
    }
}

/// How long a message waits before its first attempt: low-priority messages on channels that
/// interrupt wait out quiet hours; an SMS fallback waits for push to have its chance.
pub fn first_attempt_delay(
    intent: &NotificationIntent,
    quiet: Option<&QuietHours>,
    local_now: NaiveTime,
    fallback_after: TimeDelta,
) -> TimeDelta {
    let held = (intent.priority == Priority::Low && intent.channel.interrupts())
        .then(|| quiet.and_then(|q| q.wait_at(local_now)))
        .flatten()
        .unwrap_or_default();
    let behind_push = if intent.fallback {
        fallback_after
    } else {
        TimeDelta::zero()
    };
    held.max(behind_push)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notices::recipients::{Recipient, intents, tests::person};
    use crate::notices::rules::{Channel, Kind};

    #[test]
    fn the_digest_is_due_from_its_time_until_the_day_ends_once_a_day() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
        let at = |d, h, m| day(d).and_time(t(h, m));
        let evening = t(18, 0);
        assert_eq!(digest_due(at(7, 17, 59), evening, None), None);
        assert_eq!(digest_due(at(7, 18, 0), evening, None), Some(day(7)));
        assert_eq!(
            digest_due(at(7, 23, 59), evening, Some(day(6))),
            Some(day(7))
        );
        assert_eq!(
            digest_due(at(7, 19, 0), evening, Some(day(7))),
            None,
            "once"
        );
        // Down all evening: the next morning it is not sent late, and that evening's is.
        assert_eq!(digest_due(at(8, 9, 0), evening, Some(day(6))), None);
        assert_eq!(
            digest_due(at(8, 18, 0), evening, Some(day(6))),
            Some(day(8))
        );
    }

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    #[test]
    fn quiet_hours_hold_low_priority_messages_until_they_end() {
        let night = QuietHours {
            start: t(21, 0),
            end: t(7, 0),
        };
        assert_eq!(night.wait_at(t(22, 0)), Some(TimeDelta::hours(9)));
        assert_eq!(night.wait_at(t(6, 30)), Some(TimeDelta::minutes(30)));
        assert_eq!(night.wait_at(t(7, 0)), None);
        assert_eq!(night.wait_at(t(12, 0)), None);
        let siesta = QuietHours {
            start: t(13, 0),
            end: t(14, 0),
        };
        assert_eq!(siesta.wait_at(t(13, 15)), Some(TimeDelta::minutes(45)));
        assert_eq!(siesta.wait_at(t(14, 15)), None);

        let g = Recipient {
            has_push: true,
            ..person("g", Some("g@example.org"))
        };
        let fallback = TimeDelta::seconds(120);
        let delays = |kind: Kind| {
            intents(kind, &[&g])
                .iter()
                .map(|i| {
                    let d = first_attempt_delay(i, Some(&night), t(22, 0), fallback);
                    (i.channel, d)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            delays(Kind::OrderPlaced),
            [
                (Channel::InApp, TimeDelta::zero()),
                (Channel::Push, TimeDelta::hours(9)),
            ]
        );
        assert!(delays(Kind::OrderReady).iter().all(|(_, d)| d.is_zero()));
        let sms_behind_push = NotificationIntent {
            recipient_id: "g".into(),
            channel: Channel::Sms,
            address: "+1555".into(),
            locale: "en".into(),
            priority: Priority::Critical,
            fallback: true,
        };
        assert_eq!(
            first_attempt_delay(&sms_behind_push, Some(&night), t(22, 0), fallback),
            fallback
        );
    }
}
