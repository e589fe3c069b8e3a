//! Plain data and pure rules, one module per concept: no I/O, no actors. The items are
//! re-exported here, so the server names them `domain::X` whatever part holds them.

pub mod allergies;
pub mod counters;
pub mod machine;
pub mod orders;
pub mod roles;
pub mod stations;
pub mod timers;
pub mod waves;

pub use allergies::allergy_conflicts;
pub use counters::{CounterRef, PICKUP_ALPHABET, PICKUP_CODE_LEN, assign_counter, pickup_code};
pub use machine::{
    Issuer, OrderCommand, OrderState, RECALL_WINDOW_SECS, TRANSITIONS, Transition, TransitionError,
    bump, decide, recall_allowed,
};
pub use orders::{Alert, COUNTER_CHANGED, KitchenEvent, OrderLine, OrderSummary, event_type};
pub use roles::Role;
pub use stations::{ITEM_DONE, ItemError, mark_done, stations_done, steps_to_ready};
pub use timers::{ConfirmOverdue, TimerAction, TimerPolicy, next_timer};
pub use waves::{Wave, WaveError, cancel_allowed, choose_wave};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in OrderState::ALL {
            assert_eq!(OrderState::parse(s.as_str()), Some(s));
        }
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        for a in [Alert::ConfirmOverdue, Alert::PickupReminder] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
            assert_eq!(a.event_type(), format!("order.{}", a.as_str()));
        }
    }
}
