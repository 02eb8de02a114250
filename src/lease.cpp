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
#include "pg/args.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "stats.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/timestamp.h"
}

namespace idem {
namespace {

// Grant when the name is free, expired, or held by the same owner; the same
// owner's unexpired lease keeps its token. Times are parameters; nextval
// stands in VALUES, never in the ON CONFLICT clause.
pg::Statement acquire_lease = {
    "INSERT INTO @extschema@.idem_leases AS l (name, owner, fencing_token, acquired_at, expires_at) "
    "VALUES ($1, $2, pg_catalog.nextval('@extschema@.idem_lease_fencing'), $3, $4) "
    "ON CONFLICT (name) DO UPDATE SET "
    "  owner = excluded.owner, expires_at = excluded.expires_at, "
    "  fencing_token = CASE WHEN l.owner = excluded.owner AND l.expires_at > $3 "
    "                       THEN l.fencing_token ELSE excluded.fencing_token END, "
    "  acquired_at = CASE WHEN l.owner = excluded.owner AND l.expires_at > $3 "
    "                     THEN l.acquired_at ELSE excluded.acquired_at END "
    "WHERE l.owner = excluded.owner OR l.expires_at <= $3 "
    "RETURNING fencing_token",
    4, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}};

pg::Statement release_lease = {
    "DELETE FROM @extschema@.idem_leases WHERE name = $1 AND owner = $2 AND expires_at > $3",
    3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}};

pg::Statement check_lease = {
    "SELECT 1 FROM @extschema@.idem_leases WHERE name = $1 AND fencing_token = $2 AND expires_at > $3",
    3, {TEXTOID, INT8OID, TIMESTAMPTZOID}};

Datum lease_name_arg(FunctionCallInfo fcinfo, int argno, const char* name)
{
    if (PG_ARGISNULL(argno)) {
        checked_lease_name(name, nullptr);  // throws 22004
    }
    text* t = PG_GETARG_TEXT_PP(argno);
    Text view{VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)};
    checked_lease_name(name, &view);
    return PointerGetDatum(t);
}

void connect_spi()
{
    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "pg_idem: SPI_connect failed");
}

}  // namespace
}  // namespace idem

using namespace idem;

// idem_lease_acquire(name text, owner text, ttl interval) RETURNS bigint
IDEM_SQL_FUNCTION(idem_lease_acquire)
{
    return pg::guarded([&]() -> Datum {
        PreventCommandIfReadOnly("idem_lease_acquire()");
        Datum name = lease_name_arg(fcinfo, 0, "name");
        Datum owner = lease_name_arg(fcinfo, 1, "owner");
        TimestampTz now = GetCurrentTimestamp();
        pg::Expiry expiry = pg::expiry_arg(fcinfo, 2, "ttl", now, false);

        connect_spi();
        Datum values[4] = {name, owner, TimestampTzGetDatum(now), TimestampTzGetDatum(expiry.at)};
        bool granted = pg::run(acquire_lease, fcinfo, values, nullptr) == 1;
        int64 token = 0;
        if (granted) {
            bool isnull;
            token = DatumGetInt64(pg::result_value(0, 1, &isnull));
        }
        SPI_finish();
        stats::count(granted ? stats::lease_granted : stats::lease_refused);
        if (!granted)
            PG_RETURN_NULL();  // another owner holds it, unexpired
        PG_RETURN_INT64(token);
    });
}

// idem_lease_release(name text, owner text) RETURNS boolean
IDEM_SQL_FUNCTION(idem_lease_release)
{
    return pg::guarded([&]() -> Datum {
        PreventCommandIfReadOnly("idem_lease_release()");
        Datum name = lease_name_arg(fcinfo, 0, "name");
        Datum owner = lease_name_arg(fcinfo, 1, "owner");
        connect_spi();
        Datum values[3] = {name, owner, TimestampTzGetDatum(GetCurrentTimestamp())};
        bool released = pg::run(release_lease, fcinfo, values, nullptr) == 1;
        SPI_finish();
        PG_RETURN_BOOL(released);
    });
}

// idem_lease_check(name text, fencing_token bigint) RETURNS boolean
IDEM_SQL_FUNCTION(idem_lease_check)
{
    return pg::guarded([&]() -> Datum {
        Datum name = lease_name_arg(fcinfo, 0, "name");
        if (PG_ARGISNULL(1))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("fencing_token must not be NULL")));
        connect_spi();
        Datum values[3] = {name, PG_GETARG_DATUM(1), TimestampTzGetDatum(GetCurrentTimestamp())};
        bool held = pg::run(check_lease, fcinfo, values, nullptr) == 1;
        SPI_finish();
        PG_RETURN_BOOL(held);
    });
}
