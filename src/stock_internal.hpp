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
//
// The parts: stock.cpp has the SQL functions, the statements, the table
// readers and adding and taking; stock_entries.cpp shared memory, the
// entries, their eviction and loading, and the wake-ups; stock_book.cpp what
// a backend publishes, this transaction's book, takes and adds by row, and
// the ends of (sub)transactions; stock_wait.cpp waiting for units and finding
// deadlocks. This header has what they share.
//
// LOCK ORDER, outermost first: (1) transaction-level locks: the item's row
// lock (lock_row_level, FOR UPDATE, kept until the transaction ends) with
// the other locks its statements take, and the waits for another
// transaction's lock (a row lock held by a take by row, or XactLockTableWait
// on a holder in wait_for_holder); (2) entries_lock, shared or exclusive;
// (3) an entry's spinlock (entry->mutex). entries_lock may be taken while
// the transaction holds row locks (mark_for_row, insert_entry, and
// clear_marks at XACT_EVENT_COMMIT or ABORT, before PostgreSQL releases the
// transaction's locks), never the reverse: nothing waits for a transaction
// lock or runs a statement with entries_lock or a spinlock held (load_entry
// lets the lock go before it reads the tables; adds and takes let it go
// before they append to the ledger, sleep or wait for a holder). An entry's
// spinlock is taken with entries_lock held (after find_locked, and in
// evict_pass), or without it only for an entry this transaction's units keep
// from eviction (settle, wake_sleepers); nothing is taken while it is held.
// Condition variables are touched with no LWLock or spinlock held: a take
// sleeps on its channel after letting entries_lock go, and settle and
// wake_sleepers broadcast after letting the entry's spinlock go. A sleeping
// take may still hold row locks of other items; the deadlock search in
// stock_wait.cpp is for that. The Holders take no lock (each is written by
// its own backend, with barriers); the marks are set under entries_lock
// shared and cleared or read under it exclusive. AddinShmemInitLock is taken
// only at startup, around the initialisation of all of it.
#pragma once

#include "core/key.hpp"
#include "pg/postgres.hpp"

extern "C" {
#include "access/xact.h"
#include "datatype/timestamp.h"
#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/hsearch.h"
}

namespace idem::stock {

// ---- Shared memory (stock_entries.cpp) ------------------------------------

struct EntryKey {
    Oid database;
    Oid items_table;  // a re-created extension has a new table, and starts afresh
    char item[max_item_bytes + 1];
};

struct Entry {
    EntryKey key;
    int channel;  // its wakeup channel (shared->settled), set when loaded
    slock_t mutex;  // guards the fields below
    int64 level;
    int64 in_flight;  // units taken by transactions still running
    int64 adding;  // units added by transactions still running
    bool recently_used;  // since the evictor last looked (see evict_pass)
    bool sleepers;  // a take waits for units of this item to settle
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

extern LWLock* entries_lock;  // guards the membership of `entries`, the eviction stamps and the marks
extern HTAB* entries;
extern Shared* shared;
extern Holder* holders;  // one per backend, by compat::backend_slot()
extern uint64* marks;  // mark_words per backend, by compat::backend_slot()
extern int max_items;  // pg_idem.max_stock_items

extern shmem_request_hook_type prev_shmem_request_hook;
extern shmem_startup_hook_type prev_shmem_startup_hook;

// ---- Items ----------------------------------------------------------------

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

// How a take or an add of an item goes: through its entry, by its row, or
// nowhere (the item does not exist).
enum class Route { entry, by_row, no_item };

// ---- This transaction's changes (stock_book.cpp) --------------------------
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
    int64 taken;  // units this transaction holds in entry->in_flight (by row: in its ledger rows)
    int64 added;  // units it holds in entry->adding (by row: in its ledger rows)
    int newest;  // index of its newest Change, -1 if none
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

extern HTAB* book;  // Held by entry
extern bool published;  // this transaction wrote to its Holder
extern bool sleeping;  // a take's wait may have this backend on a wakeup channel

// ---- Waiting for units (stock_wait.cpp) -----------------------------------

// A take's wait, from its first sleep to its end.
struct UnitWait {
    bool started;
    TimestampTz since;
    ConditionVariable* channel;
    ErrorContextCallback context;
};

// ---- What the parts call across files (each explained where defined) ------

// stock.cpp: the tables.
bool level_from_tables(const StockItem& s, int64* level);
void append_to_ledger(const StockItem& s, int64 delta);
int64 lock_row_level(const StockItem& s);
[[noreturn]] void raise_beyond_bigint(const StockItem& s, int64 n);

// stock_entries.cpp: shared memory, the entries and the wake-ups.
void request_shmem();
void startup_shmem();
Entry* find_locked(const StockItem& s);
Route route_locked(const StockItem& s, Entry** entry);
ConditionVariable* channel_of(int channel);
void wake_sleepers(Entry* entry);

// stock_book.cpp: the Holder, the book, by row, ends of (sub)transactions.
volatile Holder* my_holder();
void publish_holding(const Entry* entry);
void prepare_book();
int entries_held();
Held* held_for(Entry* entry);
void forget_if_empty(Held* held);
void record(Held* held, int64 taken, int64 added);
bool mark_for_row(const StockItem& s);
bool take_by_row(const StockItem& s, int64 n);
int64 add_by_row(const StockItem& s, int64 n);
void on_xact(XactEvent event, void*);
void on_subxact(SubXactEvent event, SubTransactionId subid, SubTransactionId parent_subid, void*);

// stock_wait.cpp: waiting for units.
TransactionId blocked_holder(const Entry* entry);
void end_wait(UnitWait* wait);
void wait_for_units(UnitWait* wait, const StockItem& s, TransactionId blocked);

}  // namespace idem::stock
