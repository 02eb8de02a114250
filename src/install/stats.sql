
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
COMMENT ON FUNCTION @extschema@.idem_stats_snapshot() IS
    'The row of the idem_stats view: this database''s counters since the last idem_stats_reset()';

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
COMMENT ON FUNCTION @extschema@.idem_scope_stats_snapshot() IS
    'The rows of the idem_scope_stats view: this database''s counters per scope since the last idem_stats_reset()';

CREATE FUNCTION @extschema@.idem_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'idem_stats_reset'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.idem_stats_reset() IS
    'Resets this database''s counters and scopes (idem_stats, idem_scope_stats). Owner only';

CREATE VIEW @extschema@.idem_stats AS SELECT * FROM @extschema@.idem_stats_snapshot();
COMMENT ON VIEW @extschema@.idem_stats IS
    'pg_idem''s counters in this database since the last idem_stats_reset(); needs shared_preload_libraries';
COMMENT ON COLUMN @extschema@.idem_stats.new_claims IS
    'Claims granted: idem_claim true, idem_begin new, idem_claim_many claimed';
COMMENT ON COLUMN @extschema@.idem_stats.duplicates IS
    'Claims that found a committed, unexpired claim: answered false or replay';
COMMENT ON COLUMN @extschema@.idem_stats.waits IS
    'Claims that waited for a transaction holding the key, which then committed';
COMMENT ON COLUMN @extschema@.idem_stats.in_progress IS
    'idem_begin calls answered in_progress (wait => false, or a key a multi-step request holds)';
COMMENT ON COLUMN @extschema@.idem_stats.request_mismatches IS
    'idem_begin calls refused for a different request with the same key (IK001)';
COMMENT ON COLUMN @extschema@.idem_stats.holds_started IS 'idem_hold calls answered new';
COMMENT ON COLUMN @extschema@.idem_stats.holds_resumed IS 'idem_hold calls answered resume (a stalled request taken over)';
COMMENT ON COLUMN @extschema@.idem_stats.holds_in_progress IS 'idem_hold calls answered in_progress (another holder''s hold is live)';
COMMENT ON COLUMN @extschema@.idem_stats.holds_completed IS 'Multi-step requests completed by idem_complete';
COMMENT ON COLUMN @extschema@.idem_stats.stale_fences_refused IS
    'Calls with a fence that was not the holder''s: IK004, and idem_abandon answering false';
COMMENT ON COLUMN @extschema@.idem_stats.tokens_issued IS 'Tokens issued by idem_token_issue';
COMMENT ON COLUMN @extschema@.idem_stats.tokens_consumed IS 'idem_token_consume calls answered true';
COMMENT ON COLUMN @extschema@.idem_stats.tokens_refused IS
    'idem_token_consume calls answered false: unknown, expired, of another scope or consumed';
COMMENT ON COLUMN @extschema@.idem_stats.decrements IS 'idem_decrement calls that decremented';
COMMENT ON COLUMN @extschema@.idem_stats.decrements_insufficient IS
    'idem_decrement calls answered NULL: the row held less than n';
COMMENT ON COLUMN @extschema@.idem_stats.leases_granted IS 'idem_lease_acquire calls that returned a fencing token';
COMMENT ON COLUMN @extschema@.idem_stats.leases_refused IS
    'idem_lease_acquire calls answered NULL: another owner held the lease';
COMMENT ON COLUMN @extschema@.idem_stats.rows_purged IS
    'Expired claims, tokens and leases deleted by the purge worker and idem_purge()';
COMMENT ON COLUMN @extschema@.idem_stats.scope_events_dropped IS
    'Events of scopes that left idem_scope_stats to make room for new ones';
COMMENT ON COLUMN @extschema@.idem_stats.scopes_dropped IS
    'Scopes that left idem_scope_stats to make room for new ones (pg_idem.max_scopes)';
COMMENT ON COLUMN @extschema@.idem_stats.stats_reset IS
    'Since when these counters count: the last idem_stats_reset(), or when counting began in this database';

CREATE VIEW @extschema@.idem_scope_stats AS SELECT * FROM @extschema@.idem_scope_stats_snapshot();
COMMENT ON VIEW @extschema@.idem_scope_stats IS
    'pg_idem''s counters per scope in this database, for up to pg_idem.max_scopes scopes; the least active make room';
COMMENT ON COLUMN @extschema@.idem_scope_stats.scope IS 'The scope counted';
COMMENT ON COLUMN @extschema@.idem_scope_stats.new_claims IS
    'Claims granted: idem_claim true, idem_begin new, idem_claim_many claimed';
COMMENT ON COLUMN @extschema@.idem_scope_stats.duplicates IS
    'Claims that found a committed, unexpired claim: answered false or replay';
COMMENT ON COLUMN @extschema@.idem_scope_stats.waits IS
    'Claims that waited for a transaction holding the key, which then committed';
COMMENT ON COLUMN @extschema@.idem_scope_stats.in_progress IS
    'idem_begin calls answered in_progress (wait => false, or a key a multi-step request holds)';
COMMENT ON COLUMN @extschema@.idem_scope_stats.request_mismatches IS
    'idem_begin calls refused for a different request with the same key (IK001)';
COMMENT ON COLUMN @extschema@.idem_scope_stats.holds_started IS 'idem_hold calls answered new';
COMMENT ON COLUMN @extschema@.idem_scope_stats.holds_resumed IS 'idem_hold calls answered resume (a stalled request taken over)';
COMMENT ON COLUMN @extschema@.idem_scope_stats.holds_in_progress IS 'idem_hold calls answered in_progress (another holder''s hold is live)';
COMMENT ON COLUMN @extschema@.idem_scope_stats.holds_completed IS 'Multi-step requests completed by idem_complete';
COMMENT ON COLUMN @extschema@.idem_scope_stats.stale_fences_refused IS
    'Calls with a fence that was not the holder''s: IK004, and idem_abandon answering false';
COMMENT ON COLUMN @extschema@.idem_scope_stats.tokens_issued IS 'Tokens issued by idem_token_issue';
COMMENT ON COLUMN @extschema@.idem_scope_stats.tokens_consumed IS 'idem_token_consume calls answered true';
COMMENT ON COLUMN @extschema@.idem_scope_stats.tokens_refused IS
    'idem_token_consume calls answered false: unknown, expired, of another scope or consumed';
COMMENT ON COLUMN @extschema@.idem_scope_stats.counted_since IS 'When this scope''s row began counting';

-- They show every scope: not for PUBLIC. Monitoring roles may read the
-- counters; only the owner resets them.
REVOKE EXECUTE ON FUNCTION @extschema@.idem_stats_snapshot(), @extschema@.idem_scope_stats_snapshot(),
    @extschema@.idem_stats_reset() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idem_stats_snapshot(), @extschema@.idem_scope_stats_snapshot() TO pg_monitor;
GRANT SELECT ON @extschema@.idem_stats, @extschema@.idem_scope_stats TO pg_monitor;
