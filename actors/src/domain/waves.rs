//! Lunch waves: which wave an order is for, and until when the family may cancel it.

use super::machine::Issuer;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A lunch wave on one day, resolved from the school's local times to instants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub id: String,
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Orders for this wave close at this instant.
    pub order_cutoff: DateTime<Utc>,
    /// Students and guardians may cancel until this instant; staff always may.
    pub cancel_until: DateTime<Utc>,
}

/// Why an order cannot be placed for any wave now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaveError {
    #[error("ordering is closed: every lunch wave today is past its cutoff")]
    OrderingClosed,
    #[error("ordering for {0} closed at its cutoff")]
    WaveClosed(String),
    #[error("no lunch wave {0} at this school")]
    UnknownWave(String),
}

/// The wave an order placed at `now` is for: the requested one if it still takes orders,
/// else the earliest wave that does. A school without waves takes orders at any time.
pub fn choose_wave(
    waves: &[Wave],
    requested: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Wave>, WaveError> {
    if let Some(id) = requested {
        let wave = waves
            .iter()
            .find(|w| w.id == id)
            .ok_or_else(|| WaveError::UnknownWave(id.to_owned()))?;
        return if now < wave.order_cutoff {
            Ok(Some(wave.clone()))
        } else {
            Err(WaveError::WaveClosed(wave.name.clone()))
        };
    }
    if waves.is_empty() {
        return Ok(None);
    }
    waves
        .iter()
        .filter(|w| now < w.order_cutoff)
        .min_by_key(|w| w.starts_at)
        .cloned()
        .map(Some)
        .ok_or(WaveError::OrderingClosed)
}

/// Students and guardians cancel only until the wave's cancel deadline.
pub fn cancel_allowed(issuer: Issuer, wave: Option<&Wave>, now: DateTime<Utc>) -> bool {
    match (issuer, wave) {
        (Issuer::Student | Issuer::Guardian, Some(wave)) => now < wave.cancel_until,
        _ => true,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn wave(id: &str, start_min: i64) -> Wave {
        let t0 = DateTime::parse_from_rfc3339("2026-11-23T11:00:00Z")
            .unwrap()
            .to_utc();
        let at = |m: i64| t0 + chrono::Duration::minutes(m);
        Wave {
            id: id.into(),
            name: format!("wave {id}"),
            starts_at: at(start_min),
            ends_at: at(start_min + 30),
            order_cutoff: at(start_min - 60),
            cancel_until: at(start_min - 30),
        }
    }

    #[test]
    fn orders_go_to_the_earliest_open_wave() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-23T11:00:00Z")
            .unwrap()
            .to_utc();
        let at = |m: i64| t0 + chrono::Duration::minutes(m);
        let waves = [wave("b", 120), wave("a", 60)];
        assert_eq!(choose_wave(&[], None, at(0)), Ok(None));
        assert_eq!(choose_wave(&waves, None, at(-1)).unwrap().unwrap().id, "a");
        assert_eq!(
            choose_wave(&waves, None, at(0)).unwrap().unwrap().id,
            "b",
            "a's cutoff passed"
        );
        assert_eq!(
            choose_wave(&waves, None, at(60)),
            Err(WaveError::OrderingClosed)
        );
        assert_eq!(
            choose_wave(&waves, Some("b"), at(10)).unwrap().unwrap().id,
            "b"
        );
        assert_eq!(
            choose_wave(&waves, Some("a"), at(10)),
            Err(WaveError::WaveClosed("wave a".into()))
        );
        assert_eq!(
            choose_wave(&waves, Some("z"), at(10)),
            Err(WaveError::UnknownWave("z".into()))
        );
        let a = wave("a", 60);
        assert!(cancel_allowed(Issuer::Student, Some(&a), at(29)));
        assert!(!cancel_allowed(Issuer::Guardian, Some(&a), at(30)));
        assert!(cancel_allowed(Issuer::Staff, Some(&a), at(59)));
        assert!(cancel_allowed(Issuer::Student, None, at(500)));
    }
}
