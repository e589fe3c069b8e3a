//! The phased plan (`load/profiles/hasivu.toml`): its phases, its mix of arrivals and its
//! notification settings, and the schedule of every arrival it makes.

use crate::sink::{Bucket, ProviderLimits};
use anyhow::bail;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// The plan: `load/profiles/hasivu.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    /// Seeds the arrival mix's shuffle.
    pub seed: u64,
    /// Every request type's p95 should be under this, in every phase.
    pub target_p95_ms: f64,
    pub schools: usize,
    /// Signed-in students, reused round-robin.
    pub students_per_school: usize,
    /// Guardian k has students 2k and 2k+1 of their school.
    pub guardians_per_school: usize,
    pub readers_per_school: usize,
    /// After the last arrival, how long lunches under way may take to finish.
    pub drain_secs: u64,
    pub phases: Vec<Phase>,
    pub mix: Mix,
    /// What a hub the tool starts sends its notifications to, and how soon they must be out.
    #[serde(default)]
    pub notifications: Notifications,
}

/// The notification side of a run against a hub the tool starts: the tool's sinks answer each
/// email, push and SMS after `sink_delay_ms`, and the hub's provider buckets are set to what
/// they allow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notifications {
    /// How long each sink takes to answer (a provider's latency); `--sink-delay-ms` overrides.
    pub sink_delay_ms: u64,
    /// Everything the run committed must be sent, or expired by rule, this long after the end
    /// of the last phase.
    pub within_secs: u64,
    /// The push provider's rate (FCM's quota: 600,000 messages a minute per project).
    pub push_per_sec: u32,
    /// The SMS provider's rate (a short code or a messaging service's pool: about 100 a
    /// second; one long code takes 1).
    pub sms_per_sec: u32,
}

impl Default for Notifications {
    fn default() -> Notifications {
        Notifications {
            sink_delay_ms: 50,
            within_secs: 60,
            push_per_sec: 10_000,
            sms_per_sec: 100,
        }
    }
}

impl Notifications {
    /// The hub's provider buckets against sinks that answer after `delay_ms`: email what the
    /// SMTP sink allows (each of the hub's `smtp_sessions` carries one message at a time, so
    /// 1000 / `delay_ms` a second each; a burst of one per session; off when the sink does not
    /// wait), push and SMS at the providers' rates (the HTTP sinks answer every request
    /// concurrently, so they allow whatever the provider would), each with a burst of one
    /// second's worth.
    pub fn limits(&self, delay_ms: u64, smtp_sessions: usize) -> ProviderLimits {
        let email = match 1000u64.checked_div(delay_ms) {
            Some(each) => Bucket {
                per_sec: u32::try_from(each.saturating_mul(smtp_sessions as u64))
                    .unwrap_or(u32::MAX),
                burst: u32::try_from(smtp_sessions.max(1)).unwrap_or(u32::MAX),
            },
            None => Bucket {
                per_sec: 0,
                burst: 0,
            },
        };
        let second = |per_sec: u32| Bucket {
            per_sec,
            burst: per_sec,
        };
        ProviderLimits {
            email,
            push: second(self.push_per_sec),
            sms: second(self.sms_per_sec),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub arrivals_per_sec: f64,
}

/// Shares of arrivals, in whole parts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    pub menu: u32,
    pub order: u32,
    pub guardian: u32,
}

impl Plan {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.phases.is_empty() {
            bail!("a phased plan needs at least one phase");
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !self
            .phases
            .iter()
            .all(|p| positive(p.seconds) && positive(p.arrivals_per_sec))
        {
            bail!("every phase needs positive seconds and arrivals_per_sec");
        }
        if self.mix.menu + self.mix.order + self.mix.guardian == 0 {
            bail!("the mix needs at least one share");
        }
        if self.schools == 0 || self.students_per_school == 0 || self.readers_per_school == 0 {
            bail!("schools, students_per_school and readers_per_school must be at least 1");
        }
        if self.guardians_per_school * 2 > self.students_per_school {
            bail!(
                "each guardian has two children: guardians_per_school <= students_per_school / 2"
            );
        }
        if self.mix.guardian > 0 && self.guardians_per_school == 0 {
            bail!("a mix with guardians needs guardians_per_school");
        }
        if !positive(self.target_p95_ms) {
            bail!("target_p95_ms must be positive");
        }
        if self.notifications.within_secs == 0 {
            bail!("notifications.within_secs must be at least 1");
        }
        Ok(())
    }

    /// Each phase's start and length in seconds, every length scaled by `time_scale`.
    pub fn spans(&self, time_scale: f64) -> Vec<(f64, f64)> {
        let mut start = 0.0;
        self.phases
            .iter()
            .map(|p| {
                let span = (start, p.seconds * time_scale);
                start += span.1;
                span
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Menu,
    Order,
    Guardian,
}

/// One arrival: when it is due (seconds from the start), in which phase, of which kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub at: f64,
    pub phase: usize,
    pub kind: Kind,
}

/// Every arrival of the run: each phase at its constant rate (times `rate_scale`), evenly
/// spaced over its scaled length; kinds from [`mix_sequence`], one sequence across phases.
pub fn schedule(plan: &Plan, time_scale: f64, rate_scale: f64) -> Vec<Arrival> {
    let spans = plan.spans(time_scale);
    let counts: Vec<usize> = plan
        .phases
        .iter()
        .zip(&spans)
        .map(|(p, (_, length))| (length * p.arrivals_per_sec * rate_scale).round() as usize)
        .collect();
    let mut kinds = mix_sequence(plan.mix, counts.iter().sum(), plan.seed).into_iter();
    let mut arrivals = Vec::with_capacity(counts.iter().sum());
    for (phase, (&(start, length), &n)) in spans.iter().zip(&counts).enumerate() {
        for i in 0..n {
            let Some(kind) = kinds.next() else {
                break;
            };
            arrivals.push(Arrival {
                at: start + (i as f64 + 0.5) * length / n as f64,
                phase,
                kind,
            });
        }
    }
    arrivals
}

/// `n` kinds in the mix's shares: exact in every block of (shares / their gcd) arrivals, in
/// an order shuffled by `seed`, so that every stretch of the run has the plan's mix.
pub fn mix_sequence(mix: Mix, n: usize, seed: u64) -> Vec<Kind> {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = gcd(gcd(mix.menu, mix.order), mix.guardian).max(1);
    let mut block = Vec::new();
    for (kind, share) in [
        (Kind::Menu, mix.menu),
        (Kind::Order, mix.order),
        (Kind::Guardian, mix.guardian),
    ] {
        block.extend(std::iter::repeat_n(kind, (share / g) as usize));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kinds = Vec::with_capacity(n + block.len());
    while kinds.len() < n && !block.is_empty() {
        let mut next = block.clone();
        next.shuffle(&mut rng);
        kinds.extend(next);
    }
    kinds.truncate(n);
    kinds
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The built-in plan, read as `--profile hasivu` reads it (`profile` tests that it does).
    pub(crate) fn plan() -> Plan {
        let plan: Plan = toml::from_str(include_str!("../../profiles/hasivu.toml")).unwrap();
        plan.check().unwrap();
        plan
    }

    #[test]
    fn the_plan_is_the_specifications() {
        let p = plan();
        let phases: Vec<(f64, f64)> = p
            .phases
            .iter()
            .map(|ph| (ph.seconds, ph.arrivals_per_sec))
            .collect();
        assert_eq!(phases, [(300.0, 10.0), (600.0, 50.0), (300.0, 100.0)]);
        assert_eq!((p.mix.menu, p.mix.order, p.mix.guardian), (60, 30, 10));
        assert_eq!(p.target_p95_ms, 200.0);
        assert_eq!(
            (p.notifications.sink_delay_ms, p.notifications.within_secs),
            (50, 60)
        );
        let mut bad = p.clone();
        bad.notifications.within_secs = 0;
        assert!(bad.check().is_err());
        bad = p.clone();
        bad.guardians_per_school = p.students_per_school;
        assert!(bad.check().is_err());
        bad = p.clone();
        bad.phases[1].arrivals_per_sec = 0.0;
        assert!(bad.check().is_err());
    }

    #[test]
    fn phases_keep_their_rates_when_shortened() {
        let p = plan();
        let full = schedule(&p, 1.0, 1.0);
        assert_eq!(full.len(), 3_000 + 30_000 + 30_000);
        let short = schedule(&p, 0.05, 1.0);
        // 15 s at 10/s, 30 s at 50/s, 15 s at 100/s.
        let per_phase = |a: &[Arrival], phase| a.iter().filter(|x| x.phase == phase).count();
        assert_eq!(
            (0..3).map(|ph| per_phase(&short, ph)).collect::<Vec<_>>(),
            [150, 1_500, 1_500]
        );
        assert_eq!(p.spans(0.05), [(0.0, 15.0), (15.0, 30.0), (45.0, 15.0)]);
        // Due in order, each inside its phase, evenly spaced at the phase's rate.
        assert!(short.windows(2).all(|w| w[0].at < w[1].at));
        for a in &short {
            let (start, length) = p.spans(0.05)[a.phase];
            assert!(a.at > start && a.at < start + length, "{a:?}");
        }
        let gaps: Vec<f64> = short
            .windows(2)
            .filter(|w| w[0].phase == 2 && w[1].phase == 2)
            .map(|w| w[1].at - w[0].at)
            .collect();
        assert!(gaps.iter().all(|g| (g - 0.01).abs() < 1e-9));
        // --rate-scale changes the rates, not the lengths.
        let half = schedule(&p, 0.05, 0.5);
        assert_eq!(per_phase(&half, 2), 750);
        assert!(half.last().unwrap().at < 60.0);
    }

    #[test]
    fn the_mix_is_exact_in_every_block_and_fixed_by_the_seed() {
        let p = plan();
        let kinds = mix_sequence(p.mix, 10_000, p.seed);
        assert_eq!(kinds.len(), 10_000);
        for block in kinds.chunks(10) {
            let n = |k| block.iter().filter(|x| **x == k).count();
            assert_eq!(
                (n(Kind::Menu), n(Kind::Order), n(Kind::Guardian)),
                (6, 3, 1)
            );
        }
        assert_eq!(kinds, mix_sequence(p.mix, 10_000, p.seed));
        assert_ne!(kinds, mix_sequence(p.mix, 10_000, p.seed + 1));
        // Shuffled: not the same block over and over.
        assert_ne!(kinds[..10], kinds[10..20]);
        // Every phase of a short run has the plan's shares, to within a block.
        let short = schedule(&p, 0.05, 1.0);
        for phase in 0..3 {
            let of = |k| {
                short
                    .iter()
                    .filter(|a| a.phase == phase && a.kind == k)
                    .count() as f64
            };
            let total = of(Kind::Menu) + of(Kind::Order) + of(Kind::Guardian);
            for (k, share) in [(Kind::Menu, 0.6), (Kind::Order, 0.3), (Kind::Guardian, 0.1)] {
                assert!((of(k) - share * total).abs() <= 10.0, "{phase} {k:?}");
            }
        }
        let only_orders = Mix {
            menu: 0,
            order: 5,
            guardian: 0,
        };
        assert!(
            mix_sequence(only_orders, 7, 1)
                .iter()
                .all(|k| *k == Kind::Order)
        );
    }

    #[test]
    fn the_hubs_buckets_are_what_the_sinks_allow() {
        let n = plan().notifications;
        let limits = n.limits(50, 32);
        // 32 SMTP sessions, one message at a time each, 50 ms a message.
        assert_eq!(
            limits.email,
            Bucket {
                per_sec: 640,
                burst: 32
            }
        );
        assert_eq!((limits.push.per_sec, limits.push.burst), (10_000, 10_000));
        assert_eq!((limits.sms.per_sec, limits.sms.burst), (100, 100));
        assert_eq!(n.limits(100, 4).email.per_sec, 40);
        // A sink that does not wait bounds nothing: the bucket is off.
        assert_eq!(n.limits(0, 32).email.per_sec, 0);
        let env: HashMap<String, String> = limits.hub_env().into_iter().collect();
        assert_eq!(env["TIFFIN_DELIVERY__EMAIL__PER_SEC"], "640");
        assert_eq!(env["TIFFIN_DELIVERY__EMAIL__BURST"], "32");
        assert_eq!(env["TIFFIN_DELIVERY__SMS__PER_SEC"], "100");
        assert_eq!(env.len(), 6);
    }
}
