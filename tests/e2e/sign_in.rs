//! One-time sign-in codes for people imported from a roster (no password): asked for by email
//! or phone, read from the real email or SMS, exchanged for tokens once; wrong, overused and
//! expired codes refused; unknown and deactivated logins answered alike and sent nothing.

use crate::common::*;
use crate::roster::{USERS_11, bundle_11, post_zip, zip_of};

async fn ask_code(hub: &Hub, login: &str) -> Reply {
    send(
        client().post(hub.url("/api/v1/auth/code")),
        Some(json!({ "login": login })),
    )
    .await
}

async fn sign_in_with(hub: &Hub, login: &str, code: &str) -> Reply {
    send(
        client().post(hub.url("/api/v1/auth/code/verify")),
        Some(json!({ "login": login, "code": code })),
    )
    .await
}

/// The code in the `n`th email (from 1) to `to`, once it has come: the text part's line
/// that is six digits and nothing else.
async fn emailed_code(smtp: &SmtpSink, to: &str, n: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mails: Vec<Mail> = smtp
            .messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == to))
            .collect();
        if let Some(mail) = mails.get(n - 1) {
            let text = mail.unfolded();
            return text
                .lines()
                .map(str::trim)
                .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))
                .unwrap_or_else(|| panic!("no code in {text}"))
                .to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no email {n} to {to}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wrong_for(code: &str) -> &'static str {
    if code == "000000" { "111111" } else { "000000" }
}

async fn me(hub: &Hub, tokens: &Value) -> Value {
    let token = tokens["access_token"].as_str().unwrap();
    expect(get(hub, token, "/api/v1/me").await, 200)
}

#[actix_web::test]
async fn imported_people_sign_in_with_a_code_sent_by_their_channel() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let smtp = SmtpSink::start();
        let (fcm, sms) = (FakeFcm::start(), FakeSms::start());
        let mut env = hub_env(&db, Some(&smtp));
        env.extend(provider_env(&fcm, &sms, db.dir()));
        // Gil asks and tries more often in a minute than the sign-in limit lets one login.
        env.push(("TIFFIN_LIMITS__SIGN_IN__BURST".into(), "50".into()));
        let hub = Hub::start(env);
        let admin = hub.admin_token();
        let bundle = bundle_11(USERS_11, "", "");
        expect(post_zip(&hub, &admin, "", zip_of(&bundle)).await, 200);

        // By email, written as the roster had it: the code in the email signs Maria in, once.
        let asked = ask_code(&hub, " Maria@Family.test ").await;
        assert_eq!(asked.status, 202, "{backend:?}: {}", asked.body);
        let code = emailed_code(&smtp, "maria@family.test", 1).await;
        let tokens = expect(sign_in_with(&hub, "maria@family.test", &code).await, 200);
        assert_eq!(me(&hub, &tokens).await["display_name"], "Maria Ruiz");
        assert!(
            tokens["refresh_token"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
        let again = sign_in_with(&hub, "maria@family.test", &code).await;
        assert_eq!((again.status, again.code()), (401, "sign_in_code_invalid"));

        // By SMS, the number written with spaces and dashes.
        expect(ask_code(&hub, "+1 (415) 555-2671").await, 202);
        let text = sms
            .wait_for("+14155552671", "sign-in code", Duration::from_secs(20))
            .await;
        let code = six_digit_code(&text);
        let tokens = expect(sign_in_with(&hub, "+1 415 555 2671", &code).await, 200);
        assert_eq!(me(&hub, &tokens).await["display_name"], "Maria Ruiz");

        // Five wrong codes; the sixth attempt finds the code void, right as it is.
        expect(ask_code(&hub, "gil@family.test").await, 202);
        let code = emailed_code(&smtp, "gil@family.test", 1).await;
        for _ in 0..5 {
            let r = sign_in_with(&hub, "gil@family.test", wrong_for(&code)).await;
            assert_eq!((r.status, r.code()), (401, "sign_in_code_invalid"));
        }
        let r = sign_in_with(&hub, "gil@family.test", &code).await;
        assert_eq!((r.status, r.code()), (401, "sign_in_code_expired"));

        // A code past its time is void; a new request replaces it.
        expect(ask_code(&hub, "ana.ruiz@district.test").await, 202);
        let code = emailed_code(&smtp, "ana.ruiz@district.test", 1).await;
        db_execute(
            &db,
            "UPDATE sign_in_codes SET expires_at = '2000-01-01 00:00:00'",
        )
        .await;
        let r = sign_in_with(&hub, "ana.ruiz@district.test", &code).await;
        assert_eq!((r.status, r.code()), (401, "sign_in_code_expired"));
        expect(ask_code(&hub, "ana.ruiz@district.test").await, 202);
        let code = emailed_code(&smtp, "ana.ruiz@district.test", 2).await;
        let tokens = expect(
            sign_in_with(&hub, "ana.ruiz@district.test", &code).await,
            200,
        );
        assert_eq!(me(&hub, &tokens).await["role"], "student");

        // Gil asks again, then a re-import without him deactivates him: his code no longer
        // signs him in, and he gets no new one.
        expect(ask_code(&hub, "gil@family.test").await, 202);
        let gils = emailed_code(&smtp, "gil@family.test", 2).await;
        let without_gil: String = USERS_11
            .lines()
            .filter(|l| !l.starts_with("gua-1,"))
            .map(|l| format!("{}\n", l.replace(",gua-1,05,", ",,05,")))
            .collect();
        let report = expect(
            post_zip(&hub, &admin, "", zip_of(&bundle_11(&without_gil, "", ""))).await,
            200,
        );
        assert_eq!(report["guardians"]["deactivated"], 1, "{report}");
        let r = sign_in_with(&hub, "gil@family.test", &gils).await;
        assert_eq!((r.status, r.code()), (401, "sign_in_code_invalid"));

        // Unknown and deactivated logins get the same answer, and nothing is sent to them.
        let unknown = ask_code(&hub, "nobody@family.test").await;
        let deactivated = ask_code(&hub, "gil@family.test").await;
        let no_number = ask_code(&hub, "+1 202 555 0199").await;
        for r in [&unknown, &deactivated, &no_number] {
            assert_eq!((r.status, &r.body), (202, &asked.body));
        }
        let r = sign_in_with(&hub, "nobody@family.test", "123456").await;
        assert_eq!((r.status, r.code()), (401, "sign_in_code_invalid"));
        // A request after them is sent; by then theirs would have been too.
        expect(ask_code(&hub, "maria@family.test").await, 202);
        emailed_code(&smtp, "maria@family.test", 2).await;
        let to = |who: &str| {
            smtp.messages()
                .iter()
                .filter(|m| m.to.iter().any(|t| t == who))
                .count()
        };
        assert_eq!(to("nobody@family.test"), 0);
        assert_eq!(
            to("gil@family.test"),
            2,
            "only the two he asked for while active"
        );
        assert!(sms.to("+12025550199").is_empty());
        assert_eq!(
            smtp.messages().len(),
            6,
            "{backend:?}: one email a code asked for"
        );

        drop(hub);
        db.drop_database().await;
    }
}
