//! The order state machine: states, commands, who may issue them, and the pure `decide`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Placed,
    Confirmed,
    Preparing,
    Ready,
    PickedUp,
    Cancelled,
    Uncollected,
}

impl OrderState {
    pub const ALL: [OrderState; 7] = [
        OrderState::Placed,
        OrderState::Confirmed,
        OrderState::Preparing,
        OrderState::Ready,
        OrderState::PickedUp,
        OrderState::Cancelled,
        OrderState::Uncollected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Placed => "placed",
            OrderState::Confirmed => "confirmed",
            OrderState::Preparing => "preparing",
            OrderState::Ready => "ready",
            OrderState::PickedUp => "picked_up",
            OrderState::Cancelled => "cancelled",
            OrderState::Uncollected => "uncollected",
        }
    }

    pub fn parse(s: &str) -> Option<OrderState> {
        OrderState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderState::PickedUp | OrderState::Cancelled | OrderState::Uncollected
        )
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderCommand {
    Confirm,
    Start,
    Ready,
    Cancel,
    PickUp,
    MarkUncollected,
    /// Undo the last step (a mis-click on the dashboard), within a short window.
    Recall,
}

impl OrderCommand {
    pub const ALL: [OrderCommand; 7] = [
        OrderCommand::Confirm,
        OrderCommand::Start,
        OrderCommand::Ready,
        OrderCommand::Cancel,
        OrderCommand::PickUp,
        OrderCommand::MarkUncollected,
        OrderCommand::Recall,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderCommand::Confirm => "confirm",
            OrderCommand::Start => "start",
            OrderCommand::Ready => "ready",
            OrderCommand::Cancel => "cancel",
            OrderCommand::PickUp => "pick_up",
            OrderCommand::MarkUncollected => "mark_uncollected",
            OrderCommand::Recall => "recall",
        }
    }
}

impl fmt::Display for OrderCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who issues a command, relative to the order it targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Issuer {
    /// The student the order is for.
    Student,
    /// A guardian linked to that student.
    Guardian,
    /// Kitchen staff, a school admin or a district admin.
    Staff,
    /// The hub itself (timers, verified scans).
    System,
}

/// The role-by-transition matrix: `(command, from, to, who may issue it)`.
/// Every legal transition is a row here; anything else is refused.
pub const TRANSITIONS: &[(OrderCommand, OrderState, OrderState, &[Issuer])] = &[
    (
        OrderCommand::Confirm,
        OrderState::Placed,
        OrderState::Confirmed,
        &[Issuer::Staff],
    ),
    (
        OrderCommand::Start,
        OrderState::Confirmed,
        OrderState::Preparing,
        // The system starts and readies an order whose stations are all done, where the
        // school says so.
        &[Issuer::Staff, Issuer::System],
    ),
    (
        OrderCommand::Ready,
        OrderState::Preparing,
        OrderState::Ready,
        &[Issuer::Staff, Issuer::System],
    ),
    (
        OrderCommand::Cancel,
        OrderState::Placed,
        OrderState::Cancelled,
        // The system cancels an order the kitchen never confirmed, where the school says so.
        &[
            Issuer::Student,
            Issuer::Guardian,
            Issuer::Staff,
            Issuer::System,
        ],
    ),
    (
        OrderCommand::Cancel,
        OrderState::Confirmed,
        OrderState::Cancelled,
        &[Issuer::Student, Issuer::Guardian, Issuer::Staff],
    ),
    (
        OrderCommand::Cancel,
        OrderState::Preparing,
        OrderState::Cancelled,
        &[Issuer::Staff],
    ),
    (
        OrderCommand::PickUp,
        OrderState::Ready,
        OrderState::PickedUp,
        &[Issuer::Staff, Issuer::System],
    ),
    (
        OrderCommand::MarkUncollected,
        OrderState::Ready,
        OrderState::Uncollected,
        &[Issuer::System],
    ),
    (
        OrderCommand::Recall,
        OrderState::Confirmed,
        OrderState::Placed,
        &[Issuer::Staff],
    ),
    (
        OrderCommand::Recall,
        OrderState::Preparing,
        OrderState::Confirmed,
        &[Issuer::Staff],
    ),
    (
        OrderCommand::Recall,
        OrderState::Ready,
        OrderState::Preparing,
        &[Issuer::Staff],
    ),
];

/// How long after a step kitchen staff may recall it.
pub const RECALL_WINDOW_SECS: i64 = 120;

/// A recall undoes only a recent step: within the window since the order last changed.
pub fn recall_allowed(last_change: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    let age = now.signed_duration_since(last_change).num_seconds();
    (0..=RECALL_WINDOW_SECS).contains(&age)
}

/// The dashboard's "bump": the next step forward from a state, if there is one.
pub fn bump(state: OrderState) -> Option<OrderCommand> {
    match state {
        OrderState::Placed => Some(OrderCommand::Confirm),
        OrderState::Confirmed => Some(OrderCommand::Start),
        OrderState::Preparing => Some(OrderCommand::Ready),
        OrderState::Ready => Some(OrderCommand::PickUp),
        OrderState::PickedUp | OrderState::Cancelled | OrderState::Uncollected => None,
    }
}

/// Why a command was refused by the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("cannot {command} an order that is {from}")]
    InvalidTransition {
        command: OrderCommand,
        from: OrderState,
    },
    #[error("{issuer:?} may not {command} an order that is {from}")]
    NotPermitted {
        command: OrderCommand,
        from: OrderState,
        issuer: Issuer,
    },
}

/// A decided, not yet committed, state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: OrderState,
    pub to: OrderState,
    /// The version the order will have once this is committed.
    pub version: i64,
}

/// The pure transition function: the current state and version, a command and its issuer,
/// to the next state and version, or the reason it is refused.
pub fn decide(
    state: OrderState,
    version: i64,
    command: OrderCommand,
    issuer: Issuer,
) -> Result<Transition, TransitionError> {
    let row = TRANSITIONS
        .iter()
        .find(|(c, from, _, _)| *c == command && *from == state)
        .ok_or(TransitionError::InvalidTransition {
            command,
            from: state,
        })?;
    if !row.3.contains(&issuer) {
        return Err(TransitionError::NotPermitted {
            command,
            from: state,
            issuer,
        });
    }
    Ok(Transition {
        from: state,
        to: row.2,
        version: version + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUERS: [Issuer; 4] = [
        Issuer::Student,
        Issuer::Guardian,
        Issuer::Staff,
        Issuer::System,
    ];

    /// The matrix as the README states it, cell by cell: `Some(to)` where allowed.
    fn expected(cmd: OrderCommand, from: OrderState, who: Issuer) -> Option<OrderState> {
        use Issuer::*;
        use OrderCommand as C;
        use OrderState as S;
        match (cmd, from, who) {
            (C::Confirm, S::Placed, Staff) => Some(S::Confirmed),
            (C::Start, S::Confirmed, Staff | System) => Some(S::Preparing),
            (C::Ready, S::Preparing, Staff | System) => Some(S::Ready),
            (C::Cancel, S::Placed, Student | Guardian | Staff | System) => Some(S::Cancelled),
            (C::Cancel, S::Confirmed, Student | Guardian | Staff) => Some(S::Cancelled),
            (C::Cancel, S::Preparing, Staff) => Some(S::Cancelled),
            (C::PickUp, S::Ready, Staff | System) => Some(S::PickedUp),
            (C::MarkUncollected, S::Ready, System) => Some(S::Uncollected),
            (C::Recall, S::Confirmed, Staff) => Some(S::Placed),
            (C::Recall, S::Preparing, Staff) => Some(S::Confirmed),
            (C::Recall, S::Ready, Staff) => Some(S::Preparing),
            _ => None,
        }
    }

    #[test]
    fn every_cell_of_the_matrix() {
        for cmd in OrderCommand::ALL {
            for from in OrderState::ALL {
                for who in ISSUERS {
                    let got = decide(from, 3, cmd, who);
                    match expected(cmd, from, who) {
                        Some(to) => assert_eq!(
                            got,
                            Ok(Transition {
                                from,
                                to,
                                version: 4
                            }),
                            "{cmd} from {from} by {who:?}"
                        ),
                        None => assert!(got.is_err(), "{cmd} from {from} by {who:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(
            decide(OrderState::Ready, 1, OrderCommand::Confirm, Issuer::Staff),
            Err(TransitionError::InvalidTransition {
                command: OrderCommand::Confirm,
                from: OrderState::Ready
            })
        );
        assert_eq!(
            decide(
                OrderState::Preparing,
                1,
                OrderCommand::Cancel,
                Issuer::Student
            ),
            Err(TransitionError::NotPermitted {
                command: OrderCommand::Cancel,
                from: OrderState::Preparing,
                issuer: Issuer::Student
            })
        );
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for from in OrderState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for cmd in OrderCommand::ALL {
                for who in ISSUERS {
                    assert!(decide(from, 9, cmd, who).is_err());
                }
            }
        }
    }

    #[test]
    fn recall_only_within_the_window_and_bump_walks_forward() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .to_utc();
        let later = |s: i64| t0 + chrono::Duration::seconds(s);
        assert!(recall_allowed(t0, later(0)));
        assert!(recall_allowed(t0, later(RECALL_WINDOW_SECS)));
        assert!(!recall_allowed(t0, later(RECALL_WINDOW_SECS + 1)));
        assert!(
            !recall_allowed(t0, later(-5)),
            "clock skew does not open the window"
        );
        let mut state = OrderState::Placed;
        let mut walked = vec![state];
        while let Some(cmd) = bump(state) {
            state = decide(state, 1, cmd, Issuer::Staff).unwrap().to;
            walked.push(state);
        }
        assert_eq!(
            walked,
            [
                OrderState::Placed,
                OrderState::Confirmed,
                OrderState::Preparing,
                OrderState::Ready,
                OrderState::PickedUp
            ]
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Position in the lifecycle: every transition moves strictly forward.
        fn rank(s: OrderState) -> u8 {
            match s {
                OrderState::Placed => 0,
                OrderState::Confirmed => 1,
                OrderState::Preparing => 2,
                OrderState::Ready => 3,
                OrderState::PickedUp | OrderState::Cancelled | OrderState::Uncollected => 4,
            }
        }

        fn command() -> impl Strategy<Value = OrderCommand> {
            proptest::sample::select(OrderCommand::ALL.to_vec())
        }
        fn issuer() -> impl Strategy<Value = Issuer> {
            proptest::sample::select(super::ISSUERS.to_vec())
        }

        proptest! {
            /// No command sequence reaches a state outside the matrix, versions only grow,
            /// and nothing leaves a terminal state.
            #[test]
            fn random_sequences_stay_valid(cmds in proptest::collection::vec((command(), issuer()), 0..40)) {
                let (mut state, mut version) = (OrderState::Placed, 1_i64);
                for (cmd, who) in cmds {
                    let allowed = TRANSITIONS
                        .iter()
                        .find(|(c, f, _, who_may)| *c == cmd && *f == state && who_may.contains(&who));
                    match (decide(state, version, cmd, who), allowed) {
                        (Ok(t), Some((_, _, to, _))) => {
                            prop_assert!(!state.is_terminal());
                            prop_assert_eq!(t.from, state);
                            prop_assert_eq!(t.to, *to);
                            prop_assert_eq!(t.version, version + 1);
                            if cmd == OrderCommand::Recall {
                                prop_assert_eq!(rank(t.to) + 1, rank(state), "a recall steps back once");
                            } else {
                                prop_assert!(rank(t.to) > rank(state), "{} -> {} goes backwards", state, t.to);
                            }
                            state = t.to;
                            version = t.version;
                        }
                        (Err(_), None) => {}
                        (got, row) => prop_assert!(false, "decide {:?} disagrees with the table {:?}", got, row),
                    }
                }
                prop_assert!(version >= 1);
            }
        }
    }
}
