// Leases: locks with expiry and fencing tokens (SPEC "Leases").
//
// A lease is a row of idem_leases written in the caller's transaction, so it
// commits or rolls back with the work it guards. Every grant takes a fencing
// token from one sequence, idem_lease_fencing: tokens only ever grow, for
// every name, also after a lease expired and the purge deleted its row, and
// across crashes, failover (nextval is logged before its value is used, and
// a commit flushes that record) and dump/restore (the sequence is dumped).
// A holder that paused past its TTL can still write; what stops it is the
// protected resource refusing a token older than the last one it accepted
// (README "Leases").
#include "citus.hpp"
#include "pg/args.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "stats.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
}

namespace idem {
namespace {

// Acquiring first reads the lease without locking it: held unexpired by
// another owner, it is refused at once, and a contender polling inside a
// long transaction never holds a lock that would block the holder's
// extension or release. Otherwise it takes the row lock and decides again,
// by the clock at that moment: a concurrent acquirer of the same name waits
// for this transaction, and a new fencing token is drawn only while the row
// is locked, so a later grant always draws a larger one. (A token drawn
// before the wait could be smaller than the one the other transaction was
// granted.) Times and tokens are computed here and passed as parameters.
pg::Statement peek_lease = {
    "SELECT owner = $2, expires_at FROM @extschema@.idem_leases WHERE name = $1", 2, {TEXTOID, TEXTOID}};

pg::Statement lock_lease = {
    "SELECT owner = $2, expires_at, fencing_token FROM @extschema@.idem_leases WHERE name = $1 FOR UPDATE",
    2,
    {TEXTOID, TEXTOID}};

pg::Statement next_fencing_token = {"SELECT pg_catalog.nextval('@extschema@.idem_lease_fencing')", 0, {}};

// A name nobody holds: insert the row, which locks it, then grant it as
// below. A concurrent first acquirer makes this wait and then do nothing;
// the caller goes back to lock_lease.
pg::Statement insert_lease = {
    "INSERT INTO @extschema@.idem_leases (name, owner, fencing_token, acquired_at, expires_at) "
    "VALUES ($1, '', 0, '-infinity', '-infinity') ON CONFLICT (name) DO NOTHING",
    1,
    {TEXTOID}};

// A new holder of a locked row (new, or the last holder's lease expired).
pg::Statement grant_lease = {
    "UPDATE @extschema@.idem_leases SET owner = $2, fencing_token = $3, acquired_at = $4, expires_at = $5 "
    "WHERE name = $1",
    5,
    {TEXTOID, TEXTOID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID}};

pg::Statement extend_lease = {
    "UPDATE @extschema@.idem_leases SET expires_at = $2 WHERE name = $1", 2, {TEXTOID, TIMESTAMPTZOID}};

// A lease expired when the call began is left to the purge. The DELETE may
// wait for the owner's other transaction; `true` only if the lease was still
// held by the clock after it.
pg::Statement release_lease = {
    "DELETE FROM @extschema@.idem_leases WHERE name = $1 AND owner = $2 AND expires_at > $3 RETURNING expires_at",
    3,
    {TEXTOID, TEXTOID, TIMESTAMPTZOID}};

pg::Statement check_lease = {
    "SELECT 1 FROM @extschema@.idem_leases WHERE name = $1 AND fencing_token = $2 AND expires_at > $3",
    3,
    {TEXTOID, INT8OID, TIMESTAMPTZOID}};

// Rounds of "insert, or lock and decide" before giving up with 40001: each
// lost round means another transaction inserted or deleted the row meanwhile.
constexpr int max_acquire_rounds = 100;

// A new fencing token, drawn while this transaction holds the lease's row
// lock. Runs inside SPI_connect.
int64 fencing_token(FunctionCallInfo fcinfo)
{
    pg::run(next_fencing_token, fcinfo, nullptr, nullptr);
    bool isnull;
    return DatumGetInt64(pg::result_value(0, 1, &isnull));
}

// The ends of idem_lease_acquire: granted, or refused because another
// owner holds the lease unexpired (NULL).
Datum granted(int64 token)
{
    SPI_finish();
    stats::count(stats::lease_granted);
    return Int64GetDatum(token);
}

Datum refused(FunctionCallInfo fcinfo)
{
    SPI_finish();
    stats::count(stats::lease_refused);
    PG_RETURN_NULL();
}

}  // namespace
}  // namespace idem

using namespace idem;

// idem_lease_acquire(name text, owner text, ttl interval) RETURNS bigint
IDEM_SQL_FUNCTION(idem_lease_acquire)
{
    PreventCommandIfReadOnly("idem_lease_acquire()");
    Datum name = pg::lease_name_arg(fcinfo, 0, "name");
    Datum owner = pg::lease_name_arg(fcinfo, 1, "owner");
    pg::Ttl ttl = pg::ttl_arg(fcinfo, 2, "ttl", false);

    pg::connect();
    citus::require_coordinator(get_func_namespace(fcinfo->flinfo->fn_oid), "idem_lease_acquire()",
                               "Its fencing tokens come from the coordinator's sequence: each node has its own, and "
                               "tokens from two could go backwards.");
    Datum names[2] = {name, owner};
    if (pg::run(peek_lease, fcinfo, names, nullptr) == 1) {
        bool same_owner, isnull;
        same_owner = DatumGetBool(pg::result_value(0, 1, &isnull));
        TimestampTz expires_at = DatumGetTimestampTz(pg::result_value(0, 2, &isnull));
        if (!same_owner && GetCurrentTimestamp() < expires_at)
            return refused(fcinfo);
    }
    for (int round = 0; round < max_acquire_rounds; round++) {
        bool same_owner = false, isnull;
        TimestampTz expires_at = DT_NOBEGIN;
        int64 token = 0;
        if (pg::run(lock_lease, fcinfo, names, nullptr) == 1) {
            same_owner = DatumGetBool(pg::result_value(0, 1, &isnull));
            expires_at = DatumGetTimestampTz(pg::result_value(0, 2, &isnull));
            token = DatumGetInt64(pg::result_value(0, 3, &isnull));
        } else if (pg::run(insert_lease, fcinfo, names, nullptr) == 0) {
            continue;  // a concurrent first acquirer inserted it
        }
        TimestampTz now = GetCurrentTimestamp();
        TimestampTz new_expiry = pg::expiry_at(ttl, now).at;
        if (now < expires_at && !same_owner)
            return refused(fcinfo);
        if (now < expires_at) {
            Datum values[2] = {name, TimestampTzGetDatum(new_expiry)};
            pg::run(extend_lease, fcinfo, values, nullptr);
            return granted(token);  // the same owner keeps its token
        }
        token = fencing_token(fcinfo);
        Datum values[5] = {name, owner, Int64GetDatum(token), TimestampTzGetDatum(now),
                           TimestampTzGetDatum(new_expiry)};
        pg::run(grant_lease, fcinfo, values, nullptr);
        return granted(token);
    }
    ereport(ERROR, (errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
                    errmsg("could not acquire the lease: concurrent transactions kept changing it")));
    pg_unreachable();
}

// idem_lease_release(name text, owner text) RETURNS boolean
IDEM_SQL_FUNCTION(idem_lease_release)
{
    PreventCommandIfReadOnly("idem_lease_release()");
    Datum name = pg::lease_name_arg(fcinfo, 0, "name");
    Datum owner = pg::lease_name_arg(fcinfo, 1, "owner");
    pg::connect();
    Datum values[3] = {name, owner, TimestampTzGetDatum(GetCurrentTimestamp())};
    bool released = false;
    if (pg::run(release_lease, fcinfo, values, nullptr) == 1) {
        bool isnull;
        released = GetCurrentTimestamp() < DatumGetTimestampTz(pg::result_value(0, 1, &isnull));
    }
    SPI_finish();
    PG_RETURN_BOOL(released);
}

// idem_lease_check(name text, fencing_token bigint) RETURNS boolean
IDEM_SQL_FUNCTION(idem_lease_check)
{
    Datum name = pg::lease_name_arg(fcinfo, 0, "name");
    pg::require_arg(fcinfo, 1, "fencing_token");
    pg::connect();
    Datum values[3] = {name, PG_GETARG_DATUM(1), TimestampTzGetDatum(GetCurrentTimestamp())};
    bool held = pg::run(check_lease, fcinfo, values, nullptr) == 1;
    SPI_finish();
    PG_RETURN_BOOL(held);
}
