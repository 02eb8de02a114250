
-- Leases ------------------------------------------------------------------

-- One row per granted lease. Fencing tokens come from one sequence, so they
-- grow for every name forever, also after the purge deleted a lease's row.
CREATE SEQUENCE @extschema@.idem_lease_fencing;
COMMENT ON SEQUENCE @extschema@.idem_lease_fencing IS
    'The fencing tokens of every lease: they strictly increase, also after expiry and the purge';
CREATE TABLE @extschema@.idem_leases (
    name          text        PRIMARY KEY,
    owner         text        NOT NULL,
    fencing_token bigint      NOT NULL,
    acquired_at   timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);
COMMENT ON TABLE @extschema@.idem_leases IS
    'Leases, locks with expiry and fencing tokens: one row per lease; an expired row counts as absent';
COMMENT ON COLUMN @extschema@.idem_leases.name IS 'The lease''s name';
COMMENT ON COLUMN @extschema@.idem_leases.owner IS 'The owner that holds it, or held it until expires_at';
COMMENT ON COLUMN @extschema@.idem_leases.fencing_token IS 'The owner''s fencing token, from idem_lease_fencing';
COMMENT ON COLUMN @extschema@.idem_leases.acquired_at IS 'When the owner was granted it (extending it keeps this)';
COMMENT ON COLUMN @extschema@.idem_leases.expires_at IS 'When the lease ends unless its owner extends it';
REVOKE ALL ON @extschema@.idem_leases, @extschema@.idem_lease_fencing FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_leases', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_lease_fencing', '');

CREATE FUNCTION @extschema@.idem_lease_acquire(name text, owner text, ttl interval)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_lease_acquire'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_lease_acquire(text, text, interval) IS
    'Acquires or extends the lease name for owner for ttl: a fencing token; NULL if another owner holds it';

CREATE FUNCTION @extschema@.idem_lease_release(name text, owner text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_lease_release'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_lease_release(text, text) IS
    'Frees the lease name, only for its owner: true if that owner held it unexpired';

CREATE FUNCTION @extschema@.idem_lease_check(name text, fencing_token bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_lease_check'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@.idem_lease_check(text, bigint) IS
    'True only while the lease name is held, unexpired, with that fencing token: check it in each guarded write';
