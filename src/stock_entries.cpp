// Hot stock: shared memory, the entries (found, evicted, loaded) and the
// wake-ups (stock_internal.hpp has the design).
#include "stock_internal.hpp"

extern "C" {
#include "storage/shmem.h"
}

#include <cstring>

namespace idem::stock {

// ---- Shared memory --------------------------------------------------------

LWLock* entries_lock = nullptr;
HTAB* entries = nullptr;
Shared* shared = nullptr;
Holder* holders = nullptr;
uint64* marks = nullptr;
int max_items = 10000;

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

namespace {

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

}  // namespace

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

}  // namespace idem::stock
