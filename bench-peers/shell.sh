#!/usr/bin/env bash
# The stock-shell case: instructions (callgrind Ir) of writes from the
# system `sqlite3` shell, plain vs with the AeroDB extension loaded
# (`.load libaerodb` + `aerodb_primary_init()` + `aerodb_replicate('items')`).
#
# Workloads (WAL mode, synchronous=NORMAL, table items as in bench-peers):
#   single: N (default 1000) single-row autocommit INSERT statements, each
#           parsed and run by the shell (per statement = per transaction);
#   bulk:   one 1000-row `INSERT ... SELECT` from a recursive CTE (per
#           statement and per row).
# Each (variant, workload) is run twice under callgrind, each time on a fresh
# database file: "base" = setup + warm-up, "full" = setup + warm-up + the
# measured statements. The measured cost is Ir(full) - Ir(base), so process
# start, `.load`, setup and warm-up cancel out. (callgrind's toggle-collect
# cannot isolate the statements here: the extension runs nested
# sqlite3_step calls, and a toggled function that nests switches collection
# off inside itself.)
#
# Usage: bench-peers/shell.sh
# Environment: SQLITE3 (default sqlite3), AERODB_EXT (default
#   <repo>/target/release/libaerodb.so: built with
#   `cargo build --release --manifest-path <repo>/ext/Cargo.toml --target-dir <repo>/target`
#   if missing, or always with REBUILD=1), N (default 1000), WARM (warm-up single-row INSERTs, default
#   100), KEEP=1 (keep the work directory; it is printed).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MAIN="$(cd "$HERE/.." && pwd)"
SQLITE3="${SQLITE3:-sqlite3}"
SO="${AERODB_EXT:-$MAIN/target/release/libaerodb.so}"
N="${N:-1000}"
WARM="${WARM:-100}"
BULK=1000

for tool in valgrind "$SQLITE3"; do
    if ! command -v "$tool" >/dev/null; then
        echo "shell.sh: $tool not found (Debian: apt-get install -y valgrind sqlite3)" >&2
        exit 1
    fi
done

OUT="$(mktemp -d "${TMPDIR:-/tmp}/bench-peers-shell.XXXXXX")"
if [ "${KEEP:-0}" = 1 ]; then
    echo "shell.sh: keeping $OUT" >&2
else
    trap 'rm -rf "$OUT"' EXIT
fi

if [ ! -f "$SO" ] || [ "${REBUILD:-0}" = 1 ]; then
    echo "shell.sh: building the extension ($SO) ..." >&2
    if ! cargo build --release --manifest-path "$MAIN/ext/Cargo.toml" --target-dir "$MAIN/target" \
        >"$OUT/ext-build.log" 2>&1; then
        echo "shell.sh: building the extension FAILED (the capture code may be in the middle of a change):" >&2
        tail -n 40 "$OUT/ext-build.log" >&2
        exit 1
    fi
fi

# ---- SQL -------------------------------------------------------------------

TABLE="CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL NOT NULL, tag BLOB NOT NULL);"

cat >"$OUT/setup-plain.sql" <<EOF
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
$TABLE
EOF
cat >"$OUT/setup-aerodb.sql" <<EOF
.load $SO
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
SELECT aerodb_primary_init();
$TABLE
SELECT aerodb_replicate('items');
EOF

# The 16 bytes of `v` as little-endian hex (bash arithmetic is 64-bit).
le64() {
    local v=$1 i b out=""
    for i in 0 1 2 3 4 5 6 7; do
        printf -v b '%02x' $(((v >> (8 * i)) & 0xff))
        out+=$b
    done
    REPLY=$out
}

# Single-row INSERTs of keys FIRST..LAST: the rows of bench-peers' RowGen
# (`bench-peers --emit-shell-sql FIRST COUNT` prints the same text).
single_inserts() {
    local id score a b
    for ((id = $1; id <= $2; id++)); do
        if ((id % 2 == 0)); then score="$((id / 2)).25"; else score="$((id / 2)).75"; fi
        le64 "$id"; a=$REPLY
        le64 "$((~id))"; b=$REPLY
        printf "INSERT INTO items(id, name, score, tag) VALUES (%d, 'item-%010d-abcdefgh', %s, X'%s%s');\n" \
            "$id" "$id" "$score" "$a" "$b"
    done
}

# One INSERT ... SELECT of keys FIRST..LAST (3.40 has no unhex(): the tag is
# 16 bytes of hex text cast to a blob, the same size as RowGen's).
bulk_insert() {
    cat <<EOF
INSERT INTO items(id, name, score, tag)
  WITH RECURSIVE s(x) AS (SELECT $1 UNION ALL SELECT x + 1 FROM s WHERE x < $2)
  SELECT x, printf('item-%010d-abcdefgh', x), x * 0.5 + 0.25, CAST(printf('%016x', x) AS BLOB) FROM s;
EOF
}

single_inserts 1 "$WARM" >"$OUT/warm-single.sql"
single_inserts "$((WARM + 1))" "$((WARM + N))" >"$OUT/measured-single.sql"
bulk_insert 1 "$BULK" >"$OUT/warm-bulk.sql"
bulk_insert "$((BULK + 1))" "$((2 * BULK))" >"$OUT/measured-bulk.sql"

# ---- runs ------------------------------------------------------------------

total_ir() {
    awk '$1 == "summary:" { print $2; found = 1; exit } END { if (!found) exit 1 }' "$1" ||
        awk '$1 == "totals:" { print $2; exit }' "$1"
}

# run VARIANT WORKLOAD PART: one shell process under callgrind on a fresh
# database; prints its total Ir.
run() {
    local v=$1 w=$2 part=$3
    local db="$OUT/$v-$w-$part.db" script="$OUT/$v-$w-$part.sql"
    rm -f "$db" "$db-wal" "$db-shm"
    cat "$OUT/setup-$v.sql" "$OUT/warm-$w.sql" >"$script"
    if [ "$part" = full ]; then cat "$OUT/measured-$w.sql" >>"$script"; fi
    if ! valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.$v-$w-$part" \
        "$SQLITE3" -bail "$db" <"$script" >"$OUT/$v-$w-$part.log" 2>&1; then
        echo "shell.sh: $v $w $part failed:" >&2
        tail -n 20 "$OUT/$v-$w-$part.log" >&2
        exit 1
    fi
    total_ir "$OUT/callgrind.out.$v-$w-$part"
}

# Rows in items and (aerodb) the WAL head, as "rows head".
state() {
    local v=$1 db=$2 rows head=-
    rows="$("$SQLITE3" "$db" "SELECT count(*) FROM items")"
    if [ "$v" = aerodb ]; then
        head="$("$SQLITE3" -cmd ".load $SO" "$db" "SELECT aerodb_head()")"
    fi
    echo "$rows $head"
}

declare -A COST
for w in single bulk; do
    if [ "$w" = single ]; then rows="$N" commits="$N"; else rows="$BULK" commits=1; fi
    for v in plain aerodb; do
        base="$(run "$v" "$w" base)"
        full="$(run "$v" "$w" full)"
        read -r brows bhead <<<"$(state "$v" "$OUT/$v-$w-base.db")"
        read -r frows fhead <<<"$(state "$v" "$OUT/$v-$w-full.db")"
        if [ "$((frows - brows))" != "$rows" ]; then
            echo "shell.sh: $v $w: $((frows - brows)) rows written, expected $rows" >&2
            exit 1
        fi
        if [ "$v" = aerodb ] && [ "$((fhead - bhead))" != "$commits" ]; then
            echo "shell.sh: $v $w: WAL head moved by $((fhead - bhead)), expected $commits commits" >&2
            exit 1
        fi
        COST[$v.$w]=$((full - base))
        echo "  $v $w: base $base Ir, full $full Ir, measured $((full - base)) Ir for $rows rows" >&2
    done
done

ver="$("$SQLITE3" --version | awk '{ print $1 }')"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
per() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a / b }'; }
echo
echo "stock sqlite3 $ver shell + $(basename "$SO"): callgrind Ir of the whole shell process,"
echo "difference of runs with and without the measured statements (WAL, synchronous=NORMAL)"
printf '%-48s %12s %12s %7s\n' "case" "plain Ir" "aerodb Ir" "ratio"
printf '%-48s %12s %12s %6sx\n' "$N x 1-row autocommit INSERT, per statement" \
    "$(per "${COST[plain.single]}" "$N")" "$(per "${COST[aerodb.single]}" "$N")" \
    "$(ratio "${COST[aerodb.single]}" "${COST[plain.single]}")"
printf '%-48s %12s %12s %6sx\n' "1 x $BULK-row INSERT ... SELECT, per statement" \
    "${COST[plain.bulk]}" "${COST[aerodb.bulk]}" \
    "$(ratio "${COST[aerodb.bulk]}" "${COST[plain.bulk]}")"
printf '%-48s %12s %12s %7s\n' "1 x $BULK-row INSERT ... SELECT, per row" \
    "$(per "${COST[plain.bulk]}" "$BULK")" "$(per "${COST[aerodb.bulk]}" "$BULK")" ""
