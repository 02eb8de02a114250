-- Catalog facts about the claim objects: signatures, volatility, security,
-- pinned search_path, privileges, and pg_dump configuration.
\i settings.psql

BEGIN;
CREATE EXTENSION pg_idem;
SELECT plan(48);

-- Functions exist with the SPEC's signatures and return types.
SELECT has_function('idem_claim', ARRAY['text', 'text', 'interval']);
SELECT function_returns('idem_claim', ARRAY['text', 'text', 'interval'], 'boolean');
SELECT has_function('idem_begin', ARRAY['text', 'text', 'interval', 'jsonb', 'boolean']);
SELECT function_returns('idem_begin', ARRAY['text', 'text', 'interval', 'jsonb', 'boolean'], 'setof record');
SELECT has_function('idem_finish', ARRAY['text', 'text', 'jsonb']);
SELECT function_returns('idem_finish', ARRAY['text', 'text', 'jsonb'], 'void');
SELECT has_function('idem_claim_many', ARRAY['text[]', 'text', 'interval']);
SELECT has_function('idem_forget', ARRAY['text', 'text']);
SELECT function_returns('idem_forget', ARRAY['text', 'text'], 'boolean');
SELECT is((SELECT pg_get_function_arguments('idem_claim(text,text,interval)'::regprocedure)),
          'key text, scope text DEFAULT ''default''::text, ttl interval DEFAULT idem_default_ttl()',
          'idem_claim defaults: scope ''default'', ttl pg_idem.default_ttl');
SELECT function_returns('idem_default_ttl', ARRAY[]::text[], 'interval');
SELECT has_function('idem_status', ARRAY['text', 'text']);
SELECT is((SELECT pg_get_function_result('idem_status(text,text)'::regprocedure)),
          'TABLE(status text, claimed_at timestamp with time zone, expires_at timestamp with time zone, response jsonb)',
          'idem_status returns (status, claimed_at, expires_at, response)');
SELECT is((SELECT pg_get_function_result('idem_begin(text,text,interval,jsonb,boolean)'::regprocedure)),
          'TABLE(status text, response jsonb)', 'idem_begin returns (status, response)');

-- Writers are volatile SECURITY DEFINER (their search path is pinned in C++:
-- test/pgtap/security.sql attacks it); the hash is immutable.
SELECT volatility_is('idem_claim', ARRAY['text', 'text', 'interval'], 'volatile');
SELECT volatility_is('idem_key_hash', ARRAY['text', 'text'], 'immutable');
SELECT is_definer('idem_claim', ARRAY['text', 'text', 'interval']);
SELECT is_definer('idem_begin', ARRAY['text', 'text', 'interval', 'jsonb', 'boolean']);
SELECT is_definer('idem_finish', ARRAY['text', 'text', 'jsonb']);
SELECT is_definer('idem_claim_many', ARRAY['text[]', 'text', 'interval']);
SELECT is_definer('idem_forget', ARRAY['text', 'text']);
SELECT isnt_definer('idem_key_hash', ARRAY['text', 'text']);
SELECT is_definer('idem_status', ARRAY['text', 'text']);
SELECT is(
    (SELECT array_agg(p.oid::regprocedure::text ORDER BY 1) FROM pg_proc p
     JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
     JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_idem'
     WHERE p.proname !~ '^idem_'),
    NULL, 'every function is named idem_*');

-- The dedup table: SPEC's columns, the hash as primary key, no direct access for PUBLIC.
SELECT has_table('idem_claims');
SELECT columns_are('idem_claims', ARRAY['scope', 'key', 'key_hash', 'claimed_at', 'expires_at', 'response', 'fingerprint', 'hold_fence']);
SELECT col_type_is('idem_claims', 'scope', 'text');
SELECT col_type_is('idem_claims', 'key', 'text');
SELECT col_type_is('idem_claims', 'claimed_at', 'timestamp with time zone');
SELECT col_type_is('idem_claims', 'expires_at', 'timestamp with time zone');
SELECT col_type_is('idem_claims', 'response', 'jsonb');
SELECT col_type_is('idem_claims', 'key_hash', 'uuid');
SELECT col_type_is('idem_claims', 'fingerprint', 'uuid');
SELECT col_is_pk('idem_claims', 'key_hash');
SELECT index_is_unique('idem_claims', 'idem_claims_key');
SELECT table_privs_are('idem_claims', 'public', ARRAY[]::text[], 'PUBLIC has no privilege on idem_claims');
SELECT ok((SELECT extconfig @> ARRAY['idem_claims'::regclass::oid] FROM pg_extension WHERE extname = 'pg_idem'),
          'idem_claims is a configuration table, so pg_dump keeps its rows');

-- EXECUTE: PUBLIC for the request path and idem_status (it shows a key only
-- to a caller that names it), not for idem_forget (it re-enables a request).
CREATE ROLE idem_tap_app LOGIN;
SELECT function_privs_are('idem_claim', ARRAY['text', 'text', 'interval'], 'idem_tap_app', ARRAY['EXECUTE']);
SELECT function_privs_are('idem_begin', ARRAY['text', 'text', 'interval', 'jsonb', 'boolean'], 'idem_tap_app', ARRAY['EXECUTE']);
SELECT function_privs_are('idem_finish', ARRAY['text', 'text', 'jsonb'], 'idem_tap_app', ARRAY['EXECUTE']);
SELECT function_privs_are('idem_claim_many', ARRAY['text[]', 'text', 'interval'], 'idem_tap_app', ARRAY['EXECUTE']);
SELECT function_privs_are('idem_forget', ARRAY['text', 'text'], 'idem_tap_app', ARRAY[]::text[]);
SELECT function_privs_are('idem_status', ARRAY['text', 'text'], 'idem_tap_app', ARRAY['EXECUTE']);

-- What that means for an ordinary role: it claims through the functions and
-- cannot touch the table.
SET ROLE idem_tap_app;
SELECT is(idem_claim('tap-key'), true, 'an ordinary role claims through idem_claim');
SELECT throws_ok($$SELECT * FROM idem_claims$$, '42501', NULL, 'an ordinary role cannot read idem_claims');
SELECT is((SELECT status FROM idem_status('tap-key')), 'done', 'an ordinary role looks a key up with idem_status');
SELECT throws_ok($$DELETE FROM idem_claims$$, '42501', NULL, 'an ordinary role cannot delete claims');
SELECT throws_ok($$SELECT idem_forget('tap-key')$$, '42501', NULL, 'an ordinary role cannot forget claims');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
