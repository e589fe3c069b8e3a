//! The pickup wave: students at the counters in their lunch waves' turn, each card read a few
//! times; the offline readers' kept reads, posted afterwards in batches.

use super::storm::Storm;
use super::waves::{wave_arrivals, wave_of};
use super::{Run, School, admit, until};
use crate::hub::{code_of, reader_post};
use crate::profile::Profile;
use crate::report::SCAN_VERDICT;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Between two raw reads of one card presented at a reader.
const READ_GAP: Duration = Duration::from_millis(40);
/// The hub takes up to 500 scans in one offline batch (`MAX_BATCH`, src/api/readers.rs) and a
/// body up to `max_body_bytes` (64 KiB by default): stay under both.
const BATCH_SCANS: usize = 500;
const BATCH_BYTES: usize = 60_000;

/// A read an offline reader kept, to post later in a batch.
pub(super) struct OfflineRead {
    /// The reader's index in the first school.
    reader: usize,
    seq: i64,
    card_uid: String,
    read_at: DateTime<Utc>,
    /// The order the card's holder came for.
    order: String,
}

/// Every student with an order comes to the counter in their lunch wave's turn; the reader
/// reads the card 3-5 times. The first school's first `offline_readers` readers keep their
/// reads for `replay_offline`. With a storm, every dashboard drops its socket at the peak of
/// the middle wave, when the counters are busiest.
pub(super) async fn pickup_wave(
    run: &Rc<Run>,
    schools: &Rc<Vec<School>>,
    profile: &Profile,
    scale: f64,
    storm: Option<&Storm>,
) {
    let mut visits: Vec<(usize, usize, String)> = run.accepted.borrow().clone();
    // Wave after wave, each rising and falling; a stable sort keeps the schools interleaved.
    let waves = schools
        .iter()
        .map(|s| s.waves.len())
        .max()
        .unwrap_or_default()
        .max(1);
    let wave =
        |school: usize, student: usize| wave_of(student, schools[school].readers.len(), waves);
    visits.sort_by_key(|(school, student, _)| wave(*school, *student));
    let mut counts = vec![0; waves];
    for (school, student, _) in &visits {
        counts[wave(*school, *student)] += 1;
    }
    let dues = wave_arrivals(&counts, profile.scan_peak_per_sec * scale);
    let storm_at = counts[..waves / 2].iter().sum::<usize>() + counts[waves / 2] / 2;
    let total = visits.len();
    let offset = run.started.elapsed();
    let [low, high] = profile.reads_per_card;
    let offline_readers = profile.offline_readers;
    let mut sends = Vec::with_capacity(total);
    for (i, (school, student, order)) in visits.into_iter().enumerate() {
        let due = offset + Duration::from_secs_f64(dues.get(i).copied().unwrap_or_default());
        let late = until(run, due).await;
        if i == storm_at
            && let Some(storm) = storm
        {
            storm.raise();
        }
        if !admit(run) {
            continue;
        }
        let reads = low + (i * 7919) % (high - low + 1);
        let (run, schools) = (run.clone(), schools.clone());
        sends.push(actix_web::rt::spawn(async move {
            let s = &schools[school];
            let at_reader = student % s.readers.len();
            let (reader, seq) = &s.readers[at_reader];
            let offline = school == 0 && at_reader < offline_readers;
            for read in 0..reads {
                let read_due = due + READ_GAP * read as u32;
                let read_late = late || until(&run, read_due).await;
                let n = seq.get();
                seq.set(n + 1);
                if offline {
                    // Kept with its seq and when it was read; not timed, not yet answered.
                    run.offline.borrow_mut().push(OfflineRead {
                        reader: at_reader,
                        seq: n,
                        card_uid: s.cards[student].clone(),
                        read_at: Utc::now(),
                        order: order.clone(),
                    });
                    continue;
                }
                if read == 0 {
                    run.scanned_at
                        .borrow_mut()
                        .insert(order.clone(), Instant::now());
                }
                let body = json!({"seq": n, "card_uid": s.cards[student]});
                let outcome = reader_post(&run.url, reader, "/api/v1/reader/scans", &body).await;
                let latency = (run.started + read_due).elapsed();
                run.answered_scans.set(run.answered_scans.get() + 1);
                run.recorder.borrow_mut().tick(run.second(), 0, 1);
                match &outcome {
                    Ok((200, v))
                        if v["verdict"] == "accepted" && v["order_id"] == order.as_str() =>
                    {
                        run.recorder
                            .borrow_mut()
                            .ok(SCAN_VERDICT, latency, read_late);
                        if v["debounced"] == true {
                            run.repeats_debounced.set(run.repeats_debounced.get() + 1);
                        } else {
                            *run.handed_over
                                .borrow_mut()
                                .entry(order.clone())
                                .or_default() += 1;
                        }
                    }
                    Ok((200, v)) => run.recorder.borrow_mut().error(
                        SCAN_VERDICT,
                        &format!("verdict {}", v["verdict"].as_str().unwrap_or("?")),
                    ),
                    _ => run
                        .recorder
                        .borrow_mut()
                        .error(SCAN_VERDICT, &code_of(&outcome)),
                }
            }
            run.outstanding.set(run.outstanding.get() - 1);
        }));
    }
    for send in sends {
        let _ = send.await;
    }
}

/// The offline readers come back: each posts what it kept, in its seq order, in batches. A
/// batch is not a hop (its reads waited on purpose): its scans are counted, its accepted
/// non-repeat verdicts are hand-overs like live ones, anything else is an error.
pub(super) async fn replay_offline(run: &Rc<Run>, schools: &Rc<Vec<School>>) {
    let mut reads = run.offline.take();
    let Some(school) = schools.first() else {
        return;
    };
    reads.sort_by_key(|r| (r.reader, r.seq));
    let mut readers: Vec<usize> = reads.iter().map(|r| r.reader).collect();
    readers.dedup();
    for at_reader in readers {
        let Some((reader, _)) = school.readers.get(at_reader) else {
            continue;
        };
        let kept: Vec<&OfflineRead> = reads.iter().filter(|r| r.reader == at_reader).collect();
        let orders: HashMap<i64, &str> = kept.iter().map(|r| (r.seq, r.order.as_str())).collect();
        let scans: Vec<Value> = kept
            .iter()
            .map(|r| {
                json!({
                    "seq": r.seq,
                    "card_uid": r.card_uid,
                    "read_at": r.read_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                })
            })
            .collect();
        for batch in offline_batches(&scans, BATCH_SCANS, BATCH_BYTES) {
            let path = "/api/v1/reader/scans/batch";
            let sent = Instant::now();
            let mut outcome = reader_post(&run.url, reader, path, &batch).await;
            if !matches!(outcome, Ok((200, _))) {
                // Once more: scans the hub already decided are answered the same (`replayed`).
                outcome = reader_post(&run.url, reader, path, &batch).await;
            }
            let took = sent.elapsed();
            run.offline_batches.set(run.offline_batches.get() + 1);
            run.offline_batch_slowest
                .set(run.offline_batch_slowest.get().max(took));
            let results = match &outcome {
                Ok((200, answer)) => answer["results"].as_array().cloned().unwrap_or_default(),
                _ => {
                    let code = format!("offline batch {}", code_of(&outcome));
                    run.recorder.borrow_mut().error(SCAN_VERDICT, &code);
                    continue;
                }
            };
            let asked = batch["scans"].as_array().map_or(0, Vec::len);
            if results.len() != asked {
                run.recorder
                    .borrow_mut()
                    .error(SCAN_VERDICT, "offline batch: answers missing");
            }
            let answered = results.len() as u64;
            run.answered_scans.set(run.answered_scans.get() + answered);
            run.offline_batch_scans
                .set(run.offline_batch_scans.get() + answered);
            run.recorder.borrow_mut().tick(run.second(), 0, answered);
            for result in &results {
                let order = result["seq"].as_i64().and_then(|seq| orders.get(&seq));
                match order {
                    Some(order)
                        if result["verdict"] == "accepted" && result["order_id"] == *order =>
                    {
                        if result["debounced"] == true {
                            run.repeats_debounced.set(run.repeats_debounced.get() + 1);
                        } else {
                            *run.handed_over
                                .borrow_mut()
                                .entry((*order).to_owned())
                                .or_default() += 1;
                        }
                    }
                    _ => run.recorder.borrow_mut().error(
                        SCAN_VERDICT,
                        &format!(
                            "offline verdict {}",
                            result["verdict"].as_str().unwrap_or("?")
                        ),
                    ),
                }
            }
        }
    }
}

/// A reader's kept scans (in seq order) as batch bodies the hub takes: at most `max_scans`
/// and `max_bytes` of JSON each, in order.
fn offline_batches(scans: &[Value], max_scans: usize, max_bytes: usize) -> Vec<Value> {
    // `{"scans":[]}`, then each scan and its comma.
    const WRAPPER: usize = 12;
    let mut batches = Vec::new();
    let mut current: Vec<Value> = Vec::new();
    let mut bytes = WRAPPER;
    for scan in scans {
        let size = scan.to_string().len() + 1;
        if !current.is_empty() && (current.len() >= max_scans || bytes + size > max_bytes) {
            batches.push(json!({"scans": std::mem::take(&mut current)}));
            bytes = WRAPPER;
        }
        bytes += size;
        current.push(scan.clone());
    }
    if !current.is_empty() {
        batches.push(json!({"scans": current}));
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_reads_go_in_ordered_batches_the_hub_takes() {
        let scans: Vec<Value> = (1..=1200)
            .map(|seq| {
                json!({"seq": seq, "card_uid": "1D00000000002A", "read_at": "2026-01-15T16:00:00.123Z"})
            })
            .collect();
        let batches = offline_batches(&scans, 500, 60_000);
        let sizes: Vec<usize> = batches
            .iter()
            .map(|b| b["scans"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [500, 500, 200]);
        let seqs: Vec<i64> = batches
            .iter()
            .flat_map(|b| b["scans"].as_array().unwrap().iter())
            .map(|s| s["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=1200).collect::<Vec<i64>>());
        // A byte limit cuts sooner, and every body stays under it.
        let small = offline_batches(&scans, 500, 8_000);
        assert!(small.len() > 3);
        assert!(small.iter().all(|b| b.to_string().len() <= 8_000));
        assert_eq!(
            small
                .iter()
                .map(|b| b["scans"].as_array().unwrap().len())
                .sum::<usize>(),
            1200
        );
        assert!(offline_batches(&[], 500, 60_000).is_empty());
    }
}
