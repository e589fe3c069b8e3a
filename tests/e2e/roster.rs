//! Roster import: OneRoster 1.1 and 1.2 bundles through `tiffin roster import` and
//! `POST /api/v1/admin/rosters`, on both backends; re-imports apply only what changed; a
//! broken bundle changes nothing and names every bad line; a dry run writes nothing.

use crate::common::*;
use std::io::Write;

const MANIFEST_11_BULK: &str = "propertyName,value
manifest.version,1.0
oneroster.version,1.1
file.academicSessions,absent
file.categories,absent
file.classes,absent
file.courses,absent
file.demographics,absent
file.enrollments,bulk
file.orgs,bulk
file.users,bulk
";

const ORGS_11: &str = "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId
dist-1,,,Lakeside District,district,D1,
sch-a,,,Lakeside Elementary,school,A,dist-1
sch-b,,,Lakeside Middle,school,B,dist-1
";

const USERS_11_HEADER: &str = "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password\n";

/// Every role and link form: a parent listing its students, a guardian linked from the
/// student's side only (and no org of its own), a relative linked from both sides, a staff
/// member (skipped), an org list naming the district first, numbers with and without `+`.
pub(crate) const USERS_11: &str =
    "stu-1,,,true,sch-a,student,ana,,Ana,Ruiz,,,Ana.Ruiz@district.test,,,\"par-1,rel-1\",03,
stu-2,,,true,\"dist-1,sch-a\",student,ben,,Ben,Ruiz,,,,,,gua-1,05,
stu-3,,,true,sch-b,student,cy,,Cy,Li,,,,,,,07,
par-1,,,true,sch-a,parent,,,Maria,Ruiz,,,maria@family.test,(415) 555-2671,,\"stu-1,stu-2\",,
gua-1,,,true,,guardian,,,Gil,Ortiz,,,gil@family.test,,+44 20 7946 0958,,,
rel-1,,,true,sch-a,relative,,,Rosa,Ruiz,,,,,,stu-1,,
tea-1,,,true,sch-a,teacher,,,Tom,Teach,,,not-an-email,,,,,
";

const ENROLLMENTS: &str = "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate\ne-1,,,c-1,sch-a,stu-1,student,false,,\n";

fn write_dir(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

pub(crate) fn zip_of(files: &[(&str, String)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    for (name, text) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

pub(crate) fn bundle_11(users: &str, cards: &str, allergies: &str) -> Vec<(&'static str, String)> {
    vec![
        ("manifest.csv", MANIFEST_11_BULK.to_owned()),
        ("orgs.csv", ORGS_11.to_owned()),
        ("users.csv", format!("{USERS_11_HEADER}{users}")),
        ("enrollments.csv", ENROLLMENTS.to_owned()),
        ("cards.csv", format!("sourcedId,cardUid\n{cards}")),
        ("allergies.csv", format!("sourcedId,allergens\n{allergies}")),
    ]
}

fn import_cli(hub: &Hub, dir: &tempfile::TempDir, extra: &[&str]) -> Value {
    let path = dir.path().to_str().unwrap();
    let mut args = vec!["roster", "import", path, "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&hub.cli(&args)).unwrap()
}

pub(crate) async fn post_zip(hub: &Hub, token: &str, query: &str, body: Vec<u8>) -> Reply {
    let req = client()
        .post(hub.url(&format!("/api/v1/admin/rosters{query}")))
        .bearer_auth(token)
        .insert_header(("content-type", "application/zip"));
    let mut res = req.send_body(body).await.unwrap();
    let bytes = res.body().limit(4 << 20).await.unwrap();
    Reply {
        status: res.status().as_u16(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry_after: None,
    }
}

fn counts(report: &Value, kind: &str) -> [u64; 4] {
    let c = &report[kind];
    ["created", "updated", "deactivated", "unchanged"].map(|k| c[k].as_u64().unwrap())
}

async fn school_named(hub: &Hub, admin: &str, name: &str) -> Option<String> {
    let schools = expect(get(hub, admin, "/api/v1/schools").await, 200);
    schools
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| s["id"].as_str().unwrap().to_owned())
}

async fn people(hub: &Hub, admin: &str, school: &str) -> Vec<Value> {
    let users = expect(
        get(hub, admin, &format!("/api/v1/schools/{school}/users")).await,
        200,
    );
    users.as_array().unwrap().clone()
}

/// A student's guardians' relationships to them, sorted.
async fn relationships(hub: &Hub, admin: &str, school: &str, student: &str) -> Vec<String> {
    let guardians = expect(
        get(
            hub,
            admin,
            &format!("/api/v1/schools/{school}/students/{student}/guardians"),
        )
        .await,
        200,
    );
    let mut relations: Vec<String> = guardians
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["relationship"].as_str().unwrap().to_owned())
        .collect();
    relations.sort();
    relations
}

fn named<'a>(people: &'a [Value], name: &str) -> &'a Value {
    people
        .iter()
        .find(|p| p["display_name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {people:?}"))
}

/// A 1.1 bundle imports every role and link form; a changed full bundle applies exactly its
/// changes and deactivates who is missing; the same bundle again changes nothing; a delta
/// applies only its rows.
#[actix_web::test]
async fn oneroster_11_imports_and_reimports_on_both_backends() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let hub = Hub::start(hub_env(&db, None));
        let admin = hub.admin_token();
        let first = write_dir(&bundle_11(
            USERS_11,
            "stu-1,04:A2:BC:01\nstu-3,04a2bc03\n",
            "stu-1,peanut;Milk\n",
        ));
        let report = import_cli(&hub, &first, &["--time-zone", "America/Chicago"]);
        assert_eq!(
            (report["version"].as_str(), report["mode"].as_str()),
            (Some("1.1"), Some("bulk"))
        );
        assert_eq!(
            counts(&report, "schools"),
            [2, 0, 0, 0],
            "{backend:?}: {report}"
        );
        assert_eq!(counts(&report, "students"), [3, 0, 0, 0], "{report}");
        assert_eq!(counts(&report, "guardians"), [3, 0, 0, 0], "{report}");
        assert_eq!(counts(&report, "links"), [4, 0, 0, 0], "{report}");
        assert_eq!(counts(&report, "cards"), [2, 0, 0, 0], "{report}");
        assert_eq!(report["skipped"], 1, "the teacher: {report}");

        let a = school_named(&hub, &admin, "Lakeside Elementary")
            .await
            .unwrap();
        let b = school_named(&hub, &admin, "Lakeside Middle").await.unwrap();
        assert!(
            school_named(&hub, &admin, "Lakeside District")
                .await
                .is_none()
        );
        let school = expect(
            get(&hub, &admin, &format!("/api/v1/schools/{a}")).await,
            200,
        );
        assert_eq!(school["time_zone"], "America/Chicago");
        let in_a = people(&hub, &admin, &a).await;
        assert_eq!(
            in_a.len(),
            5,
            "Ana, Ben, Maria, Gil (through Ben), Rosa: {in_a:?}"
        );
        let ana = named(&in_a, "Ana Ruiz");
        assert_eq!(ana["role"], "student");
        assert_eq!(ana["email"], "ana.ruiz@district.test");
        assert_eq!(ana["allergies"], json!(["milk", "peanut"]));
        let maria = named(&in_a, "Maria Ruiz");
        assert_eq!(
            (&maria["role"], &maria["phone"]),
            (&json!("guardian"), &json!("+14155552671"))
        );
        assert_eq!(named(&in_a, "Gil Ortiz")["phone"], "+442079460958");
        let ana_id = ana["id"].as_str().unwrap();
        assert_eq!(
            relationships(&hub, &admin, &a, ana_id).await,
            ["parent", "relative"]
        );
        let cards = expect(
            get(&hub, &admin, &format!("/api/v1/schools/{a}/cards")).await,
            200,
        );
        assert!(cards.to_string().contains("04A2BC01"), "{cards}");
        let in_b = people(&hub, &admin, &b).await;
        assert_eq!(named(&in_b, "Cy Li")["active"], true);
        // An order for Cy: on PostgreSQL the hub keeps what it was decided from, and the
        // import below, by another process, must reach the next decision.
        let soup = created_id(
            &hub,
            &admin,
            &format!("/api/v1/schools/{b}/meals"),
            json!({"name": "Soup", "price_cents": 300}),
        )
        .await;
        created_id(
            &hub,
            &admin,
            &format!("/api/v1/schools/{b}/users"),
            json!({"role": "kitchen_staff", "display_name": "Kim", "email": "kim@lakeside.test", "password": "kitchen-pass-1"}),
        )
        .await;
        let kitchen = token_of(&hub, "kim@lakeside.test", "kitchen-pass-1").await;
        let cy = named(&in_b, "Cy Li")["id"].as_str().unwrap().to_owned();
        let order_for_cy = json!({"student_id": cy, "items": [{"meal_id": soup, "quantity": 1}]});
        let orders_of_b = format!("/api/v1/schools/{b}/orders");
        expect(
            post(&hub, &kitchen, &orders_of_b, order_for_cy.clone()).await,
            201,
        );
        // Imported people have no password: they cannot sign in until one is set.
        let r = send(
            client().post(hub.url("/api/v1/auth/login")),
            Some(json!({"login": "maria@family.test", "password": "anything-at-all"})),
        )
        .await;
        assert_eq!(r.status, 401);

        // Ben renamed, Cy gone (deactivated), Dee new, Maria's email changed, Rosa unlinked,
        // Gil now Ben's parent (the link's relationship changes, not the person).
        let changed = USERS_11
            .replace(",Ben,Ruiz,", ",Benjamin,Ruiz,")
            .replace("gua-1,,,true,,guardian,", "gua-1,,,true,,parent,")
            .replace("maria@family.test", "maria.ruiz@family.test")
            .replace("\"par-1,rel-1\"", "par-1")
            .replace(",stu-1,,\n", ",,,\n")
            .replace(
                "stu-3,,,true,sch-b,student,cy,,Cy,Li,,,,,,,07,\n",
                "stu-4,,,true,sch-b,student,dee,,Dee,Ng,,,,,,,07,\n",
            );
        // Ana's card replaced by a new one.
        let second = write_dir(&bundle_11(
            &changed,
            "stu-1,04A2BC09\n",
            "stu-1,milk;peanut\n",
        ));
        let report = import_cli(&hub, &second, &[]);
        let refused = post(&hub, &kitchen, &orders_of_b, order_for_cy).await;
        assert_eq!(
            (refused.status, refused.code()),
            (404, "not_found"),
            "{backend:?}: Cy is gone: {}",
            refused.body
        );
        assert_eq!(counts(&report, "schools"), [0, 0, 0, 2], "{report}");
        assert_eq!(counts(&report, "students"), [1, 1, 1, 1], "{report}");
        assert_eq!(counts(&report, "guardians"), [0, 1, 0, 2], "{report}");
        assert_eq!(counts(&report, "links"), [0, 1, 1, 2], "{report}");
        assert_eq!(counts(&report, "cards"), [1, 0, 1, 0], "{report}");
        let in_b = people(&hub, &admin, &b).await;
        assert_eq!(
            named(&in_b, "Cy Li")["active"],
            false,
            "deactivated, not deleted"
        );
        assert_eq!(named(&in_b, "Dee Ng")["active"], true);
        let in_a = people(&hub, &admin, &a).await;
        let ben_id = named(&in_a, "Benjamin Ruiz")["id"].as_str().unwrap();
        assert_eq!(
            relationships(&hub, &admin, &a, ben_id).await,
            ["parent", "parent"],
            "Maria and Gil"
        );
        assert_eq!(
            named(&in_a, "Maria Ruiz")["email"],
            "maria.ruiz@family.test"
        );

        // The same bundle again: nothing changes.
        let report = import_cli(&hub, &second, &[]);
        for kind in ["schools", "students", "guardians", "links", "cards"] {
            let [c, u, d, _] = counts(&report, kind);
            assert_eq!((c, u, d), (0, 0, 0), "{kind}: {report}");
        }

        // A delta: Dee removed, Gil's number changed; nobody else is touched.
        let delta = write_dir(&[
            (
                "manifest.csv",
                MANIFEST_11_BULK
                    .replace("file.users,bulk", "file.users,delta")
                    .replace("file.orgs,bulk", "file.orgs,absent"),
            ),
            (
                "users.csv",
                format!(
                    "{USERS_11_HEADER}stu-4,tobedeleted,,true,sch-b,student,dee,,Dee,Ng,,,,,,,07,\ngua-1,active,,true,,parent,,,Gil,Ortiz,,,gil@family.test,,+44 20 7946 0959,stu-2,,\n"
                ),
            ),
        ]);
        let report = import_cli(&hub, &delta, &[]);
        assert_eq!(report["mode"], "delta");
        assert_eq!(counts(&report, "students"), [0, 0, 1, 0], "{report}");
        assert_eq!(counts(&report, "guardians"), [0, 1, 0, 0], "{report}");
        assert_eq!(counts(&report, "links"), [0, 0, 0, 1], "{report}");
        let in_a = people(&hub, &admin, &a).await;
        assert_eq!(named(&in_a, "Gil Ortiz")["phone"], "+442079460959");
        assert_eq!(named(&in_a, "Ana Ruiz")["active"], true);
        let in_b = people(&hub, &admin, &b).await;
        assert_eq!(named(&in_b, "Dee Ng")["active"], false);
        drop(hub);
        db.drop_database().await;
    }
}

const USERS_12_HEADER: &str = "sourcedId,status,dateLastModified,enabledUser,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,userMasterIdentifier,resourceSourcedIds,preferredGivenName,preferredMiddleName,preferredFamilyName,primaryOrgSourcedId,pronouns\n";

fn bundle_12() -> Vec<(&'static str, String)> {
    vec![
        ("manifest.csv", "propertyName,value\nmanifest.version,1.0\noneroster.version,1.2\nfile.orgs,bulk\nfile.users,bulk\nfile.roles,bulk\n".to_owned()),
        ("orgs.csv", "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\nsch-x,active,2026-01-01,Hill School,school,X,\n".to_owned()),
        ("users.csv", format!("{USERS_12_HEADER}\
s-1,active,,true,,,Samuel,Park,,,,,,\"p-1,g-1\",04,,,,Sam,,,sch-x,
p-1,active,,true,,,Jin,Park,,,jin@family.test,+1 415 555 2672,,,,,,,,,,,
g-1,active,,true,,,Lee,Kim,,,,,,,,,,,,,,sch-x,
t-1,active,,true,,,Tara,Teach,,,,,,,,,,,,,,sch-x,
")),
        ("roles.csv", "sourcedId,status,dateLastModified,userSourcedId,roleType,role,beginDate,endDate,orgSourcedId,userProfileSourcedId\n\
r-1,active,,s-1,primary,student,,,sch-x,
r-2,active,,p-1,primary,parent,,,sch-x,
r-3,active,,g-1,primary,guardian,,,sch-x,
r-4,active,,t-1,primary,teacher,,,sch-x,
".to_owned()),
    ]
}

/// A 1.2 bundle (roles in roles.csv, preferred names), zipped, through the API on both
/// backends; a dry run first changes nothing.
#[actix_web::test]
async fn oneroster_12_imports_through_the_api_on_both_backends() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let hub = Hub::start(hub_env(&db, None));
        let admin = hub.admin_token();
        let zip = zip_of(&bundle_12());
        let dry = expect(
            post_zip(&hub, &admin, "?dry_run=true", zip.clone()).await,
            200,
        );
        assert_eq!(dry["dry_run"], true);
        assert_eq!(counts(&dry, "students"), [1, 0, 0, 0], "{backend:?}: {dry}");
        assert!(
            school_named(&hub, &admin, "Hill School").await.is_none(),
            "a dry run wrote"
        );

        let report = expect(post_zip(&hub, &admin, "", zip.clone()).await, 200);
        assert_eq!(report["version"], "1.2");
        assert_eq!(counts(&report, "schools"), [1, 0, 0, 0], "{report}");
        assert_eq!(counts(&report, "students"), [1, 0, 0, 0], "{report}");
        assert_eq!(counts(&report, "guardians"), [2, 0, 0, 0], "{report}");
        assert_eq!(counts(&report, "links"), [2, 0, 0, 0], "{report}");
        assert_eq!(report["skipped"], 1);
        let x = school_named(&hub, &admin, "Hill School").await.unwrap();
        let in_x = people(&hub, &admin, &x).await;
        assert_eq!(in_x.len(), 3, "{in_x:?}");
        assert_eq!(named(&in_x, "Sam Park")["role"], "student");
        assert_eq!(named(&in_x, "Jin Park")["phone"], "+14155552672");

        // A school admin re-imports their own school: nothing changed.
        let head = expect(
            post(&hub, &admin, &format!("/api/v1/schools/{x}/users"), json!({"role": "school_admin", "display_name": "Head", "email": "head@hill.test", "password": "head-pass-123"})).await,
            201,
        );
        assert_eq!(head["role"], "school_admin");
        let head = token_of(&hub, "head@hill.test", "head-pass-123").await;
        let again = expect(
            post_zip(&hub, &head, &format!("?school={x}"), zip).await,
            200,
        );
        assert_eq!(counts(&again, "students"), [0, 0, 0, 1], "{again}");
        assert_eq!(counts(&again, "links"), [0, 0, 0, 2], "{again}");
        drop(hub);
        db.drop_database().await;
    }
}

/// A bundle with bad lines in several files is refused whole: every bad line is named with
/// its file, line and reason, and nothing of it is written.
#[actix_web::test]
async fn a_broken_bundle_changes_nothing_and_names_every_bad_line() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let hub = Hub::start(hub_env(&db, None));
        let admin = hub.admin_token();
        let users = "stu-1,,,true,sch-a,student,,,Ana,Ruiz,,,ana@,,,,,
stu-2,,,true,sch-a,wizard,,,Ben,Ruiz,,,,,,,,
stu-3,,,true,sch-a,student,,,Cy,Li,,,,,,nobody,,
stu-1,,,true,sch-a,student,,,Ana,Again,,,,,,,,
tea-1,,,true,sch-a,teacher,,,Tom,Teach,,,not-an-email,,,,,
par-1,,,true,sch-a,parent,,,Maria,Ruiz,,,,12,,stu-3,,
stu-5,,,true,sch-a,student,,,Eve,Li,,,,,,stu-3,,
stu-6,,,true,sch-a,student,,,Zo\0e,Li,,,,,,,,
";
        let files = bundle_11(
            users,
            "tea-1,0A0B\nstu-3,0A0C\n",
            &format!("stu-3,{}\n", "x".repeat(41)),
        );
        let r = post_zip(&hub, &admin, "", zip_of(&files)).await;
        assert_eq!(
            (r.status, r.code()),
            (422, "roster_invalid"),
            "{:?}",
            r.body
        );
        let mut found: Vec<(String, u64)> = r.body["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert!(!p["reason"].as_str().unwrap().is_empty());
                (
                    p["file"].as_str().unwrap().to_owned(),
                    p["line"].as_u64().unwrap(),
                )
            })
            .collect();
        found.sort();
        let expected: Vec<(String, u64)> = [
            ("allergies.csv", 2),
            ("cards.csv", 2),
            ("users.csv", 2),
            ("users.csv", 2),
            ("users.csv", 3),
            ("users.csv", 4),
            ("users.csv", 5),
            ("users.csv", 7),
            ("users.csv", 8),
            ("users.csv", 9),
        ]
        .iter()
        .map(|(f, l)| (f.to_string(), *l))
        .collect();
        assert_eq!(found, expected, "{:?}", r.body["problems"]);
        assert!(
            school_named(&hub, &admin, "Lakeside Elementary")
                .await
                .is_none()
        );
        // Not a bundle at all: a clean refusal too.
        let r = post_zip(&hub, &admin, "", b"not a zip".to_vec()).await;
        assert_eq!(
            (r.status, r.code()),
            (422, "roster_unreadable"),
            "{:?}",
            r.body
        );
        let r = post_zip(
            &hub,
            &admin,
            "",
            zip_of(&[("users.csv", USERS_11_HEADER.to_owned())]),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (422, "roster_unreadable"),
            "{:?}",
            r.body
        );
        drop(hub);
        db.drop_database().await;
    }
}

/// Writes a bundle with `tiffin-load roster-bundle` into `out`: what importing it should report.
async fn generated(out: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec![
        "tiffin-load",
        "roster-bundle",
        "--out",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    assert!(tiffin_load::outcome(all).await.unwrap());
    serde_json::from_str(&std::fs::read_to_string(out.join("expected.json")).unwrap()).unwrap()
}

/// The load tool's generated district (the scale figures' bundle, here small) imports
/// cleanly, its changed copy applies exactly the changes the generator made, and importing
/// the changed copy again changes nothing.
#[actix_web::test]
async fn a_generated_district_and_its_changed_copy_import_as_generated() {
    let dir = tempfile::tempdir().unwrap();
    let (base, changed) = (dir.path().join("base"), dir.path().join("changed"));
    let size = ["--students", "600", "--guardians", "900", "--schools", "4"];
    let first = generated(&base, &[&size[..], &["--seed", "7"]].concat()).await;
    let change = ["--seed", "8", "--from-seed", "7", "--change-percent", "10"];
    let second = generated(&changed, &[&size[..], &change[..]].concat()).await;
    for (kind, i) in [
        ("students", 0),
        ("students", 1),
        ("students", 2),
        ("guardians", 1),
    ] {
        assert!(counts(&second, kind)[i] > 0, "{kind} {i}: {second}");
    }
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let hub = Hub::start(hub_env(&db, None));
        for (bundle, expected) in [(&base, &first), (&changed, &second)] {
            let path = bundle.to_str().unwrap();
            let report: Value =
                serde_json::from_str(&hub.cli(&["roster", "import", path, "--json"])).unwrap();
            for kind in [
                "schools",
                "students",
                "guardians",
                "links",
                "cards",
                "skipped",
            ] {
                assert_eq!(
                    report[kind], expected[kind],
                    "{backend:?} {path} {kind}: {report}"
                );
            }
        }
        let again: Value = serde_json::from_str(&hub.cli(&[
            "roster",
            "import",
            changed.to_str().unwrap(),
            "--json",
        ]))
        .unwrap();
        for kind in ["schools", "students", "guardians", "links", "cards"] {
            let [created, updated, deactivated, _] = counts(&again, kind);
            assert_eq!(
                (created, updated, deactivated),
                (0, 0, 0),
                "{kind}: {again}"
            );
        }
        drop(hub);
        db.drop_database().await;
    }
}
