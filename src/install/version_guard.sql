
-- Optimistic lock by version ------------------------------------------------

-- A trigger function: it runs as part of the caller's UPDATE.
CREATE FUNCTION @extschema@.idem_version_guard()
RETURNS trigger
AS 'MODULE_PATHNAME', 'idem_version_guard'
LANGUAGE C;
