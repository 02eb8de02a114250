// What the current transaction has claimed: a hash table of key hashes, each
// with the innermost subtransaction that must stay alive for the claim to
// stand, and a stack of the subtransactions that claimed something, each with
// the keys it claimed. Everything lives in TopTransactionContext, which
// PostgreSQL frees at the transaction's end; the callback only drops the
// pointers.
//
// A key claimed again in an inner subtransaction (its claim expired and was
// renewed) keeps its outer record: while the outer subtransaction lives the
// row is this transaction's whichever inner one rolls back, and when the
// outer one rolls back every inner one has already ended.
#include "own_claims.hpp"

extern "C" {
#include "access/xact.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
}

namespace idem::own_claims {
namespace {

struct Claimed {
    pg_uuid_t key_hash;  // the hash table's key
    SubTransactionId subid;
};

// Keys one subtransaction claimed; `outer` is the next level down the stack
// (several levels may carry one subid: those its released children left).
struct Level {
    SubTransactionId subid;
    int n;
    int capacity;
    pg_uuid_t* key_hashes;
    Level* outer;
};

HTAB* claimed = nullptr;  // in TopTransactionContext
Level* innermost = nullptr;

Level* new_level(SubTransactionId subid, Level* outer)
{
    auto* level = static_cast<Level*>(MemoryContextAlloc(TopTransactionContext, sizeof(Level)));
    level->subid = subid;
    level->n = 0;
    level->capacity = 4;
    level->key_hashes =
        static_cast<pg_uuid_t*>(MemoryContextAlloc(TopTransactionContext, sizeof(pg_uuid_t) * level->capacity));
    level->outer = outer;
    return level;
}

// Room for one more key in the level, made before the key is entered in the
// hash table: an allocation that fails must leave nothing recorded.
void make_room(Level* level)
{
    if (level->n < level->capacity)
        return;
    level->capacity *= 2;
    level->key_hashes = static_cast<pg_uuid_t*>(repalloc(level->key_hashes, sizeof(pg_uuid_t) * level->capacity));
}

Claimed* find(const pg_uuid_t& key_hash)
{
    if (claimed == nullptr)
        return nullptr;
    return static_cast<Claimed*>(hash_search(claimed, &key_hash, HASH_FIND, nullptr));
}

// A released subtransaction's claims become its parent's. Its levels are
// relabelled rather than merged into the parent's: a callback at commit must
// not allocate (and fail) memory.
void hand_to_parent(SubTransactionId subid, SubTransactionId parent)
{
    for (Level* level = innermost; level != nullptr && level->subid == subid; level = level->outer) {
        for (int i = 0; i < level->n; i++) {
            Claimed* c = find(level->key_hashes[i]);
            if (c != nullptr && c->subid == subid)
                c->subid = parent;
        }
        level->subid = parent;
    }
}

// A rolled-back subtransaction's claims are gone with its rows.
void forget_subtransaction(SubTransactionId subid)
{
    for (; innermost != nullptr && innermost->subid == subid; innermost = innermost->outer)
        for (int i = 0; i < innermost->n; i++) {
            Claimed* c = find(innermost->key_hashes[i]);
            if (c != nullptr && c->subid == subid)
                hash_search(claimed, &innermost->key_hashes[i], HASH_REMOVE, nullptr);
        }
}

void on_xact(XactEvent event, void*)
{
    switch (event) {
    case XACT_EVENT_COMMIT:
    case XACT_EVENT_PARALLEL_COMMIT:
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_ABORT:
    case XACT_EVENT_PREPARE:
        claimed = nullptr;
        innermost = nullptr;
        break;
    default:
        break;
    }
}

void on_subxact(SubXactEvent event, SubTransactionId subid, SubTransactionId parent, void*)
{
    if (event == SUBXACT_EVENT_COMMIT_SUB)
        hand_to_parent(subid, parent);
    else if (event == SUBXACT_EVENT_ABORT_SUB)
        forget_subtransaction(subid);
}

}  // namespace

void init()
{
    RegisterXactCallback(on_xact, nullptr);
    RegisterSubXactCallback(on_subxact, nullptr);
}

void remember(const pg_uuid_t& key_hash)
{
    if (claimed == nullptr) {
        HASHCTL info = {};
        info.keysize = sizeof(pg_uuid_t);
        info.entrysize = sizeof(Claimed);
        info.hcxt = TopTransactionContext;
        claimed = hash_create("pg_idem claims of this transaction", 64, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
    }
    if (find(key_hash) != nullptr)
        return;  // held since an outer (or this) subtransaction
    SubTransactionId subid = GetCurrentSubTransactionId();
    if (innermost == nullptr || innermost->subid != subid)
        innermost = new_level(subid, innermost);
    make_room(innermost);
    auto* c = static_cast<Claimed*>(hash_search(claimed, &key_hash, HASH_ENTER, nullptr));
    c->subid = subid;
    innermost->key_hashes[innermost->n++] = key_hash;
}

bool holds(const pg_uuid_t& key_hash)
{
    return find(key_hash) != nullptr;
}

}  // namespace idem::own_claims
