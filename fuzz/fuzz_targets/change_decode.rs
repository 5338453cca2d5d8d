//! Arbitrary bytes -> `decode_change` and `decode_value_list`.
//!
//! - nothing panics;
//! - a decoded change re-encoded with `encode_change` gives the input bytes
//!   exactly (the encoding is canonical), and those decode to the same
//!   change (REAL compared by bit pattern, so NaN payloads count);
//! - the same for a decoded value list, re-encoded with `encode_count` and
//!   `encode_value`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replication::wal::{decode_change, decode_value_list, encode_change};
use replication_fuzz::{change_same, encode_value_list, values_same};

fuzz_target!(|data: &[u8]| {
    match decode_change(data) {
        Ok(change) => {
            assert_eq!(change.operation() as u8, data[0], "operation byte");
            let encoded = encode_change(&change)
                .unwrap_or_else(|e| panic!("encode_change refused a decoded change: {e}"));
            assert!(
                encoded == data,
                "re-encoded change differs from its bytes: {encoded:02x?}"
            );
            let again = decode_change(&encoded).expect("re-encoded change decodes");
            assert!(change_same(&change, &again), "{change:?} became {again:?}");
        }
        Err(e) => assert!(!e.is_empty()),
    }
    match decode_value_list(data) {
        Ok(values) => {
            let encoded = encode_value_list(&values)
                .unwrap_or_else(|e| panic!("encoding refused a decoded value list: {e}"));
            assert!(
                encoded == data,
                "re-encoded value list differs from its bytes: {encoded:02x?}"
            );
            let again = decode_value_list(&encoded).expect("re-encoded value list decodes");
            assert!(values_same(&values, &again), "{values:?} became {again:?}");
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
