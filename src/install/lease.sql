
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
