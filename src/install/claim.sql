
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

-- The one dedup table every business shares. Inspect it with plain SQL as its
-- owner; write it only through the functions below.
CREATE TABLE @extschema@.idem_claims (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    key_hash    uuid        NOT NULL,   -- idem_key_hash(scope, key)
    claimed_at  timestamptz NOT NULL,   -- when the claim was granted
    expires_at  timestamptz,            -- NULL: never expires
    response    jsonb,                  -- what idem_finish stored
    fingerprint uuid,                   -- of idem_begin's request: equal exactly for equal jsonb
    hold_fence  bigint,                 -- a multi-step request's holder (idem_hold); NULL: none
    CONSTRAINT idem_claims_key PRIMARY KEY (key_hash)
);
COMMENT ON TABLE @extschema@.idem_claims IS
    'pg_idem: one row per claimed (scope, key); an expired row counts as absent';
REVOKE ALL ON @extschema@.idem_claims FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_claims', '');

-- pg_idem.default_ttl: the default of every omitted ttl below. An explicit
-- ttl => NULL claims a key forever.
CREATE FUNCTION @extschema@.idem_default_ttl()
RETURNS interval
AS 'MODULE_PATHNAME', 'idem_default_ttl'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION @extschema@.idem_claim(
    key text, scope text DEFAULT 'default', ttl interval DEFAULT @extschema@.idem_default_ttl())
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_claim'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_begin(
    key text, scope text DEFAULT 'default', ttl interval DEFAULT @extschema@.idem_default_ttl(),
    request jsonb DEFAULT NULL, wait boolean DEFAULT true)
RETURNS TABLE (status text, response jsonb)
AS 'MODULE_PATHNAME', 'idem_begin'
LANGUAGE C VOLATILE SECURITY DEFINER ROWS 1;

CREATE FUNCTION @extschema@.idem_finish(key text, scope text, response jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_finish'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_claim_many(
    keys text[], scope text DEFAULT 'default', ttl interval DEFAULT @extschema@.idem_default_ttl())
RETURNS TABLE (key text, claimed boolean)
AS 'MODULE_PATHNAME', 'idem_claim_many'
LANGUAGE C VOLATILE SECURITY DEFINER;

-- A look-up by the index that changes nothing: for support staff and clients.
CREATE FUNCTION @extschema@.idem_status(key text, scope text DEFAULT 'default')
RETURNS TABLE (status text, claimed_at timestamptz, expires_at timestamptz, response jsonb)
AS 'MODULE_PATHNAME', 'idem_status'
LANGUAGE C STABLE SECURITY DEFINER ROWS 1;

-- For an operator who wants a request to run again: not for PUBLIC.
CREATE FUNCTION @extschema@.idem_forget(key text, scope text DEFAULT 'default')
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_forget'
LANGUAGE C VOLATILE SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION @extschema@.idem_forget(text, text) FROM PUBLIC;
