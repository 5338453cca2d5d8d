//! # AeroDB on SQLite: storage adapter
//!
//! Everything that touches SQLite files: primary capture (triggers and SQL
//! functions writing the WAL inside the application's transactions),
//! reading the primary's WAL as segments, and the replica's state store
//! tables with transactional apply. The WAL format itself lives in
//! [`replication::wal`], which knows nothing of SQLite.
//!
//! ## Layout
//!
//! | spec element | module |
//! |---|---|
//! | Primary: assigns CommitIds, appends WAL (P1), passive (P2) | [`capture`] (SQL functions; `capture/buffer.rs` the transaction's touched keys, `capture/vtab.rs` the `aerodb_capture` table that joins each transaction, `capture/commit.rs` the record written and sealed at commit, `capture/replicate.rs`, `capture/tables.rs` the registry and shape checks), [`primary`] |
//! | Tables as both sides match rows (key collation, columns) | `table_info.rs` |
//! | SQL text read as SQLite reads it (tokens; the DDL `aerodb_alter` runs) | `sql_text.rs` |
//! | Primary: exposes WAL segments (P1) | [`primary::PrimaryWalReader`] |
//! | Replica State Store tables (5.5, T1) | [`replica`], `sql/replica.sql`; the Supervisor's writes: `runtime/state_store.rs` |
//! | The runtime's ports on a replica file: WAL storage, segment reader, Applier storage (5.2-5.4, R2, V3, W1) | `runtime/sqlite_ports.rs` ([`runtime::SqliteStorage`]) |
//! | A WAL source reading a primary file | `runtime/file_source.rs` ([`runtime::FileSource`]) |
//! | Read Safety Gate over the recorded state, in the reader's transaction (5.6, G1) | `runtime/gate.rs` ([`runtime::read_gate_in`]) |
//! | The embedding handle: one runtime per replica file | `runtime/handle.rs` ([`runtime::Replica`]) |
//! | A WAL source over HTTP; `aerodb serve` | [`http_source`], `bin/aerodb/serve.rs` |
//! | Snapshots for bootstrapping (5.5, T1) | [`snapshot`] |
//! | What `replica_state` / `aerodb status` read | [`status`] |
//! | WAL Applier's storage mutation: one transaction per segment (5.4, W1, W2) | [`replica::ReplicaDb::apply`]; `replica/rows.rs` (row changes, divergence checks), `replica/schema.rs` (schema records), `replica/segments.rs` (segment rows moved in the apply transaction), `replica/snapshot_install.rs` |
//! | Runtime bounds and the source's options (SQL JSON and CLI flags alike) | [`options`] |
//! | `aerodb_version()` (same string as `aerodb --version`) | [`version`] |
//!
//! ## Example
//!
//! ```
//! use replication::wal::{validate, CommitId, Segment};
//! use storage_adapter::{primary::{Primary, PrimaryWalReader}, replica::ReplicaDb};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let primary = Primary::open(dir.path().join("primary.db")).unwrap();
//! primary.connection().execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
//! primary.replicate("t").unwrap();
//! primary.connection().execute("INSERT INTO t VALUES (1, 'one')", []).unwrap();
//! let token = primary.last_commit_id().unwrap().unwrap();
//!
//! let reader = PrimaryWalReader::open(dir.path().join("primary.db")).unwrap();
//! let mut replica = ReplicaDb::open(dir.path().join("replica.db")).unwrap();
//! let position = replica.init(reader.generation()).unwrap();
//! let bytes = reader.segment(CommitId(1), 1 << 20).unwrap().unwrap();
//! let segment = validate(Segment::decode(&bytes).unwrap(), &position).unwrap();
//! let applied = replica.apply(&segment).unwrap();
//! assert_eq!(applied.commit_id, token);
//! let v: String = replica.connection().query_row("SELECT v FROM t WHERE id = 1", [], |r| r.get(0)).unwrap();
//! assert_eq!(v, "one");
//! ```
#![deny(missing_docs)]
// `runtime::Failure` is large (code, sentence, segment, WAL offset,
// expected and actual values: what an explanation needs) and travels only
// on the failure path, once per failure.
#![allow(clippy::result_large_err)]

pub mod capture;
pub mod http_source;
pub mod options;
pub mod primary;
mod primary_wal;
mod raw;
pub mod replica;
pub mod runtime;
pub mod snapshot;
mod sql_text;
pub mod status;
mod table_info;
mod values;
pub mod verify;
pub mod version;
mod wall_clock;

pub use primary_wal::WalReadError;
pub use raw::RawError;
