
-- Claims ------------------------------------------------------------------

-- The value the claim index holds: 128 bits of SHA-256 over (scope, key).
-- A fixed-size index entry lets keys of any length in (SPEC: 8 KiB and more).
CREATE FUNCTION @extschema@.idem_key_hash(scope text, key text)
RETURNS uuid
AS 'MODULE_PATHNAME', 'idem_key_hash'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

-- The one dedup table every business shares. Inspect it with plain SQL as its
-- owner; write it only through the functions below.
CREATE TABLE @extschema@.idem_claims (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    claimed_at  timestamptz NOT NULL,
    expires_at  timestamptz,            -- NULL: never expires
    response    jsonb,                  -- what idem_finish stored
    request_fp  bigint                  -- jsonb_hash_extended(request, 0) from idem_begin
);
CREATE UNIQUE INDEX idem_claims_key ON @extschema@.idem_claims (@extschema@.idem_key_hash(scope, key));
COMMENT ON TABLE @extschema@.idem_claims IS
    'pg_idem: one row per claimed (scope, key); an expired row counts as absent';
REVOKE ALL ON @extschema@.idem_claims FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_claims', '');

CREATE FUNCTION @extschema@.idem_claim(key text, scope text DEFAULT 'default', ttl interval DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_claim'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_begin(
    key text, scope text DEFAULT 'default', ttl interval DEFAULT NULL,
    request jsonb DEFAULT NULL, wait boolean DEFAULT true)
RETURNS TABLE (status text, response jsonb)
AS 'MODULE_PATHNAME', 'idem_begin'
LANGUAGE C VOLATILE SECURITY DEFINER ROWS 1;

CREATE FUNCTION @extschema@.idem_finish(key text, scope text, response jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_finish'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_claim_many(keys text[], scope text DEFAULT 'default', ttl interval DEFAULT NULL)
RETURNS TABLE (key text, claimed boolean)
AS 'MODULE_PATHNAME', 'idem_claim_many'
LANGUAGE C VOLATILE SECURITY DEFINER;

-- For an operator who wants a request to run again: not for PUBLIC.
CREATE FUNCTION @extschema@.idem_forget(key text, scope text DEFAULT 'default')
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_forget'
LANGUAGE C VOLATILE SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION @extschema@.idem_forget(text, text) FROM PUBLIC;
