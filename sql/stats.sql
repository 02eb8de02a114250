-- Statistics in shared memory (the test server preloads pg_idem; without
-- preload the views refuse with 55000: test/t/001_preload.pl). Races
-- (waits, in_progress) are counted in specs/claim-stats.spec.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

SELECT idem_stats_reset();
SELECT stats_reset > now() - interval '1 minute' AS reset_just_now, new_claims, duplicates, rows_purged
FROM idem_stats;
SELECT count(*) AS scopes FROM idem_scope_stats;

SELECT idem_claim('s-1', 'orders'), idem_claim('s-1', 'orders'), idem_claim('s-1', 'orders');
SELECT idem_claim('s-2', 'orders'), idem_claim('s-1', 'payments');
SELECT status FROM idem_begin('p-1', 'payments', request => '{"a": 1}');
SELECT pg_temp.error_of($$SELECT * FROM idem_begin('p-1', 'payments', request => '{"a": 2}')$$);
SELECT * FROM idem_claim_many(ARRAY['s-2', 's-3'], 'orders');
SELECT idem_claim('short', 'orders', '1 millisecond');
SELECT pg_sleep(0.01);
SELECT idem_purge();

SELECT new_claims, duplicates, waits, in_progress, request_mismatches, rows_purged, scope_events_dropped
FROM idem_stats;
SELECT scope, new_claims, duplicates, request_mismatches FROM idem_scope_stats ORDER BY scope;

-- The per-scope table is bounded (pg_idem.max_scopes, 1000 here). When it
-- is full a new scope takes the place of the least active one, so a flood of
-- one-event scopes, rolled back or committed, only pushes out one-event
-- scopes, and a busy scope started after it shows. idem_stats counts the
-- scopes dropped and their events. (Counters are per database: the
-- flood and other databases, test/t/016_stats_databases.pl.)
SHOW pg_idem.max_scopes;
BEGIN;
SELECT count(*) FILTER (WHERE idem_claim('k-' || g, 'junk-' || g)) FROM generate_series(1, 1000) g;
ROLLBACK;
SELECT count(*) FILTER (WHERE idem_claim('b-' || g, 'busy')) FROM generate_series(1, 10) g;
SELECT count(*) FILTER (WHERE idem_claim('k-' || g, 'junk-' || g)) FROM generate_series(1001, 2000) g;
SELECT count(*) AS scopes FROM idem_scope_stats;
SELECT scope, new_claims, duplicates, counted_since <= now() AS counted_since_ok
FROM idem_scope_stats WHERE scope NOT LIKE 'junk-%' ORDER BY scope;
SELECT new_claims, scopes_dropped, scope_events_dropped FROM idem_stats;

-- Reset empties both.
SELECT idem_stats_reset();
SELECT new_claims, duplicates, scope_events_dropped, scopes_dropped FROM idem_stats;
SELECT count(*) AS scopes FROM idem_scope_stats;

-- Key and scope swapped (idem_claim('orders', request_key)) still
-- deduplicate, but every request becomes a scope of its own. A new scope
-- warns when its first claim's key is the name of another scope of the
-- database, or when it is the third new scope in a row first claimed with
-- the same key (and so every one after it).
SELECT idem_claim('o-1', 'orders');
SELECT idem_claim('orders', 'req-1');
SELECT idem_claim('checkout', 'req-2'), idem_claim('checkout', 'req-3');
SELECT idem_claim('checkout', 'req-4');
SELECT status FROM idem_hold('checkout', 'req-5');
-- Not swapped: a new key in a new scope, one key in two new scopes, a key
-- that names its own scope, more claims in a scope already seen.
SELECT idem_claim('req-6', 'refunds');
SELECT idem_claim('order-9', 'ship'), idem_claim('order-9', 'bill');
SELECT idem_claim('tasks', 'tasks');
SELECT idem_claim('checkout', 'req-4') AS duplicate, idem_claim('o-2', 'req-4') AS another_key;
SELECT count(*) AS swapped_scopes FROM idem_scope_stats WHERE scope LIKE 'req-%';
-- That the key names a scope is told only to a role that may read
-- idem_scope_stats (pg_monitor); the repeated key to every role, whose new
-- scopes are counted apart from other roles'.
CREATE ROLE idem_stats_app;
SET ROLE idem_stats_app;
SELECT idem_claim('orders', 'req-7'), idem_claim('orders', 'req-8');
SELECT idem_claim('orders', 'req-9');
RESET ROLE;
DROP ROLE idem_stats_app;

DELETE FROM idem_claims;
