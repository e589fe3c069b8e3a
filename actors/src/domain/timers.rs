//! An order's timers: the confirm deadline, the pickup reminder and the end of its wave.

use super::machine::{OrderCommand, OrderState};
use super::orders::{Alert, OrderSummary};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What the hub does with an order the kitchen has not confirmed in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmOverdue {
    /// Flag it on the dashboard and leave it to the kitchen.
    #[default]
    Alert,
    /// Cancel it and tell the family, so nobody waits for a meal nobody is making.
    Cancel,
}

/// The kitchen's order timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerPolicy {
    /// How long after ordering closes (the wave's cutoff, or the order itself when the school
    /// has no waves) the kitchen has to confirm an order.
    pub confirm_within_secs: i64,
    pub on_confirm_overdue: ConfirmOverdue,
    /// How long a ready meal waits before the student and guardians are reminded; 0 never.
    pub pickup_reminder_after_secs: i64,
}

impl Default for TimerPolicy {
    fn default() -> TimerPolicy {
        TimerPolicy {
            confirm_within_secs: 10 * 60,
            on_confirm_overdue: ConfirmOverdue::Alert,
            pickup_reminder_after_secs: 10 * 60,
        }
    }
}

/// What an order's timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    Command(OrderCommand),
    Alert(Alert),
}

/// An order's next deadline and what happens then, from the order alone: deadlines are
/// derived from persisted times, so a restarted actor re-arms them, and an alert already
/// recorded on the order does not fire again.
pub fn next_timer(
    order: &OrderSummary,
    policy: &TimerPolicy,
) -> Option<(DateTime<Utc>, TimerAction)> {
    let secs = chrono::Duration::seconds;
    match order.state {
        OrderState::Placed => {
            let closes = order
                .wave
                .as_ref()
                .map_or(order.placed_at, |w| w.order_cutoff.max(order.placed_at));
            let due = closes + secs(policy.confirm_within_secs);
            match policy.on_confirm_overdue {
                ConfirmOverdue::Cancel => Some((due, TimerAction::Command(OrderCommand::Cancel))),
                ConfirmOverdue::Alert if order.alerts.contains(&Alert::ConfirmOverdue) => None,
                ConfirmOverdue::Alert => Some((due, TimerAction::Alert(Alert::ConfirmOverdue))),
            }
        }
        OrderState::Ready => {
            let uncollected = order.wave.as_ref().map(|w| {
                (
                    w.ends_at,
                    TimerAction::Command(OrderCommand::MarkUncollected),
                )
            });
            let reminder = (policy.pickup_reminder_after_secs > 0
                && !order.alerts.contains(&Alert::PickupReminder))
            .then(|| {
                let ready_at = order.ready_at.unwrap_or(order.updated_at);
                (
                    ready_at + secs(policy.pickup_reminder_after_secs),
                    TimerAction::Alert(Alert::PickupReminder),
                )
            });
            // Past the end of the wave a reminder is moot: the meal is uncollected.
            match (reminder, uncollected) {
                (Some(r), Some(u)) if r.0 < u.0 => Some(r),
                (_, Some(u)) => Some(u),
                (r, None) => r,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::waves::{Wave, tests::wave};

    fn order_at(state: OrderState, placed_at: DateTime<Utc>, wave: Option<Wave>) -> OrderSummary {
        OrderSummary {
            id: "o".into(),
            school_id: "sc".into(),
            student_id: "s".into(),
            student_name: "S".into(),
            state,
            version: 1,
            items: Vec::new(),
            total_cents: 0,
            placed_at,
            updated_at: placed_at,
            counter: None,
            pickup_code: None,
            wave,
            ready_at: None,
            alerts: Vec::new(),
            allergy_override: None,
        }
    }

    #[test]
    fn confirm_deadline_counts_from_when_ordering_closes() {
        let t0 = Utc::now();
        let min = chrono::Duration::minutes;
        let alert = TimerPolicy::default();
        let cancel = TimerPolicy {
            on_confirm_overdue: ConfirmOverdue::Cancel,
            ..alert
        };
        let mut order = order_at(OrderState::Placed, t0, None);
        assert_eq!(
            next_timer(&order, &alert),
            Some((t0 + min(10), TimerAction::Alert(Alert::ConfirmOverdue)))
        );
        assert_eq!(
            next_timer(&order, &cancel),
            Some((t0 + min(10), TimerAction::Command(OrderCommand::Cancel)))
        );
        // Placed in the morning for a wave whose cutoff is later: counted from the cutoff.
        let mut w = wave("w", 90);
        w.order_cutoff = t0 + min(60);
        order.wave = Some(w);
        assert_eq!(next_timer(&order, &alert).map(|t| t.0), Some(t0 + min(70)));
        // An alert fires once; a cancel is guarded by the version instead.
        order.alerts.push(Alert::ConfirmOverdue);
        assert_eq!(next_timer(&order, &alert), None);
        assert!(next_timer(&order, &cancel).is_some());
        for state in [
            OrderState::Confirmed,
            OrderState::Preparing,
            OrderState::PickedUp,
        ] {
            assert_eq!(next_timer(&order_at(state, t0, None), &alert), None);
        }
    }

    #[test]
    fn a_ready_meal_is_reminded_once_then_uncollected_at_the_end_of_its_wave() {
        let t0 = Utc::now();
        let min = chrono::Duration::minutes;
        let policy = TimerPolicy::default();
        let mut w = wave("w", 0);
        w.ends_at = t0 + min(30);
        let mut order = order_at(OrderState::Ready, t0 - min(60), Some(w));
        order.ready_at = Some(t0);
        assert_eq!(
            next_timer(&order, &policy),
            Some((t0 + min(10), TimerAction::Alert(Alert::PickupReminder)))
        );
        order.alerts.push(Alert::PickupReminder);
        let uncollected = Some((
            t0 + min(30),
            TimerAction::Command(OrderCommand::MarkUncollected),
        ));
        assert_eq!(next_timer(&order, &policy), uncollected);
        // A reminder that would come after the wave ends is never sent.
        order.alerts.clear();
        order.ready_at = Some(t0 + min(25));
        assert_eq!(next_timer(&order, &policy), uncollected);
        // No wave: only the reminder; with reminders off, nothing.
        order.wave = None;
        assert_eq!(next_timer(&order, &policy).map(|t| t.0), Some(t0 + min(35)));
        let off = TimerPolicy {
            pickup_reminder_after_secs: 0,
            ..policy
        };
        assert_eq!(next_timer(&order, &off), None);
    }
}
