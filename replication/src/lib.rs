//! # AeroDB replication runtime
//!
//! The replication runtime of AeroDB on SQLite storage. This crate holds the
//! parts that do not touch SQLite: the WAL format (records, segments,
//! checksums, continuity) and, as the runtime grows, the replica components
//! of `REPLICATION_RUNTIME_ARCHITECTURE.md`. It never links SQLite: the
//! `storage-adapter` crate maps these types onto SQLite files.
//!
//! ## Layout
//!
//! | spec element | module |
//! |---|---|
//! | CommitId, WAL offset, generation (spec 4.1, DESIGN 3) | [`wal`] |
//! | WAL record, chained checksum, segment (DESIGN 3) | [`wal`] (`wal/encode.rs`, `wal/decode.rs`, `wal/segment.rs`, `wal/errors.rs`) |
//! | continuity proof a Validator runs (spec 5.3, rule V1) | [`wal::check_continuity`] |
//! | global and segment state machines (spec 6, rules M1, M3) | [`state`] |
//! | Read Safety Gate (spec 5.6, rules G1-G3) | [`read_gate`] |
//! | WAL Validator core (spec 5.3, rules V1-V3, F2) | [`validator`] |
//! | WAL Applier core (spec 5.4, rules W1-W3, F3) | [`applier`] |
//! | WAL Receiver core (spec 5.2, rules R1, R2, F1) | [`receiver`] |
//! | Replica Supervisor core (spec 5.1, rules S1, S2, M2) | [`supervisor`] |
//! | the runtime handle, config, wait and stop (spec 7) | [`runtime`] (`runtime.rs`) |
//! | ports to storage and sources (spec 5.5, T1, T2) | `runtime/ports.rs` |
//! | failure codes, typed, one vocabulary (rules E1, F6) | [`code::FailureCode`] |
//! | failures (rules E1, E2, F6) | `runtime/failure.rs` |
//! | components and their status, recorded transitions (O1, M2) | `runtime/status.rs` |
//! | the published view observers read (X2, O2) | `runtime/view.rs` |
//! | what runners pass on and report, the panic guard (C1, F4) | `runtime/events.rs` |
//! | the Receiver's thread (R1, R2, F1) | `runtime/receiver_runner.rs` |
//! | the Validator's thread (V1-V3, F2) | `runtime/validator_runner.rs` |
//! | the Applier's thread (W1-W3, F3) | `runtime/applier_runner.rs` |
//! | the Supervisor's decisions: events in, commands out (record, publish, open the store, start / stop the pipeline, answer, exit), sans IO (S1, S2, F1-F6, X4) | `runtime/engine.rs` |
//! | the Supervisor's thread: carries out the engine's commands, reports back | `runtime/supervisor_runner.rs` |
//! | in-memory implementations of every port (primary and source, replica storage), the test double that drives the production runtime in tests and the simulation | `runtime/mem.rs` |
//!
//! ## Example
//!
//! ```
//! use replication::wal::{
//!     check_continuity, encode_change, Change, ChainPosition, CommitId, Generation,
//!     RecordEncoder, Segment, Value, WalOffset,
//! };
//!
//! let generation = Generation(0x5eed);
//! let start = ChainPosition::genesis(generation);
//! let change = encode_change(&Change::Insert {
//!     table: "t".into(),
//!     values: vec![Value::Integer(1), Value::Text(b"one".to_vec())],
//! })
//! .unwrap();
//! let mut encoder = RecordEncoder::new(start);
//! let record = encoder.push(CommitId(1), &[change.as_slice()]).unwrap();
//! let bytes = Segment::encode(generation, &[record]).unwrap();
//!
//! let segment = Segment::decode(&bytes).unwrap();
//! assert_eq!(segment.header.first_commit_id, CommitId(1));
//! check_continuity(&segment, &start).unwrap();
//! assert_eq!(segment.end_position().commit_id, CommitId(1));
//! assert_eq!(segment.end_position().wal_offset, WalOffset(bytes.len() as u64 - 64));
//! ```
#![deny(missing_docs)]
// `runtime::Failure` is large (code, sentence, segment, WAL offset,
// expected and actual values: what an explanation needs) and travels only
// on the failure path, once per failure.
#![allow(clippy::result_large_err)]

pub mod applier;
pub mod code;
pub mod read_gate;
pub mod receiver;
pub mod runtime;
pub mod state;
pub mod supervisor;
pub mod validator;
pub mod wal;
