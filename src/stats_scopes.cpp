// Statistics: the table of per-scope counters (stats_internal.hpp has the
// shared structures).
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

#include "stats_internal.hpp"

extern "C" {
#include "common/hashfn.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::stats {

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

namespace {

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

}  // namespace

// Frees the slots of one database's scopes (reset, or its entry taken over).
void drop_scopes_locked(Oid dbid)
{
    for (int s = 0; s < max_scopes; s++)
        if (slots[s].used && slots[s].key.dbid == dbid)
            free_slot_locked(s);
}

bool has_scope_locked(Oid dbid, Text name)
{
    if (name.size > max_scope_bytes)
        return false;
    ScopeKey key;
    std::memset(&key, 0, sizeof key);
    key.dbid = dbid;
    std::memcpy(key.scope, name.data, name.size);
    return hash_search(scope_index, &key, HASH_FIND, nullptr) != nullptr;
}

int scope_slot_locked(const ScopeKey* key, bool* created)
{
    *created = false;
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
    *created = true;
    return s;
}

}  // namespace idem::stats
