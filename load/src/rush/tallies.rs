//! The rush's accounting: every accepted order handed over exactly once, every dashboard,
//! board and app gapless and with every hand-over frame; the report.

use super::Run;
use super::followers::Follower;
use crate::RunArgs;
use crate::profile::Profile;
use crate::report::SCAN_TO_DASHBOARD;
use serde_json::{Value, json};
use std::rc::Rc;

/// What the rush left for the accounting.
pub(super) struct Rushed {
    pub finished: bool,
    pub seed_secs: f64,
    pub rush_secs: f64,
    /// What the seed says about the lunch waves.
    pub waves: Value,
    /// Where the people came from, with a roster: the bundle and its import's report.
    pub roster: Value,
    pub dashboards: Vec<Rc<Follower>>,
    pub boards: Vec<Rc<Follower>>,
    pub apps: Vec<Rc<Follower>>,
    /// Reconnect storms raised.
    pub storms: u32,
    /// Hand-over frames each school's screens should see: one per accepted order.
    pub per_school: Vec<usize>,
    /// Meals handed over when the rush ended: the frames each dashboard should see.
    pub expected_frames: usize,
    pub notifications: Value,
    /// The hub's CPU and memory, when its process is known.
    pub hub: Value,
    /// The same every second (`HubSampler::stop`).
    pub hub_series: Value,
    /// Database statements per operation.
    pub trips: Value,
}
/// Sums over dashboards or apps.
struct Tally {
    frames: u64,
    gaps: usize,
    resets: usize,
    refusals: usize,
    reconnects: u64,
    closed_by_hub: u64,
    /// Gave up (could not reopen a socket), or did not resume after the last storm.
    not_reconnected: usize,
}

impl Tally {
    fn of(followers: &[Rc<Follower>], storms: u32) -> Tally {
        Tally {
            frames: followers.iter().map(|f| f.frames.get()).sum(),
            gaps: followers.iter().map(|f| f.gaps.get()).sum(),
            resets: followers.iter().map(|f| f.resets.get()).sum(),
            refusals: followers.iter().map(|f| f.refusals.get()).sum(),
            reconnects: followers
                .iter()
                .map(|f| u64::from(f.reconnects.get()))
                .sum(),
            closed_by_hub: followers.iter().map(|f| u64::from(f.drops.get())).sum(),
            not_reconnected: followers
                .iter()
                .filter(|f| f.failed.get() || f.resumed.get() < storms)
                .count(),
        }
    }

    /// Nothing skipped, refused or given up on (frames missing are counted apart).
    fn clean(&self) -> bool {
        self.gaps == 0 && self.resets == 0 && self.refusals == 0 && self.not_reconnected == 0
    }
}

/// The report: the hops, the throughput and the accounting of what the rush left.
pub(super) fn report(profile: &Profile, args: &RunArgs, run: &Run, rushed: Rushed) -> Value {
    // Accounting.
    let accepted = run.accepted.borrow().clone();
    let ordered = profile.schools * profile.orders_per_school();
    let handed = run.handed_over.borrow().clone();
    let twice = handed.values().filter(|n| **n > 1).count();
    let not_handed = accepted
        .iter()
        .filter(|(_, _, id)| !handed.contains_key(id))
        .count();
    let mut unique: Vec<&String> = accepted.iter().map(|(_, _, id)| id).collect();
    unique.sort();
    unique.dedup();
    let doubled_orders = accepted.len() - unique.len();
    let screens = Tally::of(&rushed.dashboards, rushed.storms);
    let mut missing_frames = 0;
    let mut replayed_frames = 0;
    {
        let mut recorder = run.recorder.borrow_mut();
        let scanned = run.scanned_at.borrow();
        for d in &rushed.dashboards {
            let seen = d.picked_up.borrow();
            missing_frames += rushed.per_school[d.school].saturating_sub(seen.len());
            for (order, first) in seen.iter() {
                // Replays wait out the reconnect: counted, not timed as fan-out.
                if first.replayed {
                    replayed_frames += 1;
                } else if let Some(sent) = scanned.get(order) {
                    recorder.ok_at(
                        SCAN_TO_DASHBOARD,
                        first.at.saturating_duration_since(*sent),
                        false,
                        first.at,
                    );
                }
            }
        }
    }
    let board_tally = Tally::of(&rushed.boards, rushed.storms);
    // Every meal left its school's board once (replays after the storm included).
    let boards_missing: usize = rushed
        .boards
        .iter()
        .map(|b| rushed.per_school[b.school].saturating_sub(b.gone.get() as usize))
        .sum();
    let boards_extra: usize = rushed
        .boards
        .iter()
        .map(|b| (b.gone.get() as usize).saturating_sub(rushed.per_school[b.school]))
        .sum();
    let boards_ok = board_tally.clean() && boards_missing == 0 && boards_extra == 0;
    let app_tally = Tally::of(&rushed.apps, 0);
    let app_orders: usize = rushed.apps.iter().map(|a| a.orders().count()).sum();
    let app_missing: usize = rushed.apps.iter().map(|a| a.missing_orders()).sum();
    let apps_ok = app_missing == 0 && app_tally.clean();
    let recorder = run.recorder.borrow();
    let errors = recorder.errors();
    let ok = rushed.finished
        && errors == 0
        && accepted.len() == ordered
        && doubled_orders == 0
        && twice == 0
        && not_handed == 0
        && screens.clean()
        && missing_frames == 0
        && apps_ok
        && boards_ok
        && run.dropped.get() == 0
        && (rushed.notifications.is_null() || rushed.notifications["ok"] == true);
    let counter_boards = json!({
        "ok": boards_ok,
        "boards": rushed.boards.len(),
        "frames": board_tally.frames,
        "out_of_order": board_tally.gaps,
        "meals_gone_missing": boards_missing,
        "meals_gone_twice": boards_extra,
        "resets": board_tally.resets,
        "reconnects": board_tally.reconnects,
        "not_reconnected": board_tally.not_reconnected,
    });
    // Apart: one json! this size passes the macro recursion limit.
    let guardian_apps = json!({
        "ok": apps_ok,
        "apps": rushed.apps.len(),
        "orders_followed": app_orders,
        "frames": app_tally.frames,
        "picked_up_seen": app_orders - app_missing,
        "picked_up_missing": app_missing,
        "gaps": app_tally.gaps,
        "resets": app_tally.resets,
        "refusals": app_tally.refusals,
        "sockets_closed_by_hub": app_tally.closed_by_hub,
        "gave_up": app_tally.not_reconnected,
    });
    json!({
        "profile": profile,
        "rate_scale": args.rate_scale,
        "ok": ok,
        "finished_within_deadline": rushed.finished,
        "seed_seconds": rushed.seed_secs,
        "roster": rushed.roster,
        "rush_seconds": rushed.rush_secs,
        "throughput": {
            "orders_per_sec": run.answered_orders.get() as f64 / rushed.rush_secs.max(1e-9),
            "scans_per_sec": run.answered_scans.get() as f64 / rushed.rush_secs.max(1e-9),
        },
        "hops": recorder.hops_json(),
        "timeline": recorder.timeline_json(),
        "series": recorder.series_json(rushed.hub_series),
        "correctness": {
            "orders_due": ordered,
            "orders_accepted": accepted.len(),
            "orders_doubled": doubled_orders,
            "handed_over": handed.len(),
            "handed_over_twice": twice,
            "not_handed_over": not_handed,
            "repeat_reads_debounced": run.repeats_debounced.get(),
            "waves": rushed.waves,
            "offline_readers": profile.offline_readers,
            "offline_batches": run.offline_batches.get(),
            "offline_batch_scans": run.offline_batch_scans.get(),
            "offline_batch_slowest_ms": run.offline_batch_slowest.get().as_secs_f64() * 1000.0,
            "dashboards": rushed.dashboards.len(),
            "dashboard_gaps": screens.gaps,
            "dashboard_frames_expected": rushed.expected_frames * profile.dashboards_per_kitchen,
            "dashboard_frames_missing": missing_frames,
            "dashboard_frames_replayed": replayed_frames,
            "dashboard_storms": rushed.storms,
            "dashboard_reconnects": screens.reconnects,
            "dashboards_not_reconnected": screens.not_reconnected,
            "dashboard_resets": screens.resets,
            "dashboard_refusals": screens.refusals,
            "dashboard_sockets_closed_by_hub": screens.closed_by_hub,
            "guardian_apps": guardian_apps,
            "counter_boards": counter_boards,
            "sends_dropped": run.dropped.get(),
            "errors": errors,
            "notifications": rushed.notifications,
        },
        "hub": rushed.hub,
        "db_statements": rushed.trips,
    })
}
