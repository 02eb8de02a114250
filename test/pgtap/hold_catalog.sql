-- Catalog facts about multi-step requests: signatures, security, who may
-- see the stalled requests, and pg_dump configuration.
\i settings.psql

BEGIN;
CREATE EXTENSION pg_idem;
SELECT plan(19);

SELECT has_function('idem_hold', ARRAY['text', 'text', 'interval', 'jsonb', 'interval']);
SELECT is((SELECT pg_get_function_result('idem_hold(text,text,interval,jsonb,interval)'::regprocedure)),
          'TABLE(status text, fence bigint, phase text, state jsonb, response jsonb)',
          'idem_hold returns (status, fence, phase, state, response)');
SELECT is((SELECT pg_get_function_arguments('idem_hold(text,text,interval,jsonb,interval)'::regprocedure)),
          'key text, scope text DEFAULT ''default''::text, hold interval DEFAULT ''00:00:30''::interval, '
          'request jsonb DEFAULT NULL::jsonb, ttl interval DEFAULT idem_default_ttl()',
          'idem_hold defaults: scope ''default'', hold 30 seconds, ttl pg_idem.default_ttl');
SELECT has_function('idem_checkpoint', ARRAY['text', 'text', 'bigint', 'text', 'jsonb', 'interval']);
SELECT function_returns('idem_complete', ARRAY['text', 'text', 'bigint', 'jsonb'], 'void');
SELECT function_returns('idem_abandon', ARRAY['text', 'text', 'bigint'], 'boolean');
SELECT is_definer('idem_hold', ARRAY['text', 'text', 'interval', 'jsonb', 'interval']);
SELECT is_definer('idem_checkpoint', ARRAY['text', 'text', 'bigint', 'text', 'jsonb', 'interval']);
SELECT is_definer('idem_complete', ARRAY['text', 'text', 'bigint', 'jsonb']);
SELECT is_definer('idem_abandon', ARRAY['text', 'text', 'bigint']);

SELECT has_table('idem_holds');
SELECT has_view('idem_stalled');
SELECT columns_are('idem_stalled', ARRAY['scope', 'key', 'phase', 'held_until', 'fence', 'attempts']);
SELECT ok((SELECT extconfig @> ARRAY['idem_holds'::regclass::oid, 'idem_hold_fencing'::regclass::oid]
           FROM pg_extension WHERE extname = 'pg_idem'),
          'idem_holds and its fencing sequence are configuration, so pg_dump keeps them');

-- PUBLIC holds and completes through the functions; the tables and the
-- view of every stalled request are not PUBLIC's; pg_monitor reads the view.
CREATE ROLE idem_tap_payer LOGIN;
SELECT table_privs_are('idem_holds', 'idem_tap_payer', ARRAY[]::text[], 'PUBLIC has no privilege on idem_holds');
SELECT table_privs_are('idem_stalled', 'pg_monitor', ARRAY['SELECT'], 'pg_monitor reads idem_stalled');
SET ROLE idem_tap_payer;
SELECT status AS tap_status, fence AS tap_fence FROM idem_hold('tap-pay', 'payments') \gset
SELECT is(:'tap_status'::text, 'new', 'an ordinary role holds a key');
SELECT lives_ok(format('SELECT idem_complete(%L, %L, %s, %L)', 'tap-pay', 'payments', :tap_fence, '{}'),
                'an ordinary role completes it with its fence');
SELECT throws_ok($$SELECT * FROM idem_stalled$$, '42501', NULL, 'an ordinary role cannot list stalled requests');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
