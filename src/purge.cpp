#include "purge.hpp"

#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "stats.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/lsyscache.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
}

namespace idem::purge {

int interval_ms = 10000;
int batch_size = 10000;
int delay_ms = 10;
char* databases = nullptr;

namespace {

// The expired rows are found by a sequential scan: an index on expires_at
// would cost every claim an index entry, and a scan that stops after
// `batch_size` hits is cheap. The LIMIT sits above the row locks, so with
// SKIP LOCKED a batch takes only rows nobody else is touching.
pg::Statement delete_expired_claims = {
    "DELETE FROM @extschema@.idem_claims "
    "WHERE ctid = ANY (ARRAY(SELECT ctid FROM @extschema@.idem_claims "
    "                        WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)) "
    "AND expires_at <= $1",
    2, {TIMESTAMPTZOID, INT8OID}};

pg::Statement delete_expired_tokens = {
    "DELETE FROM @extschema@.idem_tokens "
    "WHERE ctid = ANY (ARRAY(SELECT ctid FROM @extschema@.idem_tokens "
    "                        WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)) "
    "AND expires_at <= $1",
    2, {TIMESTAMPTZOID, INT8OID}};

// The fencing sequence is not touched: tokens keep growing after a purge.
pg::Statement delete_expired_leases = {
    "DELETE FROM @extschema@.idem_leases "
    "WHERE ctid = ANY (ARRAY(SELECT ctid FROM @extschema@.idem_leases "
    "                        WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)) "
    "AND expires_at <= $1",
    2, {TIMESTAMPTZOID, INT8OID}};

pg::Statement* const expiring_tables[] = {&delete_expired_claims, &delete_expired_tokens, &delete_expired_leases};

}  // namespace

void define_gucs()
{
    DefineCustomIntVariable("pg_idem.purge_interval",
                            "How long the purge worker sleeps when nothing is left to purge.",
                            nullptr, &interval_ms, 10000, 10, 24 * 3600 * 1000, PGC_SUSET, GUC_UNIT_MS,
                            nullptr, nullptr, nullptr);
    DefineCustomIntVariable("pg_idem.purge_batch_size",
                            "How many expired rows one purge transaction deletes at most.",
                            nullptr, &batch_size, 10000, 1, 1000000, PGC_SUSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("pg_idem.purge_delay",
                            "How long the purge worker pauses between full batches.",
                            "Like vacuum's cost delay: the CPU it leaves to the claims while a backlog is purged.",
                            &delay_ms, 10, 0, 10000, PGC_SUSET, GUC_UNIT_MS, nullptr, nullptr, nullptr);
}

int64 delete_expired(Oid extension_namespace, TimestampTz now, int64 max_rows)
{
    int64 deleted = 0;
    for (pg::Statement* stmt : expiring_tables) {
        if (deleted >= max_rows)
            break;
        Datum values[2] = {TimestampTzGetDatum(now), Int64GetDatum(max_rows - deleted)};
        deleted += static_cast<int64>(pg::run(*stmt, extension_namespace, values, nullptr));
    }
    stats::count(stats::rows_purged, static_cast<uint64_t>(deleted));
    return deleted;
}

}  // namespace idem::purge

using namespace idem;

// idem_purge(max_rows integer DEFAULT NULL) RETURNS bigint
//
// In the caller's transaction, batch after batch of pg_idem.purge_batch_size,
// until max_rows (NULL: all) are gone or nothing expired is left.
IDEM_SQL_FUNCTION(idem_purge)
{
    return pg::guarded([&]() -> Datum {
        PreventCommandIfReadOnly("idem_purge()");
        int64 max_rows = PG_INT64_MAX;
        if (!PG_ARGISNULL(0)) {
            int32 arg = PG_GETARG_INT32(0);
            if (arg <= 0)
                ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                                errmsg("max_rows must be positive"),
                                errhint("Pass NULL to purge every expired row.")));
            max_rows = arg;
        }
        TimestampTz now = GetCurrentTimestamp();
        Oid nsp = get_func_namespace(fcinfo->flinfo->fn_oid);

        pg::connect();
        int64 total = 0;
        for (;;) {
            int64 batch = Min(max_rows - total, static_cast<int64>(purge::batch_size));
            int64 n = purge::delete_expired(nsp, now, batch);
            total += n;
            if (n < batch || total >= max_rows)
                break;
            CHECK_FOR_INTERRUPTS();
        }
        SPI_finish();
        PG_RETURN_INT64(total);
    });
}
