-- The security model (README "Security"): ordinary roles cannot write the
-- tables; SECURITY DEFINER functions (whose search path src/pg/spi.cpp pins)
-- cannot be redirected by objects a hostile user creates in public or pg_temp,
-- whatever search_path the caller sets; operator functions are not
-- for PUBLIC; monitoring roles read statistics and the hot-stock view.
\i settings.psql

BEGIN;
SELECT plan(35);

CREATE SCHEMA idem;
CREATE EXTENSION pg_idem SCHEMA idem;
CREATE ROLE idem_tap_hostile LOGIN;
GRANT USAGE ON SCHEMA idem TO idem_tap_hostile;
GRANT CREATE ON SCHEMA public TO idem_tap_hostile;

-- Direct writes are refused.
SET ROLE idem_tap_hostile;
SELECT throws_ok($$INSERT INTO idem.idem_claims (scope, key, claimed_at) VALUES ('s', 'k', now())$$, '42501', NULL,
                 'an ordinary role cannot insert a claim directly');
SELECT throws_ok($$UPDATE idem.idem_claims SET response = '{}'$$, '42501', NULL, 'nor update one');
SELECT throws_ok($$TRUNCATE idem.idem_claims$$, '42501', NULL, 'nor truncate the table');
SELECT throws_ok($$SELECT idem.idem_purge()$$, '42501', NULL, 'nor run the purge');
SELECT throws_ok($$SELECT idem.idem_stats_reset()$$, '42501', NULL, 'nor reset statistics');

-- Decoys: a table, a hash function and an equality operator in public, and
-- a temporary table, all with the names pg_idem uses. If a SECURITY DEFINER
-- function resolved any of them it would run the hostile code as the
-- extension's owner; each decoy records that it was touched.
CREATE TABLE public.decoy_log (what text);
GRANT INSERT ON public.decoy_log TO PUBLIC;
CREATE TABLE public.idem_claims (scope text, key text, claimed_at timestamptz, expires_at timestamptz, response jsonb, fingerprint bigint);
CREATE FUNCTION public.idem_key_hash(scope text, key text) RETURNS uuid LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.decoy_log VALUES ('hash'); RETURN '00000000-0000-0000-0000-000000000000'; END $$;
CREATE FUNCTION public.decoy_texteq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.decoy_log VALUES ('='); RETURN true; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.decoy_texteq);
CREATE TEMP TABLE idem_claims (scope text, key text, claimed_at timestamptz, expires_at timestamptz, response jsonb, fingerprint bigint);
SET search_path = pg_temp, public, idem;

SELECT is(idem.idem_claim('target'), true, 'with decoys on search_path a new key is still claimed');
SELECT is(idem.idem_claim('target'), false, 'and its retry is still a duplicate');
SELECT is((SELECT status FROM idem.idem_begin('target')), 'replay', 'idem_begin too');
SELECT is((SELECT count(*)::int FROM idem.idem_claim_many(ARRAY['target', 'other']) WHERE claimed), 1, 'idem_claim_many too');
SELECT is((SELECT count(*)::int FROM pg_temp.idem_claims) + (SELECT count(*)::int FROM public.idem_claims), 0,
          'nothing was written to the decoy tables');
SELECT is((SELECT count(*)::int FROM public.decoy_log), 0, 'no decoy function or operator ran');
-- Even with public searched before pg_catalog, where the decoy operator
-- would win an unqualified lookup.
-- (Only pg_idem runs under that path: pgTAP's own functions would be fooled.)
SET search_path = public, pg_catalog, idem;
CREATE TEMP TABLE attack AS SELECT idem.idem_claim('target-2') AS first_call, idem.idem_claim('target-2') AS retry;
RESET search_path;
SELECT is((SELECT first_call FROM attack), true, 'public before pg_catalog: a new key is still claimed');
SELECT is((SELECT retry FROM attack), false, 'and its retry is still a duplicate');
SELECT is((SELECT count(*)::int FROM public.decoy_log), 0, 'still no decoy ran');
RESET ROLE;

SELECT is((SELECT count(*)::int FROM idem.idem_claims WHERE key IN ('target', 'other', 'target-2')), 3,
          'the claims are in the extension''s table');

-- Monitoring: the statistics show every scope. pg_monitor may read the
-- views; PUBLIC may neither read them nor call the functions under them.
SELECT ok(has_table_privilege('pg_monitor', 'idem.idem_stats', 'SELECT'), 'pg_monitor reads idem_stats');
SELECT ok(has_table_privilege('pg_monitor', 'idem.idem_scope_stats', 'SELECT'), 'pg_monitor reads idem_scope_stats');
SELECT ok(NOT has_table_privilege('idem_tap_hostile', 'idem.idem_stats', 'SELECT'), 'PUBLIC does not');
SELECT ok(NOT has_table_privilege('idem_tap_hostile', 'idem.idem_scope_stats', 'SELECT'), 'PUBLIC does not read idem_scope_stats');
SELECT ok(NOT has_function_privilege('idem_tap_hostile', 'idem.idem_stats_snapshot()', 'EXECUTE'),
          'PUBLIC cannot call idem_stats_snapshot');
SELECT ok(NOT has_function_privilege('idem_tap_hostile', 'idem.idem_scope_stats_snapshot()', 'EXECUTE'),
          'PUBLIC cannot call idem_scope_stats_snapshot');
SET ROLE idem_tap_hostile;
SELECT throws_ok($$SELECT * FROM idem.idem_scope_stats$$, '42501', NULL, 'a plain role is refused the scope view');
SELECT throws_ok($$SELECT * FROM idem.idem_scope_stats_snapshot()$$, '42501', NULL, 'and the function under it');
SELECT throws_ok($$SELECT * FROM idem.idem_stats_snapshot()$$, '42501', NULL, 'and under idem_stats');
RESET ROLE;
CREATE ROLE idem_tap_monitor IN ROLE pg_monitor;
GRANT USAGE ON SCHEMA idem TO idem_tap_monitor;
SET ROLE idem_tap_monitor;
SELECT lives_ok($$SELECT * FROM idem.idem_stats$$, 'a member of pg_monitor reads idem_stats');
SELECT is((SELECT count(*)::int FROM idem.idem_scope_stats WHERE scope = 'default'), 1,
          'and idem_scope_stats, with the scope just claimed in');
SELECT throws_ok($$SELECT idem.idem_stats_reset()$$, '42501', NULL, 'but cannot reset them');
RESET ROLE;
SELECT ok(NOT has_function_privilege('idem_tap_hostile', 'idem.idem_forget(text, text)', 'EXECUTE'),
          'idem_forget is not for PUBLIC');

-- The hot-stock view lists every item and its level: for its owner and
-- pg_monitor, not for PUBLIC (SPEC "Security").
SELECT ok(NOT has_function_privilege('idem_tap_hostile', 'idem.idem_stock_snapshot()', 'EXECUTE'),
          'idem_stock_snapshot is not for PUBLIC');
SELECT ok(NOT has_table_privilege('idem_tap_hostile', 'idem.idem_stock', 'SELECT'), 'nor the idem_stock view');
SET ROLE idem_tap_hostile;
SELECT throws_ok($$SELECT * FROM idem.idem_stock$$, '42501', NULL, 'a plain role cannot read the idem_stock view');
SELECT throws_ok($$SELECT * FROM idem.idem_stock_snapshot()$$, '42501', NULL, 'nor call idem_stock_snapshot');
SELECT throws_ok($$SELECT idem.idem_stock_level('no-such-item')$$, 'P0002', NULL,
                 'it still calls idem_stock_level for an item it names');
RESET ROLE;
SET ROLE idem_tap_monitor;
SELECT lives_ok($$SELECT count(*) FROM idem.idem_stock$$, 'pg_monitor reads the idem_stock view');
SELECT lives_ok($$SELECT count(*) FROM idem.idem_stock_snapshot()$$, 'and may call idem_stock_snapshot');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
