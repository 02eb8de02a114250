#!/usr/bin/env bash
# Does a hot-stock take cost the same however many the transaction made
# before it? Times N takes of one item in one transaction, for N = 20,000
# and 80,000 (and whatever else is given), and prints the time per take and
# what TopMemoryContext holds after the transaction. Constant time shows as
# the same microseconds per take at every N (the book was once scanned whole
# on every take: 0.5 s for 20,000, 7.6 s for 80,000).
#
#   sudo bench/stock_book.sh              # 20000 80000
#   sudo bench/stock_book.sh 10000 160000
#
# Starts a throwaway server (pg_virtualenv) with pg_idem preloaded. Not part
# of the test suite's pass/fail.
set -euo pipefail
self=$(readlink -f "$0")
if [ -z "${PGPORT:-}" ]; then
    exec pg_virtualenv -t -o shared_preload_libraries=pg_idem "$self" "$@"
fi
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(20000 80000)

psql -X -q -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
CREATE EXTENSION IF NOT EXISTS pg_idem;
SELECT idem_stock_add('bench-book', 1000000000);
SQL
printf '%10s %12s %14s %22s\n' takes "total ms" "us per take" "TopMemoryContext after"
for n in "${counts[@]}"; do
    # One session: warm the plans, time one transaction of n takes, then
    # read the memory the backend kept.
    psql -X -q -v ON_ERROR_STOP=1 -v n="$n" -At <<'SQL' |
BEGIN;
SELECT idem_stock_take('bench-book', 1) \g /dev/null
ROLLBACK;
SELECT clock_timestamp() AS started \gset
BEGIN;
SELECT count(*) FROM generate_series(1, :n) WHERE idem_stock_take('bench-book', 1) \g /dev/null
COMMIT;
SELECT round(extract(epoch FROM clock_timestamp() - :'started') * 1000),
       (SELECT pg_size_pretty(total_bytes) FROM pg_backend_memory_contexts WHERE name = 'TopMemoryContext');
SQL
    { IFS='|' read -r ms top; printf '%10d %12d %14.1f %22s\n' "$n" "$ms" "$(awk -v m="$ms" -v n="$n" 'BEGIN { print m * 1000 / n }')" "$top"; }
done
