//! Notification templates, embedded from `templates/` at build time and checked at start:
//! an email's subject, text and HTML, and the short text of SMS and push.

use minijinja::Environment;
use tiffin_actors::notices::{Channel, Kind};
use tiffin_actors::ports::OutboxMessage;

/// Embeds each file of `templates/` under its path there.
macro_rules! templates {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../templates/", $path)))),*]
    };
}

/// Every template, by name: `{channel}/{kind}.{locale}.{part}`. Email has a subject, text and
/// HTML; `sms/` is the short text of SMS and push bodies (push titles are email subjects).
const TEMPLATES: &[(&str, &str)] = templates![
    "email/allergy_hold.en.html",
    "email/allergy_hold.en.subject",
    "email/allergy_hold.en.txt",
    "email/allergy_hold.es.html",
    "email/allergy_hold.es.subject",
    "email/allergy_hold.es.txt",
    "email/card_in_use.en.html",
    "email/card_in_use.en.subject",
    "email/card_in_use.en.txt",
    "email/card_in_use.es.html",
    "email/card_in_use.es.subject",
    "email/card_in_use.es.txt",
    "email/daily_digest.en.html",
    "email/daily_digest.en.subject",
    "email/daily_digest.en.txt",
    "email/daily_digest.es.html",
    "email/daily_digest.es.subject",
    "email/daily_digest.es.txt",
    "email/order_cancelled.en.html",
    "email/order_cancelled.en.subject",
    "email/order_cancelled.en.txt",
    "email/order_cancelled.es.html",
    "email/order_cancelled.es.subject",
    "email/order_cancelled.es.txt",
    "email/order_confirm_overdue.en.html",
    "email/order_confirm_overdue.en.subject",
    "email/order_confirm_overdue.en.txt",
    "email/order_confirm_overdue.es.html",
    "email/order_confirm_overdue.es.subject",
    "email/order_confirm_overdue.es.txt",
    "email/order_counter_changed.en.html",
    "email/order_counter_changed.en.subject",
    "email/order_counter_changed.en.txt",
    "email/order_counter_changed.es.html",
    "email/order_counter_changed.es.subject",
    "email/order_counter_changed.es.txt",
    "email/order_picked_up.en.html",
    "email/order_picked_up.en.subject",
    "email/order_picked_up.en.txt",
    "email/order_picked_up.es.html",
    "email/order_picked_up.es.subject",
    "email/order_picked_up.es.txt",
    "email/order_pickup_reminder.en.html",
    "email/order_pickup_reminder.en.subject",
    "email/order_pickup_reminder.en.txt",
    "email/order_pickup_reminder.es.html",
    "email/order_pickup_reminder.es.subject",
    "email/order_pickup_reminder.es.txt",
    "email/order_placed.en.html",
    "email/order_placed.en.subject",
    "email/order_placed.en.txt",
    "email/order_placed.es.html",
    "email/order_placed.es.subject",
    "email/order_placed.es.txt",
    "email/order_ready.en.html",
    "email/order_ready.en.subject",
    "email/order_ready.en.txt",
    "email/order_ready.es.html",
    "email/order_ready.es.subject",
    "email/order_ready.es.txt",
    "email/order_uncollected.en.html",
    "email/order_uncollected.en.subject",
    "email/order_uncollected.en.txt",
    "email/order_uncollected.es.html",
    "email/order_uncollected.es.subject",
    "email/order_uncollected.es.txt",
    "email/pickup_code.en.html",
    "email/pickup_code.en.subject",
    "email/pickup_code.en.txt",
    "email/pickup_code.es.html",
    "email/pickup_code.es.subject",
    "email/pickup_code.es.txt",
    "email/sign_in_code.en.html",
    "email/sign_in_code.en.subject",
    "email/sign_in_code.en.txt",
    "email/sign_in_code.es.html",
    "email/sign_in_code.es.subject",
    "email/sign_in_code.es.txt",
    "sms/allergy_hold.en.txt",
    "sms/allergy_hold.es.txt",
    "sms/card_in_use.en.txt",
    "sms/card_in_use.es.txt",
    "sms/order_cancelled.en.txt",
    "sms/order_cancelled.es.txt",
    "sms/order_confirm_overdue.en.txt",
    "sms/order_confirm_overdue.es.txt",
    "sms/order_counter_changed.en.txt",
    "sms/order_counter_changed.es.txt",
    "sms/order_picked_up.en.txt",
    "sms/order_picked_up.es.txt",
    "sms/order_pickup_reminder.en.txt",
    "sms/order_pickup_reminder.es.txt",
    "sms/order_placed.en.txt",
    "sms/order_placed.es.txt",
    "sms/order_ready.en.txt",
    "sms/order_ready.es.txt",
    "sms/order_uncollected.en.txt",
    "sms/order_uncollected.es.txt",
    "sms/pickup_code.en.txt",
    "sms/pickup_code.es.txt",
    "sms/sign_in_code.en.txt",
    "sms/sign_in_code.es.txt",
];

pub struct Templates {
    env: Environment<'static>,
}

pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Templates {
    /// Loads every template and renders each with sample data: a broken template (bad
    /// syntax, a misspelt field) stops the start, not the lunch.
    pub fn load() -> Result<Templates, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("local_time", local_time);
        env.add_filter("money", money);
        let names: Vec<&str> = TEMPLATES.iter().map(|(name, _)| *name).collect();
        for kind in Kind::ALL {
            for part in [
                "email/{}.en.subject",
                "email/{}.en.txt",
                "email/{}.en.html",
                "sms/{}.en.txt",
            ] {
                // Short texts only for kinds that can come by push or SMS.
                let short = part.starts_with("sms/");
                if short && !kind.offers(Channel::Push) && !kind.offers(Channel::Sms) {
                    continue;
                }
                let name = part.replace("{}", kind.as_str());
                if !names.contains(&name.as_str()) {
                    return Err(format!("template {name} is missing"));
                }
            }
        }
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|e| format!("template {name}: {e}"))?;
        }
        let sample = sample_payload();
        for (name, _) in TEMPLATES {
            env.get_template(name)
                .and_then(|t| t.render(minijinja::value::Serde(&sample)))
                .map_err(|e| format!("template {name} does not render: {e}"))?;
        }
        Ok(Templates { env })
    }

    fn render(
        &self,
        name: &str,
        locale: &str,
        part: &str,
        context: &minijinja::Value,
    ) -> Result<String, String> {
        let localised = format!("{name}.{locale}.{part}");
        let template = self
            .env
            .get_template(&localised)
            .or_else(|_| self.env.get_template(&format!("{name}.en.{part}")))
            .map_err(|e| format!("no template {localised}: {e}"))?;
        template
            .render(context)
            .map_err(|e| format!("template {localised}: {e}"))
    }

    /// A push title (the email subject) and the short text of SMS and push bodies.
    pub fn render_short(&self, message: &OutboxMessage) -> Result<(String, String), String> {
        let context = context(&payload(message)?);
        let title = self.render(
            &format!("email/{}", message.template),
            &message.locale,
            "subject",
            &context,
        )?;
        let body = self.render(
            &format!("sms/{}", message.template),
            &message.locale,
            "txt",
            &context,
        )?;
        Ok((title.trim().to_owned(), body.trim().to_owned()))
    }

    pub fn render_email(&self, message: &OutboxMessage) -> Result<RenderedEmail, String> {
        let context = context(&payload(message)?);
        let name = format!("email/{}", message.template);
        let (subject, text) = self.subject_and_text(&name, &message.locale, &context)?;
        Ok(RenderedEmail {
            subject,
            text,
            html: self.render(&name, &message.locale, "html", &context)?,
        })
    }

    /// An in-app message's title and body from its parsed payload: the email's subject and
    /// text, without the HTML an inbox does not show (a third of the rendering, which was a
    /// tenth of the hub's CPU in the intake benchmark: BENCHMARKS.md).
    pub fn render_in_app(
        &self,
        message: &OutboxMessage,
        payload: &serde_json::Value,
    ) -> Result<(String, String), String> {
        let name = format!("email/{}", message.template);
        self.subject_and_text(&name, &message.locale, &context(payload))
    }

    fn subject_and_text(
        &self,
        name: &str,
        locale: &str,
        context: &minijinja::Value,
    ) -> Result<(String, String), String> {
        let subject = self.render(name, locale, "subject", context)?;
        Ok((
            subject.trim().to_owned(),
            self.render(name, locale, "txt", context)?,
        ))
    }
}

/// A message's template data.
pub fn payload(message: &OutboxMessage) -> Result<serde_json::Value, String> {
    serde_json::from_str(&message.payload).map_err(|e| format!("payload: {e}"))
}

/// Template data made into the templates' values once for all of a message's parts (each
/// render converted it afresh).
fn context(payload: &serde_json::Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(payload))
}

/// What an outbox payload holds, with every optional part present.
fn sample_payload() -> serde_json::Value {
    let at = chrono::Utc::now();
    let order = tiffin_actors::domain::OrderSummary {
        id: "00000000-0000-0000-0000-000000000000".into(),
        school_id: "school".into(),
        student_id: "student".into(),
        student_name: "Sample Student".into(),
        state: tiffin_actors::domain::OrderState::Ready,
        version: 4,
        items: vec![tiffin_actors::domain::OrderLine {
            meal_id: "meal".into(),
            name: "Sample meal".into(),
            quantity: 1,
            unit_price_cents: 100,
            station_id: None,
            done: false,
        }],
        total_cents: 100,
        placed_at: at,
        updated_at: at,
        counter: Some(tiffin_actors::domain::CounterRef {
            id: "counter".into(),
            number: 1,
            name: "Counter 1".into(),
        }),
        pickup_code: Some("AC34".into()),
        wave: Some(tiffin_actors::domain::Wave {
            id: "wave".into(),
            name: "First lunch".into(),
            starts_at: at,
            ends_at: at,
            order_cutoff: at,
            cancel_until: at,
        }),
        ready_at: Some(at),
        alerts: vec![tiffin_actors::domain::Alert::PickupReminder],
        allergy_override: None,
    };
    serde_json::json!({
        "school_name": "Sample School",
        // The daily digest's: the school day and each child's orders of it.
        "day": "2026-11-23",
        "children": [{"name": "Sample Student", "orders": [order]}],
        "time_zone": "America/Chicago",
        "recipient_name": "Sample Guardian",
        "order": order,
        // Notices about a student rather than an order.
        "student_name": "Sample Student",
        "card": {"status": "lost", "uid_suffix": "B2C3"},
        "reader_name": "Counter 1 reader",
        "at": at,
        "code": "123456",
        "note": "allergy override for Sample meal (celery): parent confirmed",
        "counter_name": "Counter 1",
        "expires_at": at,
    })
}

/// `{{ instant | local_time(time_zone) }}`: an RFC 3339 instant as the school's clock shows it.
fn local_time(instant: String, time_zone: String) -> Result<String, minijinja::Error> {
    let bad = |what: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, what);
    let at = chrono::DateTime::parse_from_rfc3339(&instant)
        .map_err(|e| bad(format!("local_time: {instant:?}: {e}")))?;
    let tz: chrono_tz::Tz = time_zone
        .parse()
        .map_err(|_| bad(format!("local_time: unknown time zone {time_zone:?}")))?;
    Ok(at.with_timezone(&tz).format("%H:%M").to_string())
}

/// `{{ cents | money }}`: 450 as `$4.50`.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}${}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(template: &str, locale: &str, payload: serde_json::Value) -> OutboxMessage {
        OutboxMessage {
            id: "m1".into(),
            recipient_id: "g".into(),
            channel: "email".into(),
            template: template.into(),
            address: "g@example.org".into(),
            locale: locale.into(),
            payload: payload.to_string(),
            attempts: 0,
            priority: tiffin_actors::notices::Priority::Normal,
            created_at: chrono::Utc::now(),
            expires_at: None,
            fallback_for: None,
        }
    }

    #[test]
    fn renders_each_locale_and_falls_back_to_english() {
        let t = Templates::load().unwrap();
        let ready = |locale| message("order_ready", locale, sample_payload());
        let en = t.render_email(&ready("en")).unwrap();
        assert_eq!(en.subject, "Sample Student's lunch is ready");
        assert!(en.text.contains("1 x Sample meal"), "{}", en.text);
        assert!(en.text.contains("at Counter 1") && en.text.contains("Pickup code: AC34"));
        assert!(en.html.contains("Sample School"));
        let es = t.render_email(&ready("es")).map(|e| e.subject);
        assert_eq!(
            es.as_deref(),
            Ok("El almuerzo de Sample Student está listo")
        );
        let fr = t.render_email(&ready("fr")).map(|e| e.subject);
        assert_eq!(fr.as_deref(), Ok("Sample Student's lunch is ready"));
        let late = t
            .render_email(&message("order_uncollected", "en", sample_payload()))
            .unwrap();
        assert!(
            late.text
                .contains("not collected before the end of First lunch"),
            "{}",
            late.text
        );
    }

    #[test]
    fn times_are_shown_on_the_school_clock_and_texts_are_short() {
        let t = Templates::load().unwrap();
        let mut payload = sample_payload();
        payload["order"]["wave"]["starts_at"] = "2026-11-23T17:30:00Z".into();
        payload["order"]["wave"]["cancel_until"] = "2026-11-23T15:00:00Z".into();
        let placed = t
            .render_email(&message("order_placed", "en", payload.clone()))
            .unwrap();
        // 17:30 UTC is 11:30 in Chicago in November.
        assert!(placed.text.contains("served from 11:30"), "{}", placed.text);
        assert!(placed.text.contains("until 09:00"), "{}", placed.text);
        assert!(placed.text.contains("Total: $1.00"), "{}", placed.text);
        let (title, body) = t
            .render_short(&message("order_ready", "es", payload))
            .unwrap();
        assert_eq!(title, "El almuerzo de Sample Student está listo");
        assert_eq!(
            body,
            "El almuerzo de Sample Student está listo en Counter 1. Código AC34."
        );
        assert!(body.len() <= 160);
        assert_eq!(money(-1205), "-$12.05");
    }

    #[test]
    fn the_digest_lists_each_childs_day_in_the_guardians_language() {
        let t = Templates::load().unwrap();
        let mut payload = sample_payload();
        let mut ada = payload["order"].clone();
        ada["student_name"] = "Ada".into();
        ada["state"] = "picked_up".into();
        ada["placed_at"] = "2026-11-23T14:05:00Z".into();
        ada["updated_at"] = "2026-11-23T17:40:00Z".into();
        let mut bo = ada.clone();
        bo["student_name"] = "Bo".into();
        bo["state"] = "uncollected".into();
        payload["children"] = serde_json::json!([
            {"name": "Ada", "orders": [ada]},
            {"name": "Bo", "orders": [bo]},
        ]);
        let en = t
            .render_email(&message("daily_digest", "en", payload.clone()))
            .unwrap();
        assert_eq!(en.subject, "Lunch at Sample School on 2026-11-23: Ada, Bo");
        // 14:05 and 17:40 UTC are 08:05 and 11:40 in Chicago.
        assert!(
            en.text
                .contains("ordered at 08:05: 1 x Sample meal ($1.00)"),
            "{}",
            en.text
        );
        assert!(en.text.contains("collected at 11:40"), "{}", en.text);
        assert!(en.text.contains("not collected"), "{}", en.text);
        assert!(en.html.contains("<h3>Bo</h3>"), "{}", en.html);
        let es = t
            .render_email(&message("daily_digest", "es", payload))
            .unwrap();
        assert!(es.subject.starts_with("Almuerzo en Sample School"));
        assert!(es.text.contains("recogido a las 11:40"), "{}", es.text);
        assert!(es.text.contains("no recogido"), "{}", es.text);
    }

    #[test]
    fn a_payload_missing_a_field_is_a_permanent_error_not_a_blank() {
        let t = Templates::load().unwrap();
        let thin =
            serde_json::json!({"school_name": "S", "recipient_name": "R", "order": {"id": "o"}});
        assert!(t.render_email(&message("order_ready", "en", thin)).is_err());
    }
}
