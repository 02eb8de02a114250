
-- State transitions ---------------------------------------------------------

-- Like idem_decrement, with the caller's rights and search path.
CREATE FUNCTION @extschema@.idem_transition(rel regclass, key_column name, key anyelement,
                                            state_column name, from_state text, to_state text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_transition'
LANGUAGE C VOLATILE;

-- The same with the key as text (see idem_decrement's).
CREATE FUNCTION @extschema@.idem_transition(rel regclass, key_column name, key text,
                                            state_column name, from_state text, to_state text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_transition'
LANGUAGE C VOLATILE;
