//! The command line: subcommands, migrations up and down, several nodes migrating once.

use crate::common::*;

/// `tiffin migrate` and `tiffin demo` work on their own, and every subcommand has `--help`.
#[actix_web::test]
async fn command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiffin"))
            .args(args)
            .current_dir(dir.path())
            .env("TIFFIN_DATABASE_URL", "sqlite://cli.db")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for sub in ["serve", "migrate", "demo", "password", "token"] {
        let (ok, out, _) = run(&[sub, "--help"]);
        assert!(ok && out.contains("Usage: tiffin"), "{sub} --help: {out}");
    }
    let (ok, out, err) = run(&["migrate"]);
    assert!(ok, "{err}");
    assert!(out.contains("migrations applied"));
    assert!(dir.path().join("cli.db").exists());
    let (ok, out, err) = run(&["demo"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Demo school: ") && out.contains("kitchen@demo.tiffin.test"),
        "{out}"
    );
    // The demo's passwords are random, printed once: none is written in the code or README.
    let password_of = |out: &str, login: &str| {
        out.lines()
            .find_map(|l| l.split_once(&format!("{login} / ")))
            .map(|(_, password)| password.trim().to_owned())
            .unwrap_or_else(|| panic!("no password printed for {login}: {out}"))
    };
    let first = password_of(&out, "kitchen@demo.tiffin.test");
    assert!(first.len() >= 16, "{first}");
    assert_ne!(first, password_of(&out, "admin@demo.tiffin.test"));
    let (ok, again, _) = run(&["demo"]);
    assert!(ok && !again.contains(&first), "printed once: {again}");
    let (ok, reset, err) = run(&["password", "kitchen@demo.tiffin.test"]);
    assert!(ok, "{err}");
    assert!(reset.trim().len() >= 16 && reset.trim() != first, "{reset}");
    let (ok, _, err) = run(&["password", "nobody@demo.tiffin.test"]);
    assert!(!ok && err.contains("no one signs in as"), "{err}");

    let (ok, _, err) = run(&["token", "--role", "student"]);
    assert!(!ok && err.contains("--school is required"), "{err}");
    let (ok, _, err) = run(&["token", "--role", "chef", "--school", "x"]);
    assert!(!ok && err.contains("unknown role"), "{err}");
    let school = uuid::Uuid::new_v4().to_string();
    for (args, refusal) in [
        (
            vec!["--role", "admin", "--ttl", "999999999"],
            "--ttl must be",
        ),
        (vec!["--role", "admin", "--ttl", "0"], "--ttl must be"),
        (
            vec!["--role", "student", "--school", "x", "--user", &school],
            "--school must be a UUID",
        ),
        (
            vec!["--role", "student", "--school", &school, "--user", "bob"],
            "--user must be a UUID",
        ),
        (
            vec!["--role", "student", "--school", &school],
            "--user is required",
        ),
    ] {
        let (ok, _, err) = run(&[&["token"][..], &args].concat());
        assert!(!ok && err.contains(refusal), "{args:?}: {err}");
    }
    let (ok, _, err) = run(&["token", "--role", "admin", "--ttl", "86400"]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["serve", "--config", "missing.toml"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
}

/// Both migration folders hold the same versions, and each runs up, down and up again.
#[actix_web::test]
async fn migrations_run_up_down_up_on_both_backends() {
    // One copy of the migrations serves both backends.
    let mut names: Vec<String> =
        std::fs::read_dir(format!("{}/migrations", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    names.sort();
    assert!(!names.is_empty());
    // diesel's version of `2026-11-23-000001_people` is `20261123000001`.
    let versions: Vec<String> = names
        .iter()
        .map(|n| n.split('_').next().unwrap().replace('-', ""))
        .collect();

    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let url = tiffin::db::DatabaseUrl::parse(&db.url).unwrap();
        let (up, down, again) = tiffin::db::run_on_thread(move || {
            let mut conn = tiffin::db::MigrationConnection::establish(&url)?;
            let up = conn.run_pending()?;
            let down = conn.revert_all()?;
            let again = conn.run_pending()?;
            Ok((up, down, again))
        })
        .await
        .unwrap();
        assert_eq!(up, versions, "{backend:?}");
        assert_eq!(down.len(), up.len(), "{backend:?}");
        assert_eq!(again, up, "{backend:?}");
        db.drop_database().await;
    }
}

/// Nodes started together on an empty PostgreSQL database (an orchestrator starting replicas):
/// one migrates under the lock, the others wait and go on; all three serve.
#[actix_web::test]
async fn three_nodes_started_together_migrate_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let env = hub_env(&db, None);
    let hubs: Vec<Hub> = std::thread::scope(|scope| {
        let started: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| Hub::start(env.clone())))
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let admin = hubs[0].admin_token();
    for (n, hub) in hubs.iter().enumerate() {
        assert_eq!(
            client()
                .get(hub.url("/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "node {n}"
        );
        let school = post(
            hub,
            &admin,
            "/api/v1/schools",
            json!({"name": format!("Node {n}"), "time_zone": "UTC"}),
        )
        .await;
        expect(school, 201);
    }
    drop(hubs);
    db.drop_database().await;
}
