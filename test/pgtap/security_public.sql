-- The attack on the default install: pg_idem in public, and a hostile role
-- that may create objects there (every database created before PostgreSQL 15
-- lets PUBLIC do so). Its decoys match the argument types pg_idem's
-- statements use exactly, which would beat pg_catalog's polymorphic or
-- less exact functions in an unqualified lookup (unnest(text[]) against
-- unnest(anyarray)). Each decoy tries to make the hostile role a superuser
-- and records that it ran. Every SECURITY DEFINER function is called; none
-- may reach a decoy, because its statements see only pg_catalog.
\i settings.psql

BEGIN;
SELECT plan(5);

CREATE EXTENSION pg_idem;
CREATE ROLE idem_tap_intruder LOGIN;
GRANT CREATE ON SCHEMA public TO idem_tap_intruder;
CREATE TABLE public.decoy_log (what text);
GRANT INSERT ON public.decoy_log TO PUBLIC;

SET ROLE idem_tap_intruder;
CREATE FUNCTION public.decoy_ran(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.decoy_log VALUES (what);
    BEGIN
        EXECUTE 'ALTER ROLE idem_tap_intruder SUPERUSER';
    EXCEPTION WHEN insufficient_privilege THEN NULL;  -- not running as the owner: keep trying
    END;
END $$;
CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.decoy_ran('unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.sum(bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.decoy_ran('sum'); RETURN $1; END $$;
CREATE FUNCTION public.decoy_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.decoy_ran('='); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.decoy_eq);
CREATE FUNCTION public.decoy_le(a timestamptz, b timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.decoy_ran('<='); RETURN a OPERATOR(pg_catalog.<=) b; END $$;
CREATE OPERATOR public.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = public.decoy_le);
SET search_path = public, pg_catalog;
\o /dev/null

-- Every SECURITY DEFINER function the intruder may execute, down every path
-- (new, duplicate, expired and renewed, batch, finish, tokens, leases, stock).
SELECT idem_claim('k1'), idem_claim('k1'), idem_claim('short', 'default', '1 microsecond');
SELECT pg_sleep(0.001);
SELECT idem_claim('short', 'default', '1 microsecond');
SELECT * FROM idem_claim_many(ARRAY['k1', 'k2', 'k3']);
SELECT * FROM idem_begin('k4', request => '{"a": 1}'), idem_finish('k4', 'default', '{"r": 1}');
SELECT * FROM idem_begin('k4', request => '{"a": 1}');
SELECT idem_token_consume(idem_token_issue());
SELECT idem_lease_acquire('l', 'me', '1 minute'), idem_lease_check('l', 1), idem_lease_release('l', 'me');
SELECT idem_stock_add('i', 5);  -- the suite runs preloaded
SELECT idem_stock_take('i', 1), idem_stock_level('i');
\o
RESET search_path;
RESET ROLE;

SELECT is((SELECT count(*)::int FROM public.decoy_log), 0, 'no decoy in public ran inside pg_idem''s functions');
SELECT ok(NOT (SELECT rolsuper FROM pg_roles WHERE rolname = 'idem_tap_intruder'), 'the intruder is no superuser');
SELECT is((SELECT count(*)::int FROM idem_claims WHERE key IN ('k1', 'k2', 'k3', 'k4', 'short')), 5,
          'the calls did their work');
-- The decoys are live: called directly (not through pg_idem) they run.
SET ROLE idem_tap_intruder;
SELECT is((SELECT count(*)::int FROM public.unnest(ARRAY['x'])), 1, 'the unnest decoy works when called by name');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM public.decoy_log), 1, 'and is logged');

SELECT * FROM finish();
ROLLBACK;
