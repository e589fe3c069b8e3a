//! The load tool against a district imported as a roster: a small district generated as a
//! OneRoster bundle, imported through the hub's admin endpoint, then a whole rush on its
//! people, on both backends.

use crate::common::*;

const PROFILE: &str = r#"
name = "roster-small"
schools = 2
students_per_school = 24
order_share = 0.5
readers_per_school = 2
reads_per_card = [1, 2]
dashboards_per_kitchen = 1
boards_per_kitchen = 1
order_peak_per_sec = 60.0
scan_peak_per_sec = 30.0
deadline_secs = 120
waves_per_school = 1
offline_readers = 1
guardian_apps_per_school = 2
reconnect_storm = true
"#;

/// Every order placed for an imported student, handed over once on their imported card; the
/// apps are imported guardians signed in with a password the admin set.
#[actix_web::test]
async fn a_rush_runs_against_an_imported_roster_on_both_backends() {
    for backend in ["sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile.toml");
        std::fs::write(&profile, PROFILE).unwrap();
        let out = dir.path().join("report");
        let roster = dir.path().join("roster");
        let (held, report) = load_run(
            &[
                "--profile",
                profile.to_str().unwrap(),
                "--roster",
                roster.to_str().unwrap(),
                "--backend",
                backend,
            ],
            &out,
        )
        .await;
        assert!(held, "{backend}: {}", report["correctness"]);
        let import = &report["roster"]["import"];
        assert_eq!(import["students"]["created"], 48, "{backend}: {import}");
        assert_eq!(import["guardians"]["created"], 72, "{backend}: {import}");
        assert!(roster.join("users.csv").exists());
        let correctness = &report["correctness"];
        assert_eq!(correctness["orders_accepted"], 24, "{backend}");
        assert_eq!(correctness["handed_over"], 24, "{backend}");
        assert_eq!(correctness["guardian_apps"]["apps"], 4, "{backend}");
        assert_eq!(correctness["guardian_apps"]["ok"], true, "{backend}");
    }
}
