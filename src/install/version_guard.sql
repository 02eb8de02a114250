
-- Optimistic lock by version ------------------------------------------------

-- A trigger function: it runs as part of the caller's UPDATE.
CREATE FUNCTION @extschema@.idem_version_guard()
RETURNS trigger
AS 'MODULE_PATHNAME', 'idem_version_guard'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@.idem_version_guard() IS
    'Optimistic lock, a BEFORE UPDATE row trigger (argument: version column): 40001 if stale, else stores version + 1';
