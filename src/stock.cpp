// Hot stock (SPEC "Hot stock"): many buyers take units of one item without
// queueing behind one row lock held through each commit.
//
// The escrow method. The durable record is two tables: idem_stock_items
// (item, level) and the append-only idem_stock_ledger (item, delta); an
// item's level is its row's level plus its ledger rows. A take or an add
// appends one ledger row in the caller's transaction (an INSERT locks no
// shared row), and the purge worker folds committed ledger rows into the item
// rows in the background.
//
// Whether a take may proceed is decided in shared memory, where each item
// has an entry: `level` (units after every committed take and add),
// `in_flight` (units taken by transactions still running) and `adding` (units
// added by transactions still running). A take reserves units by raising
// in_flight under a spinlock only while level - in_flight covers it; its
// transaction's end settles the reservation: commit lowers level, abort (or
// rollback of the savepoint) just gives the units back. An add is counted in
// `adding` the same way until it settles, so that level + adding bounds what
// the level can become. So the level never goes below zero or beyond bigint,
// and no unit is sold twice. When the units missing are only held by
// transactions in flight, a take waits until units of the item settle and
// looks again: false means the shortfall is real (wait_for_units says how the
// wait honours lock_timeout, statement_timeout and deadlock detection).
//
// Shared memory is a cache of the tables: an item's entry is loaded from them
// on first use (after a start, a crash or a promotion, everything in flight
// has ended and the tables hold exactly the committed state), and an entry
// with nothing in flight may be evicted to make room for another item, to be
// loaded again when it is next used (load_entry says why that is exact). A
// transaction holding units cannot be prepared for two-phase commit (0A000):
// its reservation lives in this backend, which a prepared transaction
// outlives. What a transaction holds is kept in its book (see "This
// transaction's changes"), one record per entry and subtransaction, so that
// a take costs the same however many came before it.
//
// By row. Shared memory is shared by every role and database, and an entry
// with units in flight cannot be evicted, so no take or add may depend on
// getting one (SPEC: one role holding units of many items must not make
// another's take fail). A take or an add of an item that has no entry goes
// "by row" when no entry can be had: when every entry has units in flight,
// or when its transaction already holds units in its share of the entries
// (share(); past it, a transaction loads only into room that is free while
// more than half stays free, so one transaction cannot take every slot).
// By row, it locks the item's row in idem_stock_items (FOR UPDATE, until its
// transaction ends), reads the level from the tables with the latest
// snapshot, decides, and appends its ledger row, all in the caller's
// transaction: its units are an uncommitted ledger row, and PostgreSQL gives
// them back when the transaction or the savepoint rolls back.
//
// The two ways must never both decide for one item: a take through an entry
// does not see the units that takes by row hold, nor the reverse.
//  * A take or add goes by row only while the item has no entry: it first
//    marks the item's hash in its backend's `marks` (a bitmap in shared
//    memory), under entries_lock and only if the item has no entry then
//    (mark_for_row). The marks stay until the transaction ends; at commit
//    that is after the commit is visible to new snapshots (XACT_EVENT_COMMIT
//    runs after ProcArrayEndTransaction), and the eviction stamps of the
//    marked hashes are bumped then.
//  * No entry is loaded while a take by row may be in flight: an entry is
//    inserted (entries_lock held exclusively) only if no backend marks its
//    hash and the eviction stamp read before its level was read is
//    unchanged, so a take by row that ended meanwhile, whose ledger row the
//    level read may have missed, makes the load start again (insert_entry).
// So while an item is marked, all its takes and adds go by row, one after
// the other on its row lock, and each reads the level after the one before
// it has ended (a row lock wait ends after the holder's commit is visible).
// That level is exact: no change through an entry is in flight (the item has
// had none since the mark, and every change through an earlier entry settled
// and became visible before the entry was evicted, as for a load), no other
// change by row is in flight (each holds the row lock), and this
// transaction's own earlier changes by row are its own ledger rows, which the
// latest snapshot shows. A transaction's own marks keep it on the rows too,
// so its uncommitted ledger rows are never loaded as if committed. A
// transaction that changed stock by row cannot be prepared either (0A000):
// its marks live in this backend. A mark only sends items of the same hash by
// row for a while: slower, never wrong. The fold needs no part in this: it
// moves committed ledger rows into their item's row in one statement, which
// leaves row plus ledger the same under every snapshot, and it skips rows
// that takes by row have locked instead of waiting for them (fold_ledger).
#include "stock.hpp"

#include "core/key.hpp"
#include "pg/args.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"

extern "C" {
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/backendid.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"
#include "port/pg_bitutils.h"
}

#include <cstring>

namespace idem::stock {
namespace {

// ---- Shared memory --------------------------------------------------------

struct EntryKey {
    Oid database;
    Oid items_table;  // a re-created extension has a new table, and starts afresh
    char item[max_item_bytes + 1];
};

struct Entry {
    EntryKey key;
    int channel;    // its wakeup channel (shared->settled), set when loaded
    slock_t mutex;  // guards the fields below
    int64 level;
    int64 in_flight;      // units taken by transactions still running
    int64 adding;         // units added by transactions still running
    bool recently_used;   // since the evictor last looked (see evict_pass)
    bool sleepers;        // a take waits for units of this item to settle
};

// Entries are evicted and loaded again without a lock held across the load
// (it reads the tables). A loader reads the eviction stamp of its item's hash
// before the tables, and inserts its entry only if the stamp is unchanged
// (load_entry).
constexpr int eviction_stamps = 1024;

// Takes short of units sleep on the channel of their item's hash, broadcast
// when units of an item of that channel settle and it has sleepers. Items
// that share a channel only cost a waiter a spurious look; the channels never
// go away, unlike the entries.
constexpr int wakeup_channels = 128;

struct Shared {
    uint32 evictions[eviction_stamps];  // under entries_lock
    ConditionVariable settled[wakeup_channels];
};

// What a backend publishes about its transaction's takes, for takes waiting
// for units that look for a cycle (blocked_holder): its top-level transaction
// id, the entries it holds units of, and whether it waits for units itself.
// Written only by its own backend; others read it without a lock, as a hint
// for which transaction lock to wait on.
// Each on cache lines of its own: every take and commit writes its own.
constexpr int listed_entries = 8;
struct alignas(PG_CACHE_LINE_SIZE) Holder {
    TransactionId xid;
    int pgprocno;
    bool waiting;
    int n_entries;  // beyond listed_entries: it may hold units of any item
    const Entry* entries[listed_entries];
};

// Each backend's marks: bit (hash % mark_bits) set while its transaction
// may take or add an item of that hash by row. Written by its own backend
// under entries_lock (shared, or exclusive to clear them), read by loaders
// under entries_lock held exclusively.
constexpr int mark_bits = 4096;
constexpr int mark_words = mark_bits / 64;
static_assert(mark_bits % eviction_stamps == 0, "a mark's bit tells its eviction stamp");

LWLock* entries_lock = nullptr;  // guards the membership of `entries`, the eviction stamps and the marks
HTAB* entries = nullptr;
Shared* shared = nullptr;
Holder* holders = nullptr;  // one per backend, by MyBackendId
uint64* marks = nullptr;    // mark_words per backend, by MyBackendId
int max_items = 10000;  // pg_idem.max_stock_items

shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

void request_shmem()
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    Size size = add_size(hash_estimate_size(max_items, sizeof(Entry)), sizeof(Shared));
    size = add_size(size, mul_size(MaxBackends, sizeof(Holder)));
    RequestAddinShmemSpace(add_size(size, mul_size(MaxBackends, mark_words * sizeof(uint64))));
    RequestNamedLWLockTranche("pg_idem stock", 1);
}

void startup_shmem()
{
    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    entries_lock = &(GetNamedLWLockTranche("pg_idem stock"))->lock;
    HASHCTL info;
    std::memset(&info, 0, sizeof info);
    info.keysize = sizeof(EntryKey);
    info.entrysize = sizeof(Entry);
    entries = ShmemInitHash("pg_idem stock", max_items, max_items, &info, HASH_ELEM | HASH_BLOBS);
    bool found;
    shared = static_cast<Shared*>(ShmemInitStruct("pg_idem stock state", sizeof(Shared), &found));
    if (!found) {
        std::memset(shared->evictions, 0, sizeof shared->evictions);
        for (auto& channel : shared->settled)
            ConditionVariableInit(&channel);
    }
    Size holders_size = mul_size(MaxBackends, sizeof(Holder));
    holders = static_cast<Holder*>(ShmemInitStruct("pg_idem stock holders", holders_size, &found));
    if (!found)
        std::memset(holders, 0, holders_size);
    Size marks_size = mul_size(MaxBackends, mark_words * sizeof(uint64));
    marks = static_cast<uint64*>(ShmemInitStruct("pg_idem stock marks", marks_size, &found));
    if (!found)
        std::memset(marks, 0, marks_size);
    LWLockRelease(AddinShmemInitLock);
}

// ---- Statements -----------------------------------------------------------

pg::Statement load_item = {
    "SELECT (i.level + coalesce((SELECT sum(l.delta) FROM @extschema@.idem_stock_ledger l "
    "                            WHERE l.item = i.item), 0))::bigint "
    "FROM @extschema@.idem_stock_items i WHERE i.item = $1",
    1, {TEXTOID}};

// Locks the item's row for a take or an add by row, until the transaction
// ends; waits for the transaction holding it.
pg::Statement lock_item = {
    "SELECT FROM @extschema@.idem_stock_items WHERE item = $1 FOR UPDATE",
    1, {TEXTOID}};

pg::Statement find_item = {
    "SELECT FROM @extschema@.idem_stock_items WHERE item = $1",
    1, {TEXTOID}};

pg::Statement create_item = {
    "INSERT INTO @extschema@.idem_stock_items (item, level) VALUES ($1, 0) ON CONFLICT (item) DO NOTHING",
    1, {TEXTOID}};

pg::Statement append_ledger = {
    "INSERT INTO @extschema@.idem_stock_ledger (item, delta) VALUES ($1, $2)",
    2, {TEXTOID, INT8OID}};

pg::Statement all_items = {
    "SELECT i.item, (i.level + coalesce(l.delta, 0))::bigint "
    "FROM @extschema@.idem_stock_items i "
    "LEFT JOIN (SELECT item, sum(delta) AS delta FROM @extschema@.idem_stock_ledger GROUP BY item) l "
    "ON l.item = i.item ORDER BY i.item",
    0, {}};

// Moves committed ledger rows into their items' levels, in one statement so
// that an item's row plus its ledger never changes. It moves every committed
// row of up to $1 items that have ledger rows: the item's row plus all of
// them is the item's committed level, which stays within bigint where a
// partial sum might not. A ledger row whose item has no row is left alone:
// no row is ever deleted without its delta being applied. Items whose rows
// are locked (takes and adds by row in flight, which hold them until their
// transactions end) are skipped, not waited for, so that an open
// transaction cannot stall the fold; they are folded in a later round.
pg::Statement fold_ledger = {
    "WITH chosen AS MATERIALIZED ( "
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
    1, {INT8OID}};

// ---- Arguments ------------------------------------------------------------

void require_preloaded()
{
    if (entries == nullptr)
        pg::raise_needs_preload("hot stock");
}

// An item as the stock functions handle it: its name (the text argument,
// for SPI, and checked, for messages), the schema of the extension, and its
// key and hash in shared memory.
struct StockItem {
    Datum name;
    Item item;
    Oid nsp;
    EntryKey key;
    uint32 hash;
};

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
    ereport(ERROR, (errcode(ERRCODE_NO_DATA_FOUND),
                    errmsg("item %s is not stocked", pg::key_for_message(Key{s.item.text})),
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

void append_to_ledger(const StockItem& s, int64 delta)
{
    Datum values[2] = {s.name, Int64GetDatum(delta)};
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

// ---- Entries --------------------------------------------------------------

// The item's entry with entries_lock held in shared mode, so that it cannot
// be evicted until the caller releases the lock; nullptr (and the lock not
// held) if shared memory has none.
Entry* find_locked(const StockItem& s)
{
    LWLockAcquire(entries_lock, LW_SHARED);
    auto* entry = static_cast<Entry*>(hash_search_with_hash_value(entries, &s.key, s.hash, HASH_FIND, nullptr));
    if (entry == nullptr)
        LWLockRelease(entries_lock);
    return entry;
}

uint32& eviction_stamp(uint32 hash)
{
    return shared->evictions[hash % eviction_stamps];
}

// One pass of a clock over the entries (entries_lock held exclusively):
// evicts up to a batch of entries that have nothing in flight and were not
// used since the last pass, and clears the mark of the others. An evicted
// entry's level is in the tables; it is loaded again when next used.
int evict_pass()
{
    const int batch = Max(1, max_items / 32);
    int evicted = 0;
    HASH_SEQ_STATUS scan;
    hash_seq_init(&scan, entries);
    while (auto* entry = static_cast<Entry*>(hash_seq_search(&scan))) {
        SpinLockAcquire(&entry->mutex);
        bool idle = entry->in_flight == 0 && entry->adding == 0;
        bool spared = entry->recently_used;
        entry->recently_used = false;
        SpinLockRelease(&entry->mutex);
        if (!idle || spared)
            continue;
        eviction_stamp(get_hash_value(entries, &entry->key))++;
        hash_search(entries, &entry->key, HASH_REMOVE, nullptr);  // allowed during the scan
        if (++evicted == batch) {
            hash_seq_term(&scan);
            break;
        }
    }
    return evicted;
}

// Room for one more entry (entries_lock held exclusively); false when every
// entry has units in flight. The second pass takes entries the first spared.
bool make_room_for_entry()
{
    return hash_get_num_entries(entries) < max_items || evict_pass() > 0 || evict_pass() > 0;
}

// How many entries one transaction may hold units in and still load more,
// evicting other items' entries to make room: an eighth of them, at least
// one. Past its share a transaction loads only into room that is free while
// more than half stays free, and otherwise goes by row.
int share()
{
    return Max(1, max_items / 8);
}

// Whether any backend marks the hash for takes by row (entries_lock held
// exclusively, so no mark is being set meanwhile).
bool marked(uint32 hash)
{
    int bit = static_cast<int>(hash % mark_bits);
    uint64 mask = UINT64CONST(1) << (bit % 64);
    for (int b = 0; b < MaxBackends; b++)
        if (marks[b * mark_words + bit / 64] & mask)
            return true;
    return false;
}

// How a take or an add of an item goes: through its entry, by its row, or
// nowhere (the item does not exist).
enum class Route { entry, by_row, no_item };

enum class Load { done, stale, by_row };

// Inserts the item's entry with `level` read from the tables, unless an
// entry of the same hash was evicted or taken by row since `stamp` was read
// (stale), or a take or an add of an item of the same hash may be going by
// row, or no room can be had (by_row). If another backend loaded the item
// meanwhile, its entry stands.
Load insert_entry(const StockItem& s, int64 level, uint32 stamp, bool past_share)
{
    LWLockAcquire(entries_lock, LW_EXCLUSIVE);
    Load load = Load::done;
    if (hash_search_with_hash_value(entries, &s.key, s.hash, HASH_FIND, nullptr) != nullptr)
        load = Load::done;
    else if (eviction_stamp(s.hash) != stamp)
        load = Load::stale;
    else if (marked(s.hash))
        load = Load::by_row;
    else if (past_share ? hash_get_num_entries(entries) >= max_items / 2 : !make_room_for_entry())
        load = Load::by_row;
    else {
        bool found;
        auto* entry = static_cast<Entry*>(hash_search_with_hash_value(entries, &s.key, s.hash, HASH_ENTER, &found));
        entry->channel = static_cast<int>(s.hash % wakeup_channels);
        SpinLockInit(&entry->mutex);
        entry->level = level;
        entry->in_flight = 0;
        entry->adding = 0;
        entry->recently_used = true;
        entry->sleepers = false;
    }
    LWLockRelease(entries_lock);
    return load;
}

// Loads the item's level from the tables into a new entry: Route::entry
// once it is there, no_item if the item does not exist, by_row if it may
// not have an entry now. Runs inside SPI.
//
// Why the level read is still exact when the entry appears: while an item has
// no entry nothing can change its committed level, except transactions that
// changed it through an entry since evicted, and takes and adds by row. An
// entry is evicted only once every change made through it has settled, and a
// commit settles only after PostgreSQL has ended the transaction in the proc
// array (CommitTransaction calls ProcArrayEndTransaction before the
// XACT_EVENT_COMMIT callbacks), so a snapshot taken after the eviction sees
// all of them. One taken before might not: the eviction stamp read before the
// snapshot tells, and then the load starts again. A take by row in flight
// marks the item, and one that ended since the stamp was read bumped it
// (see the design comment). (The latest snapshot also sees this
// transaction's own uncommitted rows, but it has none for an item it may
// load: changes through an entry would keep it from being evicted, and
// changes by row mark it.)
Route load_entry(const StockItem& s, bool past_share)
{
    for (;;) {
        LWLockAcquire(entries_lock, LW_SHARED);
        uint32 stamp = eviction_stamp(s.hash);
        LWLockRelease(entries_lock);
        int64 level;
        if (!level_from_tables(s, &level))
            return Route::no_item;
        switch (insert_entry(s, level, stamp, past_share)) {
        case Load::done:
            return Route::entry;
        case Load::stale:
            continue;
        case Load::by_row:
            return Route::by_row;
        }
    }
}

int entries_held();

// The way of a take or an add of the item: through its entry (returned, with
// entries_lock held in shared mode: see find_locked), loaded from the tables
// first if shared memory has none; or by row; or nowhere (the lock not held).
// Runs inside SPI.
Route route_locked(const StockItem& s, Entry** entry)
{
    for (;;) {
        *entry = find_locked(s);
        if (*entry != nullptr)
            return Route::entry;
        Route route = load_entry(s, entries_held() >= share());
        if (route != Route::entry)
            return route;
        // Loaded; it might be evicted again before we look, so look again.
    }
}

// ---- Wake-ups --------------------------------------------------------------

ConditionVariable* channel_of(int channel)
{
    return &shared->settled[channel];
}

// Wakes the takes waiting for units of the entry, if there are any. The
// entry must not be evictable (this transaction has units in it).
void wake_sleepers(Entry* entry)
{
    SpinLockAcquire(&entry->mutex);
    bool sleepers = entry->sleepers;
    entry->sleepers = false;
    SpinLockRelease(&entry->mutex);
    if (sleepers)
        ConditionVariableBroadcast(channel_of(entry->channel));
}

// ---- What this backend publishes (Holder) ---------------------------------

bool published = false;  // this transaction wrote to its Holder
bool sleeping = false;   // a take's wait may have this backend on a wakeup channel

volatile Holder* my_holder()
{
    return &holders[MyBackendId - 1];
}

// Lists the entry among those this transaction holds units of.
void publish_holding(const Entry* entry)
{
    volatile Holder* h = my_holder();
    if (!TransactionIdIsValid(h->xid)) {
        h->pgprocno = MyProc->pgprocno;
        h->xid = GetTopTransactionId();
        published = true;
    }
    int listed = Min(h->n_entries, listed_entries);
    for (int i = 0; i < listed; i++)
        if (h->entries[i] == entry)
            return;
    if (h->n_entries < listed_entries)
        h->entries[h->n_entries] = entry;
    pg_write_barrier();  // a reader that sees the count sees the entry
    h->n_entries++;
}

// Stops publishing anything, and leaves the wakeup channel of a wait that an
// error ended (AbortTransaction would, but a rolled-back savepoint must not
// leave this backend on it either). Done before changes settle at the end of
// a (sub)transaction: a settled entry may be evicted and its memory reused.
void withdraw_holdings()
{
    if (sleeping) {
        ConditionVariableCancelSleep();
        sleeping = false;
    }
    if (!published)
        return;
    volatile Holder* h = my_holder();
    h->n_entries = 0;
    h->waiting = false;
    h->xid = InvalidTransactionId;
    published = false;
}

// ---- This transaction's changes -------------------------------------------
//
// The book of this transaction's takes and adds through entries, settled when
// it ends. Per entry one Held: the units the transaction holds in it (they
// are in the entry's in_flight or adding, which keeps it from being evicted,
// so the pointer stays valid), found through a hash table keyed by the
// entry, so a take costs the same however many came before it. Per entry and
// subtransaction one Change, merged: the units a rolled-back savepoint gives
// back. The Changes form a stack in which those of the running
// subtransaction are always on top (those of its children were merged into
// it or given back when they ended), so a subtransaction's end touches only
// its own Changes, and each Change links to its entry's Change in an
// enclosing subtransaction (`older`).
//
// All of it lives in TopTransactionContext, so the memory goes back when the
// transaction ends. The callbacks of commit, abort and PREPARE all run
// before PostgreSQL frees that context (CallXactCallbacks precedes
// AtCommit_Memory and AtCleanup_Memory); they settle everything and forget
// the pointers, so no way out of a transaction leaves them dangling.
struct Held {
    Entry* entry;  // the key in `book`; nullptr in a RowHeld
    int64 taken;   // units this transaction holds in entry->in_flight (by row: in its ledger rows)
    int64 added;   // units it holds in entry->adding (by row: in its ledger rows)
    int newest;    // index of its newest Change, -1 if none
};

// What the transaction holds of an item it took or added by row, in
// `rows_book`: kept the same way (its Changes give savepoints back their
// units), so that a take or add by row decides on what it holds exactly as
// one through an entry would. Never dropped before the transaction ends.
struct RowHeld {
    EntryKey key;
    Held held;
};

struct Change {
    Held* held;
    SubTransactionId subid;
    int64 taken;
    int64 added;
    int older;  // index of the same Held's Change in an enclosing subtransaction, or -1
};

HTAB* book = nullptr;       // Held by entry
HTAB* rows_book = nullptr;  // RowHeld by item
Change* changes = nullptr;
int n_changes = 0;
int max_changes = 0;

HTAB* new_book(const char* name, Size keysize, Size entrysize)
{
    HASHCTL info;
    std::memset(&info, 0, sizeof info);
    info.keysize = keysize;
    info.entrysize = entrysize;
    info.hcxt = TopTransactionContext;
    return hash_create(name, 64, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

// The book, and room for one more Change, made before anything is reserved
// in shared memory so that recording the reservation cannot fail.
void prepare_book()
{
    if (book == nullptr)
        book = new_book("pg_idem stock book", sizeof(Entry*), sizeof(Held));
    if (n_changes < max_changes)
        return;
    int new_max = max_changes == 0 ? 16 : max_changes * 2;
    if (changes == nullptr)
        changes = static_cast<Change*>(MemoryContextAlloc(TopTransactionContext, sizeof(Change) * new_max));
    else
        changes = static_cast<Change*>(repalloc(changes, sizeof(Change) * new_max));
    max_changes = new_max;
}

// How many entries this transaction holds units in.
int entries_held()
{
    return book == nullptr ? 0 : static_cast<int>(hash_get_num_entries(book));
}

// The entry's Held, new if the transaction holds nothing in it yet (after
// prepare_book; entries_lock held, so that the entry is the item's). If
// nothing is then recorded, forget_if_empty drops it again.
Held* held_for(Entry* entry)
{
    bool found;
    auto* held = static_cast<Held*>(hash_search(book, &entry, HASH_ENTER, &found));
    if (!found)
        *held = Held{entry, 0, 0, -1};
    return held;
}

// Drops a Held with no Change left. Its entry may be evicted and reused for
// another item from now on, so nothing may keep its pointer.
void forget_if_empty(Held* held)
{
    if (held->entry != nullptr && held->newest < 0)
        hash_search(book, &held->entry, HASH_REMOVE, nullptr);
}

// Records units just reserved (after prepare_book: it cannot fail), merged
// into the Held's Change of the running subtransaction if it has one.
void record(Held* held, int64 taken, int64 added)
{
    SubTransactionId subid = GetCurrentSubTransactionId();
    held->taken += taken;
    held->added += added;
    if (held->newest >= 0 && changes[held->newest].subid == subid) {
        changes[held->newest].taken += taken;
        changes[held->newest].added += added;
        return;
    }
    changes[n_changes] = Change{held, subid, taken, added, held->newest};
    held->newest = n_changes++;
}

// Settles units of an entry at their (sub)transaction's end: committed, the
// level moves; either way they leave in_flight and adding, and takes waiting
// for units of the item look again.
void settle(Entry* entry, int64 taken, int64 added, bool committed)
{
    SpinLockAcquire(&entry->mutex);
    if (committed)
        entry->level = entry->level - taken + added;  // in_flight <= level, level + adding <= bigint
    entry->in_flight -= taken;
    entry->adding -= added;
    bool sleepers = entry->sleepers;
    entry->sleepers = false;
    // Read before the lock is let go: once settled, the entry may be
    // evicted and its memory given to another item.
    int channel = entry->channel;
    SpinLockRelease(&entry->mutex);
    if (sleepers)
        ConditionVariableBroadcast(channel_of(channel));
}

// The first of the Changes of the subtransaction that is ending: they are
// the top of the stack.
int first_change_of(SubTransactionId subid)
{
    int first = n_changes;
    while (first > 0 && changes[first - 1].subid == subid)
        first--;
    return first;
}

// A savepoint released: its Changes become its parent's, merged into the
// parent's Change of the same entry where there is one.
void subtransaction_committed(SubTransactionId subid, SubTransactionId parent)
{
    int first = first_change_of(subid);
    int kept = first;
    for (int i = first; i < n_changes; i++) {
        Change change = changes[i];
        Held* held = change.held;
        if (change.older >= 0 && changes[change.older].subid == parent) {
            changes[change.older].taken += change.taken;
            changes[change.older].added += change.added;
            held->newest = change.older;
        } else {
            change.subid = parent;
            changes[kept] = change;
            held->newest = kept++;
        }
    }
    n_changes = kept;
}

// ---- By row ----------------------------------------------------------------

bool marked_any = false;  // this transaction set a mark

uint64* my_marks()
{
    return &marks[(MyBackendId - 1) * mark_words];
}

// Marks the item for a take or an add by row (see the design comment), unless
// it has an entry now: then false, and the caller goes through the entry.
bool mark_for_row(const StockItem& s)
{
    LWLockAcquire(entries_lock, LW_SHARED);
    bool has_entry = hash_search_with_hash_value(entries, &s.key, s.hash, HASH_FIND, nullptr) != nullptr;
    if (!has_entry) {
        int bit = static_cast<int>(s.hash % mark_bits);
        my_marks()[bit / 64] |= UINT64CONST(1) << (bit % 64);
        marked_any = true;
    }
    LWLockRelease(entries_lock);
    return !has_entry;
}

// At the end of the transaction (after its commit is visible): the marks go,
// and the eviction stamps of the marked hashes move, so that a load that read
// its level before the commit starts again.
void clear_marks()
{
    if (!marked_any)
        return;
    LWLockAcquire(entries_lock, LW_EXCLUSIVE);
    uint64* mine = my_marks();
    for (int w = 0; w < mark_words; w++)
        for (uint64 word = mine[w]; word != 0; word &= word - 1)
            shared->evictions[(w * 64 + pg_rightmost_one_pos64(word)) % eviction_stamps]++;
    std::memset(mine, 0, mark_words * sizeof(uint64));
    LWLockRelease(entries_lock);
    marked_any = false;
}

// What this transaction holds of the item by row (after prepare_book).
Held* row_held_for(const StockItem& s)
{
    if (rows_book == nullptr)
        rows_book = new_book("pg_idem stock rows book", sizeof(EntryKey), sizeof(RowHeld));
    bool found;
    auto* row = static_cast<RowHeld*>(hash_search_with_hash_value(rows_book, &s.key, s.hash, HASH_ENTER, &found));
    if (!found)
        row->held = Held{nullptr, 0, 0, -1};
    return &row->held;
}

// A take by row (the item marked). As through an entry, the level less
// every unit taken and not settled must cover n, and units this transaction
// added are not for sale before it commits. Nothing but this transaction's
// own changes can be in flight for the item, so false means the shortfall is
// real. The ledger row is written first: if recording it fails, the
// (sub)transaction fails with it.
bool take_by_row(const StockItem& s, int64 n)
{
    int64 level = lock_row_level(s);
    Held* held = row_held_for(s);
    if (level - held->taken < n)
        return false;
    append_to_ledger(s, -n);
    record(held, n, 0);
    return true;
}

// An add by row (the item marked); returns the level this transaction sees,
// as through an entry. As there, refused if the level could pass bigint
// were every add in flight to commit (and every take to roll back).
int64 add_by_row(const StockItem& s, int64 n)
{
    int64 level = lock_row_level(s);
    Held* held = row_held_for(s);
    int64 if_all_commit;
    if (pg_add_s64_overflow(level, held->added, &if_all_commit) || pg_add_s64_overflow(if_all_commit, n, &if_all_commit))
        raise_beyond_bigint(s, n);
    append_to_ledger(s, n);
    record(held, 0, n);
    return level - held->taken + held->added;
}

// ---- Ends of (sub)transactions ---------------------------------------------

// Publishes again the entries this transaction holds taken units of (after a
// savepoint's rollback withdrew them), as many as its Holder lists.
void publish_holdings()
{
    if (book == nullptr || !TransactionIdIsValid(GetTopTransactionIdIfAny()))
        return;
    HASH_SEQ_STATUS scan;
    hash_seq_init(&scan, book);
    while (auto* held = static_cast<Held*>(hash_seq_search(&scan))) {
        if (held->taken == 0)
            continue;
        publish_holding(held->entry);
        if (my_holder()->n_entries > listed_entries) {  // it may hold units of any item
            hash_seq_term(&scan);
            break;
        }
    }
}

void settle_all(bool committed)
{
    withdraw_holdings();
    if (book != nullptr) {
        HASH_SEQ_STATUS scan;
        hash_seq_init(&scan, book);
        while (auto* held = static_cast<Held*>(hash_seq_search(&scan)))
            if (held->taken != 0 || held->added != 0)
                settle(held->entry, held->taken, held->added, committed);
    }
    // TopTransactionContext, and the book with it, is freed after this.
    book = nullptr;
    rows_book = nullptr;
    changes = nullptr;
    n_changes = 0;
    max_changes = 0;
    clear_marks();
}

// A savepoint rolled back: exactly its Changes settle, and their Helds shrink
// (the others stay, and stay published: they have the transaction's id). Its
// changes by row PostgreSQL rolls back; their marks stay until the
// transaction ends, which only keeps the items on their rows meanwhile.
void subtransaction_aborted(SubTransactionId subid)
{
    withdraw_holdings();
    int first = first_change_of(subid);
    for (int i = n_changes - 1; i >= first; i--) {
        const Change& change = changes[i];
        Held* held = change.held;
        held->taken -= change.taken;
        held->added -= change.added;
        held->newest = change.older;
        if (held->entry != nullptr)
            settle(held->entry, change.taken, change.added, false);
        forget_if_empty(held);
    }
    n_changes = first;
    publish_holdings();
}

void on_xact(XactEvent event, void*)
{
    switch (event) {
    case XACT_EVENT_PRE_PREPARE:
        if (n_changes > 0)
            ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                            errmsg("cannot prepare a transaction that took or added hot stock"),
                            errdetail("Its units are held in this session, which a prepared transaction outlives.")));
        break;
    case XACT_EVENT_COMMIT:
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PREPARE:  // PRE_PREPARE made sure nothing is left to settle
        settle_all(event == XACT_EVENT_COMMIT);
        break;
    default:
        break;
    }
}

void on_subxact(SubXactEvent event, SubTransactionId subid, SubTransactionId parent_subid, void*)
{
    if (event == SUBXACT_EVENT_COMMIT_SUB)
        subtransaction_committed(subid, parent_subid);
    else if (event == SUBXACT_EVENT_ABORT_SUB)
        subtransaction_aborted(subid);
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

// ---- Waiting for units ----------------------------------------------------
//
// A take short only of units that other transactions hold sleeps on its
// item's wakeup channel (a condition variable), and looks again whenever
// units of the item settle: the first holder to commit or roll back, in any
// order, wakes it. The sleep is interruptible, so statement_timeout and a
// cancel end it (57014); lock_timeout is counted here (55P03).
//
// PostgreSQL's deadlock detector knows only its lock manager's waits, and a
// cycle can run through stock: two takes each holding what the other waits
// for, or a take waiting for a holder that waits for a row lock the take's
// transaction holds. Such a cycle needs a holder that is itself waiting. So
// the waiting take looks for one among the holders of its item (each backend
// publishes the items it holds units of and whether it is waiting, in its
// Holder) every time it wakes, and at least every deadlock_timeout; a holder
// that starts to wait wakes the takes waiting for its units, so they look at
// once. If it finds one, the take waits on that holder's transaction lock
// instead: in the lock manager, where the detector sees the cycle (40P01 for
// one of its transactions), with lock_timeout still counted from the start
// of the take's wait. Once that holder ends, the take looks again. While it
// waits there, another holder's units coming back do not wake it: the price
// of a wait that may be part of a deadlock.

// A take's wait, from its first sleep to its end.
struct UnitWait {
    bool started;
    TimestampTz since;
    ConditionVariable* channel;
    ErrorContextCallback context;
};

void wait_context(void* arg)
{
    const auto* s = static_cast<const StockItem*>(arg);
    errcontext("waiting for units of hot-stock item %s", pg::key_for_message(Key{s->item.text}));
}

// A transaction holding units of the entry that is itself waiting (for a
// lock, or for units), or InvalidTransactionId: only through such a holder
// can this take be part of a cycle. Called with entries_lock held, so that
// the entry is the one the holders list.
TransactionId blocked_holder(const Entry* entry)
{
    for (int b = 0; b < MaxBackends; b++) {
        volatile Holder* h = &holders[b];
        TransactionId xid = h->xid;
        if (h == my_holder() || !TransactionIdIsValid(xid))
            continue;
        int n = h->n_entries;
        pg_read_barrier();
        bool holds = n > listed_entries;
        for (int i = 0; i < n && !holds; i++)
            holds = h->entries[i] == entry;
        uint32 wait_event = static_cast<volatile PGPROC*>(&ProcGlobal->allProcs[h->pgprocno])->wait_event_info;
        if (holds && (h->waiting || (wait_event & 0xFF000000U) == PG_WAIT_LOCK))
            return xid;
    }
    return InvalidTransactionId;
}

void begin_wait(UnitWait* wait, const StockItem& s)
{
    wait->started = true;
    wait->since = GetCurrentTimestamp();
    wait->channel = channel_of(static_cast<int>(s.hash % wakeup_channels));
    wait->context.callback = wait_context;
    wait->context.arg = const_cast<StockItem*>(&s);
    wait->context.previous = error_context_stack;
    error_context_stack = &wait->context;

    sleeping = true;
    volatile Holder* h = my_holder();
    h->pgprocno = MyProc->pgprocno;
    h->waiting = true;
    published = true;
    pg_memory_barrier();
    // Takes waiting for units this transaction holds: it may now be part of
    // a cycle with them, so they look.
    if (book != nullptr) {
        HASH_SEQ_STATUS scan;
        hash_seq_init(&scan, book);
        while (auto* held = static_cast<Held*>(hash_seq_search(&scan)))
            if (held->taken > 0)
                wake_sleepers(held->entry);
    }
}

void end_wait(UnitWait* wait)
{
    if (!wait->started)
        return;
    ConditionVariableCancelSleep();
    sleeping = false;
    my_holder()->waiting = false;
    error_context_stack = wait->context.previous;
}

// Milliseconds left until lock_timeout, or -1 when it is off; 55P03 once it
// has passed.
long lock_time_left(const UnitWait* wait, const StockItem& s)
{
    if (LockTimeout <= 0)
        return -1;
    long waited = TimestampDifferenceMilliseconds(wait->since, GetCurrentTimestamp());
    if (waited >= LockTimeout)
        ereport(ERROR, (errcode(ERRCODE_LOCK_NOT_AVAILABLE),
                        errmsg("canceling statement due to lock timeout: units of item %s are still held "
                               "by other transactions",
                               pg::key_for_message(Key{s.item.text}))));
    return LockTimeout - waited;
}

// Waits in the lock manager until the holder's transaction ends.
void wait_for_holder(TransactionId holder, long lock_time_left)
{
    ConditionVariableCancelSleep();
    if (lock_time_left < 0) {
        XactLockTableWait(holder, nullptr, nullptr, XLTW_None);
        return;
    }
    int nest_level = NewGUCNestLevel();
    char value[32];
    snprintf(value, sizeof value, "%ld", Max(lock_time_left, 1L));
    (void) set_config_option("lock_timeout", value, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
    XactLockTableWait(holder, nullptr, nullptr, XLTW_None);
    AtEOXact_GUC(true, nest_level);
}

// One wait of a take short of units held in flight; the caller looks again
// afterwards. `blocked` is a waiting holder of the item (blocked_holder).
void wait_for_units(UnitWait* wait, const StockItem& s, TransactionId blocked)
{
    CHECK_FOR_INTERRUPTS();
    if (!wait->started)
        begin_wait(wait, s);
    long left = lock_time_left(wait, s);
    if (TransactionIdIsValid(blocked)) {
        wait_for_holder(blocked, left);
        return;
    }
    long timeout = left < 0 ? DeadlockTimeout : Min(left, static_cast<long>(DeadlockTimeout));
    // The first call only puts this backend on the channel and returns, so
    // that no wake-up is lost between the look and the sleep.
    (void) ConditionVariableTimedSleep(wait->channel, timeout, PG_WAIT_EXTENSION);
}

}  // namespace

void init_preloaded()
{
    DefineCustomIntVariable("pg_idem.max_stock_items",
                            "How many hot-stock items shared memory holds.",
                            "Items with nothing in flight leave shared memory when room is needed, "
                            "and are loaded from the tables again on next use; while there is no room, "
                            "takes and adds of other items lock their rows instead.",
                            &max_items, 10000, 1, 10000000, PGC_POSTMASTER, 0,
                            nullptr, nullptr, nullptr);
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
// all: takes and adds load them.)
IDEM_SQL_FUNCTION(idem_stock_level)
{
    require_preloaded();
    StockItem s = item_arg(fcinfo);
    pg::connect();
    int64 level;
    if (Entry* entry = find_locked(s)) {
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
