-- Catalog facts about tokens and leases: signatures and defaults, SECURITY
-- DEFINER writers, owner-only tables and sequence, all dumped by pg_dump.
\i settings.psql

BEGIN;
CREATE EXTENSION pg_idem;
SELECT plan(16);

SELECT has_function('idem_token_issue', ARRAY['text', 'interval']);
SELECT is((SELECT pg_get_function_arguments('idem_token_issue(text,interval)'::regprocedure)),
          'scope text DEFAULT ''default''::text, ttl interval DEFAULT ''01:00:00''::interval',
          'idem_token_issue defaults: scope ''default'', ttl one hour');
SELECT function_returns('idem_token_issue', ARRAY['text', 'interval'], 'uuid');
SELECT function_returns('idem_token_consume', ARRAY['uuid', 'text'], 'boolean');
SELECT function_returns('idem_lease_acquire', ARRAY['text', 'text', 'interval'], 'bigint');
SELECT function_returns('idem_lease_release', ARRAY['text', 'text'], 'boolean');
SELECT function_returns('idem_lease_check', ARRAY['text', 'bigint'], 'boolean');
SELECT is_definer('idem_token_issue', ARRAY['text', 'interval']);
SELECT is_definer('idem_token_consume', ARRAY['uuid', 'text']);
SELECT is_definer('idem_lease_acquire', ARRAY['text', 'text', 'interval']);
SELECT table_privs_are('idem_tokens', 'public', ARRAY[]::text[], 'PUBLIC has no privilege on idem_tokens');
SELECT table_privs_are('idem_leases', 'public', ARRAY[]::text[], 'PUBLIC has no privilege on idem_leases');
SELECT sequence_privs_are('idem_lease_fencing', 'public', ARRAY[]::text[], 'PUBLIC cannot touch the fencing sequence');
SELECT ok((SELECT extconfig @> ARRAY['idem_tokens'::regclass::oid, 'idem_leases'::regclass::oid,
                                     'idem_lease_fencing'::regclass::oid]
           FROM pg_extension WHERE extname = 'pg_idem'),
          'tokens, leases and the fencing sequence are dumped by pg_dump');
SELECT ok((SELECT extconfig @> ARRAY['idem_stock_items'::regclass::oid, 'idem_stock_ledger'::regclass::oid]
           FROM pg_extension WHERE extname = 'pg_idem'),
          'the hot-stock tables are dumped by pg_dump');
CREATE ROLE idem_tap_token_user;
SET ROLE idem_tap_token_user;
SELECT is(idem_token_consume(idem_token_issue('tap'), 'tap'), true, 'an ordinary role issues and consumes through the functions');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
