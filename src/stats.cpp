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
// Per scope: a bounded table in which the least active scope makes room
// for a new one (stats_scopes.cpp says how).

#include "stats_internal.hpp"

#include "pg/guard.hpp"

extern "C" {
#include "access/xact.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::stats {

SharedStats* shared = nullptr;
DbStats* databases = nullptr;  // [max_databases]
ScopeSlot* slots = nullptr;  // [max_scopes]
int* free_slots = nullptr;  // [max_scopes], the first shared->nfree are free
HTAB* scope_index = nullptr;
int max_scopes = 1000;  // pg_idem.max_scopes
int max_databases = 64;  // pg_idem.max_databases

namespace {

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
    scope_index =
        ShmemInitHash("pg_idem scope stats", max_scopes, max_scopes, &info, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE);
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
    d->new_scope_role = InvalidOid;
    d->new_scope_key = 0;
    d->new_scope_key_streak = 0;
    d->reset_at = GetCurrentTimestamp();
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
        } else if (oldest == nullptr ||
                   pg_atomic_read_u64(&d->last_active) < pg_atomic_read_u64(&oldest->last_active)) {
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

}  // namespace

void init_preloaded()
{
    DefineCustomIntVariable("pg_idem.max_scopes",
                            "How many scopes idem_scope_stats keeps counters for, in all databases together.",
                            "When it is full, a new scope takes the place of the least active one.", &max_scopes, 1000,
                            1, 1000000, PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("pg_idem.max_databases", "How many databases pg_idem keeps statistics for.",
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

namespace {

// What a new scope's first claim with `key` says (stats.hpp), under the
// exclusive lock.
SwapSign swap_sign_locked(DbStats* d, Scope scope, Key key)
{
    SwapSign sign;
    Oid role = GetOuterUserId();  // the caller, not pg_idem's SECURITY DEFINER owner
    uint64 hash =
        hash_bytes_extended(reinterpret_cast<const unsigned char*>(key.text.data), static_cast<int>(key.text.size), 0);
    bool same = d->new_scope_key_streak > 0 && d->new_scope_role == role && d->new_scope_key == hash;
    d->new_scope_key_streak = same ? d->new_scope_key_streak + 1 : 1;
    d->new_scope_role = role;
    d->new_scope_key = hash;
    sign.key_repeats = d->new_scope_key_streak >= swapped_streak;
    bool key_differs =
        !(key.text.size == scope.text.size && std::memcmp(key.text.data, scope.text.data, key.text.size) == 0);
    sign.key_is_scope = key_differs && has_scope_locked(pg_atomic_read_u32(&d->dbid), key.text);
    return sign;
}

// Counts `event` in `scope`; `key`, when given, is the key of a claim
// granted there, for the swap sign of a new scope.
SwapSign count_in_scope(Event event, Scope scope, uint64_t n, const Key* key)
{
    if (shared == nullptr)
        return SwapSign{};
    if (event >= scope_event_count) {
        count(event, n);
        return SwapSign{};
    }

    ScopeKey skey;
    skey.dbid = MyDatabaseId;
    size_t len = scope.text.size < max_scope_bytes ? scope.text.size : max_scope_bytes;
    std::memcpy(skey.scope, scope.text.data, len);
    skey.scope[len] = '\0';

    DbStats* d = this_database();
    pg_atomic_fetch_add_u64(&d->counters[event], n);
    touch(d);

    LWLockAcquire(shared->lock, LW_SHARED);
    auto* entry = static_cast<IndexEntry*>(hash_search(scope_index, &skey, HASH_FIND, nullptr));
    if (entry != nullptr) {
        pg_atomic_fetch_add_u64(&slots[entry->slot].counters[event], n);
        LWLockRelease(shared->lock);
        return SwapSign{};
    }
    LWLockRelease(shared->lock);

    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    // The database's entry may have been taken over meanwhile: a scope slot
    // is only ever given to a database that has an entry.
    d = claim_database_locked();
    my_db = d;
    SwapSign sign;
    bool created;
    int s = scope_slot_locked(&skey, &created);
    if (s >= 0)
        pg_atomic_fetch_add_u64(&slots[s].counters[event], n);
    else
        pg_atomic_fetch_add_u64(&d->scope_events_dropped, n);
    if (created && key != nullptr)
        sign = swap_sign_locked(d, scope, *key);
    LWLockRelease(shared->lock);
    return sign;
}

}  // namespace

void count(Event event, Scope scope, uint64_t n)
{
    count_in_scope(event, scope, n, nullptr);
}

SwapSign count_claim(Event event, Scope scope, Key key)
{
    return count_in_scope(event, scope, 1, &key);
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
