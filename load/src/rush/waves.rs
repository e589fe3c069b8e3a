//! Lunch waves: each school's service windows laid out around the run (times of day on the
//! school's clock), which wave each student orders for, and when each pickup visit is due.

use super::School;
use crate::hub::{Target, client, created};
use crate::profile::{Profile, arrival_at};
use anyhow::Context;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Utc, Weekday};
use serde_json::{Value, json};
use std::time::Duration;

/// The school's time zone: its waves are times of day there.
pub(super) const TIME_ZONE: &str = "America/Chicago";

/// A lunch wave's school-local times of day, and its end as an instant.
#[derive(Debug, PartialEq)]
struct WaveTimes {
    starts_at: String,
    ends_at: String,
    ends_utc: DateTime<Utc>,
}

/// Every school's lunch waves (`POST /schools/{id}/service-windows`), laid out around this
/// run; what the report says about them.
///
/// A wave is a pair of school-local times of day, start before end (no wave spans midnight),
/// resolved on the local day an order is placed. The hub looks at a wave twice: an order is
/// taken only before its cutoff (at most its start), and a ready meal not collected by its end
/// becomes `uncollected`; scans, counters and the board ignore it. So a wave cannot "cover
/// now" for ordering: the waves start once the pre-order wave is due to be over (with slack),
/// a minute apart, and all end after the run's deadline, so that no meal is marked
/// uncollected while the rush still hands them over; that pickups start before the waves'
/// nominal starts is the compressed timeline. When the run would cross local midnight (or a
/// daylight-saving change) there is no honest layout: the schools get no waves, and the
/// report says why.
pub(super) async fn seed_waves(
    profile: &Profile,
    scale: f64,
    target: &Target,
    schools: &mut [School],
) -> anyhow::Result<Value> {
    if profile.waves_per_school == 0 {
        return Ok(Value::Null);
    }
    let orders = profile.schools * profile.orders_per_school();
    let ordering = 2.0 * orders as f64 / (profile.order_peak_per_sec * scale);
    // Slack for creating the waves and opening the screens before the rush, and for a
    // driver or hub falling behind: an order after its wave's cutoff is refused.
    let ordering_for = Duration::from_secs_f64(ordering.max(0.0) * 1.25) + Duration::from_secs(300);
    // After the deadline (and after the last wave's start), whatever the rush does.
    let starts_for = ordering_for + Duration::from_secs(60 * profile.waves_per_school as u64);
    let ends_after =
        Duration::from_secs(profile.deadline_secs).max(starts_for) + Duration::from_secs(300);
    let layout = match wave_layout(
        Utc::now(),
        ordering_for,
        ends_after,
        profile.waves_per_school,
    ) {
        Ok(layout) => layout,
        Err(why) => {
            eprintln!("tiffin-load: no lunch waves: {why}");
            return Ok(json!({"per_school": 0, "skipped": why}));
        }
    };
    for chunk in schools.chunks_mut(8) {
        let made = futures_util::future::join_all(
            chunk
                .iter()
                .map(|school| create_waves(target, &school.id, &layout)),
        )
        .await;
        for (school, waves) in chunk.iter_mut().zip(made) {
            school.waves = waves?;
        }
    }
    Ok(json!({
        "per_school": layout.len(),
        "time_zone": TIME_ZONE,
        "starts_at": layout.iter().map(|w| w.starts_at.as_str()).collect::<Vec<_>>(),
        "ends_at": layout.first().map(|w| w.ends_at.as_str()),
    }))
}

async fn create_waves(
    target: &Target,
    school: &str,
    layout: &[WaveTimes],
) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    let mut waves = Vec::with_capacity(layout.len());
    for (k, wave) in layout.iter().enumerate() {
        let made = created(
            client()
                .post(format!(
                    "{}/api/v1/schools/{school}/service-windows",
                    target.url
                ))
                .bearer_auth(&target.admin_token),
            json!({
                "name": format!("Load wave {}", k + 1),
                "starts_at": wave.starts_at,
                "ends_at": wave.ends_at,
                "order_cutoff_minutes": 0,
                "cancel_deadline_minutes": 0,
            }),
        )
        .await
        .context("creating a lunch wave")?;
        let id = made["id"].as_str().context("window id")?.to_owned();
        waves.push((id, wave.ends_utc));
    }
    Ok(waves)
}

/// `waves` lunch waves for a rush starting at `now`: the first starts once ordering is over
/// (`ordering_for` from now), the others a minute apart, and all end `ends_after` from now;
/// or why that does not fit one day of the school's clock.
fn wave_layout(
    now: DateTime<Utc>,
    ordering_for: Duration,
    ends_after: Duration,
    waves: usize,
) -> Result<Vec<WaveTimes>, String> {
    // Whole seconds, rounded up: the hub keeps `HH:MM:SS`.
    let at =
        |secs: u64| DateTime::from_timestamp(now.timestamp().saturating_add_unsigned(secs + 1), 0);
    let starts: Option<Vec<DateTime<Utc>>> = (0..waves as u64)
        .map(|k| at(ordering_for.as_secs() + 60 * k))
        .collect();
    let (Some(starts), Some(end)) = (starts, at(ends_after.as_secs())) else {
        return Err("the run's times are out of range".into());
    };
    if starts.last().is_some_and(|last| *last >= end) {
        return Err("the waves would start after the run's end".into());
    }
    let offset = chicago_utc_offset(now);
    if chicago_utc_offset(end) != offset {
        return Err(format!(
            "a daylight-saving change in {TIME_ZONE} falls within the run, and waves are times of day"
        ));
    }
    let offset = FixedOffset::east_opt(offset).ok_or_else(|| "no such offset".to_owned())?;
    let local = |t: DateTime<Utc>| t.with_timezone(&offset).naive_local();
    if local(end).date() != local(now).date() {
        return Err(format!(
            "it is {} in {TIME_ZONE}: the run would outlast the school's day, and a wave cannot span midnight",
            local(now).format("%H:%M")
        ));
    }
    let time = |t: DateTime<Utc>| local(t).format("%H:%M:%S").to_string();
    Ok(starts
        .into_iter()
        .map(|start| WaveTimes {
            starts_at: time(start),
            ends_at: time(end),
            ends_utc: end,
        })
        .collect())
}

/// America/Chicago's offset from UTC in seconds (east), by the US rules in force since 2007:
/// daylight time (UTC-5) from 02:00 on the second Sunday of March to 02:00 on the first Sunday
/// of November, standard time (UTC-6) otherwise. The load crate has no time-zone database;
/// each accepted order's wave (its end as an instant, from the hub's) checks this.
fn chicago_utc_offset(at: DateTime<Utc>) -> i32 {
    let sunday =
        |month: u32, n: u8| NaiveDate::from_weekday_of_month_opt(at.year(), month, Weekday::Sun, n);
    // 02:00 CST is 08:00 UTC; 02:00 CDT is 07:00 UTC.
    let begins = sunday(3, 2).and_then(|d| d.and_hms_opt(8, 0, 0));
    let ends = sunday(11, 1).and_then(|d| d.and_hms_opt(7, 0, 0));
    let daylight =
        matches!((begins, ends), (Some(b), Some(e)) if b.and_utc() <= at && at < e.and_utc());
    if daylight { -5 * 3600 } else { -6 * 3600 }
}

/// Whether an accepted order is in the wave it asked for, ending when the seed computed.
pub(super) fn in_wave(order: &Value, window: &str, ends: DateTime<Utc>) -> bool {
    order["wave"]["id"] == window
        && order["wave"]["ends_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| (t.with_timezone(&Utc) - ends).num_seconds().abs() <= 1)
}

/// A student's lunch wave: siblings (one guardian's two students) share one, and every wave
/// comes to every reader (students go to reader `student % readers`).
pub(super) fn wave_of(student: usize, readers: usize, waves: usize) -> usize {
    (student / readers.max(1)) % waves.max(1)
}

/// When each visit of a pickup wave in lunch waves is due, in seconds from its start: the
/// waves one after another (`counts` visits each), each rising to `peak` and falling.
pub(super) fn wave_arrivals(counts: &[usize], peak: f64) -> Vec<f64> {
    let mut due = Vec::with_capacity(counts.iter().sum());
    let mut start = 0.0;
    for &n in counts {
        due.extend((0..n).map(|j| start + arrival_at(j, n, peak)));
        start += 2.0 * n as f64 / peak;
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn chicago_keeps_us_daylight_time() {
        let hours = |s: &str| chicago_utc_offset(utc(s)) / 3600;
        assert_eq!(hours("2026-01-15T12:00:00Z"), -6);
        assert_eq!(hours("2026-07-01T12:00:00Z"), -5);
        // 2025: from 02:00 CST on 9 March to 02:00 CDT on 2 November.
        assert_eq!(hours("2025-03-09T07:59:59Z"), -6);
        assert_eq!(hours("2025-03-09T08:00:00Z"), -5);
        assert_eq!(hours("2025-11-02T06:59:59Z"), -5);
        assert_eq!(hours("2025-11-02T07:00:00Z"), -6);
    }

    #[test]
    fn waves_start_after_ordering_and_end_after_the_run_on_the_schools_clock() {
        let now = utc("2026-01-15T16:00:00Z"); // 10:00 in Chicago
        let layout =
            wave_layout(now, Duration::from_secs(100), Duration::from_secs(600), 3).unwrap();
        let starts: Vec<&str> = layout.iter().map(|w| w.starts_at.as_str()).collect();
        assert_eq!(starts, ["10:01:41", "10:02:41", "10:03:41"]);
        assert!(layout.iter().all(|w| w.ends_at == "10:10:01"));
        assert!(
            layout
                .iter()
                .all(|w| w.ends_utc == utc("2026-01-15T16:10:01Z"))
        );
        // 23:50 in Chicago: no wave can last 20 minutes without crossing midnight.
        let late = utc("2026-01-16T05:50:00Z");
        let refused = wave_layout(late, Duration::from_secs(60), Duration::from_secs(1200), 2);
        assert!(refused.unwrap_err().contains("midnight"));
        // Daylight time begins at 08:00 UTC on 8 March 2026.
        let spring = utc("2026-03-08T07:30:00Z");
        let refused = wave_layout(
            spring,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            2,
        );
        assert!(refused.unwrap_err().contains("daylight"));
        // The waves' starts must come before their end.
        assert!(wave_layout(now, Duration::from_secs(500), Duration::from_secs(600), 4).is_err());
        assert_eq!(
            wave_layout(now, Duration::from_secs(1), Duration::from_secs(2), 0),
            Ok(Vec::new())
        );
    }

    #[test]
    fn an_order_is_checked_against_its_wave() {
        let ends = utc("2026-01-15T16:10:01Z");
        let order = json!({"wave": {"id": "w1", "ends_at": "2026-01-15T16:10:01Z"}});
        assert!(in_wave(&order, "w1", ends));
        assert!(!in_wave(&order, "w2", ends));
        let hour_off = json!({"wave": {"id": "w1", "ends_at": "2026-01-15T17:10:01Z"}});
        assert!(!in_wave(&hour_off, "w1", ends));
        assert!(!in_wave(&json!({"wave": null}), "w1", ends));
    }

    #[test]
    fn every_wave_comes_to_every_reader_and_siblings_share_one() {
        let (readers, waves) = (2, 4);
        for wave in 0..waves {
            let at: Vec<usize> = (0..40)
                .filter(|s| wave_of(*s, readers, waves) == wave)
                .map(|s| s % readers)
                .collect();
            assert!((0..readers).all(|r| at.contains(&r)), "wave {wave}: {at:?}");
        }
        assert!(
            (0..40)
                .step_by(2)
                .all(|s| wave_of(s, 2, 4) == wave_of(s + 1, 2, 4))
        );
        assert_eq!(wave_of(7, 0, 0), 0);
    }

    #[test]
    fn lunch_waves_come_one_after_another() {
        let peak = 10.0;
        let one = wave_arrivals(&[100], peak);
        let same: Vec<f64> = (0..100).map(|i| arrival_at(i, 100, peak)).collect();
        assert_eq!(one, same);
        let two = wave_arrivals(&[100, 50, 0, 20], peak);
        assert_eq!(two.len(), 170);
        assert!(two.windows(2).all(|w| w[0] <= w[1]));
        // The second wave starts when the first (2n/peak = 20 s) is over.
        assert!(two[99] < 20.0 && two[100] >= 20.0);
        assert!(two[150] >= 30.0);
    }
}
