//! Arbitrary bytes -> `SegmentHeader::peek` and `Segment::decode`.
//!
//! Each input is decoded three times: as it is, with its checksums repaired
//! (`FixUp::Checksums`) and with its structure repaired too
//! (`FixUp::Structure`), so that mutations reach the record and change
//! decoders instead of stopping at a CRC. For each of the three:
//! - nothing panics (errors are also rendered with `Display`);
//! - `peek` refuses exactly what `decode` refuses in the header, with the
//!   same error, and returns the decoded header otherwise;
//! - a decoded segment re-encoded with the public encoder
//!   (`encode_change`, `RecordEncoder::push` from the position the segment
//!   claims to continue, `Segment::encode`) gives the input bytes exactly;
//! - `check_continuity` / `validate` accept it at that claimed position, and
//!   at the genesis position of its generation exactly when it starts
//!   there; another generation is `ForeignGeneration`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replication::wal::{
    check_continuity, genesis_chain, validate, ChainPosition, CommitId, ContinuityError,
    Generation, Segment, SegmentHeader, SEGMENT_HEADER_LEN, SEGMENT_TRAILER_LEN,
};
use replication_fuzz::{claimed_start, fix_up, reencode_segment, segment_same, FixUp};

fuzz_target!(|data: &[u8]| {
    check(data);
    for mode in [FixUp::Checksums, FixUp::Structure] {
        let mut fixed = data.to_vec();
        fix_up(&mut fixed, mode);
        check(&fixed);
    }
});

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn check(bytes: &[u8]) {
    let peeked = SegmentHeader::peek(bytes);
    let segment = match Segment::decode(bytes) {
        Err(e) => {
            let _ = e.to_string();
            if let Err(p) = &peeked {
                assert_eq!(p, &e, "peek and decode refuse the header differently");
            }
            return;
        }
        Ok(s) => s,
    };
    let header = peeked.expect("decode accepted a segment whose header peek refuses");
    assert_eq!(
        header, segment.header,
        "peek and decode read different headers"
    );
    assert_eq!(segment.records.len(), header.record_count as usize);
    assert_eq!(
        bytes.len(),
        SEGMENT_HEADER_LEN + header.body_len as usize + SEGMENT_TRAILER_LEN
    );
    for (i, r) in segment.records.iter().enumerate() {
        assert_eq!(r.commit_id, CommitId(header.first_commit_id.0 + i as u64));
        if i > 0 {
            assert_eq!(
                r.prev_chain,
                segment.records[i - 1].chain,
                "record {i} chain"
            );
        }
    }

    // Re-encoding reproduces the bytes.
    let (records, again) = reencode_segment(&segment).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        again == bytes,
        "re-encoding a decoded segment differs from its bytes at byte {} ({} vs {} bytes)",
        first_difference(&again, bytes),
        again.len(),
        bytes.len()
    );
    for (r, e) in segment.records.iter().zip(&records) {
        assert_eq!(
            (r.wal_offset, r.prev_chain, r.chain, r.crc, r.len as usize),
            (e.wal_offset, e.prev_chain, e.chain, e.crc, e.bytes.len()),
            "seal of commit {}",
            r.commit_id
        );
    }
    let redecoded = Segment::decode(&again).expect("re-encoded segment decodes");
    assert!(segment_same(&segment, &redecoded));

    // Continuity.
    let end = segment.end_position();
    assert_eq!(end.generation, header.generation);
    assert_eq!(end.commit_id, header.last_commit_id);
    assert_eq!(
        end.wal_offset.0,
        header.first_wal_offset.0 + u64::from(header.body_len)
    );
    assert_eq!(end.chain, segment.records.last().unwrap().chain);

    let claimed = claimed_start(&segment);
    check_continuity(&segment, &claimed).expect("a segment continues the position it claims");

    let genesis = ChainPosition::genesis(header.generation);
    assert_eq!(genesis.chain, genesis_chain(header.generation));
    let starts_at_genesis = header.first_commit_id == CommitId(1)
        && header.first_wal_offset.0 == 0
        && segment.start_chain() == genesis.chain;
    match check_continuity(&segment, &genesis) {
        Ok(()) => assert!(
            starts_at_genesis,
            "accepted at genesis without starting there"
        ),
        Err(e) => {
            let _ = e.to_string();
            assert!(!starts_at_genesis, "refused at genesis: {e}");
        }
    }
    match validate(segment.clone(), &genesis) {
        Ok(v) => {
            assert!(starts_at_genesis);
            assert_eq!(v.start(), genesis);
            assert_eq!(v.end(), end);
            assert!(segment_same(v.segment(), &segment));
        }
        Err(_) => assert!(!starts_at_genesis),
    }
    let foreign = ChainPosition {
        generation: Generation(header.generation.0 ^ 1),
        ..claimed
    };
    assert!(matches!(
        check_continuity(&segment, &foreign),
        Err(ContinuityError::ForeignGeneration { .. })
    ));
}
