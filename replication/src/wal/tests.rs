//! Unit and property tests of the WAL format. Rule ids cite
//! `shared/spec/RULES.md`.

use super::*;
use proptest::prelude::*;
use rstest::rstest;

const GEN: Generation = Generation(0xA5A5_0001);

fn change(i: i64) -> Vec<u8> {
    encode_change(&Change::Update {
        table: "accounts".into(),
        key: vec![Value::Integer(i)],
        values: vec![
            Value::Integer(i + 1),
            Value::Real(1.5),
            Value::Text(b"t\xffxt".to_vec()),
            Value::Blob(vec![0, 1, 2]),
            Value::Null,
        ],
    })
    .expect("small change encodes")
}

/// Records 1..=n of one history, and the encoder after them.
fn history(n: u64) -> (Vec<EncodedRecord>, RecordEncoder) {
    let mut enc = RecordEncoder::new(ChainPosition::genesis(GEN));
    let records = (1..=n)
        .map(|c| {
            let changes: Vec<Vec<u8>> = (0..(c % 3 + 1) as i64).map(change).collect();
            let refs: Vec<&[u8]> = changes.iter().map(|c| c.as_slice()).collect();
            enc.push(CommitId(c), &refs).expect("record encodes")
        })
        .collect();
    (records, enc)
}

fn segment_bytes(n: u64) -> Vec<u8> {
    Segment::encode(GEN, &history(n).0).expect("segment encodes")
}

#[test]
fn round_trips_every_value_type_and_operation() {
    let changes = vec![
        Change::Schema {
            table: "t".into(),
            sql: "CREATE TABLE t(a INTEGER PRIMARY KEY, b)".into(),
            indexes: vec!["CREATE UNIQUE INDEX tb ON t(b)".into()],
        },
        Change::Insert {
            table: "t".into(),
            values: vec![
                Value::Integer(i64::MIN),
                Value::Real(-0.0),
                Value::Text("é".as_bytes().to_vec()),
                Value::Blob(vec![7; 100_000]),
                Value::Null,
            ],
        },
        Change::Update {
            table: "t".into(),
            key: vec![Value::Integer(1)],
            values: vec![Value::Integer(2), Value::Null],
        },
        Change::Delete {
            table: "t".into(),
            key: vec![Value::Text(b"k".to_vec())],
        },
        Change::Discard {
            table: "t".into(),
            key: vec![Value::Integer(7)],
        },
    ];
    let encoded: Vec<Vec<u8>> = changes.iter().map(|c| encode_change(c).unwrap()).collect();
    let refs: Vec<&[u8]> = encoded.iter().map(|c| c.as_slice()).collect();
    let mut enc = RecordEncoder::new(ChainPosition::genesis(GEN));
    let record = enc.push(CommitId(1), &refs).unwrap();
    let bytes = Segment::encode(GEN, std::slice::from_ref(&record)).unwrap();
    let segment = Segment::decode(&bytes).unwrap();
    assert_eq!(segment.records[0].changes, changes);
    assert_eq!(segment.records[0].chain, record.chain);
    assert_eq!(segment.end_position(), enc.position());
    check_continuity(&segment, &ChainPosition::genesis(GEN)).unwrap();
}

#[test]
fn worked_example_of_docs_wal_format() {
    // docs/wal-format.md, "Worked example": byte for byte.
    let change = encode_change(&Change::Insert {
        table: "t".into(),
        values: vec![Value::Integer(1), Value::Text(b"one".to_vec())],
    })
    .unwrap();
    let mut enc = RecordEncoder::new(ChainPosition::genesis(Generation(1)));
    let record = enc.push(CommitId(1), &[&change]).unwrap();
    assert_eq!((record.chain, record.crc), (0x0755_a410, 0x6b1c_2ad4));
    let bytes = Segment::encode(Generation(1), &[record]).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // The segment CRC covers the header without its own CRC: a header
    // change that keeps the header CRC consistent still breaks it.
    let mut tampered = bytes.clone();
    tampered[8] ^= 1; // the generation
    let h = crc32fast::hash(&tampered[..56]);
    tampered[56..60].copy_from_slice(&h.to_le_bytes());
    assert!(matches!(
        Segment::decode(&tampered),
        Err(DecodeError::SegmentChecksum { .. })
    ));
    assert_eq!(hex, "4145575303003c0001000000000000000100000000000000010000000000000000000000000000000000000000000000010000003f0000004023d4d13f000000010000000000000000000000000000000100000058c919b11700000001010074020001010000000000000003030000006f6e6510a45507d42a1c6bb340859e");
}

#[test]
fn record_crc_checks_the_record_by_itself() {
    // The record CRC is not a constant (it must not cover its own chain),
    // and does not depend on history: the same content after another
    // predecessor has the same crc but another chain.
    let (records, _) = history(3);
    assert_ne!(records[0].crc, records[1].crc);
    let mut other = RecordEncoder::new(ChainPosition::genesis(Generation(77)));
    let same = other.push(CommitId(1), &[&change(0)]).unwrap();
    let mut ours = RecordEncoder::new(ChainPosition::genesis(GEN));
    let mine = ours.push(CommitId(1), &[&change(0)]).unwrap();
    assert_eq!(same.crc, mine.crc);
    assert_ne!(same.chain, mine.chain);
}

#[test]
fn same_history_gives_same_bytes() {
    // DESIGN 3: same range => same bytes, every time.
    assert_eq!(segment_bytes(20), segment_bytes(20));
}

#[test]
fn offsets_and_chain_continue_across_segments() {
    let (records, _) = history(10);
    let a = Segment::decode(&Segment::encode(GEN, &records[..4]).unwrap()).unwrap();
    let b = Segment::decode(&Segment::encode(GEN, &records[4..]).unwrap()).unwrap();
    check_continuity(&b, &a.end_position()).unwrap();
    assert_eq!(b.header.first_wal_offset, a.header.end_wal_offset());
}

#[test]
fn encoder_refuses_non_contiguous_commits() {
    let mut enc = RecordEncoder::new(ChainPosition::genesis(GEN));
    assert_eq!(
        enc.push(CommitId(2), &[]),
        Err(EncodeError::NotContiguous {
            previous: CommitId(0),
            actual: CommitId(2)
        })
    );
    let (records, _) = history(3);
    let err = Segment::encode(GEN, &[records[0].clone(), records[2].clone()]).unwrap_err();
    assert_eq!(
        err,
        EncodeError::NotContiguous {
            previous: CommitId(1),
            actual: CommitId(3)
        }
    );
}

/// A mutation of a valid 3-record segment and the error it must produce.
fn mutate(kind: &str) -> Vec<u8> {
    let mut b = segment_bytes(3);
    let n = b.len();
    match kind {
        "flip header" => b[20] ^= 0x01,
        "flip header crc" => b[57] ^= 0x80,
        "flip body" => b[SEGMENT_HEADER_LEN + 30] ^= 0x10,
        "flip segment crc" => b[n - 1] ^= 0x01,
        "truncate body" => b.truncate(n - 10),
        "truncate header" => b.truncate(30),
        "append garbage" => b.extend_from_slice(&[0; 3]),
        "bad magic" => b[0] = b'X',
        "empty" => b.clear(),
        other => panic!("unknown mutation {other}"),
    }
    b
}

// Rule V1: checksums and boundaries are checked; each failure names where.
#[rstest]
#[case::header_bit_flip("flip header", "header corrupt: header CRC32 at byte 56")]
#[case::header_crc_bit_flip("flip header crc", "header corrupt")]
#[case::body_bit_flip("flip body", "segment 1..=3 corrupt: segment CRC32 at byte")]
#[case::segment_crc_bit_flip("flip segment crc", "segment 1..=3 corrupt: segment CRC32")]
#[case::truncated_body("truncate body", "segment truncated")]
#[case::truncated_header(
    "truncate header",
    "segment truncated: 64 bytes needed at byte 0, only 30 present"
)]
#[case::trailing_bytes("append garbage", "segment 1..=3: 3 unexpected bytes after the end")]
#[case::foreign_bytes("bad magic", "not an AeroDB WAL segment")]
#[case::empty("empty", "segment truncated")]
fn rejects_corrupt_segment(#[case] mutation: &str, #[case] expected: &str) {
    let err = Segment::decode(&mutate(mutation)).unwrap_err().to_string();
    assert!(
        err.contains(expected),
        "{mutation}: got `{err}`, expected `{expected}`"
    );
}

#[test]
fn body_bit_flip_with_recomputed_segment_crc_is_caught_by_record_crc() {
    // An attacker or a bug that fixes up the outer CRC still hits the record
    // CRC, which names the commit and WAL offset.
    let mut b = segment_bytes(3);
    let n = b.len();
    b[SEGMENT_HEADER_LEN + 30] ^= 0x10;
    let crc = segment_crc(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let err = Segment::decode(&b).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::RecordChecksum {
                commit_id: CommitId(1),
                wal_offset: WalOffset(0),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn forged_record_with_valid_crcs_but_foreign_chain_is_refused() {
    // Fork: record 2 of another history spliced after record 1 of ours,
    // every CRC valid. The decoder sees the broken chain inside the segment.
    let (ours, _) = history(2);
    let mut other = RecordEncoder::new(ChainPosition::genesis(Generation(999)));
    let theirs1 = other.push(CommitId(1), &[&change(1)]).unwrap();
    let mut forked = RecordEncoder::new(ChainPosition {
        generation: GEN,
        ..theirs1.end_position(GEN)
    });
    // Same offset as ours, other predecessor chain.
    let mut pos = forked.position();
    pos.wal_offset = ours[1].wal_offset;
    forked = RecordEncoder::new(pos);
    let theirs2 = forked.push(CommitId(2), &[&change(2)]).unwrap();
    let bytes = Segment::encode(GEN, &[ours[0].clone(), theirs2]).unwrap();
    let err = Segment::decode(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::ChainBroken {
                commit_id: CommitId(2),
                which: "previous chain",
                ..
            }
        ),
        "{err}"
    );
}

// Rule V1: continuity against the replica's position.
#[rstest]
#[case::gap(5, "gap, expected commit 4 first (replica applied commit 3)")]
#[case::duplicate(3, "commit 3 is already applied (expected commit 4)")]
#[case::old(1, "already applied")]
fn continuity_refuses_wrong_start(#[case] first: u64, #[case] expected: &str) {
    let (records, _) = history(8);
    let applied = Segment::decode(&Segment::encode(GEN, &records[..3]).unwrap()).unwrap();
    let seg =
        Segment::decode(&Segment::encode(GEN, &records[first as usize - 1..]).unwrap()).unwrap();
    let err = check_continuity(&seg, &applied.end_position())
        .unwrap_err()
        .to_string();
    assert!(err.contains(expected), "got `{err}`");
}

#[test]
fn continuity_refuses_foreign_generation_and_fork() {
    let (records, _) = history(2);
    let seg = Segment::decode(&Segment::encode(GEN, &records).unwrap()).unwrap();
    let foreign = ChainPosition::genesis(Generation(7));
    assert!(matches!(
        check_continuity(&seg, &foreign),
        Err(ContinuityError::ForeignGeneration { .. })
    ));
    let mut forked = ChainPosition::genesis(GEN);
    forked.chain ^= 1;
    let err = check_continuity(&seg, &forked).unwrap_err();
    assert!(
        matches!(err, ContinuityError::ChainMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("chained checksum at commit 1"),
        "{err}"
    );
}

#[test]
fn decode_refuses_the_last_representable_commit_id_without_panicking() {
    // A forged header (valid CRC) claiming CommitId u64::MAX is an error,
    // not an overflow.
    let mut b = segment_bytes(1);
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let crc = crc32fast::hash(&b[..56]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    let err = Segment::decode(&b).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::BadHeader {
                field: "last CommitId",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn decode_bounds_allocation_by_present_bytes() {
    // A header that claims a huge body but carries none is refused before
    // any allocation of that size.
    let mut b = segment_bytes(1);
    b[52..56].copy_from_slice(&(MAX_SEGMENT_BODY_BYTES as u32 + 1).to_le_bytes());
    let crc = crc32fast::hash(&b[..56]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    let err = Segment::decode(&b).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::BadHeader {
                field: "body length",
                ..
            }
        ),
        "{err}"
    );
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
    ]
}

fn arb_change() -> impl Strategy<Value = Change> {
    let vals = || proptest::collection::vec(arb_value(), 0..6);
    prop_oneof![
        ("[a-z]{1,8}", vals()).prop_map(|(table, values)| Change::Insert { table, values }),
        ("[a-z]{1,8}", vals(), vals()).prop_map(|(table, key, values)| Change::Update {
            table,
            key,
            values
        }),
        ("[a-z]{1,8}", vals()).prop_map(|(table, key)| Change::Delete { table, key }),
        (
            "[a-z]{1,8}",
            ".{0,40}",
            proptest::collection::vec(".{0,20}", 0..3)
        )
            .prop_map(|(table, sql, indexes)| Change::Schema {
                table,
                sql,
                indexes
            }),
    ]
}

fn same(a: &Change, b: &Change) -> bool {
    // NaN != NaN: compare encodings.
    encode_change(a).unwrap() == encode_change(b).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Segment::decode(&bytes);
        let _ = decode_change(&bytes);
    }

    #[test]
    fn decode_never_panics_with_valid_magic_and_header_crc(mut bytes in proptest::collection::vec(any::<u8>(), 64..600)) {
        // Random header fields behind a valid magic, version and header CRC
        // reach the deeper checks.
        bytes[..4].copy_from_slice(&SEGMENT_MAGIC);
        bytes[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[6..8].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        let crc = crc32fast::hash(&bytes[..56]);
        bytes[56..60].copy_from_slice(&crc.to_le_bytes());
        let n = bytes.len();
        let crc = segment_crc(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let _ = Segment::decode(&bytes);
    }

    #[test]
    fn mutated_segment_is_refused_or_identical(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        fix_crcs in any::<bool>(),
    ) {
        let original = segment_bytes(4);
        let mut b = original.clone();
        for (i, x) in &flips {
            let at = i.index(b.len());
            b[at] ^= x;
        }
        if truncate {
            b.truncate(cut.index(b.len()));
        }
        if fix_crcs && b.len() >= 64 {
            // Recompute the outer CRCs so inner checks are exercised.
            let crc = crc32fast::hash(&b[..56]);
            b[56..60].copy_from_slice(&crc.to_le_bytes());
            let n = b.len();
            let crc = segment_crc(&b[..n - 4]);
            b[n - 4..].copy_from_slice(&crc.to_le_bytes());
        }
        match Segment::decode(&b) {
            Ok(seg) => {
                // Only the header's generation is not cross-checked against
                // the records (continuity checks it against the replica, and
                // the chain, rooted in the generation, catches it there);
                // everything else decodes identically or not at all.
                let want = Segment::decode(&original).unwrap();
                prop_assert_eq!(&seg.records, &want.records);
                prop_assert_eq!(
                    SegmentHeader { generation: want.header.generation, ..seg.header },
                    want.header
                );
                if seg.header.generation != want.header.generation {
                    let err = check_continuity(&seg, &ChainPosition::genesis(seg.header.generation));
                    prop_assert!(matches!(err, Err(ContinuityError::ChainMismatch { .. })), "{:?}", err);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn any_changes_round_trip(groups in proptest::collection::vec(proptest::collection::vec(arb_change(), 0..5), 1..6)) {
        let mut enc = RecordEncoder::new(ChainPosition::genesis(GEN));
        let mut records = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let encoded: Vec<Vec<u8>> = g.iter().map(|c| encode_change(c).unwrap()).collect();
            let refs: Vec<&[u8]> = encoded.iter().map(|c| c.as_slice()).collect();
            records.push(enc.push(CommitId(i as u64 + 1), &refs).unwrap());
        }
        let seg = Segment::decode(&Segment::encode(GEN, &records).unwrap()).unwrap();
        prop_assert_eq!(seg.end_position(), enc.position());
        for (g, r) in groups.iter().zip(&seg.records) {
            prop_assert_eq!(g.len(), r.changes.len());
            for (a, b) in g.iter().zip(&r.changes) {
                prop_assert!(same(a, b));
            }
        }
    }
}

/// Records 1..=n of one history; those in `continuing` continue their
/// transaction in the next record.
fn history_with(n: u64, continuing: &[u64]) -> Vec<EncodedRecord> {
    let mut enc = RecordEncoder::new(ChainPosition::genesis(GEN));
    (1..=n)
        .map(|c| {
            let mut framed = Vec::new();
            let ch = change(c as i64);
            framed.extend_from_slice(&(ch.len() as u32).to_le_bytes());
            framed.extend_from_slice(&ch);
            let mut bytes = vec![0; RECORD_HEADER_LEN];
            bytes.extend_from_slice(&framed);
            let seal = enc
                .seal_part_in_place(CommitId(c), 1, continuing.contains(&c), &mut bytes)
                .unwrap();
            EncodedRecord {
                commit_id: CommitId(c),
                wal_offset: seal.wal_offset,
                prev_chain: seal.prev_chain,
                chain: seal.chain,
                crc: seal.crc,
                change_count: seal.change_count,
                bytes,
            }
        })
        .collect()
}

#[test]
fn a_record_that_continues_its_transaction_says_so_in_bit_31_of_its_count() {
    let records = history_with(3, &[1, 2]);
    assert!(records[0].continues() && records[1].continues() && !records[2].continues());
    assert_eq!(
        u32::from_le_bytes(records[0].bytes[20..24].try_into().unwrap()),
        1 | CONTINUES
    );
    // One transaction in one segment: decodes, and ends it.
    let s = Segment::decode(&Segment::encode(GEN, &records).unwrap()).unwrap();
    assert_eq!(
        s.records.iter().map(|r| r.continues).collect::<Vec<_>>(),
        vec![true, true, false]
    );
    assert_eq!(s.records[0].changes.len(), 1);
    assert!(!s.ends_inside_transaction());
    // A segment of the transaction's first records ends inside it.
    let head = Segment::decode(&Segment::encode(GEN, &records[..2]).unwrap()).unwrap();
    assert!(head.ends_inside_transaction());
}

#[test]
fn a_segment_that_ends_inside_a_transaction_holds_only_that_transaction() {
    // Commit 1 is a transaction of its own; 2 opens one that continues.
    let records = history_with(2, &[2]);
    assert!(matches!(
        Segment::encode(GEN, &records),
        Err(EncodeError::MixedTransactions { .. })
    ));
    // Forged anyway (the encoder's check bypassed by setting the bit after
    // sealing with the CRCs recomputed): the decoder refuses it, naming
    // the record that ends a transaction.
    let plain = history_with(2, &[]);
    let mut bytes = Segment::encode(GEN, &plain).unwrap();
    let second = SEGMENT_HEADER_LEN + plain[0].bytes.len();
    let word = u32::from_le_bytes(bytes[second + 20..second + 24].try_into().unwrap());
    bytes[second + 20..second + 24].copy_from_slice(&(word | CONTINUES).to_le_bytes());
    let len = plain[1].bytes.len();
    let rec = &bytes[second..second + len - 8];
    let chain = crc32fast::hash(rec);
    let mut h = crc32fast::Hasher::new();
    h.update(&rec[..24]);
    h.update(&rec[28..]);
    let crc = h.finalize();
    bytes[second + len - 8..second + len - 4].copy_from_slice(&chain.to_le_bytes());
    bytes[second + len - 4..second + len].copy_from_slice(&crc.to_le_bytes());
    let end = bytes.len() - 4;
    let seg_crc = segment_crc(&bytes[..end]);
    bytes[end..].copy_from_slice(&seg_crc.to_le_bytes());
    let err = Segment::decode(&bytes).expect_err("mixed segment refused");
    assert!(
        matches!(
            err,
            DecodeError::BadRecord {
                commit_id: CommitId(1),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ends a transaction"), "{err}");
}

#[test]
fn an_unreplicate_change_is_its_header_alone() {
    let change = Change::Unreplicate {
        table: "Items".into(),
    };
    let bytes = encode_change(&change).unwrap();
    assert_eq!(bytes, [6, 5, 0, b'I', b't', b'e', b'm', b's']);
    assert_eq!(decode_change(&bytes).unwrap(), change);
    assert_eq!(change.operation(), Operation::Unreplicate);
    assert_eq!(change.table(), "Items");
    let mut longer = bytes.clone();
    longer.push(0);
    let e = decode_change(&longer).unwrap_err();
    assert!(e.contains("1 bytes after the end of the change"), "{e}");
    let e = decode_change(&[8, 1, 0, b't']).unwrap_err();
    assert_eq!(e, "unknown operation 8");
}

#[test]
fn an_alter_change_carries_its_statements_and_each_table_after_them() {
    let change = Change::Alter {
        statements: "ALTER TABLE t ADD COLUMN c; ALTER TABLE u RENAME TO w; DROP TABLE x".into(),
        tables: vec![
            AlteredTable {
                name: "t".into(),
                after: Some(TableDefinition {
                    name: "t".into(),
                    sql: "CREATE TABLE t(id INTEGER PRIMARY KEY, c)".into(),
                    indexes: vec!["CREATE INDEX t_c ON t(c)".into()],
                }),
            },
            AlteredTable {
                name: "x".into(),
                after: None,
            },
        ],
    };
    let bytes = encode_change(&change).unwrap();
    assert_eq!(bytes[0], 7);
    assert_eq!(decode_change(&bytes).unwrap(), change);
    assert_eq!(change.table(), "t");
    // Malformed: a kept flag that is neither 0 nor 1, a header naming
    // another table than the first altered one, no table at all.
    let mut bad = bytes.clone();
    // x's flag follows its name (length 1, 'x'), the last bytes.
    let at = bytes.windows(3).rposition(|w| w == [1, 0, b'x']).unwrap() + 3;
    bad[at] = 2;
    let e = decode_change(&bad).unwrap_err();
    assert!(e.contains("kept flag 2"), "{e}");
    let mut other = bytes.clone();
    other[3] = b'q';
    let e = decode_change(&other).unwrap_err();
    assert!(e.contains("names table 'q' in its header"), "{e}");
    assert!(encode_change(&Change::Alter {
        statements: String::new(),
        tables: vec![],
    })
    .is_err());
}
