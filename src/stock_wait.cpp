// Hot stock: a take waiting for units that other transactions hold, and the
// deadlocks such a wait can be part of (stock_internal.hpp has the design).
#include "stock_internal.hpp"

#include "pg/args.hpp"

extern "C" {
#include "access/transam.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"
}

namespace idem::stock {

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

namespace {

void wait_context(void* arg)
{
    const auto* s = static_cast<const StockItem*>(arg);
    errcontext("waiting for units of hot-stock item %s", pg::key_for_message(Key{s->item.text}));
}

}  // namespace

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

namespace {

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
    h->pgprocno = pg::compat::my_proc_number();
    h->waiting = true;
    published = true;
    pg_memory_barrier();
    // Takes waiting for units this transaction holds: it may now be part of
    // a cycle with them, so they look.
    if (book != nullptr) {
        HASH_SEQ_STATUS scan;
        hash_seq_init(&scan, book);
        while (auto* held = static_cast<Held*>(hash_seq_search(&scan)))
            if (held->taken > 0)
                wake_sleepers(held->entry);
    }
}

}  // namespace

void end_wait(UnitWait* wait)
{
    if (!wait->started)
        return;
    ConditionVariableCancelSleep();
    sleeping = false;
    my_holder()->waiting = false;
    error_context_stack = wait->context.previous;
}

namespace {

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
    (void)set_config_option("lock_timeout", value, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
    XactLockTableWait(holder, nullptr, nullptr, XLTW_None);
    AtEOXact_GUC(true, nest_level);
}

}  // namespace

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
    (void)ConditionVariableTimedSleep(wait->channel, timeout, PG_WAIT_EXTENSION);
}

}  // namespace idem::stock
