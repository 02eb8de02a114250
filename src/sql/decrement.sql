
-- Conditional decrement, state transitions, version guard ------------------

-- These run with the caller's rights (SECURITY INVOKER) and search path:
-- exactly the privileges, row-level security and triggers of the UPDATE
-- they stand for.
CREATE FUNCTION @extschema@.idem_decrement(rel regclass, key_column name, key anyelement,
                                           amount_column name, n numeric)
RETURNS numeric
AS 'MODULE_PATHNAME', 'idem_decrement'
LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@.idem_transition(rel regclass, key_column name, key anyelement,
                                            state_column name, from_state text, to_state text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_transition'
LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@.idem_version_guard()
RETURNS trigger
AS 'MODULE_PATHNAME', 'idem_version_guard'
LANGUAGE C;
