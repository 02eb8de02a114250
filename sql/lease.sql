-- Leases with fencing tokens: every outcome and error, and the fencing
-- recipe of the README. Races: specs/lease-race.spec.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

-- Granted: a fencing token. Another owner: NULL while it is held.
SELECT idem_lease_acquire('nightly-report', 'worker-a', '1 minute') AS token_a \gset
SELECT :token_a > 0 AS granted;
SELECT idem_lease_acquire('nightly-report', 'worker-b', '1 minute') IS NULL AS refused_to_b;
-- The same owner again extends the lease and keeps its token.
SELECT expires_at AS first_expiry FROM idem_leases WHERE name = 'nightly-report' \gset
SELECT idem_lease_acquire('nightly-report', 'worker-a', '1 hour') = :token_a AS same_token;
SELECT expires_at > :'first_expiry' AS extended FROM idem_leases WHERE name = 'nightly-report';
-- check: true only for the holder's token while held.
SELECT idem_lease_check('nightly-report', :token_a) AS holder, idem_lease_check('nightly-report', :token_a + 1) AS other_token,
       idem_lease_check('no-such-lease', :token_a) AS other_name;
-- release: only by its owner.
SELECT idem_lease_release('nightly-report', 'worker-b') AS released_by_b;
SELECT idem_lease_release('nightly-report', 'worker-a') AS released_by_a;
SELECT idem_lease_release('nightly-report', 'worker-a') AS released_twice;
SELECT idem_lease_check('nightly-report', :token_a) AS checked_after_release;
-- A new grant has a larger token.
SELECT idem_lease_acquire('nightly-report', 'worker-b', '1 minute') AS token_b \gset
SELECT :token_b > :token_a AS token_grew;

-- Leases commit with the caller's transaction.
BEGIN;
SELECT idem_lease_acquire('rolled-back', 'worker-a', '1 minute') IS NOT NULL AS granted_inside;
ROLLBACK;
SELECT count(*) AS after_rollback FROM idem_leases WHERE name = 'rolled-back';

-- Expiry by the server's clock: an expired lease is free for anyone, with a
-- new, larger token; its holder's check turns false; its release is false.
SELECT idem_lease_acquire('short', 'worker-a', '1 millisecond') AS token_short \gset
SELECT pg_sleep(0.01);
SELECT idem_lease_check('short', :token_short) AS checked_after_expiry;
SELECT idem_lease_release('short', 'worker-a') AS released_after_expiry;
SELECT idem_lease_acquire('short', 'worker-b', '1 minute') AS token_next \gset
SELECT :token_next > :token_short AS token_grew_after_expiry;
-- The same owner after its own lease expired gets a new token too.
SELECT idem_lease_acquire('short2', 'worker-a', '1 millisecond') AS t_old \gset
SELECT pg_sleep(0.01);
SELECT idem_lease_acquire('short2', 'worker-a', '1 minute') > :t_old AS new_token_after_own_expiry;
-- After the purge deleted an expired lease, tokens still grow.
SELECT idem_lease_acquire('purged', 'worker-a', '1 millisecond') AS t_purged \gset
SELECT pg_sleep(0.01);
SELECT idem_purge() >= 1 AS purged;
SELECT count(*) AS purged_row_gone FROM idem_leases WHERE name = 'purged';
SELECT idem_lease_acquire('purged', 'worker-c', '1 minute') > :t_purged AS token_grew_after_purge;

-- The fencing recipe: the protected resource remembers the newest token it
-- accepted and refuses older ones, in the same transaction as the write.
CREATE TABLE report (id int PRIMARY KEY, body text, fencing_token bigint NOT NULL DEFAULT 0);
INSERT INTO report VALUES (1, 'empty');
CREATE FUNCTION write_report(p_token bigint, p_body text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT idem_lease_check('report-writer', p_token) THEN
        RETURN false;                       -- not the holder (any more)
    END IF;
    UPDATE report SET body = p_body, fencing_token = p_token
    WHERE id = 1 AND fencing_token <= p_token;
    RETURN FOUND;                           -- false: a newer holder already wrote
END $$;
SELECT idem_lease_acquire('report-writer', 'slow-worker', '1 millisecond') AS slow \gset
SELECT pg_sleep(0.01);  -- the slow worker pauses past its TTL (a GC pause, a stall)
SELECT idem_lease_acquire('report-writer', 'fast-worker', '1 minute') AS fast \gset
SELECT write_report(:fast, 'written by the new holder') AS new_holder_writes;
SELECT write_report(:slow, 'late write by the old holder') AS stale_holder_refused;
SELECT body, fencing_token = :fast AS newest_token FROM report;

-- Hostile input.
SELECT sql, pg_temp.error_of(sql) FROM unnest(ARRAY[
    $$SELECT idem_lease_acquire(NULL, 'o', '1 minute')$$,
    $$SELECT idem_lease_acquire('n', NULL, '1 minute')$$,
    $$SELECT idem_lease_acquire('n', 'o', NULL)$$,
    $$SELECT idem_lease_acquire('', 'o', '1 minute')$$,
    $$SELECT idem_lease_acquire('n', '', '1 minute')$$,
    $$SELECT idem_lease_acquire(repeat('n', 1025), 'o', '1 minute')$$,
    $$SELECT idem_lease_acquire('n', repeat('o', 1025), '1 minute')$$,
    $$SELECT idem_lease_acquire('n', 'o', '0')$$,
    $$SELECT idem_lease_acquire('n', 'o', '-5 seconds')$$,
    $$SELECT idem_lease_release(NULL, 'o')$$,
    $$SELECT idem_lease_release('n', NULL)$$,
    $$SELECT idem_lease_check(NULL, 1)$$,
    $$SELECT idem_lease_check('n', NULL)$$
]) AS sql;
BEGIN READ ONLY;
SELECT pg_temp.error_of($$SELECT idem_lease_acquire('n', 'o', '1 minute')$$);
SELECT pg_temp.error_of($$SELECT idem_lease_release('n', 'o')$$);
SELECT idem_lease_check('n', 1) AS check_is_a_read;
COMMIT;

DROP TABLE report;
DROP FUNCTION write_report(bigint, text);
DELETE FROM idem_leases;
