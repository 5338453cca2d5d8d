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
