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
// outlives.
#include "stock.hpp"

#include "core/key.hpp"
#include "pg/args.hpp"
#include "pg/guard.hpp"
#include "pg/compat.hpp"
#include "pg/spi.hpp"

extern "C" {
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "funcapi.h"
#include "miscadmin.h"
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

LWLock* entries_lock = nullptr;  // guards the membership of `entries` and the eviction stamps
HTAB* entries = nullptr;
Shared* shared = nullptr;
Holder* holders = nullptr;  // one per backend, by compat::backend_slot()
int max_items = 10000;  // pg_idem.max_stock_items

shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

void request_shmem()
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    Size size = add_size(hash_estimate_size(max_items, sizeof(Entry)), sizeof(Shared));
    RequestAddinShmemSpace(add_size(size, mul_size(MaxBackends, sizeof(Holder))));
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
    LWLockRelease(AddinShmemInitLock);
}

// ---- Statements -----------------------------------------------------------

pg::Statement load_item = {
    "SELECT (i.level + coalesce((SELECT sum(l.delta) FROM @extschema@.idem_stock_ledger l "
    "                            WHERE l.item = i.item), 0))::bigint "
    "FROM @extschema@.idem_stock_items i WHERE i.item = $1",
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
// row of the items named in the first $1 ledger rows: the item's row plus all
// of them is the item's committed level, which stays within bigint where a
// partial sum might not. A ledger row whose item has no row is left alone:
// no row is ever deleted without its delta being applied.
pg::Statement fold_ledger = {
    "WITH chosen AS (SELECT DISTINCT item FROM (SELECT item FROM @extschema@.idem_stock_ledger LIMIT $1) b), "
    "     moved AS (DELETE FROM @extschema@.idem_stock_ledger l USING chosen c "
    "               WHERE l.item = c.item "
    "                 AND EXISTS (SELECT FROM @extschema@.idem_stock_items i WHERE i.item = c.item) "
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
    if (PG_ARGISNULL(0))
        checked_item("item", nullptr);  // throws 22004
    text* t = PG_GETARG_TEXT_PP(0);
    Text view{VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)};
    return stock_item(nsp, PointerGetDatum(t), checked_item("item", &view));
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

// The committed level from the tables; false if the item does not exist.
// Read with the latest snapshot, never the caller's: what is loaded here
// becomes the item's shared level for every transaction, and a caller's
// REPEATABLE READ snapshot can be older than sales already committed (taken
// on a standby before its promotion, say). The latest snapshot also sees this
// transaction's own item row, so an add of a new item finds it.
bool level_from_tables(const StockItem& s, int64* level)
{
    Datum values[1] = {s.name};
    if (pg::run_latest(load_item, s.nsp, values, nullptr) == 0)
        return false;
    bool isnull;
    *level = DatumGetInt64(pg::result_value(0, 1, &isnull));
    return true;
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

enum class Load { done, stale, full };

// Inserts the item's entry with `level` read from the tables, unless an
// entry of the same hash was evicted since `stamp` was read. If another
// backend loaded the item meanwhile, its entry stands.
Load insert_entry(const StockItem& s, int64 level, uint32 stamp)
{
    LWLockAcquire(entries_lock, LW_EXCLUSIVE);
    Load load = Load::done;
    if (hash_search_with_hash_value(entries, &s.key, s.hash, HASH_FIND, nullptr) != nullptr)
        load = Load::done;
    else if (eviction_stamp(s.hash) != stamp)
        load = Load::stale;
    else if (!make_room_for_entry())
        load = Load::full;
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

// Loads the item's level from the tables into a new entry; false if the
// item does not exist. Runs inside SPI.
//
// Why the level read is still exact when the entry appears: while an item has
// no entry nothing can change its committed level, except transactions that
// changed it through an entry since evicted. An entry is evicted only once
// every change made through it has settled, and a commit settles only after
// PostgreSQL has ended the transaction in the proc array (CommitTransaction
// calls ProcArrayEndTransaction before the XACT_EVENT_COMMIT callbacks), so a
// snapshot taken after the eviction sees all of them. One taken before might
// not: the eviction stamp read before the snapshot tells, and then the load
// starts again. (The latest snapshot also sees this transaction's own
// uncommitted rows, but it has none for an item without an entry: its own
// changes would keep the entry from being evicted.)
bool load_entry(const StockItem& s)
{
    for (;;) {
        LWLockAcquire(entries_lock, LW_SHARED);
        uint32 stamp = eviction_stamp(s.hash);
        LWLockRelease(entries_lock);
        int64 level;
        if (!level_from_tables(s, &level))
            return false;
        switch (insert_entry(s, level, stamp)) {
        case Load::done:
            return true;
        case Load::stale:
            continue;
        case Load::full:
            ereport(ERROR, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
                            errmsg("pg_idem hot stock has units in flight for %d items, its maximum, "
                                   "and no room for item %s",
                                   max_items, pg::key_for_message(Key{s.item.text})),
                            errhint("Raise pg_idem.max_stock_items and restart the server.")));
        }
    }
}

// The item's entry with entries_lock held in shared mode (see find_locked),
// loaded from the tables first if shared memory has none; nullptr (and the
// lock not held) if the item does not exist. Runs inside SPI.
Entry* entry_locked(const StockItem& s)
{
    for (;;) {
        Entry* entry = find_locked(s);
        if (entry != nullptr || !load_entry(s))
            return entry;
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
    return &holders[idem::pg::compat::backend_slot()];
}

// Lists the entry among those this transaction holds units of.
void publish_holding(const Entry* entry)
{
    volatile Holder* h = my_holder();
    if (!TransactionIdIsValid(h->xid)) {
        h->pgprocno = idem::pg::compat::my_proc_number();
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

// This transaction's takes and adds, settled when it ends. Each keeps its
// entry from being evicted (its units are in in_flight or adding), so the
// pointer stays valid. The array lives in TopMemoryContext for the whole
// session, so that no path out of a transaction (commit, abort, PREPARE) can
// leave it pointing at freed memory; the transaction callbacks only reset
// n_changes.
struct Change {
    Entry* entry;
    int64 delta;     // -n for a take, +n for an add
    bool reserved;   // a take (counted in entry->in_flight), else an add (in entry->adding)
    SubTransactionId subid;
};
Change* changes = nullptr;
int n_changes = 0;
int max_changes = 0;

// Room for one more Change, made before anything is reserved in shared
// memory so that recording the reservation cannot fail.
void make_room_for_change()
{
    if (n_changes < max_changes)
        return;
    int new_max = max_changes == 0 ? 8 : max_changes * 2;
    if (changes == nullptr)
        changes = static_cast<Change*>(MemoryContextAlloc(TopMemoryContext, sizeof(Change) * new_max));
    else
        changes = static_cast<Change*>(repalloc(changes, sizeof(Change) * new_max));
    max_changes = new_max;
}

// This transaction's own uncommitted effect on an entry: the units it took
// (as a positive number) and its net delta.
void own_changes(const Entry* entry, int64* taken, int64* delta)
{
    *taken = 0;
    *delta = 0;
    for (int i = 0; i < n_changes; i++) {
        if (changes[i].entry != entry)
            continue;
        *delta += changes[i].delta;
        if (changes[i].reserved)
            *taken -= changes[i].delta;
    }
}

// Settle a change at its (sub)transaction's end: committed, the level moves;
// either way its units leave in_flight or adding, and takes waiting for
// units of the item look again.
void settle(const Change& change, bool committed)
{
    Entry* entry = change.entry;
    SpinLockAcquire(&entry->mutex);
    if (committed)
        entry->level += change.delta;
    if (change.reserved)
        entry->in_flight += change.delta;
    else
        entry->adding -= change.delta;
    bool sleepers = entry->sleepers;
    entry->sleepers = false;
    // Read before the lock is let go: once settled, the entry may be
    // evicted and its memory given to another item.
    int channel = entry->channel;
    SpinLockRelease(&entry->mutex);
    if (sleepers)
        ConditionVariableBroadcast(channel_of(channel));
}

void settle_all(bool committed)
{
    withdraw_holdings();
    for (int i = 0; i < n_changes; i++)
        settle(changes[i], committed);
    n_changes = 0;
}

// A savepoint rolled back: its changes settle, the others stay (and stay
// published: they have the transaction's id).
void settle_subtransaction(SubTransactionId subid)
{
    withdraw_holdings();
    if (TransactionIdIsValid(GetTopTransactionIdIfAny()))
        for (int i = 0; i < n_changes; i++)
            if (changes[i].reserved && changes[i].subid != subid)
                publish_holding(changes[i].entry);
    int kept = 0;
    for (int i = 0; i < n_changes; i++) {
        if (changes[i].subid == subid)
            settle(changes[i], false);
        else
            changes[kept++] = changes[i];
    }
    n_changes = kept;
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
    if (event == SUBXACT_EVENT_COMMIT_SUB) {
        for (int i = 0; i < n_changes; i++)
            if (changes[i].subid == subid)
                changes[i].subid = parent_subid;
    } else if (event == SUBXACT_EVENT_ABORT_SUB) {
        settle_subtransaction(subid);
    }
}

// ---- Adding and taking ----------------------------------------------------

// Counts n units as added by this transaction (entries_lock held); false if
// the level could pass bigint were every add in flight, this one included,
// to commit. Sets *level to the committed level.
bool reserve_add(Entry* entry, int64 n, int64* level)
{
    SubTransactionId subid = GetCurrentSubTransactionId();
    SpinLockAcquire(&entry->mutex);
    entry->recently_used = true;
    *level = entry->level;
    int64 if_all_commit;
    bool fits = !pg_add_s64_overflow(entry->level, entry->adding, &if_all_commit) &&
                !pg_add_s64_overflow(if_all_commit, n, &if_all_commit);
    if (fits) {
        entry->adding += n;
        changes[n_changes++] = Change{entry, n, false, subid};
    }
    SpinLockRelease(&entry->mutex);
    return fits;
}

enum class Take { reserved, short_of_units, held_in_flight };

// Reserves n units of the entry for this transaction if level - in_flight
// covers them (entries_lock held). Otherwise the shortfall is real when even
// the return of every other transaction's units would not cover n (this
// transaction's own stay taken); if not, the take will sleep until units of
// the item settle. Sets *level to the committed level.
Take reserve_take(Entry* entry, int64 n, int64 own_taken, int64* level)
{
    SubTransactionId subid = GetCurrentSubTransactionId();
    SpinLockAcquire(&entry->mutex);
    entry->recently_used = true;
    *level = entry->level;
    Take take = Take::held_in_flight;
    if (entry->level - entry->in_flight >= n) {
        entry->in_flight += n;
        changes[n_changes++] = Change{entry, -n, true, subid};
        take = Take::reserved;
    } else if (entry->level - own_taken < n) {
        take = Take::short_of_units;
    } else {
        entry->sleepers = true;
    }
    SpinLockRelease(&entry->mutex);
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
    h->pgprocno = idem::pg::compat::my_proc_number();
    h->waiting = true;
    published = true;
    pg_memory_barrier();
    // Takes waiting for units this transaction holds: it may now be part of
    // a cycle with them, so they look.
    for (int i = 0; i < n_changes; i++)
        if (changes[i].reserved)
            wake_sleepers(changes[i].entry);
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
                            "How many hot-stock items can have units in flight at once.",
                            "Items with nothing in flight leave shared memory when room is needed, "
                            "and are loaded from the tables again on next use.",
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
    return pg::guarded([&]() -> Datum {
        StockChange c = stock_change(fcinfo, "idem_stock_add()");
        pg::connect();
        ensure_item_row(c.s);
        make_room_for_change();
        Entry* entry = entry_locked(c.s);
        if (entry == nullptr)
            raise_unknown_item(c.s);  // its row was deleted under us
        int64 taken, delta, level;
        own_changes(entry, &taken, &delta);
        bool fits = reserve_add(entry, c.n, &level);
        LWLockRelease(entries_lock);
        if (!fits)
            ereport(ERROR, (errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
                            errmsg("n = " INT64_FORMAT " would take item %s beyond the bigint range", c.n,
                                   pg::key_for_message(Key{c.s.item.text})),
                            errdetail("Units being added by transactions still in flight count too.")));
        append_to_ledger(c.s, c.n);
        SPI_finish();
        PG_RETURN_INT64(level + delta + c.n);  // within range: level + adding + n is
    });
}

// idem_stock_take(item text, n bigint) RETURNS boolean
IDEM_SQL_FUNCTION(idem_stock_take)
{
    return pg::guarded([&]() -> Datum {
        StockChange c = stock_change(fcinfo, "idem_stock_take()");
        pg::connect();
        make_room_for_change();
        UnitWait wait = {};
        for (;;) {
            Entry* entry = entry_locked(c.s);
            if (entry == nullptr) {
                end_wait(&wait);
                raise_unknown_item(c.s);
            }
            int64 taken, delta, level;
            own_changes(entry, &taken, &delta);
            Take take = reserve_take(entry, c.n, taken, &level);
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
    });
}

// idem_stock_level(item text) RETURNS bigint: units left after every
// committed take and add. An item shared memory holds no entry for has
// nothing in flight, and its level is in the tables; reading it there loads
// nothing, so a read never evicts an entry or fails for want of room. (On a
// standby shared memory holds no entry at all: takes and adds load them.)
IDEM_SQL_FUNCTION(idem_stock_level)
{
    return pg::guarded([&]() -> Datum {
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
        } else if (!level_from_tables(s, &level)) {
            raise_unknown_item(s);
        }
        SPI_finish();
        PG_RETURN_INT64(level);
    });
}

// idem_stock_snapshot() RETURNS TABLE (item text, level bigint, in_flight bigint): the idem_stock view.
// Items shared memory holds no entry for show their level in the tables, read
// like idem_stock_level reads it.
IDEM_SQL_FUNCTION(idem_stock_snapshot)
{
    return pg::guarded([&]() -> Datum {
        require_preloaded();
        Oid nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
        InitMaterializedSRF(fcinfo, 0);
        auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
        MemoryContext cxt = CurrentMemoryContext;
        pg::connect();
        uint64 n = pg::run_latest(all_items, nsp, nullptr, nullptr);
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
    });
}
