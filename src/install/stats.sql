
-- Statistics --------------------------------------------------------------

-- Counters since the last idem_stats_reset(), kept in shared memory per
-- database (the views show the current database's): they need pg_idem in
-- shared_preload_libraries, and say so (55000) without it.
CREATE FUNCTION @extschema@.idem_stats_snapshot(
    OUT new_claims bigint, OUT duplicates bigint, OUT waits bigint, OUT in_progress bigint,
    OUT request_mismatches bigint,
    OUT holds_started bigint, OUT holds_resumed bigint, OUT holds_in_progress bigint, OUT holds_completed bigint,
    OUT stale_fences_refused bigint,
    OUT tokens_issued bigint, OUT tokens_consumed bigint, OUT tokens_refused bigint,
    OUT decrements bigint, OUT decrements_insufficient bigint,
    OUT leases_granted bigint, OUT leases_refused bigint,
    OUT rows_purged bigint, OUT scope_events_dropped bigint, OUT scopes_dropped bigint,
    OUT stats_reset timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stats_snapshot'
LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@.idem_scope_stats_snapshot(
    OUT scope text, OUT new_claims bigint, OUT duplicates bigint, OUT waits bigint,
    OUT in_progress bigint, OUT request_mismatches bigint,
    OUT holds_started bigint, OUT holds_resumed bigint, OUT holds_in_progress bigint, OUT holds_completed bigint,
    OUT stale_fences_refused bigint,
    OUT tokens_issued bigint, OUT tokens_consumed bigint, OUT tokens_refused bigint,
    OUT counted_since timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_scope_stats_snapshot'
LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@.idem_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'idem_stats_reset'
LANGUAGE C VOLATILE;

CREATE VIEW @extschema@.idem_stats AS SELECT * FROM @extschema@.idem_stats_snapshot();
CREATE VIEW @extschema@.idem_scope_stats AS SELECT * FROM @extschema@.idem_scope_stats_snapshot();

-- They show every scope: not for PUBLIC. Monitoring roles may read the
-- counters; only the owner resets them.
REVOKE EXECUTE ON FUNCTION @extschema@.idem_stats_snapshot(), @extschema@.idem_scope_stats_snapshot(),
    @extschema@.idem_stats_reset() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idem_stats_snapshot(), @extschema@.idem_scope_stats_snapshot() TO pg_monitor;
GRANT SELECT ON @extschema@.idem_stats, @extschema@.idem_scope_stats TO pg_monitor;
