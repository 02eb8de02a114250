#include "purge.hpp"

#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "purge_internal.hpp"
#include "replication.hpp"
#include "stats.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
}

namespace idem::purge {

int interval_ms = 10000;
int batch_size = 10000;
int delay_ms = 10;
char* databases = nullptr;

namespace {

// The expired rows are found by a scan of the table in physical order, from
// where the previous statement of the same purge stopped ($3, a TID range
// scan): an index on expires_at would cost every claim an index entry. The
// LIMIT sits above the row locks, so with SKIP LOCKED a statement locks only
// rows nobody else is touching, and at most $2 of them. It answers how many
// it deleted, how many it locked (fewer than $2: it reached the end of the
// table) and the last row it looked at.
#define IDEM_DELETE_EXPIRED(table)                                                          \
    "WITH batch AS MATERIALIZED ("                                                          \
    "  SELECT ctid FROM @extschema@." table " WHERE ctid > $3 AND expires_at <= $1 "        \
    "  LIMIT $2 FOR UPDATE SKIP LOCKED), "                                                  \
    "purged AS ("                                                                           \
    "  DELETE FROM @extschema@." table " WHERE ctid = ANY (ARRAY(SELECT ctid FROM batch)) " \
    "  AND expires_at <= $1 RETURNING 1) "                                                  \
    "SELECT (SELECT pg_catalog.count(*) FROM purged), pg_catalog.count(*), pg_catalog.max(ctid) FROM batch"

pg::Statement delete_expired_claims = {IDEM_DELETE_EXPIRED("idem_claims"), 3, {TIMESTAMPTZOID, INT8OID, TIDOID}};
pg::Statement delete_expired_tokens = {IDEM_DELETE_EXPIRED("idem_tokens"), 3, {TIMESTAMPTZOID, INT8OID, TIDOID}};
// The fencing sequence is not touched: tokens keep growing after a purge.
pg::Statement delete_expired_leases = {IDEM_DELETE_EXPIRED("idem_leases"), 3, {TIMESTAMPTZOID, INT8OID, TIDOID}};

// A multi-step request's hold row expires with its claim row.
pg::Statement delete_expired_holds = {IDEM_DELETE_EXPIRED("idem_holds"), 3, {TIMESTAMPTZOID, INT8OID, TIDOID}};

struct ExpiringTable {
    const char* name;
    pg::Statement* delete_expired;
};
const ExpiringTable expiring_tables[expiring_table_count] = {{"idem_claims", &delete_expired_claims},
                                                             {"idem_tokens", &delete_expired_tokens},
                                                             {"idem_leases", &delete_expired_leases},
                                                             {"idem_holds", &delete_expired_holds}};
#undef IDEM_DELETE_EXPIRED

}  // namespace

bool next_table(Cursor* cursor)
{
    ItemPointerSet(&cursor->after[cursor->table], 0, 0);
    if (++cursor->table < expiring_table_count)
        return false;
    cursor->table = 0;
    cursor->done = true;
    return true;
}

void define_gucs()
{
    DefineCustomIntVariable("pg_idem.purge_interval", "How long the purge worker sleeps when nothing is left to purge.",
                            nullptr, &interval_ms, 10000, 10, 24 * 3600 * 1000, PGC_SUSET, GUC_UNIT_MS, nullptr,
                            nullptr, nullptr);
    DefineCustomIntVariable("pg_idem.purge_batch_size", "How many expired rows one purge transaction deletes at most.",
                            nullptr, &batch_size, 10000, 1, 1000000, PGC_SUSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("pg_idem.purge_delay", "How long the purge worker pauses between full batches.",
                            "Like vacuum's cost delay: the CPU it leaves to the claims while a backlog is purged.",
                            &delay_ms, 10, 0, 10000, PGC_SUSET, GUC_UNIT_MS, nullptr, nullptr, nullptr);
    DefineCustomStringVariable("pg_idem.database",
                               "The databases the purge workers clean: '*' for every database where pg_idem is "
                               "installed, or a comma-separated list of names; empty for none.",
                               "Needs pg_idem in shared_preload_libraries. '*' leaves out template databases.",
                               &databases, "*", PGC_SIGHUP, GUC_LIST_INPUT, check_databases, nullptr, nullptr);
}

void start_cursor(Cursor* cursor)
{
    for (auto& tid : cursor->after)
        ItemPointerSet(&tid, 0, 0);  // before the first row: offsets start at 1
    for (bool& skipped : cursor->skipped)
        skipped = false;
    cursor->table = 0;
    cursor->last_run = 0;
    cursor->done = false;
}

int64 delete_expired(Oid extension_namespace, TimestampTz now, int64 max_rows, Cursor* cursor)
{
    int64 deleted = 0, locked = 0;
    cursor->done = false;
    while (locked < max_rows) {
        int t = cursor->table;
        int64 limit = max_rows - locked;
        if (cursor->skipped[t]) {
            if (next_table(cursor))
                break;
            continue;
        }
        cursor->last_run = t;
        if (replication::subscribed(extension_namespace, expiring_tables[t].name)) {
            // The publisher's purge deletes its rows (replication.hpp).
            ereport(DEBUG1, (errmsg("pg_idem: not purging %s: a subscription replicates it into this database",
                                    expiring_tables[t].name)));
            if (next_table(cursor))
                break;
            continue;
        }
        Datum values[3] = {TimestampTzGetDatum(now), Int64GetDatum(limit), PointerGetDatum(&cursor->after[t])};
        pg::run(*expiring_tables[t].delete_expired, extension_namespace, values, nullptr);
        bool isnull, last_null;
        deleted += DatumGetInt64(pg::result_value(0, 1, &isnull));
        int64 n = DatumGetInt64(pg::result_value(0, 2, &isnull));
        Datum last = pg::result_value(0, 3, &last_null);
        locked += n;
        if (n == limit && !last_null) {
            ItemPointerCopy(reinterpret_cast<ItemPointer>(DatumGetPointer(last)),
                            &cursor->after[t]);  // more may follow
            continue;
        }
        if (next_table(cursor))
            break;
    }
    stats::count(stats::rows_purged, static_cast<uint64_t>(deleted));
    return deleted;
}

}  // namespace idem::purge

using namespace idem;

// idem_purge(max_rows integer DEFAULT NULL) RETURNS bigint
//
// In the caller's transaction, batch after batch of pg_idem.purge_batch_size,
// until max_rows (NULL: all) are gone or nothing expired is left. Its row
// locks last until the caller's transaction ends (README "Expiry and purge").
IDEM_SQL_FUNCTION(idem_purge)
{
    PreventCommandIfReadOnly("idem_purge()");
    int64 max_rows = PG_INT64_MAX;
    if (!PG_ARGISNULL(0)) {
        int32 arg = PG_GETARG_INT32(0);
        if (arg <= 0)
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("max_rows must be positive"),
                            errhint("Pass NULL to purge every expired row.")));
        max_rows = arg;
    }
    TimestampTz now = GetCurrentTimestamp();
    Oid nsp = get_func_namespace(fcinfo->flinfo->fn_oid);

    pg::connect();
    purge::Cursor cursor;
    purge::start_cursor(&cursor);
    int64 total = 0;
    for (;;) {
        int64 batch = Min(max_rows - total, static_cast<int64>(purge::batch_size));
        total += purge::delete_expired(nsp, now, batch, &cursor);
        if (cursor.done || total >= max_rows)
            break;
        CHECK_FOR_INTERRUPTS();
    }
    SPI_finish();
    PG_RETURN_INT64(total);
}
