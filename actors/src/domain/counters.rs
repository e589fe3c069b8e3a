//! Pickup counters and codes: where a ready meal waits, and the code said at the counter.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRef {
    pub id: String,
    pub number: i32,
    pub name: String,
}

/// The counter a newly ready order goes to: the open counter with the fewest orders waiting,
/// the lowest number on a tie. `None` when no counter is open.
pub fn assign_counter(
    open: &[CounterRef],
    waiting: impl Fn(&CounterRef) -> i64,
) -> Option<&CounterRef> {
    open.iter().min_by_key(|c| (waiting(c), c.number))
}

/// Letters and digits that cannot be confused when read aloud or off a screen.
pub const PICKUP_ALPHABET: &[u8] = b"ACDEFGHJKLMNPQRTUVWXY34679";
pub const PICKUP_CODE_LEN: usize = 4;

/// A pickup code not in `taken`, from a source of random indexes.
pub fn pickup_code(
    taken: &std::collections::HashSet<String>,
    mut random_index: impl FnMut(usize) -> usize,
) -> Option<String> {
    // 26^4 = 456,976 codes; a school's day uses a few thousand at most.
    for _ in 0..1000 {
        let code: String = (0..PICKUP_CODE_LEN)
            .map(|_| {
                PICKUP_ALPHABET[random_index(PICKUP_ALPHABET.len()) % PICKUP_ALPHABET.len()] as char
            })
            .collect();
        if !taken.contains(&code) {
            return Some(code);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(id: &str, number: i32) -> CounterRef {
        CounterRef {
            id: id.into(),
            number,
            name: format!("Counter {number}"),
        }
    }

    #[test]
    fn least_loaded_open_counter_wins_ties_to_the_lowest_number() {
        let open = [counter("b", 2), counter("a", 1), counter("c", 3)];
        let load = |waiting: &'static [(&str, i64)]| {
            move |c: &CounterRef| {
                waiting
                    .iter()
                    .find(|(id, _)| *id == c.id)
                    .map_or(0, |(_, n)| *n)
            }
        };
        assert_eq!(assign_counter(&open, load(&[])).map(|c| c.number), Some(1));
        assert_eq!(
            assign_counter(&open, load(&[("a", 2), ("b", 1), ("c", 1)])).map(|c| c.number),
            Some(2)
        );
        assert_eq!(
            assign_counter(&open, load(&[("a", 1), ("b", 1), ("c", 0)])).map(|c| c.number),
            Some(3)
        );
        assert_eq!(assign_counter(&[], load(&[])), None);
    }

    #[test]
    fn pickup_codes_avoid_taken_ones_and_confusable_characters() {
        let mut taken = std::collections::HashSet::new();
        // A fixed pseudo-random sequence (an LCG), so the test is repeatable.
        let mut n: u64 = 7;
        let mut next = |len: usize| {
            n = n
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (n >> 33) as usize % len
        };
        for _ in 0..50 {
            let code = pickup_code(&taken, &mut next).unwrap();
            assert_eq!(code.len(), PICKUP_CODE_LEN);
            assert!(!code.contains(['0', 'O', '1', 'I', 'B', '8', '5', 'S', '2', 'Z']));
            assert!(taken.insert(code));
        }
        // A source that only ever repeats a taken code gives up instead of looping forever.
        let stuck: std::collections::HashSet<String> = ["AAAA".to_owned()].into();
        assert_eq!(pickup_code(&stuck, |_| 0), None);
    }
}
