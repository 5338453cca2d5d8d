-- AeroDB demo, replica side. Run by ./demo.sh in a second sqlite3 shell:
--   sqlite3 demo-out/replica.db -cmd ".load ./target/release/libaerodb" \
--     -cmd ".parameter set @primary 'demo-out/primary.db'" \
--     -cmd ".parameter set @token N" < sql/demo_replica.sql
-- where N is the primary's aerodb_last_commit_id() (read-your-writes token).
.bail on
PRAGMA journal_mode = WAL;
.print '== start the replica runtime in this shell (Receiver, Validator, Applier, Supervisor threads)'
SELECT aerodb_replica_start(@primary, '{"segment_bytes": 200}') AS started_at_commit;
.print '== wait until the last commit of the primary is applied (returns the applied CommitId)'
SELECT aerodb_wait(@token, 10000) AS applied;
.mode box
.print '== replica_state'
SELECT role, global_state, read_status, applied_commit_id, applied_wal_offset, received_commit_id, validated_commit_id, last_transition, last_transition_reason FROM replica_state;
.print '== replica_components (recorded, and live in this process)'
SELECT component, state, blocking_reason, last_transition, error_code, live_state FROM replica_components;
.print '== read_safety: a read needing the token, and one needing a commit that does not exist yet'
SELECT @token AS min_commit_id, * FROM read_safety(@token);
SELECT @token + 1 AS min_commit_id, * FROM read_safety(@token + 1);
.print '== replica_segments'
SELECT * FROM replica_segments;
.print '== replica_transitions'
SELECT seq, from_state, to_state, reason, applied_commit_id FROM replica_transitions ORDER BY seq;
.print '== the replicated table on the replica'
SELECT id, owner, balance, quote(note) AS note FROM accounts ORDER BY id;
.print '== stop the runtime (threads joined, stop recorded; returns the applied CommitId)'
SELECT aerodb_replica_stop() AS stopped_at_commit;
