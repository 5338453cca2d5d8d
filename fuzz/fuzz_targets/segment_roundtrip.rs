//! Structured input -> `encode_change` -> `RecordEncoder::push` ->
//! `Segment::encode` -> `Segment::decode`, then one corrupted byte.
//!
//! The input (`replication_fuzz::RoundtripInput`) is a generation, a start
//! position (genesis, or after any commit, clamped so the CommitIds and WAL
//! offsets fit), 1..=16 records of changes of every kind (Insert, Update,
//! Delete, Discard, Schema, Unreplicate, Alter) with values of every type (NULL, INTEGER, REAL
//! from any bit pattern, TEXT of any bytes, BLOB), which of them continue
//! their transaction in the next record (format 3; laid out as a segment
//! may hold them, `replication_fuzz::continues_flags`), and a byte to
//! corrupt. Checks:
//! - `push`, `push_framed` and `seal_in_place` (its reserved header bytes
//!   filled with garbage first) give the same record and seal, and so do
//!   `seal_part_in_place` and `encode_record` for a record that continues;
//! - each decoded record's `continues` is the one encoded, the segment
//!   ends inside a transaction exactly when its last record continues, and
//!   `Segment::encode` refuses the same records with the last one made to
//!   continue while an earlier one ends a transaction;
//! - decoding gives the same header, seals, chain (each `prev_chain` is the
//!   previous `chain`, the first is the start position's) and changes (REAL
//!   by bit pattern); re-encoding the decoded segment gives the same bytes;
//! - `check_continuity` / `validate` accept it at its start position and
//!   end at the encoder's position; another generation is refused; the
//!   segment cut by one byte or with one byte more is refused;
//! - with one byte XORed (position and nonzero mask from the input),
//!   decoding returns an error, or a segment that differs and that
//!   `validate` may accept or refuse, but never the same segment. As every
//!   byte of a segment is under a CRC-32 (header CRC, record CRC and chain,
//!   segment CRC), and CRC-32 detects every error burst of up to 32 bits,
//!   the target also requires the error: a corruption that decodes at all is
//!   reported as undetected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replication::wal::EncodeError;
use replication::wal::{
    check_continuity, encode_change, validate, ChainPosition, CommitId, ContinuityError,
    DecodeError, Generation, RecordEncoder, Segment, SegmentHeader, WalOffset, FORMAT_VERSION,
    RECORD_HEADER_LEN, RECORD_OVERHEAD, SEGMENT_HEADER_LEN, SEGMENT_TRAILER_LEN,
};
use replication_fuzz::{
    changes_same, continues_flags, encode_record, reencode_segment, segment_same, start_position,
    to_change, RoundtripInput, MAX_FUZZ_RECORDS,
};

fuzz_target!(|input: RoundtripInput| {
    let generation = Generation(input.generation);
    let mut changes: Vec<Vec<_>> = input
        .records
        .iter()
        .take(MAX_FUZZ_RECORDS)
        .map(|r| r.iter().map(to_change).collect())
        .collect();
    if changes.is_empty() {
        changes.push(Vec::new());
    }
    let encoded: Vec<Vec<Vec<u8>>> = changes
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| {
                    encode_change(c)
                        .unwrap_or_else(|e| panic!("a change within the limits: {e}: {c:?}"))
                })
                .collect()
        })
        .collect();
    let lens: Vec<usize> = encoded
        .iter()
        .map(|r| RECORD_OVERHEAD + r.iter().map(|c| 4 + c.len()).sum::<usize>())
        .collect();
    let body_len: usize = lens.iter().sum();
    let start = start_position(&input.start, generation, changes.len(), body_len as u64);
    let flags = continues_flags(input.continues, input.ends_inside, changes.len());

    // Encode, with push, push_framed and seal_in_place side by side.
    let mut encoder = RecordEncoder::new(start);
    let mut framed_encoder = RecordEncoder::new(start);
    let mut in_place_encoder = RecordEncoder::new(start);
    let mut before_last = encoder.clone();
    let mut records = Vec::with_capacity(changes.len());
    for (i, r) in encoded.iter().enumerate() {
        let commit_id = CommitId(start.commit_id.0 + 1 + i as u64);
        let continues = flags[i];
        let refs: Vec<&[u8]> = r.iter().map(Vec::as_slice).collect();
        before_last = encoder.clone();
        let record = if continues {
            encode_record(&mut encoder, commit_id, &refs, true)
        } else {
            encoder.push(commit_id, &refs)
        }
        .unwrap_or_else(|e| panic!("encoding commit {commit_id}: {e}"));
        assert_eq!(record.bytes.len(), lens[i]);
        assert_eq!(record.change_count as usize, r.len());
        assert_eq!(record.continues(), continues);

        let mut framed = Vec::new();
        for c in r {
            framed.extend_from_slice(&(c.len() as u32).to_le_bytes());
            framed.extend_from_slice(c);
        }
        let mut out = vec![0xAA; 3];
        let seal = if continues {
            out.clear();
            out.resize(RECORD_HEADER_LEN, 0);
            out.extend_from_slice(&framed);
            framed_encoder.seal_part_in_place(commit_id, r.len(), true, &mut out)
        } else {
            framed_encoder.push_framed(commit_id, r.len(), &framed, &mut out)
        }
        .unwrap_or_else(|e| panic!("push_framed of commit {commit_id}: {e}"));
        assert_eq!(out, record.bytes, "push_framed and push differ");
        assert_eq!(
            (
                seal.wal_offset,
                seal.prev_chain,
                seal.chain,
                seal.crc,
                seal.change_count
            ),
            (
                record.wal_offset,
                record.prev_chain,
                record.chain,
                record.crc,
                record.change_count
            )
        );
        let mut in_place = vec![0xAA; RECORD_HEADER_LEN];
        in_place.extend_from_slice(&framed);
        let in_place_seal = in_place_encoder
            .seal_part_in_place(commit_id, r.len(), continues, &mut in_place)
            .unwrap_or_else(|e| panic!("seal_in_place of commit {commit_id}: {e}"));
        assert_eq!(in_place, record.bytes, "seal_in_place and push differ");
        assert_eq!(
            in_place_seal, seal,
            "seal_in_place and push_framed seals differ"
        );
        assert_eq!(record.end_position(generation), encoder.position());
        records.push(record);
    }
    assert_eq!(framed_encoder.position(), encoder.position());
    assert_eq!(in_place_encoder.position(), encoder.position());
    let bytes = Segment::encode(generation, &records).expect("Segment::encode");
    // The same records, the last one made to continue: refused when an
    // earlier one ends a transaction (rule 17), accepted otherwise.
    if !flags[flags.len() - 1] {
        let last = records.last().unwrap();
        let refs: Vec<&[u8]> = encoded[encoded.len() - 1]
            .iter()
            .map(Vec::as_slice)
            .collect();
        let mut mixed = records.clone();
        *mixed.last_mut().unwrap() = encode_record(&mut before_last, last.commit_id, &refs, true)
            .unwrap_or_else(|e| panic!("encoding the last record as continuing: {e}"));
        match Segment::encode(generation, &mixed) {
            Err(EncodeError::MixedTransactions { ended, last: l }) => {
                assert!(!flags[(ended.0 - start.commit_id.0 - 1) as usize]);
                assert_eq!(l, last.commit_id);
            }
            Err(e) => panic!("a segment ending inside a transaction: {e}"),
            Ok(_) => assert!(
                flags[..flags.len() - 1].iter().all(|&c| c),
                "rule 17 not enforced by Segment::encode"
            ),
        }
    }
    assert_eq!(
        bytes.len(),
        SEGMENT_HEADER_LEN + body_len + SEGMENT_TRAILER_LEN
    );

    // Decode: same header, seals, chain and changes.
    let header = SegmentHeader::peek(&bytes).expect("peek of an encoded segment");
    let segment = Segment::decode(&bytes).unwrap_or_else(|e| panic!("decode: {e}"));
    assert_eq!(header, segment.header);
    let h = &segment.header;
    let first = &records[0];
    let last = records.last().unwrap();
    assert_eq!(h.version, FORMAT_VERSION);
    assert_eq!(h.generation, generation);
    assert_eq!(h.first_commit_id, CommitId(start.commit_id.0 + 1));
    assert_eq!(h.last_commit_id, last.commit_id);
    assert_eq!(h.first_wal_offset, start.wal_offset);
    assert_eq!(h.last_wal_offset, last.wal_offset);
    assert_eq!(h.record_count as usize, records.len());
    assert_eq!(h.body_len as usize, body_len);
    assert_eq!(first.prev_chain, start.chain);
    assert_eq!(segment.start_chain(), start.chain);
    assert_eq!(segment.records.len(), records.len());
    let mut wal_offset = start.wal_offset;
    let mut prev_chain = start.chain;
    for ((r, e), c) in segment.records.iter().zip(&records).zip(&changes) {
        assert_eq!(r.commit_id, e.commit_id);
        assert_eq!(r.wal_offset, wal_offset);
        assert_eq!(r.wal_offset, e.wal_offset);
        assert_eq!(r.len as usize, e.bytes.len());
        assert_eq!(r.prev_chain, prev_chain, "chain of commit {}", r.commit_id);
        assert_eq!(r.prev_chain, e.prev_chain);
        assert_eq!(r.chain, e.chain);
        assert_eq!(r.crc, e.crc);
        assert_eq!(
            r.continues,
            e.continues(),
            "continues of commit {}",
            r.commit_id
        );
        assert!(
            changes_same(&r.changes, c),
            "commit {}: {:?} decoded as {:?}",
            r.commit_id,
            c,
            r.changes
        );
        wal_offset = WalOffset(wal_offset.0 + u64::from(r.len));
        prev_chain = r.chain;
    }
    assert_eq!(segment.end_position(), encoder.position());
    assert_eq!(segment.ends_inside_transaction(), flags[flags.len() - 1]);
    let (_, again) = reencode_segment(&segment).unwrap_or_else(|e| panic!("{e}"));
    assert!(again == bytes, "re-encoding the decoded segment differs");

    // Continuity.
    if matches!(input.start, replication_fuzz::ArbStart::Genesis) {
        assert_eq!(start, ChainPosition::genesis(generation));
    }
    check_continuity(&segment, &start).unwrap_or_else(|e| panic!("continuity: {e}"));
    let validated = validate(segment.clone(), &start).expect("validate");
    assert_eq!(validated.start(), start);
    assert_eq!(validated.end(), encoder.position());
    assert_eq!(validated.ends_inside_transaction(), flags[flags.len() - 1]);
    let foreign = ChainPosition {
        generation: Generation(generation.0 ^ 1),
        ..start
    };
    assert!(matches!(
        check_continuity(&segment, &foreign),
        Err(ContinuityError::ForeignGeneration { .. })
    ));
    assert!(matches!(
        Segment::decode(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Truncated { .. })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Segment::decode(&longer),
        Err(DecodeError::TrailingBytes { .. })
    ));

    // One corrupted byte.
    let at = input.flip_at as usize % bytes.len();
    let mask = if input.flip_mask == 0 {
        1
    } else {
        input.flip_mask
    };
    let mut corrupt = bytes.clone();
    corrupt[at] ^= mask;
    match Segment::decode(&corrupt) {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(decoded) => {
            assert!(
                !segment_same(&decoded, &segment),
                "byte {at} XOR {mask:#04x} decoded to the same segment: corruption accepted silently"
            );
            let verdict = validate(decoded.clone(), &start).map(|_| ());
            panic!(
                "byte {at} XOR {mask:#04x} not detected by any checksum: decoded to a different segment \
                 (validate at the start position: {verdict:?}): {decoded:?}"
            );
        }
    }
});
