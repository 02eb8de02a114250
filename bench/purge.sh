#!/usr/bin/env bash
# How fast the background worker purges expired claims while new claims run,
# and what the claims lose meanwhile (issue: "Running pg_idem in production").
#
#   sudo bench/purge.sh                # 1,000,000 expired claims, 8 clients
#   ROWS=200000 DURATION=10 PURGE_DELAY=50ms sudo bench/purge.sh
#
# Starts its own throwaway server (pg_virtualenv) with pg_idem preloaded,
# synchronous_commit on. Prints claim throughput before, during and after the
# purge and the purge rate; not part of the test suite's pass/fail.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")"
if [ -z "${PGPORT:-}" ]; then
    exec pg_virtualenv -t -o shared_preload_libraries=pg_idem -o pg_idem.database=postgres -o pg_idem.allow_autocommit=on \
        -o pg_idem.purge_interval=1s -o pg_idem.purge_batch_size=10000 -o pg_idem.purge_delay=${PURGE_DELAY:-10ms} \
        -o fsync=on -o shared_buffers=1GB -o max_wal_size=4GB "$self" "$@"
fi
rows=${ROWS:-1000000} duration=${DURATION:-20} clients=${CLIENTS:-8}
psql -X -q -c 'CREATE EXTENSION IF NOT EXISTS pg_idem'
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(psql -XAtc 'SELECT version()' | cut -d, -f1)"
echo "settings: fsync=$(psql -XAtc "SHOW fsync"), synchronous_commit=$(psql -XAtc "SHOW synchronous_commit"), purge_batch_size=10000, purge_delay=$(psql -XAtc "SHOW pg_idem.purge_delay"), $clients clients, -M prepared"

tps() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1; }
purged() { psql -XAtc "SELECT rows_purged FROM idem_stats"; }

# The claims to purge expire only after the baseline has been measured, on a
# table that already holds them, vacuumed: so the baseline and the purge run
# on the same table, and no autovacuum of the fresh rows runs meanwhile.
expire_in=$((duration + 30))
echo "inserting $rows claims that expire in $expire_in s..."
psql -X -q -c "INSERT INTO idem_claims (scope, key, key_hash, claimed_at, expires_at)
               SELECT 'expiring', md5(g::text), idem_key_hash('expiring', md5(g::text)), now(), now() + interval '$expire_in s'
               FROM generate_series(1, $rows) g" -c "VACUUM ANALYZE idem_claims"
expires_at=$(psql -XAtc "SELECT extract(epoch FROM max(expires_at)) FROM idem_claims WHERE scope = 'expiring'")
before=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$duration" -f workloads/claim_new.pgbench 2>&1 | tps)
echo "claims before the purge:  $before tps"
while [ "$(awk -v t="$expires_at" -v n="$(date +%s.%N)" 'BEGIN { print (n > t) }')" = 0 ]; do sleep 0.2; done

psql -X -q -c "SELECT idem_stats_reset()"
start=$(date +%s.%N)
pgbench -n -M prepared -c "$clients" -j 2 -T "$duration" -P 1 -f workloads/claim_new.pgbench >/tmp/pg_idem_purge_bench.log 2>&1 &
bench=$!
while [ "$(purged)" -lt "$rows" ]; do
    sleep 0.2
    kill -0 "$bench" 2>/dev/null || break
done
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
wait "$bench"
done_rows=$(purged)
# Throughput during the purge: the progress lines up to the moment it ended.
during=$(awk -v t="$elapsed" '/^progress:/ { s = $2 + 0; if (s <= t + 0.5) { sum += $4; n++ } } END { if (n) printf "%.1f", sum / n }' /tmp/pg_idem_purge_bench.log)
after=$(awk -v t="$elapsed" '/^progress:/ { s = $2 + 0; if (s > t + 1) { sum += $4; n++ } } END { if (n) printf "%.1f", sum / n }' /tmp/pg_idem_purge_bench.log)
echo "claims during the purge:  $during tps  ($(awk -v a="$during" -v b="$before" 'BEGIN { printf "%.2f", a / b }')x)"
echo "claims after it:          ${after:-n/a} tps"
echo "purged $done_rows expired claims in $elapsed s: $(awk -v a="$done_rows" -v b="$elapsed" 'BEGIN { printf "%d", a / b }') rows/s"
