#!/usr/bin/env bash
# Instruction counts of capturing writes: callgrind, every variant x workload.
#
# Each run is `bench-peers --variant V --workload W --count N`: a fresh
# database, a warm-up of N/10 transactions outside the measured function,
# then N transactions inside `bench_peers_measured_<V>`, the only code
# callgrind counts (--collect-atstart=no --toggle-collect=...). Prints
# instructions (Ir) per row (for 1-row transactions: per transaction) and
# the ratio against plain.
#
# Usage: bench-peers/callgrind.sh
# Environment: TX1_COUNT (1-row transactions per run, default 2000),
#   BATCH_COUNT (1000-row transactions per run, default 20),
#   VARIANTS, WORKLOADS (space-separated subsets), KEEP=1 (keep the
#   callgrind.out files; their directory is printed), CARGO_TARGET_DIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TX1_COUNT="${TX1_COUNT:-2000}"
BATCH_COUNT="${BATCH_COUNT:-20}"
VARIANTS="${VARIANTS:-plain session trigger aerodb}"
WORKLOADS="${WORKLOADS:-a-normal a-full b-normal}"
TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target}"

if ! command -v valgrind >/dev/null; then
    echo "callgrind.sh: valgrind not found (Debian: apt-get install -y valgrind)" >&2
    exit 1
fi

cargo build --release --quiet --manifest-path "$HERE/Cargo.toml" --target-dir "$TARGET_DIR"
BIN="$TARGET_DIR/release/bench-peers"

OUT="$(mktemp -d "${TMPDIR:-/tmp}/bench-peers-callgrind.XXXXXX")"
if [ "${KEEP:-0}" = 1 ]; then
    echo "callgrind.sh: keeping callgrind.out files in $OUT" >&2
else
    trap 'rm -rf "$OUT"' EXIT
fi

# Total Ir of a callgrind.out file: its `summary:` line (events collected
# while collection was on), else `totals:`.
total_ir() {
    local ir
    ir="$(awk '$1 == "summary:" { print $2; found = 1; exit } END { if (!found) exit 1 }' "$1")" ||
        ir="$(awk '$1 == "totals:" { print $2; exit }' "$1")"
    if [ -z "$ir" ] || [ "$ir" = 0 ]; then
        echo "callgrind.sh: no instructions collected in $1 (toggle-collect did not match?)" >&2
        return 1
    fi
    echo "$ir"
}

declare -A PER_ROW
for w in $WORKLOADS; do
    case "$w" in
        a-normal | a-full) count="$TX1_COUNT" rows=1 ;;
        b-normal) count="$BATCH_COUNT" rows=1000 ;;
        *) echo "callgrind.sh: unknown workload $w" >&2; exit 1 ;;
    esac
    for v in $VARIANTS; do
        f="$OUT/callgrind.out.$w.$v"
        start=$SECONDS
        if ! valgrind --tool=callgrind --collect-atstart=no \
            --toggle-collect="bench_peers_measured_$v" \
            --callgrind-out-file="$f" \
            "$BIN" --variant "$v" --workload "$w" --count "$count" --dir "$OUT" \
            >"$OUT/$w.$v.log" 2>&1; then
            echo "callgrind.sh: $v / $w failed:" >&2
            cat "$OUT/$w.$v.log" >&2
            exit 1
        fi
        ir="$(total_ir "$f")"
        PER_ROW[$w.$v]="$(awk -v ir="$ir" -v n="$((count * rows))" 'BEGIN { printf "%.0f", ir / n }')"
        echo "  $w $v: $ir Ir for $count tx x $rows rows ($((SECONDS - start)) s)" >&2
    done
done

echo
echo "instructions (callgrind Ir) per row; 1-row workloads: per transaction (= per row)"
echo "(${TX1_COUNT} 1-row tx, ${BATCH_COUNT} x 1000-row tx per run, after a warm-up that is not counted)"
printf '%-10s' "workload"
for v in $VARIANTS; do
    if [ "$v" = plain ]; then printf ' %12s' "plain Ir"; else printf ' %14s %6s' "$v Ir" "ratio"; fi
done
echo
for w in $WORKLOADS; do
    printf '%-10s' "$w"
    base="${PER_ROW[$w.plain]:-}"
    for v in $VARIANTS; do
        x="${PER_ROW[$w.$v]}"
        if [ "$v" = plain ]; then
            printf ' %12s' "$x"
        elif [ -n "$base" ]; then
            printf ' %14s %5sx' "$x" "$(awk -v a="$x" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
        else
            printf ' %14s %6s' "$x" "-"
        fi
    done
    echo
done
