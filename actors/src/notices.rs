//! Who hears what, on which channel, how urgently: the one table of notification rules,
//! each recipient's preferences, critical overrides, quiet hours and the SMS fallback.

use crate::domain::machine::{Issuer, OrderState};
use crate::domain::orders::Alert;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use serde::{Deserialize, Serialize};

/// Notification channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Push,
    Sms,
    InApp,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::InApp, Channel::Push, Channel::Email, Channel::Sms];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Push => "push",
            Channel::Sms => "sms",
            Channel::InApp => "in_app",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a message on this channel interrupts someone (held during quiet hours).
    pub fn interrupts(self) -> bool {
        !matches!(self, Channel::InApp)
    }
}

/// How urgent a message is. Low waits out quiet hours; critical ignores opt-outs and falls
/// back from push to SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Stored as a number so that dispatch can take the most urgent first.
    pub fn rank(self) -> i32 {
        self as i32
    }

    pub fn from_rank(rank: i32) -> Priority {
        match rank {
            i32::MIN..=0 => Priority::Low,
            1 => Priority::Normal,
            2 => Priority::High,
            _ => Priority::Critical,
        }
    }
}

/// What a message is about. Also the name of its templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    OrderPlaced,
    OrderReady,
    OrderCounterChanged,
    OrderPickupReminder,
    OrderCancelled,
    OrderUncollected,
    OrderConfirmOverdue,
    OrderPickedUp,
    /// A lost or blocked card was presented at a counter.
    CardInUse,
    /// A meal served despite an allergy waits at the counter for staff to check.
    AllergyHold,
    /// A one-time code to collect a meal without a card. Secret: never logged.
    PickupCode,
    /// One email an evening to a guardian: the day's orders and pickups of each child.
    DailyDigest,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::OrderPlaced,
        Kind::OrderReady,
        Kind::OrderCounterChanged,
        Kind::OrderPickupReminder,
        Kind::OrderCancelled,
        Kind::OrderUncollected,
        Kind::OrderConfirmOverdue,
        Kind::OrderPickedUp,
        Kind::CardInUse,
        Kind::AllergyHold,
        Kind::PickupCode,
        Kind::DailyDigest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OrderPlaced => "order_placed",
            Kind::OrderReady => "order_ready",
            Kind::OrderCounterChanged => "order_counter_changed",
            Kind::OrderPickupReminder => "order_pickup_reminder",
            Kind::OrderCancelled => "order_cancelled",
            Kind::OrderUncollected => "order_uncollected",
            Kind::OrderConfirmOverdue => "order_confirm_overdue",
            Kind::OrderPickedUp => "order_picked_up",
            Kind::CardInUse => "card_in_use",
            Kind::AllergyHold => "allergy_hold",
            Kind::PickupCode => "pickup_code",
            Kind::DailyDigest => "daily_digest",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Its text is a secret (a one-time code): providers send it, logs never show it.
    pub fn secret(self) -> bool {
        self == Kind::PickupCode
    }

    /// Whether this kind can come on `channel` at all: the digest is an email and nothing else.
    pub fn offers(self, channel: Channel) -> bool {
        self != Kind::DailyDigest || channel == Channel::Email
    }

    /// Whether this kind comes on `channel` unless the recipient chose otherwise: the one
    /// place default channels are decided. Routine news (low and normal) comes in-app and by
    /// push: by email it would be three messages a lunch per child. Email is for what matters
    /// (high and critical) and for the evening digest that sums the routine up. SMS costs the
    /// district per message: opt-in.
    pub fn on_by_default(self, channel: Channel) -> bool {
        if !self.offers(channel) {
            return false;
        }
        match channel {
            Channel::InApp | Channel::Push => true,
            Channel::Email => self == Kind::DailyDigest || self.rule().priority >= Priority::High,
            Channel::Sms => false,
        }
    }

    /// The rule for this kind of message.
    pub fn rule(self) -> Rule {
        let rule = |audience, priority, expires_after_secs| Rule {
            audience,
            priority,
            expires_after_secs,
        };
        const HOUR: i64 = 3600;
        match self {
            // A receipt: welcome, but it may wait until morning.
            Kind::OrderPlaced => rule(Audience::Guardians, Priority::Low, 24 * HOUR),
            Kind::OrderReady => rule(Audience::Guardians, Priority::Normal, 2 * HOUR),
            // The student is on the way to the old counter.
            Kind::OrderCounterChanged => rule(Audience::Family, Priority::High, HOUR),
            Kind::OrderPickupReminder => rule(Audience::Family, Priority::Normal, HOUR),
            // Must reach the family before lunch.
            Kind::OrderCancelled => rule(Audience::Family, Priority::High, 12 * HOUR),
            // A child may not have eaten.
            Kind::OrderUncollected => rule(Audience::Guardians, Priority::Critical, 12 * HOUR),
            // Beside the dashboard's flag, for staff who are not looking at it.
            Kind::OrderConfirmOverdue => rule(Audience::Kitchen, Priority::High, HOUR),
            // The meal was handed over: the family knows the child has eaten.
            Kind::OrderPickedUp => rule(Audience::Guardians, Priority::Normal, 2 * HOUR),
            // Someone may be using a child's card.
            Kind::CardInUse => rule(Audience::Guardians, Priority::Critical, HOUR),
            Kind::AllergyHold => rule(Audience::Guardians, Priority::Critical, HOUR),
            // Useless after five minutes; the student is at the counter now.
            Kind::PickupCode => rule(Audience::Family, Priority::High, 300),
            // Waits out quiet hours; a digest not sent by the next morning is old news.
            Kind::DailyDigest => rule(Audience::Guardians, Priority::Low, 12 * HOUR),
        }
    }

    /// Whether the message still tells the truth about an order in `state`: news of a
    /// waiting meal only while it waits, of an unconfirmed order only while unconfirmed.
    pub fn still_true(self, state: OrderState) -> bool {
        match self {
            Kind::OrderReady | Kind::OrderCounterChanged | Kind::OrderPickupReminder => {
                state == OrderState::Ready
            }
            // Only while nobody has confirmed it yet.
            Kind::OrderConfirmOverdue => state == OrderState::Placed,
            Kind::OrderPlaced
            | Kind::OrderPickedUp
            | Kind::OrderCancelled
            | Kind::OrderUncollected
            | Kind::CardInUse
            | Kind::AllergyHold
            | Kind::PickupCode
            | Kind::DailyDigest => true,
        }
    }
}

/// Who a rule addresses: the student's guardians; the student and their guardians; or the
/// school's kitchen staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Guardians,
    Family,
    Kitchen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub audience: Audience,
    pub priority: Priority,
    /// After this long unsent, a message is dropped as expired rather than sent late.
    pub expires_after_secs: i64,
}

/// Which kind of message an order's move into `state` makes, if any.
pub fn kind_of_transition(state: OrderState, issuer: Issuer) -> Option<Kind> {
    match (state, issuer) {
        (OrderState::Placed, _) => Some(Kind::OrderPlaced),
        (OrderState::Ready, _) => Some(Kind::OrderReady),
        (OrderState::Uncollected, _) => Some(Kind::OrderUncollected),
        (OrderState::PickedUp, _) => Some(Kind::OrderPickedUp),
        // A cancellation the family asked for needs no news.
        (OrderState::Cancelled, Issuer::Staff | Issuer::System) => Some(Kind::OrderCancelled),
        _ => None,
    }
}

/// Which kind of message a timer's alert makes: an overdue confirmation is the kitchen's
/// business; a meal still waiting is the family's.
pub fn kind_of_alert(alert: Alert) -> Option<Kind> {
    match alert {
        Alert::ConfirmOverdue => Some(Kind::OrderConfirmOverdue),
        Alert::PickupReminder => Some(Kind::OrderPickupReminder),
    }
}

/// A recipient's own choice for one kind of message on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub kind: Kind,
    pub channel: Channel,
    pub enabled: bool,
}

/// Someone who may be told about an event, with the addresses and choices the hub knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub user_id: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: String,
    /// Has at least one active device token.
    pub has_push: bool,
    pub preferences: Vec<Preference>,
}

impl Recipient {
    pub fn wants(&self, kind: Kind, channel: Channel) -> bool {
        self.preferences
            .iter()
            .find(|p| p.kind == kind && p.channel == channel)
            .map_or(kind.on_by_default(channel), |p| p.enabled)
    }

    fn address(&self, channel: Channel) -> Option<String> {
        match channel {
            Channel::InApp => Some(self.user_id.clone()),
            // Sent to every active device at send time.
            Channel::Push => self.has_push.then(|| self.user_id.clone()),
            Channel::Email => self.email.clone(),
            Channel::Sms => self.phone.clone(),
        }
    }
}

/// One message to send: becomes one outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationIntent {
    pub recipient_id: String,
    pub channel: Channel,
    /// Delivery address on that channel.
    pub address: String,
    pub locale: String,
    pub priority: Priority,
    /// An SMS that stands behind this recipient's push: sent only if push has not delivered
    /// within the fallback time.
    pub fallback: bool,
}

/// The messages `kind` makes for its audience: each recipient's chosen channels; for a
/// critical message the default channels even where they opted out, and an SMS fallback
/// behind push for anyone with a phone who has not chosen SMS anyway.
pub fn intents(kind: Kind, audience: &[&Recipient]) -> Vec<NotificationIntent> {
    let priority = kind.rule().priority;
    let critical = priority == Priority::Critical;
    let mut out = Vec::new();
    for r in audience {
        let intent = |channel: Channel, address: String, fallback: bool| NotificationIntent {
            recipient_id: r.user_id.clone(),
            channel,
            address,
            locale: r.locale.clone(),
            priority,
            fallback,
        };
        let mut sms_chosen = false;
        for channel in Channel::ALL {
            let Some(address) = r.address(channel).filter(|_| kind.offers(channel)) else {
                continue;
            };
            if r.wants(kind, channel) || (critical && kind.on_by_default(channel)) {
                sms_chosen |= channel == Channel::Sms;
                out.push(intent(channel, address, false));
            }
        }
        if critical
            && !sms_chosen
            && let Some(phone) = r.address(Channel::Sms)
        {
            out.push(intent(Channel::Sms, phone, true));
        }
    }
    out
}

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

    fn person(id: &str, email: Option<&str>) -> Recipient {
        Recipient {
            user_id: id.into(),
            name: id.into(),
            email: email.map(Into::into),
            phone: None,
            locale: "en".into(),
            has_push: false,
            preferences: Vec::new(),
        }
    }

    fn on(intents: &[NotificationIntent], channel: Channel) -> Vec<(&str, &str, bool)> {
        intents
            .iter()
            .filter(|i| i.channel == channel)
            .map(|i| (i.recipient_id.as_str(), i.address.as_str(), i.fallback))
            .collect()
    }

    #[test]
    fn routine_news_comes_in_app_and_by_push_and_email_is_for_what_matters() {
        let g1 = Recipient {
            has_push: true,
            phone: Some("+15550001".into()),
            ..person("g1", Some("g1@example.org"))
        };
        let g2 = person("g2", None);
        let sent = intents(Kind::OrderReady, &[&g1, &g2]);
        assert_eq!(
            on(&sent, Channel::InApp),
            [("g1", "g1", false), ("g2", "g2", false)]
        );
        assert_eq!(on(&sent, Channel::Push), [("g1", "g1", false)]);
        assert!(on(&sent, Channel::Email).is_empty(), "routine: no email");
        assert!(on(&sent, Channel::Sms).is_empty(), "SMS is opt-in");
        assert!(sent.iter().all(|i| i.priority == Priority::Normal));
        // The rule over every kind: email by default exactly for high and critical news and
        // the digest; the digest comes by email only.
        for kind in Kind::ALL {
            let priority = kind.rule().priority;
            let digest = kind == Kind::DailyDigest;
            assert_eq!(
                kind.on_by_default(Channel::Email),
                digest || priority >= Priority::High,
                "{kind:?}"
            );
            assert_eq!(kind.on_by_default(Channel::InApp), !digest, "{kind:?}");
            assert_eq!(kind.on_by_default(Channel::Push), !digest, "{kind:?}");
            assert!(!kind.on_by_default(Channel::Sms), "{kind:?}");
        }
        for kind in [Kind::OrderPlaced, Kind::OrderReady, Kind::OrderPickedUp] {
            assert!(
                on(&intents(kind, &[&g1]), Channel::Email).is_empty(),
                "{kind:?}"
            );
        }
        for kind in [
            Kind::OrderCancelled,
            Kind::OrderUncollected,
            Kind::CardInUse,
        ] {
            assert_eq!(
                on(&intents(kind, &[&g1]), Channel::Email),
                [("g1", "g1@example.org", false)],
                "{kind:?}"
            );
        }
        let digest = intents(Kind::DailyDigest, &[&g1, &g2]);
        assert_eq!(
            digest
                .iter()
                .map(|i| (i.recipient_id.as_str(), i.channel))
                .collect::<Vec<_>>(),
            [("g1", Channel::Email)],
            "the digest: one email, to whoever has an address"
        );
    }

    #[test]
    fn preferences_turn_routine_email_on_and_the_digest_off() {
        let choose = |kind, channel, enabled| Preference {
            kind,
            channel,
            enabled,
        };
        let g = Recipient {
            has_push: true,
            preferences: vec![
                choose(Kind::OrderPickedUp, Channel::Email, true),
                choose(Kind::DailyDigest, Channel::Email, false),
                // The digest has no other channel, whatever is stored.
                choose(Kind::DailyDigest, Channel::Push, true),
            ],
            ..person("g", Some("g@example.org"))
        };
        let picked_up = intents(Kind::OrderPickedUp, &[&g]);
        assert_eq!(
            on(&picked_up, Channel::Email),
            [("g", "g@example.org", false)]
        );
        assert_eq!(on(&picked_up, Channel::Push).len(), 1);
        assert!(on(&intents(Kind::OrderReady, &[&g]), Channel::Email).is_empty());
        assert!(intents(Kind::DailyDigest, &[&g]).is_empty());
    }

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

    #[test]
    fn preferences_choose_channels_per_kind() {
        let g = Recipient {
            phone: Some("+15550001".into()),
            preferences: vec![
                Preference {
                    kind: Kind::OrderReady,
                    channel: Channel::Email,
                    enabled: true,
                },
                Preference {
                    kind: Kind::OrderReady,
                    channel: Channel::Sms,
                    enabled: true,
                },
                Preference {
                    kind: Kind::OrderReady,
                    channel: Channel::InApp,
                    enabled: false,
                },
            ],
            ..person("g", Some("g@example.org"))
        };
        let ready = intents(Kind::OrderReady, &[&g]);
        assert_eq!(on(&ready, Channel::Email), [("g", "g@example.org", false)]);
        assert_eq!(on(&ready, Channel::Sms), [("g", "+15550001", false)]);
        assert!(on(&ready, Channel::InApp).is_empty());
        // Other kinds keep the defaults.
        assert!(on(&intents(Kind::OrderPlaced, &[&g]), Channel::Email).is_empty());
        let cancelled = intents(Kind::OrderCancelled, &[&g]);
        assert_eq!(on(&cancelled, Channel::Email).len(), 1);
        assert!(on(&cancelled, Channel::Sms).is_empty());
    }

    #[test]
    fn critical_messages_override_opt_outs_and_fall_back_to_sms() {
        let opted_out = Channel::ALL
            .into_iter()
            .map(|channel| Preference {
                kind: Kind::OrderUncollected,
                channel,
                enabled: false,
            })
            .collect();
        let g = Recipient {
            has_push: true,
            phone: Some("+15550001".into()),
            preferences: opted_out,
            ..person("g", Some("g@example.org"))
        };
        let sent = intents(Kind::OrderUncollected, &[&g]);
        assert_eq!(on(&sent, Channel::Push), [("g", "g", false)]);
        assert_eq!(on(&sent, Channel::Email).len(), 1);
        assert_eq!(on(&sent, Channel::InApp).len(), 1);
        assert_eq!(on(&sent, Channel::Sms), [("g", "+15550001", true)]);
        assert!(sent.iter().all(|i| i.priority == Priority::Critical));
        // Who chose SMS gets it at once, with no second copy behind push.
        let sms_fan = Recipient {
            preferences: vec![Preference {
                kind: Kind::OrderUncollected,
                channel: Channel::Sms,
                enabled: true,
            }],
            ..g.clone()
        };
        let sent = intents(Kind::OrderUncollected, &[&sms_fan]);
        assert_eq!(on(&sent, Channel::Sms), [("g", "+15550001", false)]);
        // Not critical: opting out is respected and nothing falls back.
        let ready_opt_out = Recipient {
            preferences: vec![Preference {
                kind: Kind::OrderReady,
                channel: Channel::Push,
                enabled: false,
            }],
            ..g
        };
        let sent = intents(Kind::OrderReady, &[&ready_opt_out]);
        assert!(on(&sent, Channel::Push).is_empty() && on(&sent, Channel::Sms).is_empty());
    }

    #[test]
    fn only_a_cancellation_the_family_did_not_ask_for_is_news() {
        let c = OrderState::Cancelled;
        assert_eq!(
            kind_of_transition(c, Issuer::System),
            Some(Kind::OrderCancelled)
        );
        assert_eq!(
            kind_of_transition(c, Issuer::Staff),
            Some(Kind::OrderCancelled)
        );
        assert_eq!(kind_of_transition(c, Issuer::Guardian), None);
        assert_eq!(kind_of_transition(c, Issuer::Student), None);
        assert_eq!(
            kind_of_transition(OrderState::Confirmed, Issuer::Staff),
            None
        );
        assert_eq!(
            kind_of_alert(Alert::ConfirmOverdue),
            Some(Kind::OrderConfirmOverdue)
        );
        assert_eq!(Kind::OrderConfirmOverdue.rule().audience, Audience::Kitchen);
        assert!(!Kind::OrderConfirmOverdue.still_true(OrderState::Confirmed));
        assert_eq!(Kind::OrderCancelled.rule().audience, Audience::Family);
        assert_eq!(Kind::OrderReady.rule().audience, Audience::Guardians);
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        for p in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ] {
            assert_eq!(Priority::from_rank(p.rank()), p);
        }
    }

    #[test]
    fn news_of_a_waiting_meal_is_only_true_while_it_waits() {
        for kind in [
            Kind::OrderReady,
            Kind::OrderCounterChanged,
            Kind::OrderPickupReminder,
        ] {
            assert!(kind.still_true(OrderState::Ready));
            assert!(!kind.still_true(OrderState::PickedUp), "{kind:?}");
            assert!(
                !kind.still_true(OrderState::Preparing),
                "{kind:?} after a recall"
            );
        }
        assert!(Kind::OrderUncollected.still_true(OrderState::Uncollected));
        assert!(Kind::OrderCancelled.still_true(OrderState::Cancelled));
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
