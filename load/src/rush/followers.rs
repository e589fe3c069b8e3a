//! WebSocket followers: kitchen screens and counter boards (a school's topic) and guardians'
//! apps (their children's order topics), each resuming with `since` across sockets.

use super::storm::Storm;
use super::{GUARDIAN_PASSWORD, KITCHEN_PASSWORD, Run, School};
use crate::hub::client;
use crate::people::sign_in;
use futures_util::future::{Either, select};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Sockets opened at once; each lot is subscribed before the next opens.
const OPEN_AT_ONCE: usize = 64;
/// How long a lot of new sockets may take to be answered `subscribed`.
const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(30);
/// Attempts at (re)opening a socket, with backoff (about 13 s in all), before giving up.
const OPEN_TRIES: u32 = 8;

/// A person's sign-in, renewed when a socket is refused for an expired token (the hub also
/// closes a socket when its token expires).
struct Account {
    login: String,
    password: &'static str,
    token: RefCell<String>,
}

/// A WebSocket client following topics across sockets: a kitchen screen (its kitchen
/// topic) or a guardian's app (its children's order topics). What it saw outlives each
/// socket, so a new one resumes every topic with `since`.
pub(super) struct Follower {
    pub(super) school: usize,
    topics: Vec<String>,
    account: Rc<Account>,
    /// Topic -> the last sequence number seen.
    last: RefCell<HashMap<String, i64>>,
    /// Order id -> when its `order.picked_up` frame first arrived, and whether as a replay.
    pub(super) picked_up: RefCell<HashMap<String, Seen>>,
    /// Topic -> the hub's latest sequence number when a resumed socket subscribed: frames up
    /// to it are replays of what the last socket missed, not live fan-out.
    replaying: RefCell<HashMap<String, i64>>,
    /// Numbered frames (not snapshots or alerts).
    pub(super) frames: Cell<u64>,
    pub(super) gaps: Cell<usize>,
    /// A resume answered with a snapshot (the hub could not replay): frames were skipped,
    /// openly.
    pub(super) resets: Cell<usize>,
    /// `{"type": "error"}` answers (a subscription refused).
    pub(super) refusals: Cell<usize>,
    /// Sockets dropped in a storm and opened again.
    pub(super) reconnects: Cell<u32>,
    /// Sockets the hub closed (expired token, idle, slow consumer) and opened again.
    pub(super) drops: Cell<u32>,
    /// The storm generation of the latest socket answered `subscribed`.
    pub(super) resumed: Cell<u32>,
    /// Could not open a socket: it stopped following.
    pub(super) failed: Cell<bool>,
    /// `board.gone` frames (a meal left the pickup board), on a counter board.
    pub(super) gone: Cell<u64>,
}

impl Follower {
    fn new(school: usize, topics: Vec<String>, account: Rc<Account>) -> Follower {
        Follower {
            school,
            topics,
            account,
            last: RefCell::default(),
            picked_up: RefCell::default(),
            replaying: RefCell::default(),
            frames: Cell::new(0),
            gaps: Cell::new(0),
            resets: Cell::new(0),
            refusals: Cell::new(0),
            reconnects: Cell::new(0),
            drops: Cell::new(0),
            resumed: Cell::new(0),
            gone: Cell::new(0),
            failed: Cell::new(false),
        }
    }

    /// The orders an app follows (none for a kitchen screen).
    pub(super) fn orders(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().filter_map(|t| t.strip_prefix("order:"))
    }

    /// Followed orders whose `order.picked_up` frame has not arrived.
    pub(super) fn missing_orders(&self) -> usize {
        let seen = self.picked_up.borrow();
        self.orders().filter(|o| !seen.contains_key(*o)).count()
    }

    /// Every topic answered `subscribed`, nothing refused, still following.
    fn subscribed(&self) -> bool {
        !self.failed.get()
            && self.refusals.get() == 0
            && self.last.borrow().len() == self.topics.len()
    }

    /// One frame from the hub, which arrived at `at` on a socket opened in storm generation
    /// `generation`.
    fn on_frame(&self, frame: &Value, at: Instant, generation: u32) {
        let topic = frame["topic"].as_str().unwrap_or_default();
        match (frame["type"].as_str(), frame["seq"].as_i64()) {
            (Some("error"), _) => self.refusals.set(self.refusals.get() + 1),
            // Fresh: count from the hub's latest; resumed: from what was seen.
            (Some("subscribed"), Some(seq)) => {
                let resumed = self.last.borrow().contains_key(topic);
                if resumed {
                    self.replaying.borrow_mut().insert(topic.to_owned(), seq);
                } else {
                    self.last.borrow_mut().insert(topic.to_owned(), seq);
                }
                self.resumed.set(generation);
            }
            (Some("snapshot"), Some(_)) if frame["data"]["reason"] == "fresh" => {}
            (Some("snapshot"), Some(seq)) => {
                self.resets.set(self.resets.get() + 1);
                self.last.borrow_mut().insert(topic.to_owned(), seq);
            }
            // Alerts of the moment have seq 0: outside the sequence.
            (Some(kind), Some(seq)) if seq > 0 => {
                self.frames.set(self.frames.get() + 1);
                let before = self.last.borrow_mut().insert(topic.to_owned(), seq);
                // A board skips the kitchen's events it does not show: its numbers only rise.
                let out_of_order = if topic.starts_with("board:") {
                    before.is_some_and(|l| seq <= l)
                } else {
                    before.is_some_and(|l| seq != l + 1)
                };
                if out_of_order {
                    self.gaps.set(self.gaps.get() + 1);
                }
                if kind == "board.gone" {
                    self.gone.set(self.gone.get() + 1);
                }
                if kind == "order.picked_up"
                    && let Some(order) = frame["data"]["order_id"].as_str()
                {
                    let replayed = self
                        .replaying
                        .borrow()
                        .get(topic)
                        .is_some_and(|until| seq <= *until);
                    self.picked_up
                        .borrow_mut()
                        .entry(order.to_owned())
                        .or_insert(Seen { at, replayed });
                }
            }
            _ => {}
        }
    }
}

/// When a frame first arrived, and whether in a resumed socket's replay.
#[derive(Clone, Copy)]
pub(super) struct Seen {
    pub(super) at: Instant,
    pub(super) replayed: bool,
}

/// Why a follower opens a socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reopen {
    First,
    Storm,
    Dropped,
}

/// Backoff between attempts at opening a socket, spread a little by the follower's slot so
/// a storm's retries do not all land at once.
fn backoff(attempt: u32, slot: usize) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)) + (slot % 97) as u64)
}

/// Follows `me.topics` until the run is over: opens a socket (signing in again if the token
/// expired), subscribes to every topic (with `since` where it saw frames), reads. A storm, or
/// the hub closing the socket, means another socket; one that cannot be opened in
/// `OPEN_TRIES` attempts marks the follower failed.
async fn follow(me: Rc<Follower>, url: String, storm: Rc<Storm>) {
    let slot = storm.join();
    let ws = format!("{}/api/v1/ws?access_token=", url.replacen("http", "ws", 1));
    let mut why = Reopen::First;
    loop {
        if storm.over.get() {
            return;
        }
        let generation = storm.generation.get();
        let mut opened = None;
        for attempt in 0..OPEN_TRIES {
            let token = me.account.token.borrow().clone();
            let ws_url = format!("{ws}{token}");
            let connected = client()
                .ws(ws_url.as_str())
                .max_frame_size(8 << 20)
                .connect()
                .await;
            match connected {
                Ok((_, socket)) => {
                    opened = Some(socket);
                    break;
                }
                Err(awc::error::WsClientError::InvalidResponseStatus(status))
                    if status.as_u16() == 401 =>
                {
                    // Expired: sign in again, unless another socket of this account just did.
                    let stale = *me.account.token.borrow() == token;
                    if stale
                        && let Ok(fresh) =
                            sign_in(&client(), &url, &me.account.login, me.account.password).await
                    {
                        *me.account.token.borrow_mut() = fresh.access;
                        continue;
                    }
                }
                Err(_) => {}
            }
            if storm.over.get() {
                return;
            }
            actix_web::rt::time::sleep(backoff(attempt, slot)).await;
        }
        let Some(mut socket) = opened else {
            me.failed.set(true);
            return;
        };
        match why {
            Reopen::Storm => me.reconnects.set(me.reconnects.get() + 1),
            Reopen::Dropped => me.drops.set(me.drops.get() + 1),
            Reopen::First => {}
        }
        let mut subscribing = true;
        for topic in &me.topics {
            let since = me.last.borrow().get(topic).copied();
            let mut message = json!({"type": "subscribe", "topic": topic});
            if let Some(since) = since {
                message["since"] = json!(since);
            }
            let text = awc::ws::Message::Text(message.to_string().into());
            if socket.send(text).await.is_err() {
                subscribing = false;
                break;
            }
        }
        why = if subscribing {
            loop {
                let frame = match select(socket.next(), storm.moved(slot, generation)).await {
                    Either::Left((Some(Ok(frame)), _)) => frame,
                    Either::Left(_) => break Reopen::Dropped,
                    Either::Right(_) => break Reopen::Storm,
                };
                match frame {
                    awc::ws::Frame::Text(text) => {
                        let at = Instant::now();
                        if let Ok(frame) = serde_json::from_slice::<Value>(&text) {
                            me.on_frame(&frame, at, generation);
                        }
                    }
                    awc::ws::Frame::Ping(p) => {
                        let _ = socket.send(awc::ws::Message::Pong(p)).await;
                    }
                    awc::ws::Frame::Close(_) => break Reopen::Dropped,
                    _ => {}
                }
            }
        } else {
            Reopen::Dropped
        };
        // Dropping the socket without a close frame: a lost connection, as in a storm.
        drop(socket);
        if why == Reopen::Dropped {
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts a task per follower, `OPEN_AT_ONCE` at a time, each lot waiting (at most
/// `SUBSCRIBE_WITHIN`) until it is subscribed; says how many are not.
async fn start_following(followers: &[Rc<Follower>], url: &str, storm: &Rc<Storm>) -> usize {
    let mut not_subscribed = 0;
    for lot in followers.chunks(OPEN_AT_ONCE) {
        for follower in lot {
            actix_web::rt::spawn(follow(follower.clone(), url.to_owned(), storm.clone()));
        }
        let until = Instant::now() + SUBSCRIBE_WITHIN;
        while Instant::now() < until
            && lot
                .iter()
                .any(|f| !f.subscribed() && !f.failed.get() && f.refusals.get() == 0)
        {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        not_subscribed += lot.iter().filter(|f| !f.subscribed()).count();
    }
    not_subscribed
}

/// The kitchen screens: `per_kitchen` per school, each on its own socket, sharing the
/// school's staff sign-in.
pub(super) async fn open_dashboards(
    run: &Rc<Run>,
    schools: &Rc<Vec<School>>,
    (per_kitchen, topic): (usize, &str),
    storm: &Rc<Storm>,
) -> anyhow::Result<Vec<Rc<Follower>>> {
    let mut dashboards = Vec::new();
    for (n, school) in schools.iter().enumerate() {
        let account = Rc::new(Account {
            login: school.staff_login.clone(),
            password: KITCHEN_PASSWORD,
            token: RefCell::new(school.staff.clone()),
        });
        for _ in 0..per_kitchen {
            let topics = vec![format!("{topic}:{}", school.id)];
            dashboards.push(Rc::new(Follower::new(n, topics, account.clone())));
        }
    }
    let not_subscribed = start_following(&dashboards, &run.url, storm).await;
    if not_subscribed > 0 {
        storm.end();
        anyhow::bail!(
            "{not_subscribed} of {} dashboard sockets could not subscribe",
            dashboards.len()
        );
    }
    Ok(dashboards)
}

/// Guardians' apps: each follows the order topics of its children's accepted orders, as an
/// app does once they are placed.
pub(super) async fn open_apps(
    run: &Rc<Run>,
    schools: &Rc<Vec<School>>,
    end: &Rc<Storm>,
) -> Vec<Rc<Follower>> {
    let mut orders: HashMap<(usize, usize), Vec<String>> = HashMap::new();
    for (school, student, id) in run.accepted.borrow().iter() {
        orders
            .entry((*school, *student))
            .or_default()
            .push(id.clone());
    }
    let mut apps = Vec::new();
    for (n, school) in schools.iter().enumerate() {
        for app in &school.apps {
            let topics: Vec<String> = app
                .students
                .iter()
                .filter_map(|student| orders.get(&(n, *student)))
                .flatten()
                .map(|id| format!("order:{id}"))
                .collect();
            if topics.is_empty() {
                continue;
            }
            let account = Rc::new(Account {
                login: app.login.clone(),
                password: GUARDIAN_PASSWORD,
                token: RefCell::new(app.token.clone()),
            });
            apps.push(Rc::new(Follower::new(n, topics, account)));
        }
    }
    // Apps that could not subscribe show in the accounting (refusals, gave up, frames missing).
    start_following(&apps, &run.url, end).await;
    apps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(topics: &[&str]) -> Follower {
        let account = Rc::new(Account {
            login: String::new(),
            password: "",
            token: RefCell::default(),
        });
        Follower::new(0, topics.iter().map(|t| (*t).to_owned()).collect(), account)
    }

    #[test]
    fn a_follower_counts_gaps_and_resumes_across_sockets() {
        let f = follower(&["kitchen:k"]);
        let now = Instant::now();
        let frame = |kind: &str, seq: i64| json!({"topic": "kitchen:k", "type": kind, "seq": seq, "data": {"order_id": format!("o{seq}"), "reason": "fresh"}});
        f.on_frame(&frame("subscribed", 5), now, 0);
        f.on_frame(&frame("snapshot", 5), now, 0);
        assert!(f.subscribed());
        f.on_frame(&frame("order.ready", 6), now, 0);
        f.on_frame(&frame("order.picked_up", 7), now, 0);
        f.on_frame(
            &json!({"topic": "kitchen:k", "type": "alert.card_in_use", "seq": 0}),
            now,
            0,
        );
        assert_eq!((f.frames.get(), f.gaps.get()), (2, 0));
        // A new socket in storm 1 resumes from 7: the hub's latest (12) does not move it.
        f.on_frame(&frame("subscribed", 12), now, 1);
        assert_eq!(f.resumed.get(), 1);
        for seq in 8..=13 {
            f.on_frame(&frame("order.picked_up", seq), now, 1);
        }
        assert_eq!(f.gaps.get(), 0);
        // 8-12 were missed and replayed; 7 and 13 arrived live.
        let replayed: Vec<String> = {
            let seen = f.picked_up.borrow();
            let mut ids: Vec<String> = seen
                .iter()
                .filter(|(_, s)| s.replayed)
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(replayed, ["o10", "o11", "o12", "o8", "o9"]);
        assert_eq!(f.picked_up.borrow().len(), 7);
        // A skipped frame is a gap; a snapshot answering a resume is a reset.
        f.on_frame(&frame("order.ready", 15), now, 1);
        assert_eq!(f.gaps.get(), 1);
        let mut reset = frame("snapshot", 40);
        reset["data"]["reason"] = json!("too_far_behind");
        f.on_frame(&reset, now, 1);
        f.on_frame(&frame("order.ready", 41), now, 1);
        assert_eq!((f.gaps.get(), f.resets.get()), (1, 1));
        f.on_frame(&json!({"type": "error", "code": "forbidden"}), now, 1);
        assert_eq!(f.refusals.get(), 1);
        assert!(!f.subscribed());
    }

    #[test]
    fn an_app_knows_which_of_its_orders_are_still_to_come() {
        let app = follower(&["order:a", "order:b"]);
        assert_eq!(app.orders().collect::<Vec<_>>(), ["a", "b"]);
        let now = Instant::now();
        app.on_frame(
            &json!({"topic": "order:a", "type": "subscribed", "seq": 1}),
            now,
            0,
        );
        assert!(!app.subscribed());
        app.on_frame(
            &json!({"topic": "order:b", "type": "subscribed", "seq": 1}),
            now,
            0,
        );
        assert!(app.subscribed());
        for (seq, kind) in [
            (2, "order.confirmed"),
            (3, "order.preparing"),
            (4, "order.ready"),
            (5, "order.picked_up"),
        ] {
            app.on_frame(
                &json!({"topic": "order:a", "type": kind, "seq": seq, "data": {"order_id": "a"}}),
                now,
                0,
            );
        }
        assert_eq!(app.missing_orders(), 1);
        assert_eq!(app.gaps.get(), 0);
        assert_eq!(follower(&["kitchen:k"]).missing_orders(), 0);
    }
}
