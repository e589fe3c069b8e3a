//! A rush against a district whose people came from a roster, as a real district's do: the
//! profile's district written as a OneRoster bundle (the `roster-bundle` generator), imported
//! through `POST /api/v1/admin/rosters` (or beforehand with `tiffin roster import`), then
//! found through the API: its schools by name, their students with cards, and guardians of
//! students who order. Only the kitchen (meal, counter, readers, staff) is created per run.
//!
//! Imported people have no password. The few guardians whose app the run opens get one from
//! the admin (`PATCH /schools/{id}/users/{id}`, as a school office does for a parent who asks)
//! and sign in with it: the hub's real sign-in, one Argon2 hash to set and one to check each.

use super::seed::{kitchen, open_app};
use super::waves::TIME_ZONE;
use super::{GUARDIAN_PASSWORD, GuardianApp, School};
use crate::hub::{Target, admin_get, created, reply};
use crate::profile::Profile;
use crate::roster_bundle;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek};
use std::path::Path;
use std::time::{Duration, Instant};

/// Guardians a generated district has per student (the 1.2M students, 1.8M guardians).
const GUARDIANS_PER_STUDENT: f64 = 1.5;

/// Writes the profile's district into `dir` unless a bundle is there, and imports it unless
/// `imported`: what the report says about the roster.
pub(super) async fn prepare(
    profile: &Profile,
    target: &Target,
    dir: &Path,
    imported: bool,
) -> anyhow::Result<Value> {
    let mut about = json!({"bundle": dir.display().to_string()});
    if !dir.join("manifest.csv").exists() {
        let students = (profile.schools * profile.students_per_school) as u64;
        let options = roster_bundle::Options {
            students,
            guardians: (students as f64 * GUARDIANS_PER_STUDENT).round() as u64,
            schools: profile.schools as u64,
            seed: 1,
            from_seed: None,
            change_percent: 0.0,
            out: dir.to_owned(),
        };
        eprintln!(
            "tiffin-load: writing the district's roster to {}",
            dir.display()
        );
        about["generated"] = roster_bundle::write(&options)?;
    }
    if imported {
        return Ok(about);
    }
    eprintln!("tiffin-load: importing the roster (POST /api/v1/admin/rosters)");
    let zip = zip_bundle(dir)?;
    let started = Instant::now();
    about["import"] = import(target, zip).await?;
    about["import_seconds"] = json!(started.elapsed().as_secs_f64());
    Ok(about)
}

/// The bundle's CSV files in a zip (stored: the hub reads it once, from loopback).
fn zip_bundle(dir: &Path) -> anyhow::Result<std::fs::File> {
    let mut out = tempfile::tempfile().context("a temporary file for the bundle's zip")?;
    let mut zip = zip::ZipWriter::new(&mut out);
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".csv"))
        .collect();
    names.sort();
    for name in names {
        zip.start_file(name.as_str(), stored)?;
        let mut file = std::fs::File::open(dir.join(&name))?;
        std::io::copy(&mut file, &mut zip)?;
    }
    zip.finish()?;
    out.seek(std::io::SeekFrom::Start(0))?;
    Ok(out)
}

/// Sends the zip to the hub's import, a MiB at a time: its report.
async fn import(target: &Target, zip: std::fs::File) -> anyhow::Result<Value> {
    let chunks = futures_util::stream::unfold(Some(zip), |file| async move {
        let mut file = file?;
        let mut buf = vec![0; 1 << 20];
        match file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(actix_web::web::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    // A district of a million students takes minutes on PostgreSQL.
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(3600))
        .finish();
    let sent = client
        .post(format!(
            "{}/api/v1/admin/rosters?time_zone={TIME_ZONE}",
            target.url
        ))
        .bearer_auth(&target.admin_token)
        .content_type("application/zip")
        .send_stream(chunks)
        .await;
    let (status, report) = reply(sent).await?;
    if status != 200 {
        bail!("the roster import was refused with {status}: {report}");
    }
    Ok(report)
}

/// The first `n` schools of the bundle's orgs.csv, by name.
fn bundle_schools(dir: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let path = dir.join("orgs.csv");
    let mut orgs =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let headers = orgs.headers()?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| format!("orgs.csv has no {name} column"))
    };
    let (name, kind) = (column("name")?, column("type")?);
    let mut schools = Vec::with_capacity(n);
    for org in orgs.records() {
        let org = org?;
        if org.get(kind) == Some("school") {
            schools.push(org.get(name).unwrap_or_default().to_owned());
            if schools.len() == n {
                return Ok(schools);
            }
        }
    }
    bail!(
        "the roster has {} schools; the profile needs {n}",
        schools.len()
    )
}

/// The profile's schools from the imported roster, each with its kitchen set up for this
/// run; eight schools at once.
pub(super) async fn seed(
    profile: &Profile,
    target: &Target,
    dir: &Path,
    run_id: &str,
) -> anyhow::Result<Vec<School>> {
    let names = bundle_schools(dir, profile.schools)?;
    let listed = admin_get(target, "/api/v1/schools").await?;
    let mut by_name: HashMap<&str, Vec<&Value>> = HashMap::new();
    for school in listed.as_array().context("schools")? {
        by_name
            .entry(school["name"].as_str().unwrap_or_default())
            .or_default()
            .push(school);
    }
    let mut found = Vec::with_capacity(names.len());
    for name in &names {
        match by_name.get(name.as_str()).map(Vec::as_slice) {
            Some([school]) => found.push(*school),
            Some(_) => {
                bail!("more than one school is named {name:?}: import into a fresh database")
            }
            None => bail!("no school {name:?} on the hub: was the roster imported?"),
        }
    }
    let mut schools = Vec::with_capacity(found.len());
    let numbered: Vec<(usize, &Value)> = found.into_iter().enumerate().collect();
    for chunk in numbered.chunks(8) {
        let made = futures_util::future::join_all(
            chunk
                .iter()
                .map(|(n, school)| seed_school(profile, target, run_id, *n, school)),
        )
        .await;
        for school in made {
            schools.push(school?);
        }
    }
    Ok(schools)
}

async fn seed_school(
    profile: &Profile,
    target: &Target,
    run_id: &str,
    n: usize,
    school: &Value,
) -> anyhow::Result<School> {
    let id = school["id"].as_str().context("school id")?.to_owned();
    let path = |p: &str| format!("/api/v1/schools/{id}{p}");
    let admin = &target.admin_token;
    // Lunch waves are times of day on the school's clock.
    if school["time_zone"] != TIME_ZONE {
        created(
            crate::hub::client()
                .patch(format!("{}{}", target.url, path("")))
                .bearer_auth(admin),
            json!({"time_zone": TIME_ZONE}),
        )
        .await?;
    }
    let kitchen = kitchen(profile, target, run_id, (n, &id), None).await?;
    // Active students with an active card, each with theirs.
    let mut cards: HashMap<String, String> = HashMap::new();
    for card in admin_get(target, &path("/cards"))
        .await?
        .as_array()
        .context("cards")?
    {
        if card["status"] == "active" {
            let field = |k: &str| card[k].as_str().unwrap_or_default().to_owned();
            cards.insert(field("student_id"), field("card_uid"));
        }
    }
    let mut students = Vec::new();
    let mut student_cards = Vec::new();
    for student in admin_get(target, &path("/users?role=student"))
        .await?
        .as_array()
        .context("students")?
    {
        let student_id = student["id"].as_str().unwrap_or_default();
        if let (true, Some(card)) = (student["active"] == true, cards.remove(student_id)) {
            students.push(student_id.to_owned());
            student_cards.push(card);
        }
    }
    let ordering = profile.orders_per_school();
    if students.len() < ordering {
        bail!(
            "school {} has {} students with a card; the profile orders for {ordering}",
            school["name"],
            students.len()
        );
    }
    // Guardians of this school who sign in: by email, else by phone.
    let mut logins: HashMap<String, String> = HashMap::new();
    for guardian in admin_get(target, &path("/users?role=guardian"))
        .await?
        .as_array()
        .context("guardians")?
    {
        let login = guardian["email"].as_str().or(guardian["phone"].as_str());
        if let (true, Some(id), Some(login)) =
            (guardian["active"] == true, guardian["id"].as_str(), login)
        {
            logins.insert(id.to_owned(), login.to_owned());
        }
    }
    // The apps: a guardian of each of the first students who order, until there are enough.
    let mut apps = Vec::new();
    let mut taken = HashSet::new();
    for (s, student_id) in students.iter().enumerate().take(ordering) {
        if apps.len() == profile.guardian_apps_per_school {
            break;
        }
        let links = admin_get(target, &path(&format!("/students/{student_id}/guardians"))).await?;
        let guardian = links.as_array().context("guardians")?.iter().find_map(|l| {
            let g = l["guardian_id"].as_str()?;
            (logins.contains_key(g) && !taken.contains(g)).then(|| g.to_owned())
        });
        let Some(guardian) = guardian else {
            continue;
        };
        created(
            crate::hub::client()
                .patch(format!(
                    "{}{}",
                    target.url,
                    path(&format!("/users/{guardian}"))
                ))
                .bearer_auth(admin),
            json!({"password": GUARDIAN_PASSWORD}),
        )
        .await
        .context("setting an app guardian's password")?;
        let login = logins
            .get(&guardian)
            .cloned()
            .context("a guardian's login")?;
        let token = open_app(target, &login, &format!("load-{run_id}-{n}-{s}")).await?;
        taken.insert(guardian);
        apps.push(GuardianApp {
            login,
            token,
            students: vec![s],
        });
    }
    Ok(kitchen.school(id, (students, student_cards), apps))
}
