// Statistics: one struct of atomic counters, and a bounded hash table of
// per-scope counters whose membership one LWLock guards. Counting an event
// takes the lock shared (exclusive only the first time a scope is seen), so
// counting never waits for another counter.
#include "stats.hpp"

#include "pg/guard.hpp"

extern "C" {
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

struct SharedStats {
    LWLock* lock;  // guards scope_table membership and reset_at
    TimestampTz reset_at;
    pg_atomic_uint64 counters[event_count];
    pg_atomic_uint64 scope_events_dropped;  // events of scopes that found the table full
};

struct ScopeEntry {
    char scope[max_scope_bytes + 1];  // hash key, NUL-terminated
    pg_atomic_uint64 counters[scope_event_count];
};

SharedStats* shared = nullptr;
HTAB* scope_table = nullptr;
int max_scopes = 1000;  // pg_idem.max_scopes

shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

Size shared_size()
{
    return MAXALIGN(sizeof(SharedStats));
}

void request_shmem()
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    RequestAddinShmemSpace(add_size(shared_size(), hash_estimate_size(max_scopes, sizeof(ScopeEntry))));
    RequestNamedLWLockTranche("pg_idem", 1);
}

void startup_shmem()
{
    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();

    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bool found;
    shared = static_cast<SharedStats*>(ShmemInitStruct("pg_idem stats", shared_size(), &found));
    if (!found) {
        shared->lock = &(GetNamedLWLockTranche("pg_idem"))->lock;
        shared->reset_at = GetCurrentTimestamp();
        for (auto& c : shared->counters)
            pg_atomic_init_u64(&c, 0);
        pg_atomic_init_u64(&shared->scope_events_dropped, 0);
    }
    HASHCTL info;
    std::memset(&info, 0, sizeof info);
    info.keysize = max_scope_bytes + 1;
    info.entrysize = sizeof(ScopeEntry);
    scope_table = ShmemInitHash("pg_idem scope stats", max_scopes, max_scopes, &info, HASH_ELEM | HASH_STRINGS);
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

}  // namespace

void init_preloaded()
{
    DefineCustomIntVariable("pg_idem.max_scopes",
                            "How many scopes idem_scope_stats keeps counters for.",
                            "Events of further scopes count in idem_stats only, and in scope_events_dropped.",
                            &max_scopes, 1000, 1, 1000000, PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = request_shmem;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = startup_shmem;
}

void count(Event event, uint64_t n)
{
    if (shared != nullptr)
        pg_atomic_fetch_add_u64(&shared->counters[event], n);
}

void count(Event event, Scope scope, uint64_t n)
{
    if (shared == nullptr)
        return;
    pg_atomic_fetch_add_u64(&shared->counters[event], n);
    if (event >= scope_event_count)
        return;

    char key[max_scope_bytes + 1];
    size_t len = scope.text.size < max_scope_bytes ? scope.text.size : max_scope_bytes;
    std::memcpy(key, scope.text.data, len);
    key[len] = '\0';

    LWLockAcquire(shared->lock, LW_SHARED);
    auto* entry = static_cast<ScopeEntry*>(hash_search(scope_table, key, HASH_FIND, nullptr));
    if (entry != nullptr) {
        pg_atomic_fetch_add_u64(&entry->counters[event], n);
        LWLockRelease(shared->lock);
        return;
    }
    LWLockRelease(shared->lock);

    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    entry = static_cast<ScopeEntry*>(hash_search(scope_table, key, HASH_FIND, nullptr));
    if (entry == nullptr && hash_get_num_entries(scope_table) < max_scopes) {
        bool found;
        entry = static_cast<ScopeEntry*>(hash_search(scope_table, key, HASH_ENTER_NULL, &found));
        if (entry != nullptr && !found)
            for (auto& c : entry->counters)
                pg_atomic_init_u64(&c, 0);
    }
    if (entry != nullptr)
        pg_atomic_fetch_add_u64(&entry->counters[event], n);
    else
        pg_atomic_fetch_add_u64(&shared->scope_events_dropped, n);
    LWLockRelease(shared->lock);
}

}  // namespace idem::stats

using namespace idem::stats;

// idem_stats_snapshot() RETURNS TABLE (...) : the idem_stats view.
IDEM_SQL_FUNCTION(idem_stats_snapshot)
{
    return idem::pg::guarded([&]() -> Datum {
        require_shared();
        InitMaterializedSRF(fcinfo, 0);
        auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
        Datum values[event_count + 2];
        bool nulls[event_count + 2] = {};
        for (int e = 0; e < event_count; e++)
            values[e] = counter_datum(&shared->counters[e]);
        values[event_count] = counter_datum(&shared->scope_events_dropped);
        LWLockAcquire(shared->lock, LW_SHARED);
        values[event_count + 1] = TimestampTzGetDatum(shared->reset_at);
        LWLockRelease(shared->lock);
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
        return 0;
    });
}

// idem_scope_stats_snapshot() RETURNS TABLE (scope text, ...) : the idem_scope_stats view.
IDEM_SQL_FUNCTION(idem_scope_stats_snapshot)
{
    return idem::pg::guarded([&]() -> Datum {
        require_shared();
        InitMaterializedSRF(fcinfo, 0);
        auto* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
        LWLockAcquire(shared->lock, LW_SHARED);
        HASH_SEQ_STATUS scan;
        hash_seq_init(&scan, scope_table);
        while (auto* entry = static_cast<ScopeEntry*>(hash_seq_search(&scan))) {
            Datum values[scope_event_count + 1];
            bool nulls[scope_event_count + 1] = {};
            values[0] = CStringGetTextDatum(entry->scope);
            for (int e = 0; e < scope_event_count; e++)
                values[e + 1] = counter_datum(&entry->counters[e]);
            tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
        }
        LWLockRelease(shared->lock);
        return 0;
    });
}

// idem_stats_reset() RETURNS void
IDEM_SQL_FUNCTION(idem_stats_reset)
{
    return idem::pg::guarded([&]() -> Datum {
        require_shared();
        LWLockAcquire(shared->lock, LW_EXCLUSIVE);
        for (auto& c : shared->counters)
            pg_atomic_write_u64(&c, 0);
        pg_atomic_write_u64(&shared->scope_events_dropped, 0);
        HASH_SEQ_STATUS scan;
        hash_seq_init(&scan, scope_table);
        while (auto* entry = static_cast<ScopeEntry*>(hash_seq_search(&scan)))
            hash_search(scope_table, entry->scope, HASH_REMOVE, nullptr);
        shared->reset_at = GetCurrentTimestamp();
        LWLockRelease(shared->lock);
        return 0;
    });
}
