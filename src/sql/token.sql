
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

-- Leases ------------------------------------------------------------------

-- One row per granted lease. Fencing tokens come from one sequence, so they
-- grow for every name forever, also after the purge deleted a lease's row.
CREATE SEQUENCE @extschema@.idem_lease_fencing;
CREATE TABLE @extschema@.idem_leases (
    name          text        PRIMARY KEY,
    owner         text        NOT NULL,
    fencing_token bigint      NOT NULL,
    acquired_at   timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);
REVOKE ALL ON @extschema@.idem_leases, @extschema@.idem_lease_fencing FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_leases', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_lease_fencing', '');

CREATE FUNCTION @extschema@.idem_lease_acquire(name text, owner text, ttl interval)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_lease_acquire'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_lease_release(name text, owner text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_lease_release'
LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION @extschema@.idem_lease_check(name text, fencing_token bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_lease_check'
LANGUAGE C VOLATILE SECURITY DEFINER;
