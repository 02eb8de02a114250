
-- Multi-step requests -------------------------------------------------------

-- A held request (idem_hold) is a row of idem_claims, committed on its own,
-- whose hold_fence names its holder, and a row here with the hold's time and
-- recovery point; idem_complete clears the one and deletes the other. Fences
-- come from one sequence, so they grow for every key forever, also after the
-- purge deleted a request's rows.
CREATE SEQUENCE @extschema@.idem_hold_fencing;
COMMENT ON SEQUENCE @extschema@.idem_hold_fencing IS
    'Where multi-step requests'' fences come from: they grow for every key forever';
CREATE TABLE @extschema@.idem_holds (
    key_hash   uuid        PRIMARY KEY,  -- idem_claims.key_hash
    scope      text        NOT NULL,
    key        text        NOT NULL,
    held_until timestamptz NOT NULL,     -- the holder's hold runs out then (a stalled request after)
    hold_for   interval    NOT NULL,     -- how long idem_checkpoint extends it by default
    phase      text,                     -- the last recovery point (idem_checkpoint)
    state      jsonb,
    attempts   integer     NOT NULL,     -- holders so far: 1, then one more per resume
    expires_at timestamptz               -- the request's TTL, as in idem_claims; NULL: never
);
COMMENT ON TABLE @extschema@.idem_holds IS
    'One row per held multi-step request (idem_hold): its hold and last recovery point';
COMMENT ON COLUMN @extschema@.idem_holds.key_hash IS 'The primary key: idem_claims.key_hash of the request';
COMMENT ON COLUMN @extschema@.idem_holds.scope IS 'The scope of the request''s key';
COMMENT ON COLUMN @extschema@.idem_holds.key IS 'The request''s idempotency key';
COMMENT ON COLUMN @extschema@.idem_holds.held_until IS 'When the holder''s hold runs out; after it the request is stalled';
COMMENT ON COLUMN @extschema@.idem_holds.hold_for IS 'How long idem_checkpoint extends the hold when it names no length';
COMMENT ON COLUMN @extschema@.idem_holds.phase IS 'The last recovery point''s phase (idem_checkpoint); NULL: none yet';
COMMENT ON COLUMN @extschema@.idem_holds.state IS 'The last recovery point''s state (idem_checkpoint)';
COMMENT ON COLUMN @extschema@.idem_holds.attempts IS 'Holders so far: 1, then one more per resume';
COMMENT ON COLUMN @extschema@.idem_holds.expires_at IS 'When the request expires, as in idem_claims; NULL: never expires';
REVOKE ALL ON @extschema@.idem_holds, @extschema@.idem_hold_fencing FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_holds', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_hold_fencing', '');

CREATE FUNCTION @extschema@.idem_hold(
    key text, scope text DEFAULT 'default', hold interval DEFAULT '30 seconds',
    request jsonb DEFAULT NULL, ttl interval DEFAULT @extschema@.idem_default_ttl())
RETURNS TABLE (status text, fence bigint, phase text, state jsonb, response jsonb)
AS 'MODULE_PATHNAME', 'idem_hold'
LANGUAGE C VOLATILE SECURITY DEFINER ROWS 1;
COMMENT ON FUNCTION @extschema@.idem_hold(text, text, interval, jsonb, interval) IS
    'Holds a multi-step request: new, resume (a larger fence, the last recovery point), in_progress or replay';

CREATE FUNCTION @extschema@.idem_checkpoint(
    key text, scope text, fence bigint, phase text, state jsonb DEFAULT NULL, hold interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_checkpoint'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_checkpoint(text, text, bigint, text, jsonb, interval) IS
    'Records a recovery point and extends the hold, in the caller''s transaction; IK004 for a stale fence';

CREATE FUNCTION @extschema@.idem_complete(key text, scope text, fence bigint, response jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_complete'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_complete(text, text, bigint, jsonb) IS
    'Stores a held request''s final response, replayed until it expires; IK004 for a stale fence';

CREATE FUNCTION @extschema@.idem_abandon(key text, scope text, fence bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_abandon'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_abandon(text, text, bigint) IS
    'Gives a held request up, so that the next idem_hold starts it afresh; false for a stale fence';

-- Requests whose hold ran out before they completed: what a background
-- completer takes up (idem_hold then answers resume). A view runs with its
-- owner's rights; it shows every key, so it is the owner's and pg_monitor's.
CREATE VIEW @extschema@.idem_stalled AS
SELECT c.scope, c.key, h.phase, h.held_until, c.hold_fence AS fence, h.attempts
FROM @extschema@.idem_holds h
JOIN @extschema@.idem_claims c ON c.key_hash = h.key_hash AND c.key = h.key
WHERE c.hold_fence IS NOT NULL
  AND h.held_until <= pg_catalog.clock_timestamp()
  AND (c.expires_at IS NULL OR c.expires_at > pg_catalog.clock_timestamp());
COMMENT ON VIEW @extschema@.idem_stalled IS
    'Multi-step requests whose hold ran out before they completed: what a background completer takes up';
COMMENT ON COLUMN @extschema@.idem_stalled.scope IS 'The scope of the request''s key';
COMMENT ON COLUMN @extschema@.idem_stalled.key IS 'The request''s idempotency key';
COMMENT ON COLUMN @extschema@.idem_stalled.phase IS 'The last recovery point''s phase; NULL: none yet';
COMMENT ON COLUMN @extschema@.idem_stalled.held_until IS 'When the last holder''s hold ran out';
COMMENT ON COLUMN @extschema@.idem_stalled.fence IS 'The last holder''s fence: idem_hold hands out a larger one';
COMMENT ON COLUMN @extschema@.idem_stalled.attempts IS 'Holders so far';
REVOKE ALL ON @extschema@.idem_stalled FROM PUBLIC;
GRANT SELECT ON @extschema@.idem_stalled TO pg_monitor;
