//! What PostgreSQL's intake decides new orders from without reading them again: the schools,
//! people, meals and service windows earlier batches read, kept with the facts epoch they were
//! read at (`facts_epoch`, moved by triggers on any change to them). A batch whose facts are
//! all kept is decided from memory, and its write commits only if the epoch has not moved
//! since (`intake::WRITE_ORDERS_PG`); otherwise nothing is written and the batch reads afresh.
//!
//! A school's people (its students and staff) and meals are read whole on the school's first
//! batch of an epoch, so a student's first order of the day finds them kept; a guardian is
//! kept from their first order on (read with the school, their links were walked whole).
//! Nothing here refuses an order: a batch with a refusal is decided again from a fresh read.

use super::order_facts::{Facts, Person};
use crate::db::models::{MealRow, ServiceWindowRow};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tiffin_actors::ports::NewOrder;

/// People kept before the cache starts afresh: a large district's. A person costs about
/// 300 bytes kept (their row's strings, the key, the map's slot), so 75 MiB at most.
const MAX_PEOPLE: usize = 250_000;
/// Schools are read whole while fewer people than this are kept; past it, people are kept
/// as batches read them.
const WHOLE_SCHOOLS_UNTIL: usize = 150_000;

#[derive(Default)]
pub(super) struct FactsCache(Mutex<Kept>);

#[derive(Default)]
struct Kept {
    /// The epoch everything kept was read at; `None` until a read, or once it moved.
    epoch: Option<i64>,
    /// Each school's time zone and every service window it has.
    schools: HashMap<String, (String, Vec<ServiceWindowRow>)>,
    people: HashMap<String, Person>,
    meals: HashMap<String, MealRow>,
    /// Schools whose people and meals were read whole at this epoch.
    whole: HashSet<String>,
}

impl Kept {
    /// Nothing kept yet, at `epoch`.
    fn at(epoch: i64) -> Kept {
        Kept {
            epoch: Some(epoch),
            ..Kept::default()
        }
    }
}

impl FactsCache {
    /// The batch's facts and the epoch they were read at, if every one is kept.
    pub(super) fn facts_for(&self, batch: &[NewOrder]) -> Option<Facts> {
        let kept = self.lock();
        let epoch = kept.epoch?;
        let mut facts = Facts {
            epoch: Some(epoch),
            ..Facts::default()
        };
        for new in batch {
            if !facts.schools.contains_key(&new.school_id) {
                let (time_zone, windows) = kept.schools.get(&new.school_id)?;
                facts
                    .schools
                    .insert(new.school_id.clone(), time_zone.clone());
                facts.windows.extend(windows.iter().cloned());
            }
            for person in [&new.student_id, &new.placed_by] {
                if !facts.people.contains_key(person) {
                    facts
                        .people
                        .insert(person.clone(), kept.people.get(person)?.clone());
                }
            }
            for item in &new.items {
                if !facts.menu.iter().any(|m| m.id == item.meal_id) {
                    facts.menu.push(kept.meals.get(&item.meal_id)?.clone());
                }
            }
        }
        Some(facts)
    }

    /// The batch's schools to read whole with its facts: those not read whole at the kept
    /// epoch, while there is room.
    pub(super) fn schools_to_read_whole<'a>(&self, batch: &'a [NewOrder]) -> Vec<&'a str> {
        let kept = self.lock();
        if kept.people.len() >= WHOLE_SCHOOLS_UNTIL {
            return Vec::new();
        }
        let mut schools: Vec<&str> = batch
            .iter()
            .map(|n| n.school_id.as_str())
            .filter(|s| !kept.whole.contains(*s))
            .collect();
        schools.sort_unstable();
        schools.dedup();
        schools
    }

    /// Keeps what a batch read (`whole`: the schools it read whole). Facts read at a newer
    /// epoch replace everything kept; facts read at an older one are not kept.
    pub(super) fn keep(&self, facts: &Facts, whole: &[&str]) {
        let Some(epoch) = facts.epoch else {
            return;
        };
        let mut kept = self.lock();
        match kept.epoch {
            Some(current) if epoch < current => return,
            Some(current) if epoch == current => {}
            _ => *kept = Kept::at(epoch),
        }
        if kept.people.len() + facts.people.len() > MAX_PEOPLE {
            *kept = Kept::at(epoch);
        }
        for (id, time_zone) in &facts.schools {
            let windows = facts
                .windows
                .iter()
                .filter(|w| w.school_id == *id)
                .cloned()
                .collect();
            kept.schools
                .insert(id.clone(), (time_zone.clone(), windows));
        }
        for (id, person) in &facts.people {
            kept.people.insert(id.clone(), person.clone());
        }
        for meal in &facts.menu {
            kept.meals.insert(meal.id.clone(), meal.clone());
        }
        kept.whole.extend(whole.iter().map(|s| (*s).to_owned()));
    }

    /// Forgets everything kept: a write found the epoch moved.
    pub(super) fn forget(&self) {
        *self.lock() = Kept::default();
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        // Every change leaves the maps whole: a panic elsewhere cannot leave them torn.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
