-- AeroDB primary: the capture tables. Created by aerodb_primary_init()
-- (storage-adapter executes this file as is). Applications never write
-- these tables; capture triggers do, inside the writing transaction.

-- Identity of this primary: ('format_version', 1), ('generation', <random>).
CREATE TABLE IF NOT EXISTS aerodb_meta(
  key   TEXT PRIMARY KEY,
  value ANY NOT NULL
);

-- Replicated tables, the CommitId of their schema record, and the shape
-- their capture triggers were made for: column names joined by char(31),
-- its CREATE INDEX statements joined by char(30).
-- Capture refuses writes once a table no longer has that shape or its
-- triggers (ALTER TABLE, DROP/CREATE): never uncaptured or partial data.
CREATE TABLE IF NOT EXISTS aerodb_tables(
  name             TEXT PRIMARY KEY,
  schema_commit_id INTEGER NOT NULL,
  columns          TEXT NOT NULL,
  indexes          TEXT NOT NULL,
  key_columns      TEXT NOT NULL
);

-- The WAL's content: one row per captured change, in commit order.
-- pos = commit_id << 24 | seq: rows of one commit are adjacent and the
-- table is append-only (no secondary index to maintain).
CREATE TABLE IF NOT EXISTS aerodb_changes(
  pos    INTEGER PRIMARY KEY,
  change BLOB NOT NULL
);

-- Sealed records: the WAL offset, length and checksums of a committed
-- record, written by a later writing transaction (records are sealed in
-- batches; readers compute the unsealed tail themselves, identically).
CREATE TABLE IF NOT EXISTS aerodb_commits(
  commit_id    INTEGER PRIMARY KEY,
  wal_offset   INTEGER NOT NULL,
  length       INTEGER NOT NULL,
  change_count INTEGER NOT NULL,
  prev_chain   INTEGER NOT NULL,
  chain        INTEGER NOT NULL,
  crc          INTEGER NOT NULL
);
