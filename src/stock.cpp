// Hot stock (SPEC "Hot stock"): the SQL functions, the statements and table
// readers, and adding and taking through an entry. stock_internal.hpp has the
// design: escrow in shared memory, by row, and why the two never both decide
// for one item.
#include "stock.hpp"
#include "stock_internal.hpp"

#include "citus.hpp"
#include "core/key.hpp"
#include "pg/args.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "replication.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "common/int.h"
#include "common/pg_prng.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
}

#include <cstring>

namespace idem::stock {
namespace {

// ---- Statements -----------------------------------------------------------

pg::Statement load_item = {"SELECT (i.level + coalesce((SELECT sum(l.delta) FROM @extschema@.idem_stock_ledger l "
                           "                            WHERE l.item = i.item), 0))::bigint "
                           "FROM @extschema@.idem_stock_items i WHERE i.item = $1",
                           1,
                           {TEXTOID}};

// Locks the item's row for a take or an add by row, until the transaction
// ends; waits for the transaction holding it.
pg::Statement lock_item = {"SELECT FROM @extschema@.idem_stock_items WHERE item = $1 FOR UPDATE", 1, {TEXTOID}};

pg::Statement find_item = {"SELECT FROM @extschema@.idem_stock_items WHERE item = $1", 1, {TEXTOID}};

pg::Statement create_item = {
    "INSERT INTO @extschema@.idem_stock_items (item, level) VALUES ($1, 0) ON CONFLICT (item) DO NOTHING",
    1,
    {TEXTOID}};

pg::Statement append_ledger = {
    "INSERT INTO @extschema@.idem_stock_ledger (item, delta, id) VALUES ($1, $2, $3)", 3, {TEXTOID, INT8OID, UUIDOID}};

pg::Statement all_items = {
    "SELECT i.item, (i.level + coalesce(l.delta, 0))::bigint "
    "FROM @extschema@.idem_stock_items i "
    "LEFT JOIN (SELECT item, sum(delta) AS delta FROM @extschema@.idem_stock_ledger GROUP BY item) l "
    "ON l.item = i.item ORDER BY i.item",
    0,
    {}};

// Moves committed ledger rows into their items' levels, in one statement so
// that an item's row plus its ledger never changes. It moves every committed
// row of up to $1 items that have ledger rows: the item's row plus all of
// them is the item's committed level, which stays within bigint where a
// partial sum might not. A ledger row whose item has no row is left alone:
// no row is ever deleted without its delta being applied. Items whose rows
// are locked (takes and adds by row in flight, which hold them until their
// transactions end) are skipped, not waited for, so that an open
// transaction cannot stall the fold; they are folded in a later round.
pg::Statement fold_ledger = {"WITH chosen AS MATERIALIZED ( "
                             "       SELECT i.item FROM @extschema@.idem_stock_items i "
                             "       WHERE i.item IN (SELECT item FROM @extschema@.idem_stock_ledger) "
                             "       LIMIT $1 FOR NO KEY UPDATE OF i SKIP LOCKED), "
                             "     moved AS (DELETE FROM @extschema@.idem_stock_ledger l USING chosen c "
                             "               WHERE l.item = c.item "
                             "               RETURNING l.item, l.delta), "
                             "     sums AS (SELECT item, sum(delta) AS delta FROM moved GROUP BY item), "
                             "     applied AS (UPDATE @extschema@.idem_stock_items i SET level = i.level + s.delta "
                             "                 FROM sums s WHERE i.item = s.item) "
                             "SELECT count(*)::bigint FROM moved",
                             1,
                             {INT8OID}};

// ---- Arguments ------------------------------------------------------------

void require_preloaded()
{
    if (entries == nullptr)
        pg::raise_needs_preload("hot stock");
}

EntryKey entry_key(Oid nsp, const Item& item)
{
    EntryKey key;
    std::memset(&key, 0, sizeof key);
    key.database = MyDatabaseId;
    key.items_table = get_relname_relid("idem_stock_items", nsp);
    std::memcpy(key.item, item.text.data, item.text.size);
    return key;
}

StockItem stock_item(Oid nsp, Datum name, const Item& item)
{
    StockItem s;
    s.name = name;
    s.item = item;
    s.nsp = nsp;
    s.key = entry_key(nsp, item);
    s.hash = get_hash_value(entries, &s.key);
    return s;
}

// Argument 0 of every stock function.
StockItem item_arg(FunctionCallInfo fcinfo)
{
    Oid nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
    pg::ItemArg arg = pg::item_arg(fcinfo, 0, "item");
    return stock_item(nsp, arg.datum, arg.item);
}

int64 units_arg(FunctionCallInfo fcinfo, int argno)
{
    if (PG_ARGISNULL(argno))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("n must not be NULL")));
    int64 n = PG_GETARG_INT64(argno);
    if (n <= 0)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("n must be a positive number of units, got " INT64_FORMAT, n)));
    return n;
}

// What idem_stock_add and idem_stock_take are called with.
struct StockChange {
    StockItem s;
    int64 n;
};

StockChange stock_change(FunctionCallInfo fcinfo, const char* function_name)
{
    require_preloaded();
    PreventCommandIfReadOnly(function_name);
    StockChange c;
    c.s = item_arg(fcinfo);
    c.n = units_arg(fcinfo, 1);
    return c;
}

[[noreturn]] void raise_unknown_item(const StockItem& s)
{
    ereport(ERROR,
            (errcode(ERRCODE_NO_DATA_FOUND), errmsg("item %s is not stocked", pg::key_for_message(Key{s.item.text})),
             errhint("Add units with idem_stock_add() first.")));
    pg_unreachable();
}

// ---- The tables -----------------------------------------------------------

// The item's level in the tables (its row plus its ledger rows); false if
// it has no row. Read with the latest snapshot (`committed_only`: without
// this transaction's own rows), never the caller's.
bool read_level(const StockItem& s, bool committed_only, int64* level)
{
    Datum values[1] = {s.name};
    uint64 rows = committed_only ? pg::run_committed(load_item, s.nsp, values, nullptr)
                                 : pg::run_latest(load_item, s.nsp, values, nullptr);
    if (rows == 0)
        return false;
    bool isnull;
    *level = DatumGetInt64(pg::result_value(0, 1, &isnull));
    return true;
}

}  // namespace

// The level to load or to decide on by row. Never under the caller's
// snapshot: what is loaded here becomes the item's shared level for every
// transaction, and a caller's REPEATABLE READ snapshot can be older than
// sales already committed (taken on a standby before its promotion, say).
// The latest snapshot also sees this transaction's own rows: its item row,
// so an add of a new item finds it, and its ledger rows, which only takes
// and adds by row hold for an item without an entry (their marks keep it
// from being loaded).
bool level_from_tables(const StockItem& s, int64* level)
{
    return read_level(s, false, level);
}

namespace {

// The committed level in the tables, without this transaction's own takes
// and adds by row (idem_stock_level counts commits only); false if the item
// has no committed row.
bool committed_level(const StockItem& s, int64* level)
{
    return read_level(s, true, level);
}

// Whether the item has a row in idem_stock_items (committed, or this
// transaction's own). Asked before an add, and where shared memory says 0: an
// add that rolled back can leave an entry for an item that does not exist.
// Shared memory alone says what the level is.
bool item_exists(const StockItem& s)
{
    Datum values[1] = {s.name};
    return pg::run_latest(find_item, s.nsp, values, nullptr) > 0;
}

// Makes sure the item has a row in idem_stock_items, inserting it in the
// caller's transaction if not. So every ledger row belongs to an item row
// committed with it or before it, and the fold can apply it. (The row used to
// be inserted only when shared memory had no entry for the item, but an entry
// outlives a rolled-back add and is shared with a concurrent one.) ON
// CONFLICT waits for a concurrent insert of the same row.
void ensure_item_row(const StockItem& s)
{
    if (!item_exists(s)) {
        Datum values[1] = {s.name};
        pg::run(create_item, s.nsp, values, nullptr);
    }
}

// A ledger row's key: the time in milliseconds first, then random bits (the
// layout of a version 7 UUID), so that the takes of a flash sale append to
// the right end of the key's index instead of touching its pages at random,
// each of which costs a full-page image in the WAL after a checkpoint.
pg_uuid_t ledger_key()
{
    pg_uuid_t id;
    uint64 ms =
        static_cast<uint64>(GetCurrentTimestamp() / 1000 + (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * 86400000LL);
    uint64 random[2] = {pg_prng_uint64(&pg_global_prng_state), pg_prng_uint64(&pg_global_prng_state)};
    for (int i = 0; i < 6; i++)
        id.data[i] = static_cast<unsigned char>(ms >> (40 - 8 * i));
    std::memcpy(id.data + 6, random, UUID_LEN - 6);
    id.data[6] = static_cast<unsigned char>((id.data[6] & 0x0F) | 0x70);  // version 7
    id.data[8] = static_cast<unsigned char>((id.data[8] & 0x3F) | 0x80);  // the RFC 4122 variant
    return id;
}

}  // namespace

void append_to_ledger(const StockItem& s, int64 delta)
{
    pg_uuid_t id = ledger_key();
    Datum values[3] = {s.name, Int64GetDatum(delta), UUIDPGetDatum(&id)};
    pg::run(append_ledger, s.nsp, values, nullptr);
}

// Locks the item's row (waiting for the transaction that holds it) and reads
// its committed level after that wait, so that every change by row committed
// before counts; P0002 if the item has no row. This transaction's own
// changes by row are in its RowHeld, not in this level.
int64 lock_row_level(const StockItem& s)
{
    Datum values[1] = {s.name};
    if (pg::run_latest(lock_item, s.nsp, values, nullptr) == 0)
        raise_unknown_item(s);
    int64 level;
    if (!committed_level(s, &level))
        level = 0;  // its row is this transaction's own: a new item
    return level;
}

[[noreturn]] void raise_beyond_bigint(const StockItem& s, int64 n)
{
    ereport(ERROR, (errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
                    errmsg("n = " INT64_FORMAT " would take item %s beyond the bigint range", n,
                           pg::key_for_message(Key{s.item.text})),
                    errdetail("Units being added by transactions still in flight count too.")));
    pg_unreachable();
}

namespace {

// While a subscription replicates the stock tables into this database, the
// publisher's takes and adds arrive in the tables, not through shared
// memory: an entry would not follow them, and would oversell after a
// switchover. Takes and adds are refused (55000) instead, and levels are
// read from the tables.
void refuse_if_subscribed(const StockItem& s)
{
    if (!replication::stock_subscribed(s.nsp))
        return;
    ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                    errmsg("item %s is replicated into this database by a subscription",
                           pg::key_for_message(Key{s.item.text})),
                    errdetail("Shared memory would not follow the publisher's takes and adds."),
                    errhint("Take and add on the publisher; once the application has switched over to this "
                            "database, drop the subscription.")));
}

// Hot stock's shared memory and tables are per node (citus.hpp): on a Citus
// worker, or with its tables made Citus tables (a reference table is written
// on every node, while each node's shared memory sells on its own), two nodes
// would sell the same units. Only the coordinator's own tables are right.
void refuse_if_sharded(const StockItem& s)
{
    if (!citus::loaded())
        return;
    citus::require_coordinator(s.nsp, "hot stock",
                               "Each node has its own shared memory and stock tables: two nodes would sell one item's "
                               "units twice.");
    for (const char* table : {"idem_stock_items", "idem_stock_ledger"})
        if (citus::is_citus_table(s.nsp, get_relname_relid(table, s.nsp)))
            ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                            errmsg("hot stock cannot take or add item %s: %s is a Citus table",
                                   pg::key_for_message(Key{s.item.text}), table),
                            errdetail("Each node's shared memory would sell the same units."),
                            errhint("Hot stock runs on the Citus coordinator, with its tables local there, as "
                                    "idem_distribute() leaves them.")));
}

// ---- Adding and taking ----------------------------------------------------

// Counts n units as added by this transaction, in its Held of the entry
// (entries_lock held); false if the level could pass bigint were every add
// in flight, this one included, to commit. Sets *level to the committed
// level.
bool reserve_add(Held* held, int64 n, int64* level)
{
    Entry* entry = held->entry;
    SpinLockAcquire(&entry->mutex);
    entry->recently_used = true;
    *level = entry->level;
    int64 if_all_commit;
    bool fits = !pg_add_s64_overflow(entry->level, entry->adding, &if_all_commit) &&
                !pg_add_s64_overflow(if_all_commit, n, &if_all_commit);
    if (fits)
        entry->adding += n;
    SpinLockRelease(&entry->mutex);
    if (fits)
        record(held, 0, n);
    return fits;
}

enum class Take { reserved, short_of_units, held_in_flight };

// Reserves n units of the entry for this transaction, in its Held, if level
// - in_flight covers them (entries_lock held). Otherwise the shortfall is
// real when even the return of every other transaction's units would not
// cover n (this transaction's own stay taken); if not, the take will sleep
// until units of the item settle. Sets *level to the committed level.
Take reserve_take(Held* held, int64 n, int64* level)
{
    Entry* entry = held->entry;
    SpinLockAcquire(&entry->mutex);
    entry->recently_used = true;
    *level = entry->level;
    Take take = Take::held_in_flight;
    if (entry->level - entry->in_flight >= n) {
        entry->in_flight += n;
        take = Take::reserved;
    } else if (entry->level - held->taken < n) {
        take = Take::short_of_units;
    } else {
        entry->sleepers = true;
    }
    SpinLockRelease(&entry->mutex);
    if (take == Take::reserved)
        record(held, n, 0);
    return take;
}

}  // namespace

void init_preloaded()
{
    DefineCustomIntVariable("pg_idem.max_stock_items", "How many hot-stock items shared memory holds.",
                            "Items with nothing in flight leave shared memory when room is needed, "
                            "and are loaded from the tables again on next use; while there is no room, "
                            "takes and adds of other items lock their rows instead.",
                            &max_items, 10000, 1, 10000000, PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = request_shmem;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = startup_shmem;
    RegisterXactCallback(on_xact, nullptr);
    RegisterSubXactCallback(on_subxact, nullptr);
}

int64 fold_committed_ledger(Oid extension_namespace, int64 max_rows)
{
    Datum values[1] = {Int64GetDatum(max_rows)};
    pg::run(fold_ledger, extension_namespace, values, nullptr);
    bool isnull;
    return DatumGetInt64(pg::result_value(0, 1, &isnull));
}

}  // namespace idem::stock

using namespace idem;
using namespace idem::stock;

// idem_stock_add(item text, n bigint) RETURNS bigint
IDEM_SQL_FUNCTION(idem_stock_add)
{
    StockChange c = stock_change(fcinfo, "idem_stock_add()");
    pg::connect();
    refuse_if_sharded(c.s);
    refuse_if_subscribed(c.s);
    ensure_item_row(c.s);
    prepare_book();
    for (;;) {
        Entry* entry;
        Route route = route_locked(c.s, &entry);
        if (route == Route::no_item)
            raise_unknown_item(c.s);  // its row was deleted under us
        if (route == Route::by_row) {
            if (!mark_for_row(c.s))
                continue;  // it has an entry now: add through it
            int64 level = add_by_row(c.s, c.n);
            SPI_finish();
            PG_RETURN_INT64(level);
        }
        Held* held = held_for(entry);
        int64 own_delta = held->added - held->taken;
        int64 level;
        bool fits = reserve_add(held, c.n, &level);
        forget_if_empty(held);
        LWLockRelease(entries_lock);
        if (!fits)
            raise_beyond_bigint(c.s, c.n);
        append_to_ledger(c.s, c.n);
        SPI_finish();
        PG_RETURN_INT64(level + own_delta + c.n);  // within range: level + adding + n is
    }
}

// idem_stock_take(item text, n bigint) RETURNS boolean
IDEM_SQL_FUNCTION(idem_stock_take)
{
    StockChange c = stock_change(fcinfo, "idem_stock_take()");
    pg::connect();
    refuse_if_sharded(c.s);
    refuse_if_subscribed(c.s);
    prepare_book();
    UnitWait wait = {};
    for (;;) {
        Entry* entry;
        Route route = route_locked(c.s, &entry);
        if (route == Route::no_item) {
            end_wait(&wait);
            raise_unknown_item(c.s);
        }
        if (route == Route::by_row) {
            if (!mark_for_row(c.s))
                continue;  // it has an entry now: take through it
            end_wait(&wait);
            bool took = take_by_row(c.s, c.n);
            SPI_finish();
            PG_RETURN_BOOL(took);
        }
        Held* held = held_for(entry);
        int64 level;
        Take take = reserve_take(held, c.n, &level);
        forget_if_empty(held);
        TransactionId blocked = take == Take::held_in_flight ? blocked_holder(entry) : InvalidTransactionId;
        LWLockRelease(entries_lock);
        if (take == Take::reserved) {
            end_wait(&wait);
            publish_holding(entry);
            break;
        }
        if (take == Take::short_of_units) {
            end_wait(&wait);
            if (level == 0 && !item_exists(c.s))
                raise_unknown_item(c.s);
            SPI_finish();
            PG_RETURN_BOOL(false);
        }
        wait_for_units(&wait, c.s, blocked);
    }
    append_to_ledger(c.s, -c.n);
    SPI_finish();
    PG_RETURN_BOOL(true);
}

// idem_stock_level(item text) RETURNS bigint: units left after every
// committed take and add. An item shared memory holds no entry for has its
// committed level in the tables (takes and adds by row in flight are
// uncommitted ledger rows, not read); reading it there loads nothing, so a
// read never evicts an entry. (On a standby shared memory holds no entry at
// all: takes and adds load them.) While a subscription replicates the stock
// tables, the tables have the level, whatever an entry says.
IDEM_SQL_FUNCTION(idem_stock_level)
{
    require_preloaded();
    StockItem s = item_arg(fcinfo);
    pg::connect();
    refuse_if_sharded(s);
    int64 level;
    Entry* entry = replication::stock_subscribed(s.nsp) ? nullptr : find_locked(s);
    if (entry != nullptr) {
        SpinLockAcquire(&entry->mutex);
        level = entry->level;
        SpinLockRelease(&entry->mutex);
        LWLockRelease(entries_lock);
        if (level == 0 && !item_exists(s))
            raise_unknown_item(s);
    } else if (!committed_level(s, &level)) {
        if (!item_exists(s))
            raise_unknown_item(s);
        level = 0;  // created by this transaction, by row: nothing committed yet
    }
    SPI_finish();
    PG_RETURN_INT64(level);
}

// idem_stock_snapshot() RETURNS TABLE (item text, level bigint, in_flight bigint): the idem_stock view.
// Items shared memory holds no entry for show their committed level in the
// tables, read like idem_stock_level reads it, and nothing in flight (units
// taken by row are uncommitted ledger rows). Not for PUBLIC: it lists every
// item (SPEC "Security").
IDEM_SQL_FUNCTION(idem_stock_snapshot)
{
    require_preloaded();
    Oid nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
    InitMaterializedSRF(fcinfo, 0);
    auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
    MemoryContext cxt = CurrentMemoryContext;
    pg::connect();
    uint64 n = pg::run_committed(all_items, nsp, nullptr, nullptr);
    for (uint64 row = 0; row < n; row++) {
        bool isnull;
        Datum item = pg::result_value(row, 1, &isnull);
        int64 level = DatumGetInt64(pg::result_value(row, 2, &isnull));
        int64 in_flight = 0;
        text* t = DatumGetTextPP(item);
        idem::Item name{{VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)}};
        // A name longer than any the functions accept was written into
        // the table by hand: shared memory cannot hold it.
        Entry* entry = nullptr;
        if (name.text.size <= max_item_bytes)
            entry = find_locked(stock_item(nsp, item, name));
        if (entry != nullptr) {
            SpinLockAcquire(&entry->mutex);
            level = entry->level;
            in_flight = entry->in_flight;
            SpinLockRelease(&entry->mutex);
            LWLockRelease(entries_lock);
        }
        MemoryContext old = MemoryContextSwitchTo(cxt);
        Datum values[3] = {datumCopy(item, false, -1), Int64GetDatum(level), Int64GetDatum(in_flight)};
        bool nulls[3] = {false, false, false};
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
        MemoryContextSwitchTo(old);
    }
    SPI_finish();
    return 0;
}
