#!/usr/bin/env bash
# AeroDB demo: a primary written from the stock sqlite3 shell with the
# extension loaded, a replica runtime (Receiver, Validator, Applier and
# Supervisor threads) that catches up from it, and replica_state.
# Usage: ./demo.sh            (outputs go to ./demo-out/, recreated each run)
set -euo pipefail
cd "$(dirname "$0")"

echo "== building the extension (libaerodb.so) and the aerodb tool (release)"
cargo build --release --quiet --manifest-path ext/Cargo.toml --target-dir target
cargo build --release --quiet -p storage-adapter --bin aerodb

rm -rf demo-out && mkdir demo-out
EXT="$PWD/target/release/libaerodb"

echo
echo "== primary: sqlite3 demo-out/primary.db < sql/demo_primary.sql"
{ echo ".load $EXT"; cat sql/demo_primary.sql; } | sqlite3 demo-out/primary.db

echo
echo "== a write from a connection WITHOUT the extension must fail (and write nothing):"
if sqlite3 demo-out/primary.db "INSERT INTO accounts(id, owner) VALUES (99, 'nobody')" 2>&1; then
  echo "UNEXPECTED: uncaptured write succeeded" >&2; exit 1
fi

echo
echo "== replica: aerodb replica --until-caught-up (the threaded runtime: receive, persist, validate, apply one segment per transaction)"
./target/release/aerodb replica --primary demo-out/primary.db --replica demo-out/replica.db --segment-bytes 200 --until-caught-up

echo
echo "== replica: SELECT * FROM replica_state; and the replicated table"
sqlite3 -box demo-out/replica.db ".load $EXT" \
  "SELECT * FROM replica_state;" \
  "SELECT seq, from_state, to_state, reason, applied_commit_id FROM aerodb_replica_transitions ORDER BY seq;" \
  "SELECT first_commit_id, last_commit_id, first_wal_offset, end_wal_offset, state FROM aerodb_replica_segments;" \
  "SELECT id, owner, balance, quote(note) AS note FROM accounts ORDER BY id;"

echo
echo "== the replica equals the primary:"
p=$(sqlite3 demo-out/primary.db "SELECT group_concat(id||':'||owner||':'||balance||':'||quote(note), ' ') FROM (SELECT * FROM accounts ORDER BY id)")
r=$(sqlite3 demo-out/replica.db "SELECT group_concat(id||':'||owner||':'||balance||':'||quote(note), ' ') FROM (SELECT * FROM accounts ORDER BY id)")
echo "primary: $p"; echo "replica: $r"
[ "$p" = "$r" ] && echo "OK: identical"
