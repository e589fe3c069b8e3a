//! The hand-over at a pickup counter: what a card scan decides, as a pure function of the card,
//! the reader and the student's orders of the day. Committing a hand-over is the kitchen's job
//! (a version-guarded pickup), so two readers never hand one meal over twice.

use crate::domain::counters::CounterRef;
use crate::domain::machine::OrderState;
use crate::domain::orders::OrderSummary;
use serde::{Deserialize, Serialize};

/// A card as the hub knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardStatus {
    Active,
    Blocked,
    Lost,
    /// A replacement card was issued; this one no longer works.
    Replaced,
}

impl CardStatus {
    pub fn parse(s: &str) -> Option<CardStatus> {
        match s {
            "active" => Some(CardStatus::Active),
            "blocked" => Some(CardStatus::Blocked),
            "lost" => Some(CardStatus::Lost),
            "replaced" => Some(CardStatus::Replaced),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CardStatus::Active => "active",
            CardStatus::Blocked => "blocked",
            CardStatus::Lost => "lost",
            CardStatus::Replaced => "replaced",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub school_id: String,
    pub student_id: String,
    pub status: CardStatus,
}

/// What the reader is told, with a stable code (`verdict`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Hand the meal over: the order is now picked up.
    Accepted {
        order_id: String,
        student_name: String,
        pickup_code: Option<String>,
    },
    UnknownCard,
    CardBlocked {
        student_id: String,
    },
    CardLost {
        student_id: String,
    },
    /// The card belongs to another school.
    WrongSchool,
    /// Nothing ready for this student; `state` is their order's, if they have one.
    NoReadyOrder {
        order_id: Option<String>,
        state: Option<OrderState>,
    },
    /// Ready, at another counter.
    WrongCounter {
        order_id: String,
        counter: CounterRef,
    },
    AlreadyPickedUp {
        order_id: String,
    },
    /// Served despite an allergy: staff must acknowledge before handing it over.
    AllergyHold {
        order_id: String,
        note: String,
    },
}

impl Verdict {
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Accepted { .. } => "accepted",
            Verdict::UnknownCard => "unknown_card",
            Verdict::CardBlocked { .. } => "card_blocked",
            Verdict::CardLost { .. } => "card_lost",
            Verdict::WrongSchool => "wrong_school",
            Verdict::NoReadyOrder { .. } => "no_ready_order",
            Verdict::WrongCounter { .. } => "wrong_counter",
            Verdict::AlreadyPickedUp { .. } => "already_picked_up",
            Verdict::AllergyHold { .. } => "allergy_hold",
        }
    }
}

/// A scan's outcome before anything is committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Final(Verdict),
    /// Hand this order over (commit the pickup, guarded by its version).
    HandOver(Box<OrderSummary>),
}

/// Decides a scan at `counter_id` of `school_id`. `orders` are the card holder's orders of the
/// day in that school: live ones and those picked up today.
pub fn decide(
    card: Option<&Card>,
    school_id: &str,
    counter_id: &str,
    orders: &[OrderSummary],
) -> Decision {
    let Some(card) = card else {
        return Decision::Final(Verdict::UnknownCard);
    };
    if card.school_id != school_id {
        return Decision::Final(Verdict::WrongSchool);
    }
    let student_id = card.student_id.clone();
    match card.status {
        CardStatus::Active => {}
        CardStatus::Lost => return Decision::Final(Verdict::CardLost { student_id }),
        CardStatus::Blocked | CardStatus::Replaced => {
            return Decision::Final(Verdict::CardBlocked { student_id });
        }
    }
    let mine = orders.iter().filter(|o| o.student_id == card.student_id);
    let ready = mine
        .clone()
        .filter(|o| o.state == OrderState::Ready)
        .min_by_key(|o| (o.ready_at, o.placed_at));
    if let Some(order) = ready {
        if let Some(counter) = &order.counter
            && counter.id != counter_id
        {
            return Decision::Final(Verdict::WrongCounter {
                order_id: order.id.clone(),
                counter: counter.clone(),
            });
        }
        if let Some(note) = &order.allergy_override {
            return Decision::Final(Verdict::AllergyHold {
                order_id: order.id.clone(),
                note: note.clone(),
            });
        }
        return Decision::HandOver(Box::new(order.clone()));
    }
    let live = mine
        .clone()
        .filter(|o| !o.state.is_terminal())
        .min_by_key(|o| o.placed_at);
    if let Some(order) = live {
        return Decision::Final(Verdict::NoReadyOrder {
            order_id: Some(order.id.clone()),
            state: Some(order.state),
        });
    }
    match mine
        .filter(|o| o.state == OrderState::PickedUp)
        .max_by_key(|o| o.updated_at)
    {
        Some(order) => Decision::Final(Verdict::AlreadyPickedUp {
            order_id: order.id.clone(),
        }),
        None => Decision::Final(Verdict::NoReadyOrder {
            order_id: None,
            state: None,
        }),
    }
}

/// The verdict of a hand-over that was committed.
pub fn accepted(order: &OrderSummary) -> Verdict {
    Verdict::Accepted {
        order_id: order.id.clone(),
        student_name: order.student_name.clone(),
        pickup_code: order.pickup_code.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, Utc};

    fn card(status: CardStatus) -> Card {
        Card {
            school_id: "sc".into(),
            student_id: "s".into(),
            status,
        }
    }

    fn order(id: &str, state: OrderState, counter: Option<&str>) -> OrderSummary {
        let at = Utc::now();
        OrderSummary {
            id: id.into(),
            school_id: "sc".into(),
            student_id: "s".into(),
            student_name: "Ada".into(),
            state,
            version: 4,
            items: Vec::new(),
            total_cents: 0,
            placed_at: at,
            updated_at: at,
            counter: counter.map(|c| CounterRef {
                id: c.into(),
                number: 1,
                name: format!("Counter {c}"),
            }),
            pickup_code: Some("AC34".into()),
            wave: None,
            ready_at: (state == OrderState::Ready).then_some(at),
            alerts: Vec::new(),
            allergy_override: None,
        }
    }

    fn verdict(d: Decision) -> String {
        match d {
            Decision::Final(v) => v.code().to_owned(),
            Decision::HandOver(o) => format!("hand over {}", o.id),
        }
    }

    #[test]
    fn every_verdict() {
        let active = card(CardStatus::Active);
        let ready = order("o1", OrderState::Ready, Some("c1"));
        let decide_at = |card: Option<&Card>, counter: &str, orders: &[OrderSummary]| {
            verdict(decide(card, "sc", counter, orders))
        };
        assert_eq!(
            decide_at(Some(&active), "c1", std::slice::from_ref(&ready)),
            "hand over o1"
        );
        assert_eq!(
            decide_at(None, "c1", std::slice::from_ref(&ready)),
            "unknown_card"
        );
        let elsewhere = Card {
            school_id: "other".into(),
            ..active.clone()
        };
        assert_eq!(decide_at(Some(&elsewhere), "c1", &[]), "wrong_school");
        for (status, code) in [
            (CardStatus::Blocked, "card_blocked"),
            (CardStatus::Replaced, "card_blocked"),
            (CardStatus::Lost, "card_lost"),
        ] {
            assert_eq!(
                decide_at(Some(&card(status)), "c1", std::slice::from_ref(&ready)),
                code
            );
        }
        assert_eq!(
            decide_at(Some(&active), "c2", std::slice::from_ref(&ready)),
            "wrong_counter"
        );
        match decide(Some(&active), "sc", "c2", std::slice::from_ref(&ready)) {
            Decision::Final(Verdict::WrongCounter { counter, .. }) => {
                assert_eq!(counter.name, "Counter c1")
            }
            other => panic!("{other:?}"),
        }
        // No counter was open when it became ready: any counter may hand it over.
        let anywhere = order("o2", OrderState::Ready, None);
        assert_eq!(decide_at(Some(&active), "c9", &[anywhere]), "hand over o2");
        let preparing = order("o3", OrderState::Preparing, None);
        match decide(Some(&active), "sc", "c1", &[preparing]) {
            Decision::Final(Verdict::NoReadyOrder { state, .. }) => {
                assert_eq!(state, Some(OrderState::Preparing))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decide_at(Some(&active), "c1", &[]), "no_ready_order");
        let done = order("o4", OrderState::PickedUp, Some("c1"));
        assert_eq!(
            decide_at(Some(&active), "c1", std::slice::from_ref(&done)),
            "already_picked_up"
        );
        // A second meal still waiting wins over the one already collected.
        assert_eq!(
            decide_at(Some(&active), "c1", &[done, ready.clone()]),
            "hand over o1"
        );
        let held = OrderSummary {
            allergy_override: Some("parent confirmed".into()),
            ..ready
        };
        assert_eq!(decide_at(Some(&active), "c1", &[held]), "allergy_hold");
    }

    #[test]
    fn the_meal_ready_first_goes_first() {
        let active = card(CardStatus::Active);
        let mut early = order("early", OrderState::Ready, Some("c1"));
        early.ready_at = early.ready_at.map(|t| t - TimeDelta::seconds(60));
        let late = order("late", OrderState::Ready, Some("c1"));
        assert_eq!(
            verdict(decide(Some(&active), "sc", "c1", &[late, early])),
            "hand over early"
        );
        let v = accepted(&order("o", OrderState::PickedUp, None));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["verdict"], "accepted");
        assert_eq!(json["pickup_code"], "AC34");
    }
}
