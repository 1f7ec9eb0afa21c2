//! The store as a whole: writer, recovery, readers and verify together.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use std::path::Path;
use std::time::Duration;
use tracegate_proto::v1::Record;

use super::caller::Caller;
use super::frame::{self, SEGMENT_HEADER_LEN};
use super::layout::Layout;
use super::read::Reader;
use super::verify::{verify, Report};
use super::writer::now_nanos;
use super::writer::{Ledger, Options};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn rec(i: u32, session: &str) -> Record {
    Record {
        record_id: format!("r{i:05}"),
        session_id: session.into(),
        request_start_unix_nanos: 1_000 + i64::from(i),
        end_unix_nanos: 2_000 + i64::from(i),
        path: format!(
            "/v1/chat/completions?{}",
            "x".repeat((i as usize * 31) % 200)
        ),
        ..Record::default()
    }
}

fn open(dir: &Path, opts: Options) -> Ledger {
    Ledger::open(Layout::new(dir), key(), opts).unwrap()
}

/// Small segments so that a few records make several sealed segments.
fn small() -> Options {
    Options {
        segment_bytes: 1500,
        ..Options::default()
    }
}

fn check(dir: &Path) -> Report {
    verify(&Layout::new(dir), &key().verifying_key()).unwrap()
}

fn ids(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    Reader::open(Layout::new(dir))
        .unwrap()
        .export(None, None, |r| {
            out.push(r.record_id.clone());
            Ok(())
        })
        .unwrap();
    out
}

/// `n` records in batches of 3, in sessions s0..s3.
fn fill(dir: &Path, n: u32, opts: Options) {
    let mut l = open(dir, opts);
    let records: Vec<Record> = (0..n).map(|i| rec(i, &format!("s{}", i % 4))).collect();
    for batch in records.chunks(3) {
        l.append(&[batch.to_vec()]).unwrap();
    }
    l.close().unwrap();
}

fn segment_file(dir: &Path, n: u64) -> std::path::PathBuf {
    Layout::new(dir).segment(n)
}

#[test]
fn appends_dedupes_and_groups_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = open(dir.path(), Options::default());
    let out = l
        .append(&[
            vec![rec(1, "a"), rec(2, "a"), rec(1, "a")],
            vec![rec(2, "a"), rec(3, "b"), Record::default()],
        ])
        .unwrap();
    assert_eq!((out[0].accepted, out[0].duplicates), (2, 1));
    assert_eq!(
        (out[1].accepted, out[1].duplicates, out[1].rejected.len()),
        (1, 1, 1)
    );
    assert_eq!(l.len(), 3);
    assert_eq!(l.append(&[vec![rec(3, "b")]]).unwrap()[0].duplicates, 1);
    l.close().unwrap();
    let l = open(dir.path(), Options::default());
    assert_eq!(l.len(), 3, "ids are rebuilt from the segments on open");
    assert!(l.findings.is_empty(), "{:?}", l.findings);
}

#[test]
fn rolls_seals_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 40, small());
    let report = check(dir.path());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.sealed >= 3, "{report:?}");
    assert_eq!(report.entries, 40);
    assert_eq!(ids(dir.path()).len(), 40);

    // Sessions come from the indexes of sealed segments plus the open one.
    let mut reader = Reader::open(Layout::new(dir.path())).unwrap();
    let sessions = reader.sessions().unwrap();
    assert_eq!(sessions.len(), 4);
    assert_eq!(sessions[&("s1".into(), Caller::Anonymous)].exchanges, 10);
    let s1 = reader.session("s1", None).unwrap();
    assert_eq!(s1.len(), 10);
    assert!(s1
        .windows(2)
        .all(|w| w[0].request_start_unix_nanos <= w[1].request_start_unix_nanos));
    assert!(reader.warnings.is_empty(), "{:?}", reader.warnings);

    // Appending after a restart continues the chain.
    let mut l = open(dir.path(), small());
    l.append(&[vec![rec(100, "s9")]]).unwrap();
    l.close().unwrap();
    let report = check(dir.path());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.entries, 41);
}

#[test]
fn verify_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 40, small());
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), pristine.path());
    let reset = || {
        std::fs::remove_dir_all(dir.path()).unwrap();
        copy_dir(pristine.path(), dir.path());
    };
    let seg2 = segment_file(dir.path(), 2);
    let bytes = std::fs::read(&seg2).unwrap();
    let scan = frame::scan(&bytes).unwrap();
    let f = scan.frames.clone();
    assert!(f.len() >= 3);
    let frame_bytes = |i: usize| bytes[f[i].offset..f[i].offset + f[i].len].to_vec();

    type Case<'a> = (&'static str, Box<dyn Fn() + 'a>, &'static str);
    let mut cases: Vec<Case> = Vec::new();
    cases.push((
        "flipped byte",
        Box::new(|| {
            let mut b = bytes.clone();
            b[f[1].payload.start + 5] ^= 1;
            std::fs::write(&seg2, b).unwrap();
        }),
        "corrupt",
    ));
    cases.push((
        "deleted record",
        Box::new(|| {
            let mut b = bytes[..f[1].offset].to_vec();
            b.extend_from_slice(&bytes[f[2].offset..]);
            std::fs::write(&seg2, b).unwrap();
        }),
        "sequence",
    ));
    cases.push((
        "reordered records",
        Box::new(|| {
            let mut b = bytes[..f[0].offset].to_vec();
            b.extend(frame_bytes(1));
            b.extend(frame_bytes(0));
            b.extend_from_slice(&bytes[f[2].offset..]);
            std::fs::write(&seg2, b).unwrap();
        }),
        "sequence",
    ));
    cases.push((
        "inserted record",
        Box::new(|| {
            let (forged, _) = frame::encode_frame(f[1].seq, 0, b"forged", &f[0].chain);
            let mut b = bytes[..f[1].offset].to_vec();
            b.extend(forged);
            b.extend_from_slice(&bytes[f[1].offset..]);
            std::fs::write(&seg2, b).unwrap();
        }),
        "does not match its seal",
    ));
    cases.push((
        "truncated sealed segment",
        Box::new(|| std::fs::write(&seg2, &bytes[..bytes.len() - 10]).unwrap()),
        "partial frame",
    ));
    cases.push((
        "deleted segment",
        Box::new(|| std::fs::remove_file(&seg2).unwrap()),
        "no retention entry covers it",
    ));
    cases.push((
        "forged seal",
        Box::new(|| {
            let p = Layout::new(dir.path()).seal(2);
            let text = std::fs::read_to_string(&p).unwrap();
            let forged = text.replacen("records ", "records 1", 1);
            std::fs::write(&p, forged).unwrap();
        }),
        "signature",
    ));
    cases.push((
        "seal re-signed with another key",
        Box::new(|| {
            let p = Layout::new(dir.path()).seal(2);
            let text = std::fs::read_to_string(&p).unwrap();
            let seal = super::seal::Seal::verify(&text, &key().verifying_key()).unwrap();
            std::fs::write(&p, seal.sign(&SigningKey::from_bytes(&[1; 32]))).unwrap();
        }),
        "signature",
    ));
    cases.push((
        "whole records cut off the open segment",
        Box::new(|| {
            let last = *Layout::new(dir.path()).segments().unwrap().last().unwrap();
            let p = segment_file(dir.path(), last);
            let b = std::fs::read(&p).unwrap();
            let s = frame::scan(&b).unwrap();
            std::fs::write(&p, &b[..s.frames.last().unwrap().offset]).unwrap();
        }),
        "records cut off the end",
    ));
    for (what, tamper, expect) in cases {
        reset();
        assert!(check(dir.path()).problems.is_empty());
        tamper();
        let problems = check(dir.path()).problems;
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{what}: expected a problem mentioning {expect:?}, got {problems:?}"
        );
    }
}

#[test]
fn retention_deletes_sealed_segments_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        retain_bytes: Some(4000),
        ..small()
    };
    fill(dir.path(), 60, opts);
    let layout = Layout::new(dir.path());
    let segments = layout.segments().unwrap();
    let seals = layout.seals().unwrap();
    assert!(segments[0] > 1, "old segments deleted: {segments:?}");
    assert_eq!(seals[0], 1, "seals are kept");
    let report = check(dir.path());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.retained >= 1);
    // Deleting one more by hand is tampering, not policy.
    std::fs::remove_file(layout.segment(segments[0])).unwrap();
    let problems = check(dir.path()).problems;
    assert!(
        problems.iter().any(|p| p.contains("no retention entry")),
        "{problems:?}"
    );
}

#[test]
fn retention_that_rolls_the_segment_still_deletes_everything_it_drops() {
    // Segments so small that writing the retention entry rolls the open
    // segment, which applies retention again from inside the first pass
    // (as the idle tick does): every segment dropped from tracking must also
    // be gone from disk.
    let dir = tempfile::tempdir().unwrap();
    let mut l = open(
        dir.path(),
        Options {
            segment_bytes: 1,
            retain_bytes: Some(3000),
            ..Options::default()
        },
    );
    for i in 0..40 {
        l.append(&[vec![rec(i, "s")]]).unwrap();
        l.apply_retention(now_nanos()).unwrap();
    }
    let layout = Layout::new(dir.path());
    let sizes: Vec<u64> = layout
        .segments()
        .unwrap()
        .iter()
        .map(|&n| std::fs::metadata(layout.segment(n)).unwrap().len())
        .collect();
    let largest = sizes.iter().copied().max().unwrap();
    assert!(
        sizes.iter().sum::<u64>() <= 3000 + largest,
        "segments left: {sizes:?}; the policy keeps 3000 bytes"
    );
    l.close().unwrap();
    let report = check(dir.path());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn segment_age_rolls_an_idle_segment() {
    let dir = tempfile::tempdir().unwrap();
    // Age zero: the segment is due as soon as it holds a record.
    let mut l = open(
        dir.path(),
        Options {
            segment_age: Duration::ZERO,
            ..Options::default()
        },
    );
    l.append(&[vec![rec(1, "a")]]).unwrap();
    assert!(Layout::new(dir.path()).seals().unwrap().is_empty());
    l.tick().unwrap();
    l.close().unwrap();
    assert_eq!(Layout::new(dir.path()).seals().unwrap(), [1]);
    assert!(check(dir.path()).problems.is_empty());
}

#[test]
fn corruption_in_the_open_segment_is_quarantined_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 6, Options::default());
    let p = segment_file(dir.path(), 1);
    let mut b = std::fs::read(&p).unwrap();
    let s = frame::scan(&b).unwrap();
    b[s.frames[2].payload.start] ^= 0x20;
    std::fs::write(&p, &b).unwrap();

    let mut l = open(dir.path(), Options::default());
    assert!(
        l.findings.iter().any(|f| f.contains("corrupt bytes")),
        "{:?}",
        l.findings
    );
    assert_eq!(l.len(), 5, "every intact record is still held");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        b,
        "the damaged segment is unchanged"
    );
    assert!(Layout::new(dir.path()).quarantine(1).exists());
    l.append(&[vec![rec(50, "a")]]).unwrap();
    l.close().unwrap();
    assert_eq!(Layout::new(dir.path()).segments().unwrap(), [1, 2]);
    assert_eq!(ids(dir.path()).len(), 6);
    let problems = check(dir.path()).problems;
    assert!(
        problems.iter().any(|p| p.contains("corrupt")),
        "{problems:?}"
    );
}

#[test]
fn record_payload_is_a_ledger_entry() {
    use prost::Message;
    use tracegate_proto::v1::ledger_entry::Entry;
    use tracegate_proto::v1::LedgerEntry;
    let r = rec(7, "s");
    let mut payload = Vec::new();
    prost::encoding::message::encode(1, &r, &mut payload);
    let expected = LedgerEntry {
        entry: Some(Entry::Record(r)),
    };
    assert_eq!(payload, expected.encode_to_vec());
}

#[test]
fn second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _l = open(dir.path(), Options::default());
    let e = Ledger::open(Layout::new(dir.path()), key(), Options::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("in use"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A crash can leave any prefix of the last append on disk. Whatever the
    /// cut, recovery keeps every record wholly written before it, appends
    /// again, and the result verifies (HEAD never names an unsynced record,
    /// so it is removed here with the cut).
    #[test]
    fn recovery_at_every_truncation_offset(at in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 9, Options::default());
        let p = segment_file(dir.path(), 1);
        let b = std::fs::read(&p).unwrap();
        let s = frame::scan(&b).unwrap();
        let cut = SEGMENT_HEADER_LEN + at.index(b.len() - SEGMENT_HEADER_LEN + 1);
        std::fs::write(&p, &b[..cut]).unwrap();
        std::fs::remove_file(Layout::new(dir.path()).head()).unwrap();
        let whole = s.frames.iter().filter(|f| f.offset + f.len <= cut).count();

        let mut l = open(dir.path(), Options::default());
        prop_assert_eq!(l.len(), whole);
        l.append(&[vec![rec(99, "z")]]).unwrap();
        l.close().unwrap();
        prop_assert_eq!(ids(dir.path()).len(), whole + 1);
        let report = check(dir.path());
        prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    /// Flip any bit of a sealed store: verify always reports a problem.
    #[test]
    fn verify_catches_every_bit_flip(seg in 1u64..3, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 12, small());
        let p = segment_file(dir.path(), seg);
        let mut b = std::fs::read(&p).unwrap();
        let i = at.index(b.len());
        b[i] ^= 1 << bit;
        std::fs::write(&p, &b).unwrap();
        prop_assert!(!check(dir.path()).problems.is_empty(), "flip at {} of segment {}", i, seg);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn sessions_are_kept_per_caller_in_sealed_and_open_segments() {
    use tracegate_proto::v1::identity::Status;
    use tracegate_proto::v1::Identity;
    let dir = tempfile::tempdir().unwrap();
    let mut l = open(dir.path(), small());
    // Two verified callers and an anonymous one, all in session "shared".
    let callers = ["alice", "bob", ""];
    let records: Vec<Record> = (0..30)
        .map(|i| {
            let sub = callers[i as usize % 3];
            Record {
                identity: (!sub.is_empty()).then(|| Identity {
                    status: Status::Verified as i32,
                    issuer: "https://idp.example".into(),
                    subject: sub.into(),
                    ..Identity::default()
                }),
                ..rec(i, "shared")
            }
        })
        .collect();
    for batch in records.chunks(3) {
        l.append(&[batch.to_vec()]).unwrap();
    }
    l.close().unwrap();
    // A restart rebuilds the indexes of the sealed segments.
    open(dir.path(), small()).close().unwrap();
    assert!(check(dir.path()).sealed >= 2);

    let mut reader = Reader::open(Layout::new(dir.path())).unwrap();
    let sessions = reader.sessions().unwrap();
    let verified = |sub: &str| Caller::Verified {
        issuer: "https://idp.example".into(),
        subject: sub.into(),
    };
    let keys: Vec<(&str, &Caller, u64)> = sessions
        .iter()
        .map(|((s, c), sum)| (s.as_str(), c, sum.exchanges))
        .collect();
    assert_eq!(
        keys,
        [
            ("shared", &verified("alice"), 10),
            ("shared", &verified("bob"), 10),
            ("shared", &Caller::Anonymous, 10),
        ]
    );
    let alice = verified("alice");
    let only = reader.session("shared", Some(&alice)).unwrap();
    assert_eq!(only.len(), 10);
    assert!(only.iter().all(|r| Caller::of(r) == alice));
    assert_eq!(reader.session("shared", None).unwrap().len(), 30);
    assert!(reader.warnings.is_empty(), "{:?}", reader.warnings);
}

/// An index of another version is not used, whatever it says: the reader
/// scans the segment instead, and the server's next start rewrites it.
#[test]
fn an_index_of_another_version_is_scanned_past_then_rewritten() {
    use super::index::{SegmentIndex, INDEX_VERSION};
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 40, small());
    let layout = Layout::new(dir.path());
    let read = || {
        let mut reader = Reader::open(layout.clone()).unwrap();
        let sessions = reader.sessions().unwrap();
        let s1 = reader.session("s1", None).unwrap();
        assert!(reader.warnings.is_empty(), "{:?}", reader.warnings);
        (sessions, s1)
    };
    let want = read();
    let sealed = layout.seals().unwrap();
    assert!(sealed.len() >= 2, "{sealed:?}");
    let ghost = serde_json::json!({
        "first_unix_nanos": 1, "last_unix_nanos": 2, "exchanges": 7, "offsets": [60]
    });
    for &n in &sealed {
        // Version 2 keyed callers by their printed text; the first index
        // has the current shape but says version 2.
        let mut ghost = ghost.clone();
        let old = if n == sealed[0] {
            ghost["caller"] = serde_json::json!({"status": "anonymous"});
            serde_json::json!({"version": 2, "segment": n, "sessions": {"ghost": [ghost]}})
        } else {
            serde_json::json!({"version": 2, "segment": n, "sessions": {"ghost": {"anonymous": ghost}}})
        };
        std::fs::write(layout.index(n), old.to_string()).unwrap();
        assert!(SegmentIndex::load(&layout, n).is_none());
    }
    assert_eq!(read(), want);

    open(dir.path(), small()).close().unwrap();
    for &n in &sealed {
        let index = SegmentIndex::load(&layout, n).unwrap();
        assert_eq!(index.version, INDEX_VERSION);
        assert!(!index.sessions.contains_key("ghost"));
    }
    assert_eq!(read(), want);
}

fn ids_of(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.record_id.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// `tail` sees every record exactly once, in stored order, however
    /// appends, segment rolls, retention and polls interleave.
    #[test]
    fn follower_sees_every_record_once_across_rolls_and_retention(
        steps in proptest::collection::vec((1usize..4, any::<bool>()), 1..25),
        retain in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut l = open(dir.path(), Options {
            retain_bytes: retain.then_some(2500),
            ..small()
        });
        l.append(&[vec![rec(0, "s")]]).unwrap();
        let (mut follower, earlier) =
            super::follow::Follower::at_end(Layout::new(dir.path()), 5).unwrap();
        prop_assert_eq!(ids_of(&earlier), vec!["r00000".to_string()]);
        let mut seen = Vec::new();
        let mut written = Vec::new();
        let mut i = 1;
        for (n, poll) in steps {
            let batch: Vec<Record> = (i..i + n as u32).map(|k| rec(k, "s")).collect();
            i += n as u32;
            written.extend(ids_of(&batch));
            l.append(&[batch]).unwrap();
            if poll {
                seen.extend(ids_of(&follower.poll().unwrap()));
            }
        }
        seen.extend(ids_of(&follower.poll().unwrap()));
        if retain {
            // Retention may delete a segment before the follower reached
            // it: what is seen is still in order and never twice.
            let mut expected = written.iter();
            for id in &seen {
                prop_assert!(expected.any(|w| w == id), "{} out of order in {:?}", id, seen);
            }
        } else {
            prop_assert_eq!(seen, written);
        }
        prop_assert!(follower.warnings.is_empty(), "{:?}", follower.warnings);
    }
}

#[test]
fn follower_waits_for_a_frame_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = open(dir.path(), Options::default());
    l.append(&[vec![rec(0, "s")]]).unwrap();
    let (mut follower, _) = super::follow::Follower::at_end(Layout::new(dir.path()), 0).unwrap();
    l.append(&[vec![rec(1, "s")]]).unwrap();
    let layout = Layout::new(dir.path());
    let path = layout.segment(*layout.segments().unwrap().last().unwrap());
    let whole = std::fs::read(&path).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // The last frame cut at every length, then with a byte not yet right:
    // nothing is shown until all of it is there.
    let frame_start = whole.len() - (frame::FRAME_OVERHEAD + 200).min(whole.len() / 2);
    for cut in [whole.len() - 1, whole.len() - 40, frame_start] {
        file.set_len(cut as u64).unwrap();
        assert!(follower.poll().unwrap().is_empty(), "cut at {cut}");
    }
    let mut wrong = whole.clone();
    let last = wrong.len() - 1;
    wrong[last] ^= 1;
    std::fs::write(&path, &wrong).unwrap();
    assert!(follower.poll().unwrap().is_empty(), "CRC not yet holding");
    std::fs::write(&path, &whole).unwrap();
    assert_eq!(ids_of(&follower.poll().unwrap()), ["r00001"]);
    assert!(follower.poll().unwrap().is_empty(), "shown once");
    assert!(follower.warnings.is_empty());
}

#[test]
fn alerts_are_stored_with_their_record_and_resume_after_a_restart() {
    use super::writer::Alerting;
    use crate::alerts::deliver::undelivered;
    use crate::alerts::eval::Evaluator;
    use crate::alerts::{Condition, Rule, Verdict};
    use tracegate_proto::v1::{AlertDelivered, Inspection};

    let dir = tempfile::tempdir().unwrap();
    let rules = || {
        vec![Rule {
            id: "blocked".into(),
            condition: Condition::Verdict(vec![Verdict::Blocked]),
            webhooks: vec!["sec".into(), "chat".into()],
        }]
    };
    let blocked = |i: u32| {
        let mut r = rec(i, "s");
        r.inspection = Some(Inspection {
            verdict: "blocked".into(),
            ..Inspection::default()
        });
        r
    };
    let mut l = open(dir.path(), small());
    let (out, incoming) = std::sync::mpsc::channel();
    l.alert(Alerting {
        evaluator: Evaluator::new(rules(), []),
        out,
    });
    let seq = l.last_seq();
    l.append(&[vec![blocked(1), rec(2, "s"), blocked(3)]])
        .unwrap();
    // Three records and two alerts, in one write.
    assert_eq!(l.last_seq(), seq + 5);
    let sent: Vec<_> = incoming.try_iter().collect();
    assert_eq!(sent.len(), 2);
    // A resent record raises nothing again.
    l.append(&[vec![blocked(1)]]).unwrap();
    assert_eq!(incoming.try_iter().count(), 0);
    l.append_delivered(&[AlertDelivered {
        alert_id: sent[0].alert_id.clone(),
        webhook: "sec".into(),
        unix_nanos: 1,
    }])
    .unwrap();
    drop(l);

    let l = open(dir.path(), small());
    assert_eq!(l.alerts.len(), 2);
    let left: Vec<(String, String)> = undelivered(l.alerts.clone(), &l.alerts_delivered)
        .into_iter()
        .map(|(a, w)| (a.alert_id.clone(), w))
        .collect();
    assert_eq!(
        left,
        [
            (sent[0].alert_id.clone(), "chat".to_string()),
            (sent[1].alert_id.clone(), "sec".to_string()),
            (sent[1].alert_id.clone(), "chat".to_string()),
        ]
    );
    drop(l);
    let report = check(dir.path());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(ids(dir.path()).len(), 3, "readers skip alert entries");
}
