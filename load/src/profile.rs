//! A rush's sizes and rates, as data: `load/profiles/*.toml`, built in by name or read from a
//! file.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub schools: usize,
    pub students_per_school: usize,
    /// Share of students who pre-order a meal.
    pub order_share: f64,
    pub readers_per_school: usize,
    /// Raw reads a reader posts per card presented: uniformly between the two.
    pub reads_per_card: [usize; 2],
    pub dashboards_per_kitchen: usize,
    /// Pickup boards (`board:` topic) per school, on WebSocket like the screens.
    #[serde(default)]
    pub boards_per_kitchen: usize,
    /// Order arrivals per second at the top of the pre-order wave.
    pub order_peak_per_sec: f64,
    /// Counter visits per second at the top of the pickup wave.
    pub scan_peak_per_sec: f64,
    /// Transitions a second at the top of the kitchens' wave (each order confirmed, started
    /// and readied, open loop); by default three times `order_peak_per_sec`: the kitchens keep
    /// the pace the orders came at.
    #[serde(default)]
    pub transition_peak_per_sec: Option<f64>,
    /// The whole run gives up after this long.
    pub deadline_secs: u64,
    /// Lunch waves (service windows) per school, each student's order in one of them; 0: the
    /// schools have none and take orders at any time.
    #[serde(default)]
    pub waves_per_school: usize,
    /// Readers of the first school that are offline during the pickup wave: they keep their
    /// reads and post them afterwards as offline batches.
    #[serde(default)]
    pub offline_readers: usize,
    /// Guardians per school who sign in and follow their children's orders on WebSocket (each
    /// guardian has two children).
    #[serde(default)]
    pub guardian_apps_per_school: usize,
    /// At the peak of the pickup wave every kitchen screen drops its socket and resumes.
    #[serde(default)]
    pub reconnect_storm: bool,
}

const BUILT_IN: [(&str, &str); 5] = [
    ("smoke", include_str!("../profiles/smoke.toml")),
    ("district-m", include_str!("../profiles/district-m.toml")),
    ("district-l", include_str!("../profiles/district-l.toml")),
    ("nation", include_str!("../profiles/nation.toml")),
    ("hasivu", include_str!("../profiles/hasivu.toml")),
];

/// What `--profile` names: a rush, or a phased plan (a file with `[[phases]]`).
pub enum Loaded {
    Rush(Profile),
    Phased(crate::hasivu::Plan),
}

/// A built-in profile by name, else a TOML file by path.
pub fn load(name_or_path: &str) -> anyhow::Result<Loaded> {
    let text = match BUILT_IN.iter().find(|(name, _)| *name == name_or_path) {
        Some((_, text)) => (*text).to_owned(),
        None => std::fs::read_to_string(name_or_path).with_context(|| {
            format!(
                "no built-in profile {name_or_path:?} (smoke, district-m, district-l, nation, hasivu) and no such file"
            )
        })?,
    };
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("profile {name_or_path}"))?;
    if table.contains_key("phases") {
        let plan: crate::hasivu::Plan =
            toml::from_str(&text).with_context(|| format!("profile {name_or_path}"))?;
        plan.check()?;
        return Ok(Loaded::Phased(plan));
    }
    let profile: Profile =
        toml::from_str(&text).with_context(|| format!("profile {name_or_path}"))?;
    profile.check()?;
    Ok(Loaded::Rush(profile))
}

impl Profile {
    /// A built-in rush profile by name, else a TOML file by path.
    #[cfg(test)]
    pub fn load(name_or_path: &str) -> anyhow::Result<Profile> {
        match load(name_or_path)? {
            Loaded::Rush(profile) => Ok(profile),
            Loaded::Phased(_) => bail!("{name_or_path} is a phased plan, not a rush"),
        }
    }

    pub fn check(&self) -> anyhow::Result<()> {
        if self.schools == 0 || self.students_per_school == 0 || self.readers_per_school == 0 {
            bail!("schools, students_per_school and readers_per_school must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.order_share) {
            bail!("order_share must be between 0 and 1");
        }
        if self.reads_per_card[0] == 0 || self.reads_per_card[0] > self.reads_per_card[1] {
            bail!("reads_per_card must be [low, high] with 1 <= low <= high");
        }
        if self.order_peak_per_sec <= 0.0 || self.scan_peak_per_sec <= 0.0 {
            bail!("peak rates must be positive");
        }
        if self.transition_peak_per_sec.is_some_and(|rate| rate <= 0.0) {
            bail!("transition_peak_per_sec must be positive");
        }
        // Wave starts are a minute apart, all inside the school's day.
        if self.waves_per_school > 12 {
            bail!("waves_per_school must be at most 12");
        }
        if self.offline_readers > self.readers_per_school {
            bail!("offline_readers must be at most readers_per_school");
        }
        // Guardian k has students 2k and 2k+1; the first orders_per_school students order.
        if self.guardian_apps_per_school > self.orders_per_school().div_ceil(2) {
            bail!("guardian_apps_per_school must be at most half the students who order");
        }
        Ok(())
    }

    /// Transitions a second at the top of the kitchens' wave.
    pub fn transition_peak(&self) -> f64 {
        self.transition_peak_per_sec
            .unwrap_or(3.0 * self.order_peak_per_sec)
    }

    /// Students who order, per school.
    pub fn orders_per_school(&self) -> usize {
        ((self.students_per_school as f64) * self.order_share).round() as usize
    }
}

/// When the `i`-th of `n` arrivals is due, in seconds from the start of a wave whose rate
/// rises linearly to `peak` per second and falls back (a triangle): the wave lasts `2n/peak`.
pub fn arrival_at(i: usize, n: usize, peak: f64) -> f64 {
    let length = 2.0 * n as f64 / peak;
    let q = (i as f64 + 0.5) / n as f64;
    let fraction = if q < 0.5 {
        (q / 2.0).sqrt()
    } else {
        1.0 - ((1.0 - q) / 2.0).sqrt()
    };
    fraction * length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_profile_parses() {
        for (name, _) in BUILT_IN {
            let loaded_name = match load(name).unwrap() {
                Loaded::Rush(profile) => profile.name,
                Loaded::Phased(plan) => plan.name,
            };
            assert_eq!(loaded_name, name);
        }
        assert!(matches!(load("hasivu").unwrap(), Loaded::Phased(_)));
        assert!(Profile::load("hasivu").is_err());
        let m = Profile::load("district-m").unwrap();
        let orders = m.schools * m.orders_per_school();
        assert!((13_000..15_000).contains(&orders), "{orders}");
        assert_eq!(m.waves_per_school, 4);
        assert_eq!(m.schools * m.guardian_apps_per_school, 2_800);
        // Every shipped file turns on the rush's extras, burst too (a file, not built in).
        let burst: Profile = toml::from_str(include_str!("../profiles/burst.toml")).unwrap();
        burst.check().unwrap();
        let mut shipped: Vec<Profile> = BUILT_IN
            .iter()
            .filter_map(|(name, _)| match load(name).unwrap() {
                Loaded::Rush(profile) => Some(profile),
                Loaded::Phased(_) => None,
            })
            .collect();
        shipped.push(burst);
        for p in shipped {
            assert!(p.waves_per_school > 0, "{}", p.name);
            assert_eq!(p.offline_readers, 1, "{}", p.name);
            assert!(p.guardian_apps_per_school > 0, "{}", p.name);
            assert!(p.reconnect_storm, "{}", p.name);
        }
    }

    #[test]
    fn a_profile_without_the_newer_fields_still_parses() {
        let old = r#"
            name = "old"
            schools = 1
            students_per_school = 10
            order_share = 1.0
            readers_per_school = 1
            reads_per_card = [3, 5]
            dashboards_per_kitchen = 1
            order_peak_per_sec = 10.0
            scan_peak_per_sec = 10.0
            deadline_secs = 60
        "#;
        let p: Profile = toml::from_str(old).unwrap();
        p.check().unwrap();
        assert_eq!(
            (
                p.waves_per_school,
                p.offline_readers,
                p.guardian_apps_per_school
            ),
            (0, 0, 0)
        );
        assert!(!p.reconnect_storm);
        // The kitchens keep the orders' pace: three steps an order.
        assert_eq!(p.transition_peak(), 30.0);
        let still_kitchen = Profile {
            transition_peak_per_sec: Some(0.0),
            ..p.clone()
        };
        assert!(still_kitchen.check().is_err());
        let too_many_apps = Profile {
            guardian_apps_per_school: 6,
            ..p.clone()
        };
        assert!(too_many_apps.check().is_err());
        let too_many_offline = Profile {
            offline_readers: 2,
            ..p
        };
        assert!(too_many_offline.check().is_err());
    }

    #[test]
    fn arrivals_rise_to_the_peak_and_fall() {
        let (n, peak) = (1000, 100.0);
        let times: Vec<f64> = (0..n).map(|i| arrival_at(i, n, peak)).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        let length = 2.0 * n as f64 / peak;
        assert!(times[n - 1] < length && times[0] > 0.0);
        // The busiest second is in the middle, at about the peak rate.
        let in_second = |s: f64| times.iter().filter(|t| **t >= s && **t < s + 1.0).count();
        let middle = in_second(length / 2.0 - 0.5);
        assert!((90..=110).contains(&middle), "{middle}");
        assert!(in_second(0.0) < middle / 4);
    }
}
