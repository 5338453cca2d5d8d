//! The exact-capture differential suite again, with a capture chunk of one
//! byte (see `differential::test_chunk_bytes`): every transaction's buffer
//! is spilled into records that continue at every row event and statement
//! boundary where that is safe, so the replica applies transactions that
//! span many records, and savepoints, failing statements and rollbacks
//! undo spilled records. The same assertions must hold.

#[path = "exact_capture.rs"]
mod cases;
