#!/usr/bin/env bash
# How fast the background worker purges expired claims while new claims run,
# and what the claims lose meanwhile (issue: "Running pg_idem in production").
#
#   sudo bench/purge.sh                # 1,000,000 expired claims, 8 clients
#   ROWS=200000 DURATION=10 sudo bench/purge.sh
#
# Starts its own throwaway server (pg_virtualenv) with pg_idem preloaded,
# synchronous_commit on. Prints claim throughput before and during the purge
# and the purge rate; not part of the test suite's pass/fail.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")"
if [ -z "${PGPORT:-}" ]; then
    exec pg_virtualenv -t -o shared_preload_libraries=pg_idem -o pg_idem.database=postgres \
        -o pg_idem.purge_interval=1s -o pg_idem.purge_batch_size=10000 \
        -o fsync=on -o shared_buffers=1GB -o max_wal_size=4GB "$self" "$@"
fi
rows=${ROWS:-1000000} duration=${DURATION:-20} clients=${CLIENTS:-8}
psql -X -q -c 'CREATE EXTENSION IF NOT EXISTS pg_idem'
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(psql -XAtc 'SELECT version()' | cut -d, -f1)"
echo "settings: fsync=$(psql -XAtc "SHOW fsync"), synchronous_commit=$(psql -XAtc "SHOW synchronous_commit"), purge_batch_size=10000, $clients clients, -M prepared"

tps() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1; }
before=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$duration" -f claim_new.pgbench 2>&1 | tps)
echo "claims before the purge:  $before tps"

echo "inserting $rows expired claims..."
psql -X -q -c "INSERT INTO idem_claims (scope, key, claimed_at, expires_at)
               SELECT 'expired', md5(g::text), now() - interval '2 hours', now() - interval '1 hour'
               FROM generate_series(1, $rows) g"
start=$(date +%s.%N)
pgbench -n -M prepared -c "$clients" -j 2 -T "$duration" -P 1 -f claim_new.pgbench >/tmp/pg_idem_purge_bench.log 2>&1 &
bench=$!
left=$rows
while [ "$left" -gt 0 ]; do
    sleep 0.5
    left=$(psql -XAtc "SELECT count(*) FROM idem_claims WHERE scope = 'expired'")
    kill -0 "$bench" 2>/dev/null || break
done
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
wait "$bench"
purged=$((rows - left))
# Throughput during the purge: the progress lines up to the moment it ended.
during=$(awk -v t="$elapsed" '/^progress:/ { s = $2 + 0; if (s <= t + 0.5) { sum += $4; n++ } } END { if (n) printf "%.1f", sum / n }' /tmp/pg_idem_purge_bench.log)
echo "claims during the purge:  $during tps  ($(awk -v a="$during" -v b="$before" 'BEGIN { printf "%.2f", a / b }')x)"
echo "purged $purged expired claims in $elapsed s: $(awk -v a="$purged" -v b="$elapsed" 'BEGIN { printf "%d", a / b }') rows/s (left: $left)"
