#!/usr/bin/env bash
# AeroDB demo, in the stock sqlite3 shell with the extension loaded: a
# primary written in several transactions, then a replica started in a
# second shell (the runtime's Receiver, Validator, Applier and Supervisor
# threads run inside it) that waits for the primary's last CommitId and
# shows replica_state, replica_components, read_safety, the segments, the
# transition history and the rows.
# Usage: ./demo.sh            (outputs go to ./demo-out/, recreated each run)
set -euo pipefail
cd "$(dirname "$0")"

echo "== building the extension (libaerodb.so, release)"
cargo build --release --quiet --manifest-path ext/Cargo.toml --target-dir target

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
TOKEN=$(sqlite3 demo-out/primary.db ".load $EXT" "SELECT aerodb_head();")
echo "== replica, in a second sqlite3 shell: sqlite3 demo-out/replica.db < sql/demo_replica.sql (primary's last CommitId: $TOKEN)"
sqlite3 demo-out/replica.db -cmd ".load $EXT" \
  -cmd ".parameter set @primary 'demo-out/primary.db'" \
  -cmd ".parameter set @token $TOKEN" < sql/demo_replica.sql

echo
echo "== the replica equals the primary:"
p=$(sqlite3 demo-out/primary.db "SELECT group_concat(id||':'||owner||':'||balance||':'||quote(note), ' ') FROM (SELECT * FROM accounts ORDER BY id)")
r=$(sqlite3 demo-out/replica.db "SELECT group_concat(id||':'||owner||':'||balance||':'||quote(note), ' ') FROM (SELECT * FROM accounts ORDER BY id)")
echo "primary: $p"; echo "replica: $r"
[ "$p" = "$r" ] && echo "OK: identical"
