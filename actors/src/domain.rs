//! Plain data and pure rules: no I/O, no actors.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Who a person is to the hub. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Student,
    Guardian,
    Teacher,
    KitchenStaff,
    SchoolAdmin,
    Admin,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Student,
        Role::Guardian,
        Role::Teacher,
        Role::KitchenStaff,
        Role::SchoolAdmin,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Guardian => "guardian",
            Role::Teacher => "teacher",
            Role::KitchenStaff => "kitchen_staff",
            Role::SchoolAdmin => "school_admin",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Staff who run a kitchen's orders.
    pub fn is_kitchen_staff(self) -> bool {
        matches!(self, Role::KitchenStaff | Role::SchoolAdmin | Role::Admin)
    }

    /// Staff who may configure a school.
    pub fn is_school_admin(self) -> bool {
        matches!(self, Role::SchoolAdmin | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
        &[Issuer::Staff],
    ),
    (
        OrderCommand::Ready,
        OrderState::Preparing,
        OrderState::Ready,
        &[Issuer::Staff],
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

/// The kind of a kitchen event, as it appears on the wire (`type`) and in the event log.
pub fn event_type(to: OrderState) -> &'static str {
    match to {
        OrderState::Placed => "order.placed",
        OrderState::Confirmed => "order.confirmed",
        OrderState::Preparing => "order.preparing",
        OrderState::Ready => "order.ready",
        OrderState::PickedUp => "order.picked_up",
        OrderState::Cancelled => "order.cancelled",
        OrderState::Uncollected => "order.uncollected",
    }
}

/// The event of a ready order moved to another counter (or to none) because its counter closed.
pub const COUNTER_CHANGED: &str = "order.counter_changed";

/// Something a timer records on an order without changing its state. Each fires once per order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alert {
    /// The kitchen has not confirmed the order within the confirm deadline.
    ConfirmOverdue,
    /// A ready meal is still waiting at its counter.
    PickupReminder,
}

impl Alert {
    /// Its name as stored and shown (serde's name).
    pub fn as_str(self) -> &'static str {
        match self {
            Alert::ConfirmOverdue => "confirm_overdue",
            Alert::PickupReminder => "pickup_reminder",
        }
    }

    /// The event kind in the log and on the wire.
    pub fn event_type(self) -> &'static str {
        match self {
            Alert::ConfirmOverdue => "order.confirm_overdue",
            Alert::PickupReminder => "order.pickup_reminder",
        }
    }
}

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

/// An order as its kitchen sees it while it is live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    pub id: String,
    pub school_id: String,
    pub student_id: String,
    pub student_name: String,
    pub state: OrderState,
    pub version: i64,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Where to collect it, once ready and a counter is open.
    #[serde(default)]
    pub counter: Option<CounterRef>,
    /// Short code shown on the board and said at the counter; unique per school and day.
    #[serde(default)]
    pub pickup_code: Option<String>,
    /// The lunch wave it was ordered for, when the school has waves.
    #[serde(default)]
    pub wave: Option<Wave>,
    /// When it last became ready; the pickup reminder counts from here.
    #[serde(default)]
    pub ready_at: Option<DateTime<Utc>>,
    /// Alerts its timers have recorded, so none fires twice.
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// Why staff served a meal that meets the student's allergies: the hand-over at the
    /// counter then waits for a staff acknowledgement.
    #[serde(default)]
    pub allergy_override: Option<String>,
}

/// A lunch wave on one day, resolved from the school's local times to instants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub id: String,
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Orders for this wave close at this instant.
    pub order_cutoff: DateTime<Utc>,
    /// Students and guardians may cancel until this instant; staff always may.
    pub cancel_until: DateTime<Utc>,
}

/// Why an order cannot be placed for any wave now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaveError {
    #[error("ordering is closed: every lunch wave today is past its cutoff")]
    OrderingClosed,
    #[error("ordering for {0} closed at its cutoff")]
    WaveClosed(String),
    #[error("no lunch wave {0} at this school")]
    UnknownWave(String),
}

/// The wave an order placed at `now` is for: the requested one if it still takes orders,
/// else the earliest wave that does. A school without waves takes orders at any time.
pub fn choose_wave(
    waves: &[Wave],
    requested: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Wave>, WaveError> {
    if let Some(id) = requested {
        let wave = waves
            .iter()
            .find(|w| w.id == id)
            .ok_or_else(|| WaveError::UnknownWave(id.to_owned()))?;
        return if now < wave.order_cutoff {
            Ok(Some(wave.clone()))
        } else {
            Err(WaveError::WaveClosed(wave.name.clone()))
        };
    }
    if waves.is_empty() {
        return Ok(None);
    }
    waves
        .iter()
        .filter(|w| now < w.order_cutoff)
        .min_by_key(|w| w.starts_at)
        .cloned()
        .map(Some)
        .ok_or(WaveError::OrderingClosed)
}

/// Students and guardians cancel only until the wave's cancel deadline.
pub fn cancel_allowed(issuer: Issuer, wave: Option<&Wave>, now: DateTime<Utc>) -> bool {
    match (issuer, wave) {
        (Issuer::Student | Issuer::Guardian, Some(wave)) => now < wave.cancel_until,
        _ => true,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRef {
    pub id: String,
    pub number: i32,
    pub name: String,
}

/// The counter a newly ready order goes to: the open counter with the fewest orders waiting,
/// the lowest number on a tie. `None` when no counter is open.
pub fn assign_counter(
    open: &[CounterRef],
    waiting: impl Fn(&CounterRef) -> i64,
) -> Option<&CounterRef> {
    open.iter().min_by_key(|c| (waiting(c), c.number))
}

/// The allergens of a meal that a student is allergic to (both lists lower case).
pub fn allergy_conflicts(allergies: &[&str], allergens: &[&str]) -> Vec<String> {
    let mut hits: Vec<String> = allergens
        .iter()
        .filter(|a| !a.is_empty() && allergies.contains(a))
        .map(|a| (*a).to_owned())
        .collect();
    hits.sort();
    hits.dedup();
    hits
}

/// Letters and digits that cannot be confused when read aloud or off a screen.
pub const PICKUP_ALPHABET: &[u8] = b"ACDEFGHJKLMNPQRTUVWXY34679";
pub const PICKUP_CODE_LEN: usize = 4;

/// A pickup code not in `taken`, from a source of random indexes.
pub fn pickup_code(
    taken: &std::collections::HashSet<String>,
    mut random_index: impl FnMut(usize) -> usize,
) -> Option<String> {
    // 26^4 = 456,976 codes; a school's day uses a few thousand at most.
    for _ in 0..1000 {
        let code: String = (0..PICKUP_CODE_LEN)
            .map(|_| {
                PICKUP_ALPHABET[random_index(PICKUP_ALPHABET.len()) % PICKUP_ALPHABET.len()] as char
            })
            .collect();
        if !taken.contains(&code) {
            return Some(code);
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub meal_id: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// A committed kitchen event: what the store wrote and the bus carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KitchenEvent {
    pub school_id: String,
    /// Per-kitchen sequence number, assigned in the committing transaction.
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub order_id: String,
    pub from: Option<OrderState>,
    pub to: OrderState,
    pub version: i64,
    pub actor_id: Option<String>,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    pub order: OrderSummary,
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
            (C::Start, S::Confirmed, Staff) => Some(S::Preparing),
            (C::Ready, S::Preparing, Staff) => Some(S::Ready),
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

    fn counter(id: &str, number: i32) -> CounterRef {
        CounterRef {
            id: id.into(),
            number,
            name: format!("Counter {number}"),
        }
    }

    #[test]
    fn least_loaded_open_counter_wins_ties_to_the_lowest_number() {
        let open = [counter("b", 2), counter("a", 1), counter("c", 3)];
        let load = |waiting: &'static [(&str, i64)]| {
            move |c: &CounterRef| {
                waiting
                    .iter()
                    .find(|(id, _)| *id == c.id)
                    .map_or(0, |(_, n)| *n)
            }
        };
        assert_eq!(assign_counter(&open, load(&[])).map(|c| c.number), Some(1));
        assert_eq!(
            assign_counter(&open, load(&[("a", 2), ("b", 1), ("c", 1)])).map(|c| c.number),
            Some(2)
        );
        assert_eq!(
            assign_counter(&open, load(&[("a", 1), ("b", 1), ("c", 0)])).map(|c| c.number),
            Some(3)
        );
        assert_eq!(assign_counter(&[], load(&[])), None);
    }

    #[test]
    fn pickup_codes_avoid_taken_ones_and_confusable_characters() {
        let mut taken = std::collections::HashSet::new();
        // A fixed pseudo-random sequence (an LCG), so the test is repeatable.
        let mut n: u64 = 7;
        let mut next = |len: usize| {
            n = n
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (n >> 33) as usize % len
        };
        for _ in 0..50 {
            let code = pickup_code(&taken, &mut next).unwrap();
            assert_eq!(code.len(), PICKUP_CODE_LEN);
            assert!(!code.contains(['0', 'O', '1', 'I', 'B', '8', '5', 'S', '2', 'Z']));
            assert!(taken.insert(code));
        }
        // A source that only ever repeats a taken code gives up instead of looping forever.
        let stuck: std::collections::HashSet<String> = ["AAAA".to_owned()].into();
        assert_eq!(pickup_code(&stuck, |_| 0), None);
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

    fn wave(id: &str, start_min: i64) -> Wave {
        let t0 = DateTime::parse_from_rfc3339("2026-11-23T11:00:00Z")
            .unwrap()
            .to_utc();
        let at = |m: i64| t0 + chrono::Duration::minutes(m);
        Wave {
            id: id.into(),
            name: format!("wave {id}"),
            starts_at: at(start_min),
            ends_at: at(start_min + 30),
            order_cutoff: at(start_min - 60),
            cancel_until: at(start_min - 30),
        }
    }

    #[test]
    fn orders_go_to_the_earliest_open_wave() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-23T11:00:00Z")
            .unwrap()
            .to_utc();
        let at = |m: i64| t0 + chrono::Duration::minutes(m);
        let waves = [wave("b", 120), wave("a", 60)];
        assert_eq!(choose_wave(&[], None, at(0)), Ok(None));
        assert_eq!(choose_wave(&waves, None, at(-1)).unwrap().unwrap().id, "a");
        assert_eq!(
            choose_wave(&waves, None, at(0)).unwrap().unwrap().id,
            "b",
            "a's cutoff passed"
        );
        assert_eq!(
            choose_wave(&waves, None, at(60)),
            Err(WaveError::OrderingClosed)
        );
        assert_eq!(
            choose_wave(&waves, Some("b"), at(10)).unwrap().unwrap().id,
            "b"
        );
        assert_eq!(
            choose_wave(&waves, Some("a"), at(10)),
            Err(WaveError::WaveClosed("wave a".into()))
        );
        assert_eq!(
            choose_wave(&waves, Some("z"), at(10)),
            Err(WaveError::UnknownWave("z".into()))
        );
        let a = wave("a", 60);
        assert!(cancel_allowed(Issuer::Student, Some(&a), at(29)));
        assert!(!cancel_allowed(Issuer::Guardian, Some(&a), at(30)));
        assert!(cancel_allowed(Issuer::Staff, Some(&a), at(59)));
        assert!(cancel_allowed(Issuer::Student, None, at(500)));
    }

    #[test]
    fn allergy_conflicts_are_the_shared_allergens() {
        assert_eq!(
            allergy_conflicts(&["peanuts", "milk"], &["gluten", "milk", "peanuts"]),
            ["milk", "peanuts"]
        );
        assert!(allergy_conflicts(&["peanuts"], &["gluten", ""]).is_empty());
        assert!(allergy_conflicts(&[""], &[""]).is_empty());
    }

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
