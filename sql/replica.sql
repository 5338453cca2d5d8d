-- AeroDB replica: the replica state store tables. Created when a database
-- becomes a replica (storage-adapter executes this file as is).

-- Where the replica stands in the primary's history. One row. Changed only
-- in the same SQLite transaction as the row changes it describes.
CREATE TABLE IF NOT EXISTS aerodb_replica_position(
  id                 INTEGER PRIMARY KEY CHECK (id = 1),
  generation         INTEGER NOT NULL,
  applied_commit_id  INTEGER NOT NULL CHECK (applied_commit_id >= 0),
  applied_wal_offset INTEGER NOT NULL CHECK (applied_wal_offset >= 0),
  applied_chain      INTEGER NOT NULL
);

-- Tables this replica received a schema record for.
CREATE TABLE IF NOT EXISTS aerodb_replica_tables(
  name             TEXT PRIMARY KEY,
  schema_commit_id INTEGER NOT NULL,
  sql              TEXT NOT NULL
);

-- The Receiver's WAL storage and each segment's state (spec 6.2):
-- Received (raw bytes persisted by the WAL Receiver) -> Validated (recorded
-- by the Supervisor) -> Applied (recorded by the WAL Applier in the same
-- transaction as the segment's rows and the new position; the raw bytes
-- are dropped then), or Received -> Rejected with the Validator's reason.
-- After a crash, Validated-but-unapplied segments go back to Received and
-- are validated again (the one rollback spec 6.2 allows).
CREATE TABLE IF NOT EXISTS aerodb_replica_segments(
  first_commit_id  INTEGER PRIMARY KEY CHECK (first_commit_id >= 1),
  last_commit_id   INTEGER NOT NULL CHECK (last_commit_id >= first_commit_id),
  first_wal_offset INTEGER,          -- known once validated or rejected
  end_wal_offset   INTEGER,          -- WAL offset after its last record
  byte_len         INTEGER NOT NULL,
  state            TEXT NOT NULL
                   CHECK (state IN ('Received', 'Validated', 'Applied', 'Rejected')),
  reason           TEXT,             -- why Rejected
  received_unix_ms INTEGER NOT NULL, -- informational; nothing compares it
  snapshot_path    TEXT              -- set when the item is a snapshot file
                                     -- standing for these commits (bootstrap)
);

-- The raw bytes of received, not yet applied segments (kept apart from
-- their state, so a state change never rewrites them). Inserted with the
-- segment's row by the Receiver, deleted in the Applier's transaction.
CREATE TABLE IF NOT EXISTS aerodb_replica_segment_bytes(
  first_commit_id INTEGER PRIMARY KEY,
  bytes           BLOB NOT NULL
);

-- Snapshot bootstraps (spec 5.5: snapshot bootstrap metadata), written by
-- the Applier in the transaction that installs the snapshot.
CREATE TABLE IF NOT EXISTS aerodb_replica_bootstrap(
  commit_id        INTEGER PRIMARY KEY,  -- the snapshot's CommitId
  generation       INTEGER NOT NULL,
  wal_offset       INTEGER NOT NULL,
  chain            INTEGER NOT NULL,
  checksum         INTEGER NOT NULL,     -- CRC32 of the tables' canonical content
  replaced_from    INTEGER NOT NULL,     -- first commit the snapshot stood for
  tables           TEXT NOT NULL,        -- replicated tables installed, one per line
  at_unix_ms       INTEGER NOT NULL      -- informational
);

-- The replica's current global state (one row), written by the Supervisor
-- with every transition it records.
CREATE TABLE IF NOT EXISTS aerodb_replica_state(
  id                  INTEGER PRIMARY KEY CHECK (id = 1),
  global_state        TEXT NOT NULL,   -- Disabled, Initializing, ..., Ready
  read_status         TEXT NOT NULL,   -- read-safe / read-blocked ('' unless Ready)
  blocking_code       TEXT,            -- BLOCKED or DIVERGED when read-blocked
  blocking_reason     TEXT,
  received_commit_id  INTEGER NOT NULL,
  validated_commit_id INTEGER NOT NULL,
  last_transition_seq INTEGER NOT NULL
);

-- The history of global transitions (spec 6.1, rule M2), newest last.
CREATE TABLE IF NOT EXISTS aerodb_replica_transitions(
  seq                 INTEGER PRIMARY KEY,
  at_unix_ms          INTEGER NOT NULL, -- informational; nothing compares it
  from_state          TEXT NOT NULL,
  to_state            TEXT NOT NULL,
  reason              TEXT NOT NULL,
  received_commit_id  INTEGER NOT NULL,
  validated_commit_id INTEGER NOT NULL,
  applied_commit_id   INTEGER NOT NULL,
  applied_wal_offset  INTEGER NOT NULL
);

-- Each component's status (rule O1) and last error, kept across restarts
-- until a later success replaces it.
CREATE TABLE IF NOT EXISTS aerodb_replica_components(
  component              TEXT PRIMARY KEY,
  state                  TEXT NOT NULL,
  blocking_reason        TEXT,
  last_transition        TEXT,
  error_code             TEXT,
  error                  TEXT,
  error_first_commit_id  INTEGER,
  error_last_commit_id   INTEGER,
  error_wal_offset       INTEGER,
  error_expected         TEXT,
  error_actual           TEXT
);

-- The newest head the replica's source advertised (one row), written by
-- the Supervisor when it grows: replica_state shows it and the lag in
-- commits beside the applied CommitId. Informational; nothing decides on it.
CREATE TABLE IF NOT EXISTS aerodb_replica_source(
  id              INTEGER PRIMARY KEY CHECK (id = 1),
  head_commit_id  INTEGER NOT NULL,
  at_unix_ms      INTEGER NOT NULL  -- informational
);

-- The schema version (PRAGMA schema_version) at which the replicated tables
-- and the state store were last found as replication left them (one row):
-- their definitions as registered, their write guards in place. Written by
-- the Applier in its apply transaction; a different schema version (DDL by
-- any connection) makes the Applier and the read gate look again, and a
-- table dropped, altered or unguarded behind replication's back blocks
-- replication and refuses reads as DIVERGED.
CREATE TABLE IF NOT EXISTS aerodb_replica_schema_check(
  id             INTEGER PRIMARY KEY CHECK (id = 1),
  schema_version INTEGER NOT NULL
);
