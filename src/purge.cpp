#include "purge.hpp"

#include "citus.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "purge_internal.hpp"
#include "replication.hpp"
#include "stats.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
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
// table) and the last row it looked at. Both %s are the table: pg_idem's
// own, or one of its Citus shards on this node (a TID names a row of one
// shard, and Citus refuses FOR UPDATE across shards). Made per statement: a
// plan costs little beside a batch.
constexpr const char* delete_expired_sql =
    "WITH batch AS MATERIALIZED ("
    "  SELECT ctid FROM %s WHERE ctid > $3 AND expires_at <= $1 "
    "  LIMIT $2 FOR UPDATE SKIP LOCKED), "
    "purged AS ("
    "  DELETE FROM %s WHERE ctid = ANY (ARRAY(SELECT ctid FROM batch)) "
    "  AND expires_at <= $1 RETURNING 1) "
    "SELECT (SELECT pg_catalog.count(*) FROM purged), pg_catalog.count(*), pg_catalog.max(ctid) FROM batch";

// The tables with an expiry, in the order the purge visits them. A
// multi-step request's hold row expires with its claim row. The fencing
// sequences are not touched: fences keep growing after a purge.
const char* const expiring_tables[expiring_table_count] = {"idem_claims", "idem_tokens", "idem_leases", "idem_holds"};

// The relation the cursor's next statement deletes from, quoted; nullptr
// when the table has nothing (more) on this node: where Citus distributed
// it, its rows are in shards, and the cursor goes through those placed here.
const char* relation_to_purge(Oid nsp, Cursor* cursor)
{
    int t = cursor->table;
    Oid rel = get_relname_relid(expiring_tables[t], nsp);
    if (!OidIsValid(rel))
        return nullptr;
    if (!citus::is_citus_table(nsp, rel))  // the table itself: one "shard"
        return cursor->shard[t] == 0 ? quote_qualified_identifier(get_namespace_name(nsp), expiring_tables[t])
                                     : nullptr;
    List* shards = citus::local_shards(nsp, rel);
    if (cursor->shard[t] >= list_length(shards))
        return nullptr;
    return static_cast<const char*>(list_nth(shards, cursor->shard[t]));
}

// Past the end of the cursor's relation: on to the table's next shard on
// this node, if it has one.
bool next_shard(Oid nsp, Cursor* cursor)
{
    int t = cursor->table;
    ItemPointerSet(&cursor->after[t], 0, 0);
    cursor->shard[t]++;
    return relation_to_purge(nsp, cursor) != nullptr;
}

}  // namespace

bool next_table(Cursor* cursor)
{
    ItemPointerSet(&cursor->after[cursor->table], 0, 0);
    cursor->shard[cursor->table] = 0;
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
    for (int& shard : cursor->shard)
        shard = 0;
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
        if (replication::subscribed(extension_namespace, expiring_tables[t])) {
            // The publisher's purge deletes its rows (replication.hpp).
            ereport(DEBUG1, (errmsg("pg_idem: not purging %s: a subscription replicates it into this database",
                                    expiring_tables[t])));
            if (next_table(cursor))
                break;
            continue;
        }
        const char* relation = relation_to_purge(extension_namespace, cursor);
        if (relation == nullptr) {
            if (next_table(cursor))
                break;
            continue;
        }
        Oid types[3] = {TIMESTAMPTZOID, INT8OID, TIDOID};
        Datum values[3] = {TimestampTzGetDatum(now), Int64GetDatum(limit), PointerGetDatum(&cursor->after[t])};
        pg::run_once(psprintf(delete_expired_sql, relation, relation), 3, types, values, nullptr);
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
        if (next_shard(extension_namespace, cursor))
            continue;
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
