//! The one table of notification rules: what a message is about, who hears it, how urgently,
//! on which channels by default, and which events make one.

use crate::domain::machine::{Issuer, OrderState};
use crate::domain::orders::Alert;
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
    /// A one-time code to sign in with, sent to the email or phone it was asked for. Secret.
    SignInCode,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
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
        Kind::SignInCode,
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
            Kind::SignInCode => "sign_in_code",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Its text is a secret (a one-time code): providers send it, logs never show it.
    pub fn secret(self) -> bool {
        matches!(self, Kind::PickupCode | Kind::SignInCode)
    }

    /// Whether this kind can come on `channel` at all: the digest is an email and nothing
    /// else; a sign-in code comes by the email or SMS it was asked for.
    pub fn offers(self, channel: Channel) -> bool {
        match self {
            Kind::DailyDigest => channel == Channel::Email,
            Kind::SignInCode => matches!(channel, Channel::Email | Channel::Sms),
            _ => true,
        }
    }

    /// Whether people choose its channels (`/me/preferences`): not a sign-in code, which
    /// goes to the login it was asked for.
    pub fn chosen_by_people(self) -> bool {
        self != Kind::SignInCode
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
            // Someone waits at a sign-in screen. Its audience is not read: it goes to the
            // person who asked, and its expiry is the code's own.
            Kind::SignInCode => rule(Audience::Family, Priority::Critical, 600),
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
            | Kind::DailyDigest
            | Kind::SignInCode => true,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
