#!/usr/bin/env bash
# What REPLICA IDENTITY FULL on idem_stock_ledger costs (issue 13): the WAL
# the purge worker's fold writes per ledger row it deletes, under
# wal_level = logical, against the same DELETE without a replica identity
# (1.0's table, which a publication FOR ALL TABLES made fail).
#
#   sudo bench/replica_identity.sh            # 100,000 ledger rows
#   ROWS=1000000 sudo bench/replica_identity.sh
#
# Starts its own throwaway server (pg_virtualenv); not part of the test
# suite's pass/fail.
set -euo pipefail
self=$(readlink -f "$0")
if [ -z "${PGPORT:-}" ]; then
    exec pg_virtualenv -t -o wal_level=logical -o max_wal_size=4GB "$self" "$@"
fi
rows=${ROWS:-100000}
psql -X -q -c 'CREATE EXTENSION IF NOT EXISTS pg_idem'
echo "$(psql -XAtc 'SELECT version()' | cut -d, -f1); wal_level=$(psql -XAtc 'SHOW wal_level'); $rows ledger rows of 100 items"

# WAL bytes and milliseconds of deleting every ledger row, as the fold does,
# with the given replica identity.
measure() {
    psql -X -q -c "ALTER TABLE idem_stock_ledger REPLICA IDENTITY $1" \
        -c "INSERT INTO idem_stock_ledger SELECT 'item-' || (g % 100), -1 FROM generate_series(1, $rows) g" \
        -c "CHECKPOINT"
    psql -XAtq <<'SQL'
SELECT pg_current_wal_insert_lsn() AS start, clock_timestamp() AS began \gset
DELETE FROM idem_stock_ledger;
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'start')::bigint || ' ' ||
       round(extract(epoch FROM clock_timestamp() - :'began') * 1000);
SQL
}
read -r full_wal full_ms < <(measure FULL | tail -1)
read -r none_wal none_ms < <(measure NOTHING | tail -1)
psql -X -q -c "ALTER TABLE idem_stock_ledger REPLICA IDENTITY FULL"
awk -v r="$rows" -v fw="$full_wal" -v fm="$full_ms" -v nw="$none_wal" -v nm="$none_ms" 'BEGIN {
    printf "REPLICA IDENTITY FULL:    %6.1f WAL bytes per folded row, %5d ms\n", fw / r, fm
    printf "no replica identity:      %6.1f WAL bytes per folded row, %5d ms\n", nw / r, nm
    printf "ratio FULL / none:        %6.2fx WAL, %.2fx time\n", fw / nw, (nm > 0 ? fm / nm : 0)
}'
