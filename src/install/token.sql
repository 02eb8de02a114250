
-- Anti-replay tokens ------------------------------------------------------

-- One row per issued, unconsumed token; consuming deletes it in the
-- caller's transaction. An expired row counts as absent until the purge.
CREATE TABLE @extschema@.idem_tokens (
    token      uuid        PRIMARY KEY,
    scope      text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz            -- NULL: never expires
);
REVOKE ALL ON @extschema@.idem_tokens FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_tokens', '');

CREATE FUNCTION @extschema@.idem_token_issue(scope text DEFAULT 'default', ttl interval DEFAULT '1 hour')
RETURNS uuid
AS 'MODULE_PATHNAME', 'idem_token_issue'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_token_consume(token uuid, scope text DEFAULT 'default')
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_token_consume'
LANGUAGE C VOLATILE SECURITY DEFINER;
