// Hot stock: escrow counts in shared memory over an append-only ledger
// (src/stock_internal.hpp explains the design).
#pragma once

#include "pg/postgres.hpp"

namespace idem::stock {

// From _PG_init while shared_preload_libraries loads pg_idem.
void init_preloaded();

// Folds committed ledger rows into their items' levels: all of those of the
// items named in the first `max_rows` ledger rows. The purge worker calls it;
// it may run in a transaction of its own or share one. Runs inside
// SPI_connect. Returns the rows folded.
int64 fold_committed_ledger(Oid extension_namespace, int64 max_rows);

}  // namespace idem::stock
