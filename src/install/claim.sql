
-- Claims ------------------------------------------------------------------

-- 128 bits of SHA-256 over (scope, key): the claim's primary key. pg_idem
-- computes it in C++ and stores it in idem_claims.key_hash, so that its
-- statements compare a column with a value and call no function of the
-- extension's schema: a function another role creates there (an overload with
-- default arguments, say) can then never make them ambiguous or change them.
-- Exposed for inspection: WHERE key_hash = idem_key_hash('orders', 'req-1').
CREATE FUNCTION @extschema@.idem_key_hash(scope text, key text)
RETURNS uuid
AS 'MODULE_PATHNAME', 'idem_key_hash'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.idem_key_hash(text, text) IS
    'The key_hash of (scope, key) in idem_claims (128 bits of SHA-256), to look a claim up by its primary key';

-- The one dedup table every business shares. Inspect it with plain SQL as its
-- owner; write it only through the functions below.
CREATE TABLE @extschema@.idem_claims (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    key_hash    uuid        NOT NULL,
    claimed_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    response    jsonb,
    fingerprint uuid,
    hold_fence  bigint,
    CONSTRAINT idem_claims_key PRIMARY KEY (key_hash)
);
COMMENT ON TABLE @extschema@.idem_claims IS
    'The dedup table every business shares: one row per claimed (scope, key); an expired row counts as absent';
COMMENT ON COLUMN @extschema@.idem_claims.scope IS 'The scope the key lives in: one per business operation';
COMMENT ON COLUMN @extschema@.idem_claims.key IS 'The idempotency key, compared byte for byte';
COMMENT ON COLUMN @extschema@.idem_claims.key_hash IS 'The primary key: idem_key_hash(scope, key)';
COMMENT ON COLUMN @extschema@.idem_claims.claimed_at IS 'When the claim was granted (the server''s clock)';
COMMENT ON COLUMN @extschema@.idem_claims.expires_at IS 'When the claim expires: claimed_at + ttl; NULL: never expires';
COMMENT ON COLUMN @extschema@.idem_claims.response IS
    'What idem_finish stored, replayed by idem_begin; NULL: nothing stored';
COMMENT ON COLUMN @extschema@.idem_claims.fingerprint IS
    'Fingerprint of idem_begin''s request, equal exactly for equal jsonb; NULL: no request given';
COMMENT ON COLUMN @extschema@.idem_claims.hold_fence IS
    'The fence of the holder of a multi-step request (idem_hold); NULL: not held (a claim, or completed)';
REVOKE ALL ON @extschema@.idem_claims FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_claims', '');

-- pg_idem.default_ttl: the default of every omitted ttl below. An explicit
-- ttl => NULL claims a key forever.
CREATE FUNCTION @extschema@.idem_default_ttl()
RETURNS interval
AS 'MODULE_PATHNAME', 'idem_default_ttl'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.idem_default_ttl() IS
    'The ttl of a call that omits it: the setting pg_idem.default_ttl in force (24 hours unless set)';

CREATE FUNCTION @extschema@.idem_claim(
    key text, scope text DEFAULT 'default', ttl interval DEFAULT @extschema@.idem_default_ttl())
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_claim'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_claim(text, text, interval) IS
    'Claims (scope, key) for this transaction: true, do the business write in it; false, a duplicate: skip it';

CREATE FUNCTION @extschema@.idem_begin(
    key text, scope text DEFAULT 'default', ttl interval DEFAULT @extschema@.idem_default_ttl(),
    request jsonb DEFAULT NULL, wait boolean DEFAULT true)
RETURNS TABLE (status text, response jsonb)
AS 'MODULE_PATHNAME', 'idem_begin'
LANGUAGE C VOLATILE SECURITY DEFINER ROWS 1;
COMMENT ON FUNCTION @extschema@.idem_begin(text, text, interval, jsonb, boolean) IS
    'Claims (scope, key) as idem_claim does: new; replay, with what idem_finish stored; in_progress (wait => false)';

CREATE FUNCTION @extschema@.idem_finish(key text, scope text, response jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_finish'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_finish(text, text, jsonb) IS
    'Stores the response that retries replay, on the claim this transaction holds (IK002 without one)';

CREATE FUNCTION @extschema@.idem_claim_many(
    keys text[], scope text DEFAULT 'default', ttl interval DEFAULT @extschema@.idem_default_ttl())
RETURNS TABLE (key text, claimed boolean)
AS 'MODULE_PATHNAME', 'idem_claim_many'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_claim_many(text[], text, interval) IS
    'Claims a batch of keys of one scope: one row per distinct key, claimed meaning what idem_claim returns';

-- A look-up by the index that changes nothing: for support staff and clients.
CREATE FUNCTION @extschema@.idem_status(key text, scope text DEFAULT 'default')
RETURNS TABLE (status text, claimed_at timestamptz, expires_at timestamptz, response jsonb)
AS 'MODULE_PATHNAME', 'idem_status'
LANGUAGE C STABLE SECURITY DEFINER ROWS 1;
COMMENT ON FUNCTION @extschema@.idem_status(text, text) IS
    'Looks (scope, key) up without a lock or a write: absent, or done with its times and stored response';

-- For an operator who wants a request to run again: not for PUBLIC.
CREATE FUNCTION @extschema@.idem_forget(key text, scope text DEFAULT 'default')
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_forget'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_forget(text, text) IS
    'Deletes the claim on (scope, key) so the request can run again: true if a live claim existed. Not for PUBLIC';
REVOKE EXECUTE ON FUNCTION @extschema@.idem_forget(text, text) FROM PUBLIC;
