//! Writes the seed corpus of the `segment_decode` fuzz target: a few valid
//! format-3 segments (one a transaction spanning two segments), the first one the worked example of
//! `docs/wal-format.md` (checked byte for byte). Run once from `fuzz/`:
//!
//! ```text
//! cargo run --example gen_corpus
//! ```
//!
//! It overwrites `corpus/segment_decode/seed-*.bin` (and the seeds of
//! `change_decode`), nothing else.

use std::fs;
use std::path::Path;

use replication::wal::{
    encode_change, encode_count, encode_value, ChainPosition, Change, CommitId, Generation,
    RecordEncoder, Segment, Value, ValueRef, WalOffset,
};
use replication_fuzz::encode_record;

/// The 127 bytes of the worked example in docs/wal-format.md.
const WORKED_EXAMPLE: [u8; 127] = [
    0x41, 0x45, 0x57, 0x53, 0x03, 0x00, 0x3c, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x00, 0x40, 0x23, 0xd4, 0xd1, 0x3f, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x58, 0xc9, 0x19, 0xb1, 0x17, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x74,
    0x02, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x03, 0x00, 0x00, 0x00,
    0x6f, 0x6e, 0x65, 0x10, 0xa4, 0x55, 0x07, 0xd4, 0x2a, 0x1c, 0x6b, 0xb3, 0x40, 0x85, 0x9e,
];

fn segment(start: ChainPosition, records: &[Vec<Change>]) -> Vec<u8> {
    spanning(start, records, &vec![false; records.len()]).0
}

/// A segment whose record `i` continues its transaction when
/// `continues[i]`, and the position after it.
fn spanning(
    start: ChainPosition,
    records: &[Vec<Change>],
    continues: &[bool],
) -> (Vec<u8>, ChainPosition) {
    let mut encoder = RecordEncoder::new(start);
    let encoded: Vec<_> = records
        .iter()
        .zip(continues)
        .enumerate()
        .map(|(i, (changes, &c))| {
            let bytes: Vec<Vec<u8>> = changes.iter().map(|c| encode_change(c).unwrap()).collect();
            let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
            encode_record(
                &mut encoder,
                CommitId(start.commit_id.0 + 1 + i as u64),
                &refs,
                c,
            )
            .unwrap()
        })
        .collect();
    let bytes = Segment::encode(start.generation, &encoded).unwrap();
    let decoded = Segment::decode(&bytes).expect("a seed decodes");
    assert_eq!(
        decoded.ends_inside_transaction(),
        continues[continues.len() - 1]
    );
    (bytes, encoder.position())
}

fn t(s: &str) -> String {
    s.to_owned()
}

fn main() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seg_dir = here.join("corpus/segment_decode");
    let change_dir = here.join("corpus/change_decode");
    fs::create_dir_all(&seg_dir).unwrap();
    fs::create_dir_all(&change_dir).unwrap();

    // 1. The worked example: commit 1 of generation 1, one Insert.
    let worked = segment(
        ChainPosition::genesis(Generation(1)),
        &[vec![Change::Insert {
            table: t("t"),
            values: vec![Value::Integer(1), Value::Text(b"one".to_vec())],
        }]],
    );
    assert_eq!(worked, WORKED_EXAMPLE, "docs/wal-format.md worked example");

    // 2. A schema change with its rows, then every other kind and value type.
    let gen = Generation(0x5eed);
    let every_kind = vec![
        vec![
            Change::Schema {
                table: t("users"),
                sql: t("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT UNIQUE, score REAL, pic BLOB)"),
                indexes: vec![t("CREATE INDEX users_score ON users(score)")],
            },
            Change::Insert {
                table: t("users"),
                values: vec![
                    Value::Integer(1),
                    Value::Text(b"ada".to_vec()),
                    Value::Real(1.5),
                    Value::Blob(vec![0, 1, 2, 0xff]),
                ],
            },
        ],
        vec![
            Change::Delete {
                table: t("users"),
                key: vec![Value::Integer(1)],
            },
            Change::Discard {
                table: t("users"),
                key: vec![Value::Integer(7)],
            },
            Change::Update {
                table: t("users"),
                key: vec![Value::Integer(2)],
                values: vec![
                    Value::Integer(2),
                    Value::Text(vec![0xc3, 0x28]), // not UTF-8: allowed in TEXT
                    Value::Real(f64::NAN),
                    Value::Null,
                ],
            },
            Change::Insert {
                table: t("users"),
                values: vec![
                    Value::Integer(i64::MIN),
                    Value::Null,
                    Value::Real(-0.0),
                    Value::Blob(Vec::new()),
                ],
            },
        ],
    ];
    let kinds = segment(ChainPosition::genesis(gen), &every_kind);

    // 3. Mid-history: after commit 41 at WAL offset 4096, with an empty record.
    let mid = segment(
        ChainPosition {
            generation: Generation(u64::MAX - 1),
            commit_id: CommitId(41),
            wal_offset: WalOffset(4096),
            chain: 0xdead_beef,
        },
        &[
            vec![],
            vec![Change::Discard {
                table: t("k"),
                key: vec![Value::Text(b"a".to_vec()), Value::Integer(-1)],
            }],
            vec![Change::Insert {
                table: t("k"),
                values: vec![
                    Value::Text(b"a".to_vec()),
                    Value::Integer(-1),
                    Value::Real(f64::INFINITY),
                ],
            }],
        ],
    );

    // 4. A transaction spanning two segments: the first holds only its
    // first two records (both continue); the second starts inside it,
    // ends it, and holds a whole transaction after it.
    let row = |k: i64| Change::Insert {
        table: t("t"),
        values: vec![Value::Integer(k), Value::Blob(vec![k as u8; 3])],
    };
    let (span_open, after) = spanning(
        ChainPosition::genesis(Generation(9)),
        &[vec![row(1), row(2)], vec![row(3)]],
        &[true, true],
    );
    let (span_close, _) = spanning(
        after,
        &[vec![row(4)], vec![row(5), row(6)]],
        &[false, false],
    );

    for (name, bytes) in [
        ("seed-worked-example.bin", &worked),
        ("seed-every-kind.bin", &kinds),
        ("seed-mid-history.bin", &mid),
        ("seed-span-open.bin", &span_open),
        ("seed-span-close.bin", &span_close),
    ] {
        fs::write(seg_dir.join(name), bytes).unwrap();
        println!("{name}: {} bytes", bytes.len());
    }

    // Seeds of change_decode: every change of the segments above, and a
    // value list.
    let mut n = 0;
    for c in every_kind.iter().flatten() {
        fs::write(
            change_dir.join(format!("seed-change-{n}.bin")),
            encode_change(c).unwrap(),
        )
        .unwrap();
        n += 1;
    }
    let mut list = Vec::new();
    encode_count(&mut list, 3).unwrap();
    for v in [
        ValueRef::Null,
        ValueRef::Integer(42),
        ValueRef::Blob(b"xyz"),
    ] {
        encode_value(&mut list, v).unwrap();
    }
    fs::write(change_dir.join("seed-value-list.bin"), list).unwrap();
    println!("{} change_decode seeds", n + 1);
}
