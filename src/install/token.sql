
-- Anti-replay tokens ------------------------------------------------------

-- One row per issued, unconsumed token; consuming deletes it in the
-- caller's transaction. An expired row counts as absent until the purge.
CREATE TABLE @extschema@.idem_tokens (
    token      uuid        PRIMARY KEY,
    scope      text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz
);
COMMENT ON TABLE @extschema@.idem_tokens IS
    'Anti-replay tokens: one row per issued, unconsumed token; an expired row counts as absent until the purge';
COMMENT ON COLUMN @extschema@.idem_tokens.token IS 'The token idem_token_issue returned (random, version 4)';
COMMENT ON COLUMN @extschema@.idem_tokens.scope IS
    'The scope it was issued for; consumed in another scope it answers false';
COMMENT ON COLUMN @extschema@.idem_tokens.issued_at IS 'When it was issued (the server''s clock)';
COMMENT ON COLUMN @extschema@.idem_tokens.expires_at IS 'When it expires: issued_at + ttl; NULL: never expires';
REVOKE ALL ON @extschema@.idem_tokens FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_tokens', '');

CREATE FUNCTION @extschema@.idem_token_issue(scope text DEFAULT 'default', ttl interval DEFAULT '1 hour')
RETURNS uuid
AS 'MODULE_PATHNAME', 'idem_token_issue'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_token_issue(text, interval) IS
    'Issues a random anti-replay token of scope, valid for ttl (default 1 hour; NULL: never expires)';

CREATE FUNCTION @extschema@.idem_token_consume(token uuid, scope text DEFAULT 'default')
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_token_consume'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_token_consume(uuid, text) IS
    'Consumes a token in this transaction: true once; false if unknown, expired, of another scope or consumed';
