// Hot stock: what a backend publishes (its Holder), this transaction's book
// of takes and adds, takes and adds by row, and the ends of (sub)transactions
// that settle them (stock_internal.hpp has the design and the book's types).
#include "stock_internal.hpp"

extern "C" {
#include "access/transam.h"
#include "common/int.h"
#include "port/pg_bitutils.h"
#include "storage/proc.h"
#include "utils/memutils.h"
}

#include <cstring>

namespace idem::stock {

// ---- What this backend publishes (Holder) ---------------------------------

bool published = false;
bool sleeping = false;

volatile Holder* my_holder()
{
    return &holders[pg::compat::backend_slot()];
}

// Lists the entry among those this transaction holds units of.
void publish_holding(const Entry* entry)
{
    volatile Holder* h = my_holder();
    if (!TransactionIdIsValid(h->xid)) {
        h->pgprocno = pg::compat::my_proc_number();
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

namespace {

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

}  // namespace

// ---- This transaction's changes -------------------------------------------
//
// (stock_internal.hpp says how the book is kept, with its types.)

HTAB* book = nullptr;

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

// ---- By row ----------------------------------------------------------------

namespace {

bool marked_any = false;  // this transaction set a mark

uint64* my_marks()
{
    return &marks[pg::compat::backend_slot() * mark_words];
}

}  // namespace

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

namespace {

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

}  // namespace

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
    if (pg_add_s64_overflow(level, held->added, &if_all_commit) ||
        pg_add_s64_overflow(if_all_commit, n, &if_all_commit))
        raise_beyond_bigint(s, n);
    append_to_ledger(s, n);
    record(held, 0, n);
    return level - held->taken + held->added;
}

// ---- Ends of (sub)transactions ---------------------------------------------

namespace {

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

}  // namespace

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

}  // namespace idem::stock
