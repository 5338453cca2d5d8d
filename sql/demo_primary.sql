-- AeroDB demo, primary side. Run by ./demo.sh in the stock sqlite3 shell:
--   sqlite3 demo-out/primary.db < sql/demo_primary.sql   (after .load)
.bail on
PRAGMA journal_mode = WAL;
.print '== make this database a primary (returns its generation)'
SELECT aerodb_primary_init() AS generation;

CREATE TABLE accounts(
  id      INTEGER PRIMARY KEY,
  owner   TEXT NOT NULL,
  balance REAL NOT NULL DEFAULT 0,
  note    BLOB
);
CREATE TABLE audit_scratch(x);  -- not replicated: its writes get no CommitId

.print '== replicate accounts (returns the CommitId of its schema record)'
SELECT aerodb_replicate('accounts') AS schema_commit;

INSERT INTO accounts(id, owner, balance) VALUES (1, 'ann', 100), (2, 'bob', 50);
BEGIN;
  UPDATE accounts SET balance = balance - 30 WHERE id = 1;
  UPDATE accounts SET balance = balance + 30 WHERE id = 2;
  SAVEPOINT oops;
    DELETE FROM accounts;          -- rolled back below: leaves no trace in the WAL
  ROLLBACK TO oops;
  RELEASE oops;
COMMIT;
INSERT INTO audit_scratch VALUES ('no CommitId for this transaction');
INSERT INTO accounts(id, owner, balance, note) VALUES (3, 'cy', 7.5, x'c0ffee')
  ON CONFLICT(id) DO UPDATE SET balance = excluded.balance;
UPDATE accounts SET id = 20 WHERE id = 2;    -- primary key change
DELETE FROM accounts WHERE id = 1;

.print '== read-your-writes token of this connection, and the WAL head'
.mode box
SELECT aerodb_last_commit_id() AS my_last_commit, aerodb_head() AS head;
.print '== what replica_state says about a primary'
SELECT * FROM replica_state;
SELECT id, owner, balance, quote(note) AS note FROM accounts ORDER BY id;
