// Expiry purge (SPEC "Expiry and purge"): deleting rows whose expiry has
// passed. An expired row already counts as absent everywhere, so the purge
// only gives the space back; it locks nothing but the rows it deletes, and
// skips rows a claim is renewing right now (FOR UPDATE SKIP LOCKED). The
// worker commits every rows_per_transaction rows; idem_purge() runs in the
// caller's transaction, which keeps its locks until it ends.
#pragma once

#include "pg/postgres.hpp"

extern "C" {
#include "datatype/timestamp.h"
#include "storage/itemptr.h"
}

namespace idem::purge {

// GUCs (README "Operations"); defined from _PG_init.
extern int interval_ms;  // pg_idem.purge_interval
extern int batch_size;  // pg_idem.purge_batch_size
extern int delay_ms;  // pg_idem.purge_delay
extern char* databases;  // pg_idem.database

// The settings, all of which a reload changes; from _PG_init.
void define_gucs();
// Registers the purge launcher (purge_launcher.cpp) and the shared memory
// it and its workers share; from _PG_init while shared_preload_libraries
// loads pg_idem.
void init_preloaded();

// The worker deletes a backlog in transactions of at most this many rows,
// committed one after the other: a claim of an expired key that the purge
// holds waits for one such transaction, never for a whole batch.
constexpr int64 rows_per_transaction = 100;

// How far a purge that runs as several statements has got: in each table,
// the last row its previous statement looked at. Each statement goes on
// from there (a TID range scan), so a backlog is read once, not once per
// batch; rows skipped because they were locked are found on the next pass.
constexpr int expiring_table_count = 4;
struct Cursor {
    ItemPointerData after[expiring_table_count];
    // Where a table is distributed by Citus, the purge deletes from its
    // shards placed on this node, one after another: the one `after` is in.
    int shard[expiring_table_count];
    bool skipped[expiring_table_count];  // left alone until the cursor starts again
    int table;  // the table the next statement looks at
    int last_run;  // the table the last statement was run for
    bool done;  // the last call reached the end of the last table
};
void start_cursor(Cursor* cursor);
// Leaves the rest of the cursor's table for the next pass and goes on to
// the next table. Returns whether that was the last one (then the cursor is
// done and starts again at the beginning).
bool next_table(Cursor* cursor);

// Deletes expired rows of pg_idem's tables (expired before `now`), in the
// extension installed in `extension_namespace`, going on from `cursor`: it
// locks at most `max_rows` rows, and so deletes at most that many. Runs
// inside SPI_connect, in the caller's transaction. Returns how many it
// deleted; cursor->done says whether it reached the end of every table (then
// the cursor starts again at the beginning).
int64 delete_expired(Oid extension_namespace, TimestampTz now, int64 max_rows, Cursor* cursor);

}  // namespace idem::purge
