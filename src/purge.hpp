// Expiry purge (SPEC "Expiry and purge"): deleting rows whose expiry has
// passed. An expired row already counts as absent everywhere, so the purge
// only gives the space back; it locks nothing but the rows it deletes, and
// skips rows a claim is renewing right now (FOR UPDATE SKIP LOCKED).
#pragma once

#include "pg/postgres.hpp"

extern "C" {
#include "datatype/timestamp.h"
}

namespace idem::purge {

// GUCs (README "Operations"); defined from _PG_init.
extern int interval_ms;   // pg_idem.purge_interval
extern int batch_size;    // pg_idem.purge_batch_size
extern int delay_ms;      // pg_idem.purge_delay
extern char* databases;   // pg_idem.database

// The settings that can change at any time; from _PG_init.
void define_gucs();
// Defines pg_idem.database and registers one background worker per database
// in it; from _PG_init while shared_preload_libraries loads pg_idem.
void register_workers();

// Deletes at most `max_rows` rows of pg_idem's tables that expired before
// `now`, in the extension installed in `extension_namespace`. Runs inside
// SPI_connect, in the caller's transaction. Returns how many it deleted.
int64 delete_expired(Oid extension_namespace, TimestampTz now, int64 max_rows);

}  // namespace idem::purge
