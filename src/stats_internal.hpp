// Statistics' shared memory, shared by stats.cpp (the segment, each
// database's counters, counting and the views) and stats_scopes.cpp (the
// table of per-scope counters and how a new scope makes room).
//
// One LWLock, shared->lock, guards the scope index, slot membership, the
// database entries' identity and reset_at; counters are atomics added to
// under it held shared (scopes) or without it (databases).
#pragma once

#include "stats.hpp"

#include "pg/postgres.hpp"

extern "C" {
#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "utils/hsearch.h"
}

namespace idem::stats {

constexpr int max_candidates = 32;

struct DbStats {
    pg_atomic_uint32 dbid;  // InvalidOid: free; changed under the exclusive lock
    TimestampTz reset_at;  // under the lock
    pg_atomic_uint64 last_active;  // start of the latest transaction that counted here
    pg_atomic_uint64 counters[event_count];
    pg_atomic_uint64 scope_events_dropped;  // events the dropped scopes had counted
    pg_atomic_uint64 scopes_dropped;  // scopes that made room for another
    // Under the exclusive lock: the role and the hash of the key of the
    // latest new scope's first claim, and how many new scopes in a row had
    // both.
    Oid new_scope_role;
    uint64 new_scope_key;
    int new_scope_key_streak;
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

extern SharedStats* shared;
extern DbStats* databases;  // [max_databases]
extern ScopeSlot* slots;  // [max_scopes]
extern int* free_slots;  // [max_scopes], the first shared->nfree are free
extern HTAB* scope_index;
extern int max_scopes;  // pg_idem.max_scopes
extern int max_databases;  // pg_idem.max_databases

// stats_scopes.cpp. The hash index's functions, for ShmemInitHash:
uint32 scope_key_hash(const void* key, Size);
int scope_key_compare(const void* a, const void* b, Size);
// Frees the slots of one database's scopes (reset, or its entry taken over).
void drop_scopes_locked(Oid dbid);
// The slot of `key`, given one now if it has none (the least active scope
// makes room, and *created is set); -1 if the index is out of memory (it is
// sized for every slot, so never).
int scope_slot_locked(const ScopeKey* key, bool* created);
// Whether `name` is a scope with statistics in database `dbid`.
bool has_scope_locked(Oid dbid, Text name);

}  // namespace idem::stats
