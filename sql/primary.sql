-- AeroDB primary: the capture tables (WAL format 2). Created by
-- aerodb_primary_init() (storage-adapter executes this file as is).
-- Applications never write these tables; the commit of a transaction that
-- wrote a replicated table does, inside that transaction.

-- Identity of this primary: ('format_version', 2), ('generation', <random>),
-- and ('oldest_commit', N) once the WAL was truncated below N.
CREATE TABLE IF NOT EXISTS aerodb_meta(
  key   TEXT PRIMARY KEY,
  value ANY NOT NULL
);

-- Replicated tables (names match case-insensitively, as SQLite's do), the
-- CommitId of their schema record, and the shape their capture was made
-- for: the CREATE TABLE statement, column names joined by char(31), the
-- CREATE INDEX statements and the capture trigger names joined by
-- char(30). Capture refuses to commit writes once a table no longer has
-- that shape or its triggers (ALTER TABLE, DROP/CREATE): never uncaptured
-- or partial data.
CREATE TABLE IF NOT EXISTS aerodb_tables(
  name             TEXT PRIMARY KEY COLLATE NOCASE,
  schema_commit_id INTEGER NOT NULL,
  sql              TEXT NOT NULL,
  columns          TEXT NOT NULL,
  indexes          TEXT NOT NULL,
  key_columns      TEXT NOT NULL,
  triggers         TEXT NOT NULL
);

-- The WAL: one row per committed record, written by the commit of its own
-- transaction: its seal (WAL offset, length, change count, and prev_chain,
-- chain and crc as its bytes hold them) and its bytes, exactly as replicas
-- receive them. Append-only, one b-tree: a commit writes one more row.
CREATE TABLE IF NOT EXISTS aerodb_commits(
  commit_id    INTEGER PRIMARY KEY,
  wal_offset   INTEGER NOT NULL,
  length       INTEGER NOT NULL,
  change_count INTEGER NOT NULL,
  prev_chain   INTEGER NOT NULL,
  chain        INTEGER NOT NULL,
  crc          INTEGER NOT NULL,
  record       BLOB NOT NULL
);
