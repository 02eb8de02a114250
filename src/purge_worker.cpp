// The background purge worker: one per database named in pg_idem.database,
// registered at server start when pg_idem is preloaded. Each round purges
// up to pg_idem.purge_batch_size expired rows in transactions of at most
// rows_per_transaction rows, committed one after the other (so a claim of a
// key being purged waits for one small transaction, never for the round),
// then folds as many committed hot-stock ledger rows into their items in a
// transaction of its own. Rounds follow each other, pg_idem.purge_delay
// apart, while there is more to do; otherwise the worker sleeps
// pg_idem.purge_interval. An error (a cancel too) ends the round: it is
// logged and the worker goes on after the interval. A cancel while it
// sleeps only wakes it. SIGTERM (shutdown) ends it.
#include "purge.hpp"

#include "pg/spi.hpp"
#include "stock.hpp"

extern "C" {
#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
}

#include <cstring>

namespace idem::purge {
namespace {

// A crashed or failed worker is started again after this long.
constexpr int restart_seconds = 10;

// What one round does in the extension installed in `nsp`, inside SPI_connect;
// returns how many rows it deleted or folded.
using Task = int64 (*)(Oid nsp);

// Where the purge has got to in each table, kept across transactions and
// rounds, and how many rows the next transaction may lock.
Cursor purge_cursor;
int64 purge_chunk_rows = 0;

int64 purge_expired(Oid nsp)
{
    // Nothing is lost in a crash that a later purge does not delete again,
    // so the commit need not wait for the WAL flush, nor hold its row locks
    // through it (for this transaction only: the fold keeps the default).
    (void)set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
    return delete_expired(nsp, GetCurrentTimestamp(), purge_chunk_rows, &purge_cursor);
}

int64 fold_ledger(Oid nsp)
{
    return stock::fold_committed_ledger(nsp, batch_size);
}

// One round of `task` in a transaction of its own, so that one task's error
// does not undo the other's work. Returns how many rows it deleted or folded,
// or -1 after an error, which is logged.
int64 run_round(Task task, const char* activity)
{
    MemoryContext cxt = CurrentMemoryContext;
    volatile int64 done = 0;
    PG_TRY();
    {
        SetCurrentStatementStartTimestamp();
        StartTransactionCommand();
        pg::connect();
        PushActiveSnapshot(GetTransactionSnapshot());
        pgstat_report_activity(STATE_RUNNING, activity);
        Oid nsp = pg::installed_namespace();
        if (OidIsValid(nsp))
            done = task(nsp);
        SPI_finish();
        PopActiveSnapshot();
        CommitTransactionCommand();
        pgstat_report_activity(STATE_IDLE, nullptr);
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(cxt);
        EmitErrorReport();
        FlushErrorState();
        AbortCurrentTransaction();
        pgstat_report_activity(STATE_IDLE, nullptr);
        done = -1;
    }
    PG_END_TRY();
    return done;
}

}  // namespace

void register_workers()
{
    // PGC_POSTMASTER settings can only be defined at server start, which is
    // also the only time workers can be registered.
    DefineCustomStringVariable("pg_idem.database",
                               "The databases the purge worker cleans, comma-separated; empty for none.",
                               "Needs pg_idem in shared_preload_libraries; one worker per database.", &databases,
                               "postgres", PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
    if (databases == nullptr || databases[0] == '\0')
        return;
    char* list = pstrdup(databases);
    List* names = NIL;
    if (!SplitGUCList(list, ',', &names))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("pg_idem.database must be a comma-separated list of database names")));
    ListCell* cell;
    foreach (cell, names) {
        const char* db = static_cast<const char*>(lfirst(cell));
        if (std::strlen(db) >= BGW_EXTRALEN)
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                            errmsg("pg_idem.database: database name \"%s\" is too long", db)));
        BackgroundWorker worker;
        std::memset(&worker, 0, sizeof worker);
        worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
        // Only where writes are possible: on a primary, or once a standby is promoted.
        worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
        worker.bgw_restart_time = restart_seconds;
        snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_idem");
        snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_purge_worker_main");
        snprintf(worker.bgw_name, BGW_MAXLEN, "pg_idem purge worker for %s", db);
        snprintf(worker.bgw_type, BGW_MAXLEN, "pg_idem purge worker");
        std::strcpy(worker.bgw_extra, db);
        RegisterBackgroundWorker(&worker);
    }
}

}  // namespace idem::purge

extern "C" PGDLLEXPORT void idem_purge_worker_main(Datum arg);

void idem_purge_worker_main(Datum)
{
    using namespace idem::purge;
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, die);
    BackgroundWorkerUnblockSignals();

    char database[BGW_EXTRALEN];
    std::memcpy(database, MyBgworkerEntry->bgw_extra, BGW_EXTRALEN);
    BackgroundWorkerInitializeConnection(database, nullptr, 0);
    pgstat_report_appname("pg_idem purge worker");
    ereport(LOG, (errmsg("pg_idem purge worker started for database \"%s\"", database)));

    MemoryContext round_cxt = AllocSetContextCreate(TopMemoryContext, "pg_idem purge", ALLOCSET_DEFAULT_SIZES);
    start_cursor(&purge_cursor);
    for (;;) {
        MemoryContextSwitchTo(round_cxt);
        // Small transactions until the batch is done or nothing is left.
        int64 purged = 0;
        bool purge_more = false;
        for (;;) {
            purge_chunk_rows = Min(rows_per_transaction, static_cast<int64>(batch_size) - purged);
            int64 n = run_round(purge_expired, "pg_idem purge");
            MemoryContextReset(round_cxt);
            if (n < 0) {  // logged; the next round starts from the beginning
                start_cursor(&purge_cursor);
                break;
            }
            purged += n;
            if (purge_cursor.done)
                break;
            if (purged >= batch_size) {
                purge_more = true;
                break;
            }
        }
        int64 folded = run_round(fold_ledger, "pg_idem fold hot-stock ledger");
        MemoryContextReset(round_cxt);

        // A full batch means more may be waiting: go on at once.
        bool more = purge_more || folded >= batch_size;
        // Hand the deletions to the statistics system, as every backend does
        // between transactions: autovacuum finds the dead rows only there.
        // Forced before a sleep, so nothing waits a whole interval.
        pgstat_report_stat(!more);
        long sleep_ms = more ? delay_ms : interval_ms;
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, sleep_ms, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        // Between rounds there is nothing to cancel, and an ERROR out here,
        // outside run_round's error handling, would end the worker: a
        // cancel (pg_cancel_backend) that arrived meanwhile only woke it.
        // (One that arrives during a round ends that round, in run_round.)
        QueryCancelPending = false;
        CHECK_FOR_INTERRUPTS();
        if (ConfigReloadPending) {
            ConfigReloadPending = false;
            ProcessConfigFile(PGC_SIGHUP);
        }
    }
}
