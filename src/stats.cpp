// Statistics: counters per database, and a bounded table of per-scope
// counters shared by all databases, in shared memory.
//
// Per database: a small array of entries (pg_idem.max_databases), each a
// set of atomic counters. A backend finds its database's entry once and keeps
// a pointer to it, so counting an event is one atomic add, without a lock.
// When every entry is taken, a new database takes over the one whose latest
// event is the oldest (a dropped database's, typically): its counters and
// scopes start again, and its stats_reset says since when.
//
// Per scope: slots keyed by (database, scope) through a hash index whose
// membership one LWLock guards. Counting takes the lock shared and adds
// atomically; only the first event of a scope takes it exclusive. When the
// table is full, the new scope takes the slot of the least active one (the
// fewest events since it entered, the oldest among equals), whose database
// counts it in scopes_dropped and its events in scope_events_dropped. So a
// scope is only ever dropped for a new one while it has no more events than
// any other: a flood of one-event scopes, committed or rolled back, only
// pushes out other one-event scopes, never a busier one. (Counts are not
// decayed: a scope busy long ago keeps its slot until idem_stats_reset().)
//
// Finding the least active slot must not scan the whole table for each new
// scope under the exclusive lock: a scan keeps the max_candidates least
// active slots as candidates and the rank of the highest of them. Counts only
// grow, so every other slot stays above that rank, and the least active
// candidate is the least active slot as long as it is still at or below it;
// new scopes join the candidates. Otherwise (or when the candidates run out)
// the next eviction scans again. A flood thus costs one scan per
// max_candidates new scopes at most, usually none.
#include "stats.hpp"

#include "pg/guard.hpp"

extern "C" {
#include "access/xact.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::stats {
namespace {

constexpr int max_candidates = 32;

struct DbStats {
    pg_atomic_uint32 dbid;         // InvalidOid: free; changed under the exclusive lock
    TimestampTz reset_at;          // under the lock
    pg_atomic_uint64 last_active;  // start of the latest transaction that counted here
    pg_atomic_uint64 counters[event_count];
    pg_atomic_uint64 scope_events_dropped;  // events the dropped scopes had counted
    pg_atomic_uint64 scopes_dropped;        // scopes that made room for another
};

struct ScopeKey {
    Oid dbid;
    char scope[max_scope_bytes + 1];  // NUL-terminated
};

struct ScopeSlot {
    pg_atomic_uint64 counters[scope_event_count];
    // The rest changes only under the exclusive lock.
    bool used;
    uint64 seq;  // order of entry: of two equally active slots the older goes
    TimestampTz since;
    ScopeKey key;
};

// The hash index: (database, scope) -> slot.
struct IndexEntry {
    ScopeKey key;
    int slot;
};

struct Rank {
    uint64 activity;
    uint64 seq;
    bool operator<(const Rank& o) const { return activity != o.activity ? activity < o.activity : seq < o.seq; }
};

struct SharedStats {
    LWLock* lock;  // guards the scope index, slot membership, database entries' identity and reset_at
    // Under the exclusive lock:
    uint64 next_seq;
    int nfree;
    bool candidates_valid;
    int ncandidates;
    Rank threshold;  // every slot that is not a candidate ranks above it
    int candidates[max_candidates];
};

SharedStats* shared = nullptr;
DbStats* databases = nullptr;  // [max_databases]
ScopeSlot* slots = nullptr;    // [max_scopes]
int* free_slots = nullptr;     // [max_scopes], the first shared->nfree are free
HTAB* scope_index = nullptr;
int max_scopes = 1000;    // pg_idem.max_scopes
int max_databases = 64;   // pg_idem.max_databases

// This backend's database entry, found on its first event.
DbStats* my_db = nullptr;

shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

Size header_size()
{
    return MAXALIGN(sizeof(SharedStats));
}
Size databases_size()
{
    return MAXALIGN(mul_size(sizeof(DbStats), max_databases));
}
Size slots_size()
{
    return MAXALIGN(mul_size(sizeof(ScopeSlot), max_scopes));
}
Size shared_size()
{
    return add_size(add_size(header_size(), databases_size()),
                    add_size(slots_size(), mul_size(sizeof(int), max_scopes)));
}

uint32 scope_key_hash(const void* k, Size)
{
    auto* key = static_cast<const ScopeKey*>(k);
    return hash_combine(murmurhash32(key->dbid),
                        hash_bytes(reinterpret_cast<const unsigned char*>(key->scope), std::strlen(key->scope)));
}

int scope_key_compare(const void* a, const void* b, Size)
{
    auto* x = static_cast<const ScopeKey*>(a);
    auto* y = static_cast<const ScopeKey*>(b);
    return x->dbid == y->dbid && std::strcmp(x->scope, y->scope) == 0 ? 0 : 1;
}

void request_shmem()
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    RequestAddinShmemSpace(add_size(shared_size(), hash_estimate_size(max_scopes, sizeof(IndexEntry))));
    RequestNamedLWLockTranche("pg_idem", 1);
}

void startup_shmem()
{
    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();

    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bool found;
    char* base = static_cast<char*>(ShmemInitStruct("pg_idem stats", shared_size(), &found));
    shared = reinterpret_cast<SharedStats*>(base);
    databases = reinterpret_cast<DbStats*>(base + header_size());
    slots = reinterpret_cast<ScopeSlot*>(base + header_size() + databases_size());
    free_slots = reinterpret_cast<int*>(base + header_size() + databases_size() + slots_size());
    if (!found) {
        shared->lock = &(GetNamedLWLockTranche("pg_idem"))->lock;
        shared->next_seq = 0;
        shared->candidates_valid = false;
        shared->ncandidates = 0;
        for (int i = 0; i < max_databases; i++) {
            DbStats* d = &databases[i];
            pg_atomic_init_u32(&d->dbid, InvalidOid);
            d->reset_at = 0;
            pg_atomic_init_u64(&d->last_active, 0);
            for (auto& c : d->counters)
                pg_atomic_init_u64(&c, 0);
            pg_atomic_init_u64(&d->scope_events_dropped, 0);
            pg_atomic_init_u64(&d->scopes_dropped, 0);
        }
        for (int s = 0; s < max_scopes; s++) {
            for (auto& c : slots[s].counters)
                pg_atomic_init_u64(&c, 0);
            slots[s].used = false;
            free_slots[s] = max_scopes - 1 - s;  // slot 0 is taken first
        }
        shared->nfree = max_scopes;
    }
    HASHCTL info;
    std::memset(&info, 0, sizeof info);
    info.keysize = sizeof(ScopeKey);
    info.entrysize = sizeof(IndexEntry);
    info.hash = scope_key_hash;
    info.match = scope_key_compare;
    scope_index = ShmemInitHash("pg_idem scope stats", max_scopes, max_scopes, &info,
                                HASH_ELEM | HASH_FUNCTION | HASH_COMPARE);
    LWLockRelease(AddinShmemInitLock);
}

void require_shared()
{
    if (shared == nullptr)
        pg::raise_needs_preload("statistics");
}

Datum counter_datum(pg_atomic_uint64* c)
{
    return Int64GetDatum(static_cast<int64>(pg_atomic_read_u64(c)));
}

// --- Databases -----------------------------------------------------------

void zero_database(DbStats* d)
{
    for (auto& c : d->counters)
        pg_atomic_write_u64(&c, 0);
    pg_atomic_write_u64(&d->scope_events_dropped, 0);
    pg_atomic_write_u64(&d->scopes_dropped, 0);
    d->reset_at = GetCurrentTimestamp();
}

DbStats* find_database_locked(Oid dbid)
{
    for (int i = 0; i < max_databases; i++)
        if (pg_atomic_read_u32(&databases[i].dbid) == dbid)
            return &databases[i];
    return nullptr;
}

void free_slot_locked(int s)
{
    hash_search(scope_index, &slots[s].key, HASH_REMOVE, nullptr);
    slots[s].used = false;
    free_slots[shared->nfree++] = s;
    // A freed slot may be a candidate: the next eviction scans again.
    shared->candidates_valid = false;
}

// Frees the slots of one database's scopes (reset, or its entry taken over).
void drop_scopes_locked(Oid dbid)
{
    for (int s = 0; s < max_scopes; s++)
        if (slots[s].used && slots[s].key.dbid == dbid)
            free_slot_locked(s);
}

// The entry of the current database, taken now if it has none.
DbStats* claim_database_locked()
{
    Oid me = MyDatabaseId;
    DbStats* free = nullptr;
    DbStats* oldest = nullptr;
    for (int i = 0; i < max_databases; i++) {
        DbStats* d = &databases[i];
        Oid id = pg_atomic_read_u32(&d->dbid);
        if (id == me)
            return d;
        if (id == InvalidOid) {
            if (free == nullptr)
                free = d;
        } else if (oldest == nullptr || pg_atomic_read_u64(&d->last_active) < pg_atomic_read_u64(&oldest->last_active)) {
            oldest = d;
        }
    }
    DbStats* d = free;
    if (d == nullptr) {
        d = oldest;  // max_databases >= 1
        drop_scopes_locked(pg_atomic_read_u32(&d->dbid));
    }
    // (A backend of the database that had the entry may still add an event
    // it counted just before: the entry is the least recently used.)
    pg_atomic_write_u32(&d->dbid, me);
    pg_atomic_write_u64(&d->last_active, 0);
    zero_database(d);
    return d;
}

DbStats* this_database()
{
    DbStats* d = my_db;
    if (likely(d != nullptr && pg_atomic_read_u32(&d->dbid) == MyDatabaseId))
        return d;
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    d = claim_database_locked();
    LWLockRelease(shared->lock);
    my_db = d;
    return d;
}

// Marks the entry as used now, for the choice of the entry a new database
// takes over. A read, and a write once per transaction.
void touch(DbStats* d)
{
    uint64 now = static_cast<uint64>(GetCurrentTransactionStartTimestamp());
    if (pg_atomic_read_u64(&d->last_active) < now)
        pg_atomic_write_u64(&d->last_active, now);
}

// --- Scopes --------------------------------------------------------------

Rank rank_of(int s)
{
    uint64 activity = 0;
    for (auto& c : slots[s].counters)
        activity += pg_atomic_read_u64(&c);
    return Rank{activity, slots[s].seq};
}

// Finds the max_candidates least active slots (the table is full).
void scan_candidates_locked()
{
    Rank ranks[max_candidates];
    int n = 0, worst = -1, used = 0;
    for (int s = 0; s < max_scopes; s++) {
        if (!slots[s].used)
            continue;
        used++;
        Rank r = rank_of(s);
        if (n < max_candidates) {
            shared->candidates[n] = s;
            ranks[n] = r;
            if (worst < 0 || ranks[worst] < r)
                worst = n;
            n++;
        } else if (r < ranks[worst]) {
            shared->candidates[worst] = s;
            ranks[worst] = r;
            for (int i = 0; i < n; i++)
                if (ranks[worst] < ranks[i])
                    worst = i;
        }
    }
    shared->ncandidates = n;
    shared->threshold = used > n ? ranks[worst] : Rank{PG_UINT64_MAX, PG_UINT64_MAX};
    shared->candidates_valid = true;
}

// The least active slot, taken out of the candidates.
int least_active_locked()
{
    for (bool rescanned = false;; rescanned = true) {
        if (!shared->candidates_valid || shared->ncandidates == 0) {
            scan_candidates_locked();
            rescanned = true;
        }
        int best = 0;
        Rank best_rank = rank_of(shared->candidates[0]);
        for (int i = 1; i < shared->ncandidates; i++) {
            Rank r = rank_of(shared->candidates[i]);
            if (r < best_rank) {
                best = i;
                best_rank = r;
            }
        }
        if (rescanned || !(shared->threshold < best_rank)) {
            int s = shared->candidates[best];
            shared->candidates[best] = shared->candidates[--shared->ncandidates];
            return s;
        }
        shared->candidates_valid = false;
    }
}

// Empties the least active slot for a new scope; its database counts it.
int evict_locked()
{
    int s = least_active_locked();
    ScopeSlot* victim = &slots[s];
    if (DbStats* d = find_database_locked(victim->key.dbid)) {
        pg_atomic_fetch_add_u64(&d->scopes_dropped, 1);
        pg_atomic_fetch_add_u64(&d->scope_events_dropped, rank_of(s).activity);
    }
    hash_search(scope_index, &victim->key, HASH_REMOVE, nullptr);
    victim->used = false;
    return s;
}

// The slot of `key`, given one now if it has none; -1 if the index is out
// of memory (it is sized for every slot, so never).
int scope_slot_locked(const ScopeKey* key)
{
    auto* entry = static_cast<IndexEntry*>(hash_search(scope_index, key, HASH_FIND, nullptr));
    if (entry != nullptr)
        return entry->slot;

    ScopeKey padded;
    std::memset(&padded, 0, sizeof padded);
    padded.dbid = key->dbid;
    std::strcpy(padded.scope, key->scope);

    int s = shared->nfree > 0 ? free_slots[--shared->nfree] : evict_locked();
    bool found;
    entry = static_cast<IndexEntry*>(hash_search(scope_index, &padded, HASH_ENTER_NULL, &found));
    if (entry == nullptr) {
        free_slots[shared->nfree++] = s;
        return -1;
    }
    entry->slot = s;
    ScopeSlot* slot = &slots[s];
    for (auto& c : slot->counters)
        pg_atomic_write_u64(&c, 0);
    slot->used = true;
    slot->seq = shared->next_seq++;
    slot->since = GetCurrentTimestamp();
    slot->key = padded;
    if (shared->candidates_valid && shared->ncandidates < max_candidates)
        shared->candidates[shared->ncandidates++] = s;
    else
        shared->candidates_valid = false;
    return s;
}

}  // namespace

void init_preloaded()
{
    DefineCustomIntVariable("pg_idem.max_scopes",
                            "How many scopes idem_scope_stats keeps counters for, in all databases together.",
                            "When it is full, a new scope takes the place of the least active one.",
                            &max_scopes, 1000, 1, 1000000, PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("pg_idem.max_databases",
                            "How many databases pg_idem keeps statistics for.",
                            "When it is full, a new database takes the place of the one least recently counted in.",
                            &max_databases, 64, 1, 10000, PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = request_shmem;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = startup_shmem;
}

void count(Event event, uint64_t n)
{
    if (shared == nullptr)
        return;
    DbStats* d = this_database();
    pg_atomic_fetch_add_u64(&d->counters[event], n);
    touch(d);
}

void count(Event event, Scope scope, uint64_t n)
{
    if (shared == nullptr)
        return;
    if (event >= scope_event_count) {
        count(event, n);
        return;
    }

    ScopeKey key;
    key.dbid = MyDatabaseId;
    size_t len = scope.text.size < max_scope_bytes ? scope.text.size : max_scope_bytes;
    std::memcpy(key.scope, scope.text.data, len);
    key.scope[len] = '\0';

    DbStats* d = this_database();
    pg_atomic_fetch_add_u64(&d->counters[event], n);
    touch(d);

    LWLockAcquire(shared->lock, LW_SHARED);
    auto* entry = static_cast<IndexEntry*>(hash_search(scope_index, &key, HASH_FIND, nullptr));
    if (entry != nullptr) {
        pg_atomic_fetch_add_u64(&slots[entry->slot].counters[event], n);
        LWLockRelease(shared->lock);
        return;
    }
    LWLockRelease(shared->lock);

    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    // The database's entry may have been taken over meanwhile: a scope slot
    // is only ever given to a database that has an entry.
    d = claim_database_locked();
    my_db = d;
    int s = scope_slot_locked(&key);
    if (s >= 0)
        pg_atomic_fetch_add_u64(&slots[s].counters[event], n);
    else
        pg_atomic_fetch_add_u64(&d->scope_events_dropped, n);
    LWLockRelease(shared->lock);
}

}  // namespace idem::stats

using namespace idem::stats;

// idem_stats_snapshot() RETURNS TABLE (...) : the idem_stats view, for the
// current database.
IDEM_SQL_FUNCTION(idem_stats_snapshot)
{
    require_shared();
    InitMaterializedSRF(fcinfo, 0);
    auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
    Datum values[event_count + 3];
    bool nulls[event_count + 3] = {};
    for (;;) {
        DbStats* d = this_database();
        LWLockAcquire(shared->lock, LW_SHARED);
        if (pg_atomic_read_u32(&d->dbid) == MyDatabaseId) {
            for (int e = 0; e < event_count; e++)
                values[e] = counter_datum(&d->counters[e]);
            values[event_count] = counter_datum(&d->scope_events_dropped);
            values[event_count + 1] = counter_datum(&d->scopes_dropped);
            values[event_count + 2] = TimestampTzGetDatum(d->reset_at);
            LWLockRelease(shared->lock);
            break;
        }
        LWLockRelease(shared->lock);  // taken over meanwhile: take one again
    }
    tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
    return 0;
}

// idem_scope_stats_snapshot() RETURNS TABLE (scope text, ...) : the
// idem_scope_stats view, the current database's scopes. (An error while the
// lock is held, out of memory, releases it with the transaction.)
IDEM_SQL_FUNCTION(idem_scope_stats_snapshot)
{
    require_shared();
    InitMaterializedSRF(fcinfo, 0);
    auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
    constexpr int ncols = scope_event_count + 2;
    LWLockAcquire(shared->lock, LW_SHARED);
    for (int s = 0; s < max_scopes; s++) {
        ScopeSlot* slot = &slots[s];
        if (!slot->used || slot->key.dbid != MyDatabaseId)
            continue;
        Datum values[ncols];
        bool nulls[ncols] = {};
        values[0] = CStringGetTextDatum(slot->key.scope);
        for (int e = 0; e < scope_event_count; e++)
            values[e + 1] = counter_datum(&slot->counters[e]);
        values[scope_event_count + 1] = TimestampTzGetDatum(slot->since);
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
    }
    LWLockRelease(shared->lock);
    return 0;
}

// idem_stats_reset() RETURNS void: the current database's counters and scopes.
IDEM_SQL_FUNCTION(idem_stats_reset)
{
    require_shared();
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    DbStats* d = claim_database_locked();
    my_db = d;
    zero_database(d);
    drop_scopes_locked(MyDatabaseId);
    LWLockRelease(shared->lock);
    return 0;
}
